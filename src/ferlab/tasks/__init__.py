"""One module per `ferlab` command (`cli.TASKS`): a Hydra entry calling a plain `run_*(cfg)`; heavy imports inside."""
