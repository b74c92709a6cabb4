"""An infinite, seeded, rank-sharded sampler that can start at any position.

Resuming a run must continue with exactly the samples an uninterrupted run would have seen
next. The order is a pure function of (seed, epoch), so the position is one integer, derived
from the iteration counter; nothing has to be re-read to get there.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Yields dataset indices forever: epoch `e` is a permutation seeded by `seed + e`.

    Each of `world_size` ranks takes every `world_size`-th index of the permutation (the
    permutation is padded by wrapping, so every rank sees the same count). `start_at(n)` skips
    the first `n` indices of this rank's stream.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.per_rank = -(-size // world_size)
        self.start = 0

    def start_at(self, position: int) -> None:
        self.start = position

    def _epoch_indices(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        padded = order.repeat(-(-self.per_rank * self.world_size // self.size))[: self.per_rank * self.world_size]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            yield from self._epoch_indices(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        return self.per_rank
