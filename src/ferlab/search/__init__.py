"""Grid and Optuna search: the sweeper's callbacks, studies, trials and their pruning, the runs table of
`ferlab report` and of every sweep, TensorBoard HPARAMS and run names."""
