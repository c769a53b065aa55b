"""Seeded batch samplers whose position is part of a run's resume state.

Both draw indices into a data set (images, token windows, examples, sequences) and save
their position with ``state_dict()``, so a resumed run reads exactly the batches it would
have read. With ``world_size`` > 1, every rank draws the same global batch of
``batch_size * world_size`` indices and takes its own slice: ranks never overlap, and one
process (``world_size`` 1) draws exactly what it always did.
"""

from __future__ import annotations

import torch

from aigc.errors import UserError


class RandomBatches:
    """Batches of indices in [0, high) drawn uniformly with replacement, from a generator of
    its own (nanoGPT's random windows; SeqGAN's random sequences)."""

    def __init__(self, high: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.high, self.batch_size, self.rank, self.world_size = high, batch_size, rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        """The next batch of indices (batch_size,)."""
        drawn = torch.randint(self.high, (self.batch_size * self.world_size,), generator=self.generator)
        return drawn[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class EpochBatches:
    """Shuffled batches, one permutation per epoch; the partial last batch of an epoch is
    dropped, so batch norm always sees full batches and every example counts equally. Each
    epoch's permutation comes from (seed, epoch) alone, so the position is two numbers."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if size < batch_size * world_size:
            raise UserError(f"the data set has {size} examples, fewer than one batch of {batch_size * world_size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._permutation = self._shuffle()

    def _shuffle(self) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))

    def next(self) -> torch.Tensor:
        """The next batch of indices (batch_size,)."""
        global_batch = self.batch_size * self.world_size
        if self.position + global_batch > self.size:
            self.epoch, self.position = self.epoch + 1, 0
            self._permutation = self._shuffle()
        start = self.position + self.rank * self.batch_size
        self.position += global_batch
        return self._permutation[start:start + self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._permutation = self._shuffle()
