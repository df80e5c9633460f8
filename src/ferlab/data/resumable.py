"""A training DataLoader that Lightning saves in every checkpoint and restores in the middle of an epoch.

Lightning 2.6 keeps the state of each training dataloader that has `state_dict`/`load_state_dict` (its fit loop
saves it under "combined_loader") and loads it back when it resumes a checkpoint written mid-epoch, before the
epoch's iterator starts. Without it a resumed epoch draws a new order and trains its first batches again.

Each epoch's order comes from a seed drawn from torch's global RNG when the epoch's first batch is fetched, as
RandomSampler does, so a resume at an epoch boundary (RNG restored by `ferlab.checkpoints.resilience.RngState`) draws the
same orders. The loader's state is that seed and the number of batches taken; a restored loader replays the order
from the seed and leaves the taken indices out, without reading them. Worker seeds follow the epoch's seed too
(the loader's own generator), so creating the resumed iterator draws nothing from the global RNG: the batches after
the resume see the RNG state saved with them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

log = logging.getLogger(__name__)


def draw_seed() -> int:
    """A seed from torch's global RNG, drawn as RandomSampler draws its own."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class _Replayable:
    """Sampler mixin: `start(seed, skip)` fixes the next epoch's order and leaves its first `skip` indices out."""

    _start: tuple[int, int] | None = None

    def start(self, seed: int, skip: int) -> None:
        self._start = (seed, skip)

    def _order(self, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        if self._start is None:  # iterated outside ResumableLoader (e.g. wrapped for DDP): the parent's behaviour
            return super().__iter__()
        (seed, skip), self._start = self._start, None
        return iter(self._order(torch.Generator().manual_seed(seed))[skip:].tolist())


class EpochRandomSampler(_Replayable, RandomSampler):
    """RandomSampler (a permutation per epoch, no replacement) that can replay an epoch; Lightning's DDP still
    replaces it with a DistributedSampler, as any RandomSampler."""

    def _order(self, generator: torch.Generator) -> Tensor:
        return torch.randperm(len(self.data_source), generator=generator)


class EpochWeightedSampler(_Replayable, WeightedRandomSampler):
    """WeightedRandomSampler that can replay an epoch."""

    def _order(self, generator: torch.Generator) -> Tensor:
        return torch.multinomial(self.weights, self.num_samples, self.replacement, generator=generator)


class ResumableLoader(DataLoader):
    """DataLoader whose state is the epoch's seed and the batches taken; see the module docstring.

    Pass `generator=torch.Generator()`: it is reseeded from the epoch's seed, so worker seeds are reproducible and
    no iterator draws from the global RNG.
    """

    _resume: tuple[int, int] | None = None
    _seed: int | None = None
    _taken = 0

    def __iter__(self) -> Iterator[Any]:
        seed, skip = self._resume or (draw_seed(), 0)
        self._resume, self._seed, self._taken = None, seed, skip
        if self.generator is not None:
            self.generator.manual_seed(seed)
        replay = isinstance(self.sampler, _Replayable)
        if replay:
            self.sampler.start(seed, skip * self.batch_size)
        for i, batch in enumerate(super().__iter__()):
            if not replay and i < skip:  # another sampler (DDP's): only reading the taken batches again skips them
                continue
            self._taken += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {} if self._seed is None else {"seed": self._seed, "batches": self._taken}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict.get("seed") is not None:
            self._resume = (int(state_dict["seed"]), int(state_dict["batches"]))
