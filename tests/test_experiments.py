"""experiments/: every recipe composes with the report's numbers, every ablation expands to the report's table,
and every experiment runs one smoke epoch on synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from ferlab.config.runner import CONF_DIR
from tests.conftest import REPO

EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml"))
MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))

# experiment -> {dotted key: value} of the report's recipe
RECIPES = {
    "report000_resnext_fer5": {
        "data.name": "fer5", "model._target_": "ferlab.models.resnet.resnext18_fer", "optim._target_": "torch.optim.Adam",
        "optim.lr": 0.005, "data.batch_size": 32, "trainer.max_epochs": 70, "data.sampler": "balanced",
        "model.arch": [[2, 64], [2, 128], [2, 256]], "model.drop_rates": [0.2, 0.4], "sched.scheduler": None},
    "report001_resnet18_fer2013": {
        "model._target_": "ferlab.models.resnet.resnet18", "optim._target_": "torch.optim.SGD", "optim.lr": 0.01,
        "optim.weight_decay": 1e-5, "sched.scheduler.step_size": 9, "sched.scheduler.gamma": 0.4,
        "data.batch_size": 63, "loss._target_": "ferlab.lit.losses.OffTargetSmoothingCE", "loss.smoothing": 0.05,
        "data.mean": [0.15], "data.std": [0.4], "data.clean.min_std": 10, "data.val_fraction": 0.1641,
        "data.source.test": "merged"},
    "report002_vgg_fer2013": {
        "model._target_": "ferlab.models.vgg.vgg_fer", "optim.lr": 0.002, "trainer.max_epochs": 50,
        "data.batch_size": 512, "data.val_fraction": 0.2},
    "report003_deep_emotion_fer2013": {
        "model._target_": "ferlab.models.deep_emotion.deep_emotion", "optim.lr": 0.001, "trainer.max_epochs": 100,
        "sched.scheduler._target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "sched.scheduler.T_max": 100,
        "data.val_fraction": 0.3},
    "report004_cliquenet_ferplus": {
        "data.name": "ferplus", "data.num_classes": 8, "model._target_": "ferlab.models.cliquenet.cliquenet",
        "model.blocks": 3, "model.layers": 5, "model.channels": 36, "model.block_drop_rate": 0.05,
        "optim._target_": "torch.optim.Adam"},
    "report004_lenet7_ferplus": {"data.num_classes": 8, "model._target_": "ferlab.models.small.lenet7"},
    # the published best recipes (experiments/README.md, "Published recipes")
    "fer2013_vgg19_wujie": {
        "model._target_": "ferlab.models.vgg.vgg19_fer48", "augment.crop": 44, "optim._target_": "torch.optim.SGD",
        "optim.lr": 0.01, "optim.momentum": 0.9, "optim.weight_decay": 5e-4, "data.batch_size": 128,
        "sched.scheduler._target_": "ferlab.lit.sched.DelayedStepLR", "sched.scheduler.start_epoch": 80,
        "sched.scheduler.step_size": 5, "sched.scheduler.gamma": 0.9, "trainer.max_epochs": 250,
        "trainer.gradient_clip_val": 0.1, "trainer.gradient_clip_algorithm": "value", "tta.mode": "ten_crop",
        "tta.crop_size": 44, "tta.resize": False},
    "fer2013_vgg_khaireddin": {
        "model._target_": "ferlab.models.vgg.vgg_khaireddin", "augment.crop": 40, "optim.nesterov": True,
        "optim.momentum": 0.9, "optim.weight_decay": 1e-4, "optim.lr": 0.01, "data.batch_size": 64,
        "trainer.max_epochs": 300, "sched.scheduler._target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "sched.scheduler.factor": 0.75, "sched.scheduler.patience": 5, "tta.mode": "ten_crop", "tta.crop_size": 40},
    "ferplus_vgg13_barsoum": {
        "data.name": "ferplus", "model._target_": "ferlab.models.vgg.vgg13_barsoum", "data.image_size": 64,
        "data.batch_size": 32, "optim.lr": 0.05, "optim.momentum": 0.9, "trainer.max_epochs": 100,
        "sched.scheduler.milestones": [20, 40], "sched.scheduler.factors": [1.0, 0.5, 0.1]},
    "fer2013_resnet18_imagenet": {
        "model._target_": "ferlab.models.resnet.resnet18", "model.pretrained": "imagenet", "data.in_chans": 3,
        "data.image_size": 224, "data.mean": [0.485, 0.456, 0.406], "data.std": [0.229, 0.224, 0.225],
        "callbacks.backbone_finetuning.unfreeze_backbone_at_epoch": 1},
    "report004_pretrain": {
        "data.name": "ferplus", "model._target_": "ferlab.models.cliquenet.cliquenet", "optim.lr": 0.01,
        "augment.ops.3._target_": "ferlab.data.augment.RandomErasing", "init_from": None, "trainer.max_epochs": 30},
    # the RAF-DB / AffectNet papers' recipes (methods, face-recognition backbones)
    "rafdb_r18_msceleb": {
        "data.name": "rafdb", "data.image_size": 224, "data.in_chans": 3, "data.split": "random", "data.val_fraction": 0.1,
        "model._target_": "ferlab.models.resnet.resnet18", "train_method._target_": "ferlab.methods.plain.Plain",
        "optim._target_": "torch.optim.Adam", "optim.lr": 0.001, "optim.weight_decay": 1e-4, "data.batch_size": 64,
        "sched.scheduler._target_": "torch.optim.lr_scheduler.StepLR", "sched.scheduler.step_size": 1,
        "sched.scheduler.gamma": 0.9, "trainer.max_epochs": 70, "augment.ops.2.scale": [0.02, 0.25]},
    "rafdb_scn": {
        "data.name": "rafdb", "model._target_": "ferlab.models.resnet.resnet18", "train_method._target_": "ferlab.methods.scn.SCN",
        "train_method.beta": 0.7, "train_method.margin_1": 0.15, "train_method.margin_2": 0.2,
        "train_method.relabel_epoch": 10, "optim.lr": 0.001, "data.batch_size": 64, "trainer.max_epochs": 70},
    "rafdb_eac": {
        "data.name": "rafdb", "model._target_": "ferlab.models.resnet.resnet18", "train_method._target_": "ferlab.methods.eac.EAC",
        "train_method.lam": 5.0, "train_method.erase_scale": [0.02, 0.25], "optim.lr": 0.0002, "optim.weight_decay": 1e-4,
        "sched.scheduler.gamma": 0.9, "data.batch_size": 32, "trainer.max_epochs": 60,
        "augment.ops": [{"_target_": "ferlab.data.augment.GaussianNoise", "p": 0.5}]},
    "rafdb_dan": {
        "data.name": "rafdb", "model._target_": "ferlab.models.resnet.resnet18", "train_method._target_": "ferlab.methods.dan.DAN",
        "train_method.num_head": 4, "optim._target_": "torch.optim.SGD", "optim.lr": 0.1, "optim.momentum": 0.9,
        "optim.weight_decay": 1e-4, "sched.scheduler.step_size": 10, "sched.scheduler.gamma": 0.1, "data.batch_size": 256,
        "trainer.max_epochs": 40},
    "affectnet7_dan": {
        "data.name": "affectnet", "data.num_classes": 7, "data.source.classes": 7, "data.sampler": "balanced",
        "data.split": "random", "train_method._target_": "ferlab.methods.dan.DAN", "optim._target_": "torch.optim.Adam",
        "optim.lr": 0.0001, "optim.weight_decay": 0.0, "sched.scheduler.gamma": 0.6, "data.batch_size": 256,
        "trainer.max_epochs": 10},
    "affectnet8_enet_b2": {
        "data.name": "affectnet", "data.num_classes": 8, "data.image_size": 260, "data.batch_size": 64,
        "model._target_": "ferlab.models.timm_net.timm", "model.name": "tf_efficientnet_b2.ns_jft_in1k",
        "loss._target_": "ferlab.lit.losses.ClassWeightedCE", "loss.label_smoothing": 0.1, "optim.lr": 0.001,
        "sched.scheduler.milestones": [3], "sched.scheduler.factors": [1.0, 0.1], "augment.ops": [],
        "callbacks.backbone_finetuning.unfreeze_backbone_at_epoch": 3,
        "callbacks.backbone_finetuning.backbone_initial_ratio_lr": 1.0, "trainer.max_epochs": 9},
    "affectnet_va": {
        "data.name": "affectnet", "data.num_classes": 8, "head.kind": "expr_va", "model.num_classes": 10,
        "data.va_targets": True, "monitor": "val/ccc_mean", "head.mse_weight": 1.0, "optim.lr": 0.0001,
        "sched.scheduler.gamma": 0.9, "trainer.max_epochs": 15},
    "report004_finetune": {
        "data.name": "ferplus", "model._target_": "ferlab.models.cliquenet.cliquenet", "optim.lr": 0.0001,
        "init_from": "last:report004_pretrain", "augment.ops.1._target_": "ferlab.data.augment.RandomAffine"},
}

# ablation -> (the swept overrides' values in job order, {dotted key: values it takes in the composed jobs})
SCHEDULERS = ["StepLR", "MultiStepLR", "CosineAnnealingLR", "ReduceLROnPlateau"]
ABLATIONS = {
    "report000_ablation_dropout": ({"model.drop_rates": ["[0,0]", "[0.2,0.4]", "[0.3,0.5]"]},
                                   {"model.drop_rates": [[0, 0], [0.2, 0.4], [0.3, 0.5]], "augment.ops": [[]],
                                    "model.arch": [[[2, 64], [2, 128], [2, 256], [2, 512]]]}),
    "report000_ablation_stages": ({"model.arch": ["[[2,64],[2,128],[2,256]]", "[[2,64],[2,128],[2,256],[2,512]]",
                                                  "[[2,64],[2,128],[2,256],[2,512],[2,512]]"]},
                                  {"model.arch": [[[2, 64], [2, 128], [2, 256]], [[2, 64], [2, 128], [2, 256], [2, 512]],
                                                  [[2, 64], [2, 128], [2, 256], [2, 512], [2, 512]]],
                                   "model.drop_rates": [[0.2, 0.4]], "augment.ops": [[]]}),
    "report000_ablation_augment": ({"augment": ["none", "report000"]}, {"data.sampler": ["random"]}),
    "report000_ablation_sampler": ({"data.sampler": ["random", "balanced"]}, {"data.sampler": ["random", "balanced"]}),
    "report001_ablation_loss": ({"loss": ["ce", "weighted_ce", "label_smoothing", "smooth_report001"]},
                                {"loss.label_smoothing": [0.0, 0.1, None]}),
    "report003_ablation_schedulers": ({"sched": [s for s in ("step", "multistep", "cosine", "plateau") for _ in range(5)],
                                       "seed": [str(i) for i in range(1, 6)] * 4},
                                      {"sched.scheduler._target_": [f"torch.optim.lr_scheduler.{s}" for s in SCHEDULERS],
                                       "trainer.max_epochs": [200]}),
    "report004_ablation_optimizers": ({"optim": ["adam", "sgd", "sgd_plain"]},
                                      {"optim._target_": ["torch.optim.Adam", "torch.optim.SGD"],
                                       "optim.momentum": [None, 0.9, 0.0], "optim.lr": [0.001, 0.01]}),
    "zoo_fer2013": ({"model": MODELS}, {}),  # every model option composes: tests/test_configs.py
}


def _value(cfg, key: str):
    """A config value as plain Python; None when absent."""
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def test_every_experiment_file_is_listed_here_and_names_its_task():
    assert sorted([*RECIPES, *ABLATIONS]) == EXPERIMENTS
    for name in EXPERIMENTS:
        text = (REPO / "experiments" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_\n") and f"task_name: {name}\n" in text
        assert "Reference" in text, f"{name}: the report's result belongs in a comment"
        assert f"`{name}`" in (REPO / "experiments" / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_composes_with_the_reports_numbers(make_cfg, name):
    cfg = make_cfg(f"experiment={name}", fast=False)
    assert cfg.task_name == name
    for key, expected in RECIPES[name].items():
        assert _value(cfg, key) == expected, key


def _jobs(cfg) -> list[list[str]]:
    """The sweep an ablation's hydra.sweeper.params defines, as the ferlab sweeper expands it."""
    from hydra.core.hydra_config import HydraConfig

    params = HydraConfig.get().sweeper.params or {}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):  # glob() lists a group's options
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        return BasicSweeper.split_arguments(parser.parse_overrides([f"{k}={v}" for k, v in params.items()]), None)[0]


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_expands_to_the_reports_table(make_cfg, name):
    swept, composed = ABLATIONS[name]
    jobs = _jobs(make_cfg(f"experiment={name}", fast=False))
    assert {k: [dict(o.split("=", 1) for o in job)[k] for job in jobs] for k in swept} == swept
    seen: dict[str, list] = {key: [] for key in composed}
    distinct = {tuple(o for o in job if not o.startswith("seed=")): None for job in jobs} if composed else {}
    for job in distinct:  # every configuration of the table composes (seeds do not change it)
        cfg = make_cfg(f"experiment={name}", "data=synthetic", *job, fast=False)
        for key, values in seen.items():
            if _value(cfg, key) not in values:
                values.append(_value(cfg, key))
    assert seen == composed


# No checkpoint files: nothing here reads them, and the 27 jobs' best.ckpt + last.ckpt (Adam states of VGGs with a
# 25088x4096 layer) came to 4.3 GB a run. Saving checkpoints is tested where a test reads them (test_train, test_resume).
NO_CHECKPOINTS = ["callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false"]


def test_every_experiment_runs_a_smoke_epoch_in_one_multirun(ferlab_cli, tmp_path):
    r = ferlab_cli("train", "-m", "experiment=glob(*)", "debug=smoke", "data.source.num_images=300", "data.batch_size=4",
                   "data.eval_batch_size=8", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                   "test=false", "logger=none", "callbacks.rich_model_summary=null", *NO_CHECKPOINTS,
                   cwd=tmp_path).result(600)
    sweep = next((tmp_path / "outputs" / "smoke" / "multiruns").iterdir())
    failed = {p.name: json.loads((p / "failed.json").read_text()) for p in sweep.iterdir() if (p / "failed.json").exists()}
    assert r.returncode == 0 and not failed, f"{failed}\n{r.stderr[-2000:]}"
    assert not list(sweep.rglob("*.ckpt")), "the smoke jobs were to write no checkpoint"
    report = ferlab_cli("report", str(sweep), "--format", "json", "--no-write", "--metrics", "val/acc", "epochs",
                        cwd=tmp_path).result(120)
    assert report.returncode == 0, report.stderr[-2000:]
    data = json.loads(report.stdout)
    assert sorted(row["config"]["experiment"] for row in data["rows"]) == EXPERIMENTS
    for row in data["rows"]:
        assert row["metrics"]["val/acc"]["n"] == 1 and row["metrics"]["epochs"]["mean"] == 1  # one epoch each


def test_trainer_knobs_bf16_clipping_and_accumulation_train(make_cfg):
    from ferlab.tasks.train import run_train

    cfg = make_cfg("trainer=cpu", "data.batch_size=16", "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.5",
                   "trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
                   "test=false", "logger=none")
    metrics = run_train(cfg)
    assert metrics["global_step"] == 2  # 4 batches, one optimizer step per 2
    assert math.isfinite(metrics["history"][-1]["train/loss"])


# margins under every CPU kernel set: benchmarks/results/learning_margins.md
OVERFIT_RUN = ["debug=overfit", "trainer.max_epochs=6", "data.batch_size=8", "logger=none", "optim.lr=0.01"]
OVERFIT_LOSS_RATIO = 0.25


def test_debug_overfit_and_profiler_presets(make_cfg, tmp_path):
    from ferlab.tasks.train import run_train

    history = run_train(make_cfg(*OVERFIT_RUN))["history"]
    assert history[-1]["train/loss"] < OVERFIT_LOSS_RATIO * history[0]["train/loss"]  # 3 fixed batches get memorized
    cfg = make_cfg("debug=profiler", "data.batch_size=8", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                   "logger=none",
                   f"hydra.run.dir={tmp_path / 'profile'}")
    run_train(cfg)
    report = (Path(cfg.paths.output_dir) / "fit-profiler.txt").read_text()
    assert "training_step" in report and "Total" in report



def test_the_papers_recipes_train_on_their_datasets_layout(tmp_path):
    """The RAF-DB / AffectNet recipes on synthetic faces in those datasets' own layouts, each recipe's MS-Celeb
    ResNet-18 file (torchvision's layout in a "state_dict") at its default place under data/weights/."""
    import torchvision

    from ferlab.config.runner import compose_run
    from ferlab.data.writers_wild import write_affectnet, write_rafdb
    from ferlab.tasks.train import run_train

    data = tmp_path / "data"
    write_rafdb(data / "rafdb", 140, seed=1, size=48)
    write_affectnet(data / "affectnet", 200, seed=1, size=48)
    (data / "weights").mkdir()
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, data / "weights" / "resnet18_msceleb.pth")
    short = ["data.image_size=48", "data.batch_size=8", "data.eval_batch_size=16", "trainer.max_epochs=1",
             "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false", "logger=none",
             "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null", "trainer.num_sanity_val_steps=0",
             "+data.decode_workers=1", *NO_CHECKPOINTS]
    recipes = {name: [] for name in ("rafdb_r18_msceleb", "rafdb_scn", "rafdb_eac", "rafdb_dan", "affectnet7_dan")}
    recipes["affectnet8_enet_b2"] = ["model.pretrained=null"]  # timm files: the backbone loaders' tests
    recipes["affectnet_va"] = []  # expression + valence/arousal from the AffectNet CSV's columns
    for name, extra in recipes.items():
        cfg = compose_run("train", [f"paths.root_dir={tmp_path}", f"experiment={name}", *short, *extra], tmp_path / name)
        metrics = run_train(cfg)
        assert metrics["global_step"] == 1 and metrics["dataset"]["name"] == cfg.data.name, name
        if name != "affectnet8_enet_b2":
            assert metrics["weights"]["pretrained"]["loaded"] > 100, name  # the ResNet-18 file, not a fresh net
    assert "val/ccc_mean" in metrics["history"][-1]  # affectnet_va's last: it scores valence/arousal
