"""The Optuna search space from Hydra overrides: the grammar of Hydra's Optuna sweeper, parsed by Hydra's parser.

    optim.lr=tag(log, interval(1e-4, 1e-1))   log-uniform float
    model.drop_rate=interval(0, 0.5)          uniform float; int(interval(4, 16)): uniform int
    data.batch_size=choice(32, 64, 128)       categorical (also `32,64,128` and `glob(...)` over a config group)
    model.width=range(8, 33, 8)               stepped int or float, the values of Hydra's range (stop excluded)
    data.batch_size=64                        a plain override: fixed, and out of the search

Entries of `hydra.sweeper.params` come first and the command line after; the last entry for a key wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial

from ferlab.errors import FerlabError

PRIMITIVE = (str, int, float, bool, type(None))


def _categorical(override: Override) -> CategoricalDistribution:
    choices = list(override.sweep_iterator(transformer=Transformer.encode))
    bad = [c for c in choices if not isinstance(c, PRIMITIVE)]
    if bad or not choices:
        raise FerlabError(f"{override.input_line}: a choice needs one or more plain values (str, int, float, "
                          f"bool or null), got {bad or 'none'}")
    return CategoricalDistribution(choices)


def _range(override: Override) -> BaseDistribution:
    """Hydra's range(start, stop, step): the values it enumerates, as an Optuna distribution with that step."""
    sweep = override.value()
    if sweep.shuffle:
        return _categorical(override)
    values = list(override.sweep_iterator())
    if not values:
        raise FerlabError(f"{override.input_line}: the range holds no value")
    low, high, step = min(values), max(values), abs(sweep.step)
    if all(isinstance(v, int) for v in values) and isinstance(step, int):
        return IntDistribution(low, high, step=step)
    return FloatDistribution(float(low), float(high), step=float(step))


def _interval(override: Override) -> BaseDistribution:
    sweep = override.value()
    log = "log" in sweep.tags
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):
        return IntDistribution(sweep.start, sweep.end, log=log)
    return FloatDistribution(float(sweep.start), float(sweep.end), log=log)


def distribution(override: Override) -> BaseDistribution | None:
    """The override's Optuna distribution; None for a plain override (a fixed value)."""
    if not override.is_sweep_override():
        return None
    for kind, build in ((override.is_choice_sweep, _categorical), (override.is_range_sweep, _range),
                        (override.is_interval_sweep, _interval)):
        if kind():
            try:
                return build(override)
            except ValueError as e:  # Optuna's own check of the bounds (low > high, log of a value <= 0)
                raise FerlabError(f"{override.input_line}: {e}") from None
    raise FerlabError(f"{override.input_line}: not a search-space expression (interval, choice, range)")


def parse_space(arguments: Sequence[str], config_loader: Any = None) -> tuple[dict[str, BaseDistribution], dict[str, Override]]:
    """(distributions by key, fixed overrides by key) from `key=value` strings; later keys replace earlier ones."""
    parser = OverridesParser.create(config_loader=config_loader)
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, Override] = {}
    for override in parser.parse_overrides(list(arguments)):
        name = override.get_key_element()
        space.pop(name, None)
        fixed.pop(name, None)
        dist = distribution(override)
        if dist is None:
            fixed[name] = override
        else:
            space[name] = dist
    return space, fixed


def grid_choices(name: str, dist: BaseDistribution) -> list[Any]:
    """Every value of a discrete distribution, for Optuna's GridSampler."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    step = getattr(dist, "step", None)
    if step is None or getattr(dist, "log", False):
        raise FerlabError(f"{name}: GridSampler needs discrete values (choice or range), not {dist}")
    count = int(round((dist.high - dist.low) / step)) + 1
    return [dist.low + i * step for i in range(count)]


def trial_overrides(trial: Trial, fixed: dict[str, Override], extend: Callable[[Any, Trial], None] | None = None,
                    config: Any = None) -> list[str]:
    """A trial's job overrides: its parameters (asked with the search space), then the fixed overrides (also
    recorded as the trial's user attributes, as Hydra's Optuna sweeper did)."""
    for name, override in fixed.items():
        trial.set_user_attr(name, override.get_value_element_as_str())
    if extend is not None:
        extend(config, trial)  # custom_search_space: a function(cfg, trial) suggesting more parameters
    overlap = sorted(trial.params.keys() & fixed.keys())
    if overlap:
        raise FerlabError(f"custom_search_space suggests {', '.join(overlap)}, which the overrides fix")
    return [*(f"{name}={value}" for name, value in trial.params.items()), *(o.input_line for o in fixed.values())]
