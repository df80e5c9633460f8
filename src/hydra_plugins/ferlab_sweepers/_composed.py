"""A grid's job configs composed once: what the sweeper composes to check a batch is what the launcher runs.

Hydra's sweepers compose every job of a batch before launching it (a bad option fails before any job runs), then
the launcher composes each job again: two compositions per job, half a second each on a laptop. Kept here, the
second is a lookup when the launcher runs in this process (the basic launcher). A launcher that runs jobs in other
processes (joblib, submitit) gets this loader pickled without the kept configs and composes there, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.config_loader import ConfigLoader
from omegaconf import DictConfig

# job configs kept per batch at most (~0.2 MB each); a larger batch composes the rest twice, as Hydra does
MAX_KEPT = 64


class ComposedJobs(ConfigLoader):
    """Hydra's config loader, delegated to, that keeps the configs `check` composes until the launcher asks."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.kept: dict[tuple[str, ...], list[DictConfig]] = {}

    def check(self, master_config: DictConfig, batch: Sequence[Sequence[str]]) -> None:
        """Compose every job of `batch` (a mistake raises here, before any job runs), keeping up to MAX_KEPT."""
        self.kept.clear()
        for n, overrides in enumerate(batch):
            config = self.loader.load_sweep_config(master_config, list(overrides))
            if n < MAX_KEPT:
                self.kept.setdefault(tuple(overrides), []).append(config)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        kept = self.kept.get(tuple(sweep_overrides))
        return kept.pop(0) if kept else self.loader.load_sweep_config(master_config, sweep_overrides)

    def __getstate__(self) -> dict[str, Any]:  # to another process: the loader only
        return {"loader": self.loader, "kept": {}}

    def load_configuration(self, *args: Any, **kwargs: Any) -> DictConfig:
        return self.loader.load_configuration(*args, **kwargs)

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> Any:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.compute_defaults_list(*args, **kwargs)
