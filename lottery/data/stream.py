"""In-memory batch iterables: a seeded, resumable training stream and plain evaluation batches.

Small vision datasets fit in memory (or on the GPU), so batches are gathered by tensor indexing
instead of a per-sample DataLoader: that is both faster and makes the data order a pure function
of (seed, iteration), which is what lets a killed run resume bitwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The example order of one pass over the data: a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def augment_generator(seed: int, iteration: int) -> torch.Generator:
    """The generator that draws batch `iteration`'s augmentation: a function of (seed, iteration) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * iteration + 1)


class BatchStream:
    """Yields training batches `first()` .. `end - 1`, where batch i is the (i mod E)-th batch of epoch i // E.

    E = len(x) // batch_size (the last partial batch of an epoch is dropped). `first` is a callable so that
    a resumed Lightning run can start where its restored global step says. Under data parallelism rank r of
    `world_size` yields rows r, r + world_size, ... of each global batch, so the ranks' mean gradients average
    to the gradient of the same global batch that one process would use.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, end: int,
                 first: Callable[[], int] = lambda: 0,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 rank: int = 0, world_size: int = 1):
        if len(x) < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {len(x)} training examples")
        if batch_size % world_size:
            raise ValueError(f"training.batch_size={batch_size} is not divisible by the {world_size} processes")
        self.rank, self.world_size = rank, world_size
        self.x, self.y, self.batch_size, self.seed, self.end, self.first = x, y, batch_size, seed, end, first
        self.augment = augment
        self.steps_per_epoch = len(x) // batch_size

    def __len__(self) -> int:
        return max(self.end - self.first(), 0)

    def __iter__(self) -> Iterator[Batch]:
        epoch, order = -1, None
        for i in range(self.first(), self.end):
            if i // self.steps_per_epoch != epoch:
                epoch = i // self.steps_per_epoch
                order = epoch_permutation(len(self.x), self.seed, epoch).to(self.x.device)
            start = (i % self.steps_per_epoch) * self.batch_size
            idx = order[start:start + self.batch_size]
            x = self.x[idx]
            if self.augment is not None:
                x = self.augment(x, augment_generator(self.seed, i))
            y = self.y[idx]
            if self.world_size > 1:
                x, y = x[self.rank::self.world_size], y[self.rank::self.world_size]
            yield x, y


class EvalBatches:
    """Consecutive fixed-size batches over a whole evaluation set."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.x), self.batch_size):
            yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
