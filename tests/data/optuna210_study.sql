-- A study written by ferlab before issue 15 (hydra-optuna-sweeper 1.2, Optuna 2.10.1, SQLAlchemy 1.4):
-- ferlab train -m hparams_search=optuna hydra.sweeper.n_trials=2 (tiny trials), then one trial asked and left
-- running as a crashed sweep leaves it; dumped with sqlite3's iterdump. tests/test_search.py loads it.
BEGIN TRANSACTION;
CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO "alembic_version" VALUES('v2.6.0.a');
CREATE TABLE studies (
	study_id INTEGER NOT NULL, 
	study_name VARCHAR(512) NOT NULL, 
	PRIMARY KEY (study_id)
);
INSERT INTO "studies" VALUES(1,'train_synthetic');
CREATE TABLE study_directions (
	study_direction_id INTEGER NOT NULL, 
	direction VARCHAR(8) NOT NULL, 
	study_id INTEGER NOT NULL, 
	objective INTEGER NOT NULL, 
	PRIMARY KEY (study_direction_id), 
	UNIQUE (study_id, objective), 
	FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
INSERT INTO "study_directions" VALUES(1,'MAXIMIZE',1,0);
CREATE TABLE study_system_attributes (
	study_system_attribute_id INTEGER NOT NULL, 
	study_id INTEGER, 
	"key" VARCHAR(512), 
	value_json TEXT, 
	PRIMARY KEY (study_system_attribute_id), 
	UNIQUE (study_id, "key"), 
	FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
CREATE TABLE study_user_attributes (
	study_user_attribute_id INTEGER NOT NULL, 
	study_id INTEGER, 
	"key" VARCHAR(512), 
	value_json TEXT, 
	PRIMARY KEY (study_user_attribute_id), 
	UNIQUE (study_id, "key"), 
	FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
CREATE TABLE trial_heartbeats (
	trial_heartbeat_id INTEGER NOT NULL, 
	trial_id INTEGER NOT NULL, 
	heartbeat DATETIME NOT NULL, 
	PRIMARY KEY (trial_heartbeat_id), 
	UNIQUE (trial_id), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
CREATE TABLE trial_intermediate_values (
	trial_intermediate_value_id INTEGER NOT NULL, 
	trial_id INTEGER NOT NULL, 
	step INTEGER NOT NULL, 
	intermediate_value FLOAT NOT NULL, 
	PRIMARY KEY (trial_intermediate_value_id), 
	UNIQUE (trial_id, step), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
CREATE TABLE trial_params (
	param_id INTEGER NOT NULL, 
	trial_id INTEGER, 
	param_name VARCHAR(512), 
	param_value FLOAT, 
	distribution_json TEXT, 
	PRIMARY KEY (param_id), 
	UNIQUE (trial_id, param_name), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
INSERT INTO "trial_params" VALUES(1,1,'optim.lr',6.14961997112609404236e-02,'{"name": "LogUniformDistribution", "attributes": {"low": 0.0001, "high": 0.1}}');
INSERT INTO "trial_params" VALUES(2,1,'optim.weight_decay',1.84290190228120791182e-05,'{"name": "LogUniformDistribution", "attributes": {"low": 1e-06, "high": 0.01}}');
INSERT INTO "trial_params" VALUES(3,1,'model.drop_rate',9.19594058385472257199e-02,'{"name": "UniformDistribution", "attributes": {"low": 0.0, "high": 0.5}}');
INSERT INTO "trial_params" VALUES(4,2,'optim.lr',4.10847676919216852134e-04,'{"name": "LogUniformDistribution", "attributes": {"low": 0.0001, "high": 0.1}}');
INSERT INTO "trial_params" VALUES(5,2,'optim.weight_decay',1.86595049030118870963e-04,'{"name": "LogUniformDistribution", "attributes": {"low": 1e-06, "high": 0.01}}');
INSERT INTO "trial_params" VALUES(6,2,'model.drop_rate',2.97772351489625775045e-01,'{"name": "UniformDistribution", "attributes": {"low": 0.0, "high": 0.5}}');
INSERT INTO "trial_params" VALUES(7,3,'optim.lr',0.00999050188733586,'{"name": "LogUniformDistribution", "attributes": {"low": 0.0001, "high": 0.1}}');
CREATE TABLE trial_system_attributes (
	trial_system_attribute_id INTEGER NOT NULL, 
	trial_id INTEGER, 
	"key" VARCHAR(512), 
	value_json TEXT, 
	PRIMARY KEY (trial_system_attribute_id), 
	UNIQUE (trial_id, "key"), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
CREATE TABLE trial_user_attributes (
	trial_user_attribute_id INTEGER NOT NULL, 
	trial_id INTEGER, 
	"key" VARCHAR(512), 
	value_json TEXT, 
	PRIMARY KEY (trial_user_attribute_id), 
	UNIQUE (trial_id, "key"), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
INSERT INTO "trial_user_attributes" VALUES(1,1,'hparams_search','"optuna"');
INSERT INTO "trial_user_attributes" VALUES(2,1,'data.source.num_images','"300"');
INSERT INTO "trial_user_attributes" VALUES(3,1,'model.width','"8"');
INSERT INTO "trial_user_attributes" VALUES(4,1,'trainer.max_epochs','"1"');
INSERT INTO "trial_user_attributes" VALUES(5,1,'trainer.limit_train_batches','"2"');
INSERT INTO "trial_user_attributes" VALUES(6,1,'trainer.limit_val_batches','"1"');
INSERT INTO "trial_user_attributes" VALUES(7,1,'trainer.num_sanity_val_steps','"0"');
INSERT INTO "trial_user_attributes" VALUES(8,1,'data.batch_size','"16"');
INSERT INTO "trial_user_attributes" VALUES(9,1,'callbacks.rich_progress_bar','"null"');
INSERT INTO "trial_user_attributes" VALUES(10,1,'callbacks.rich_model_summary','"null"');
INSERT INTO "trial_user_attributes" VALUES(11,1,'logger','"none"');
INSERT INTO "trial_user_attributes" VALUES(12,1,'test','"False"');
INSERT INTO "trial_user_attributes" VALUES(13,2,'hparams_search','"optuna"');
INSERT INTO "trial_user_attributes" VALUES(14,2,'data.source.num_images','"300"');
INSERT INTO "trial_user_attributes" VALUES(15,2,'model.width','"8"');
INSERT INTO "trial_user_attributes" VALUES(16,2,'trainer.max_epochs','"1"');
INSERT INTO "trial_user_attributes" VALUES(17,2,'trainer.limit_train_batches','"2"');
INSERT INTO "trial_user_attributes" VALUES(18,2,'trainer.limit_val_batches','"1"');
INSERT INTO "trial_user_attributes" VALUES(19,2,'trainer.num_sanity_val_steps','"0"');
INSERT INTO "trial_user_attributes" VALUES(20,2,'data.batch_size','"16"');
INSERT INTO "trial_user_attributes" VALUES(21,2,'callbacks.rich_progress_bar','"null"');
INSERT INTO "trial_user_attributes" VALUES(22,2,'callbacks.rich_model_summary','"null"');
INSERT INTO "trial_user_attributes" VALUES(23,2,'logger','"none"');
INSERT INTO "trial_user_attributes" VALUES(24,2,'test','"False"');
CREATE TABLE trial_values (
	trial_value_id INTEGER NOT NULL, 
	trial_id INTEGER NOT NULL, 
	objective INTEGER NOT NULL, 
	value FLOAT NOT NULL, 
	PRIMARY KEY (trial_value_id), 
	UNIQUE (trial_id, objective), 
	FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
INSERT INTO "trial_values" VALUES(1,1,0,2.33333334326744079589e-01);
INSERT INTO "trial_values" VALUES(2,2,0,1.66666671633720397949e-01);
CREATE TABLE trials (
	trial_id INTEGER NOT NULL, 
	number INTEGER, 
	study_id INTEGER, 
	state VARCHAR(8) NOT NULL, 
	datetime_start DATETIME, 
	datetime_complete DATETIME, 
	PRIMARY KEY (trial_id), 
	FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
INSERT INTO "trials" VALUES(1,0,1,'COMPLETE','2026-11-30 13:20:06.140175','2026-11-30 13:20:18.080443');
INSERT INTO "trials" VALUES(2,1,1,'COMPLETE','2026-11-30 13:20:18.131064','2026-11-30 13:20:20.928344');
INSERT INTO "trials" VALUES(3,2,1,'RUNNING','2026-11-30 13:20:33.210914',NULL);
CREATE TABLE version_info (
	version_info_id INTEGER NOT NULL, 
	schema_version INTEGER, 
	library_version VARCHAR(256), 
	PRIMARY KEY (version_info_id), 
	CHECK (version_info_id=1)
);
INSERT INTO "version_info" VALUES(1,12,'2.10.1');
CREATE UNIQUE INDEX ix_studies_study_name ON studies (study_name);
COMMIT;
