"""An infinite, seeded, rank-sharded sampler that can start at any position, and the per-sample
seeding that makes a sample's random augmentation a function of its place in the stream.

Resuming a run must continue with exactly the samples an uninterrupted run would have seen
next, transformed exactly as that run would have transformed them. The order is a pure function
of (seed, epoch), so the position is one integer, derived from the iteration counter; nothing has
to be re-read to get there. Each sample's random draws come from a seed of its own (its place in
the stream of all ranks), not from a loader worker's generator, whose state no checkpoint holds:
so they are the same after a resume, and whatever the number of workers.
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields `(dataset index, sample seed)` forever: epoch `e` is a permutation seeded by `seed + e`.

    Each of `world_size` ranks takes every `world_size`-th index of the permutation (the
    permutation is padded by wrapping, so every rank sees the same count). `start_at(n)` skips
    the first `n` samples of this rank's stream. The sample seed derives from `seed` and the
    sample's place in the stream of all ranks; `SeededSamples` reads a dataset with it.
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

    def sample_seed(self, position: int) -> int:
        """The seed of this rank's `position`-th sample: one per place in the stream of all ranks."""
        place = position * self.world_size + self.rank
        return int(np.random.SeedSequence([self.seed % 2**32, place]).generate_state(1)[0])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        position = self.start
        while True:
            for index in self._epoch_indices(epoch)[offset:].tolist():
                yield index, self.sample_seed(position)
                position += 1
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        return self.per_rank


@contextlib.contextmanager
def seeded_randomness(seed: int):
    """Python's, NumPy's and torch's CPU generators seeded with `seed` inside, as they were after."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


class SeededSamples(Dataset):
    """`dataset` read with the keys of a `ResumableSampler`: item `(index, seed)` is `dataset[index]`
    drawn under `seeded_randomness(seed)`, so its augmentation depends on its place in the stream
    alone, and the random streams of the process reading it are left as they were."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with seeded_randomness(seed):
            return self.dataset[index]
