"""Training batches indexed by step, so that a resumed run sees exactly the batches it would have seen.

Sample number ``i`` (the ``i % batch_size``-th item of step ``i // batch_size``) is drawn by
``sample(i, rng)`` with ``rng = numpy.random.default_rng([seed, i])``: the draw depends on the seed and the
index only, not on the worker that computes it nor on what ran before. DataLoader workers compute samples
in parallel; the order of the batches is the order of the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class _Samples(Dataset):
    def __init__(self, sample: Callable, seed: int, first: int, count: int):
        self.sample, self.seed, self.first, self.count = sample, int(seed), int(first), int(count)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int):
        i = self.first + k
        image, label = self.sample(i, np.random.default_rng([self.seed, i]))
        return torch.as_tensor(image), torch.as_tensor(label)


class StepBatches:
    """``StepBatches(sample, batch_size, total_steps, seed, num_workers)(first_step)`` iterates over the
    (images (B, C, *patch), labels (B, 1, *patch)) batches of steps first_step .. total_steps - 1.

    ``sample(i, rng)`` returns one (image (C, *patch) float32, label (1, *patch) integer) pair; with
    ``num_workers > 0`` it must be picklable (a module-level function or an object's method).
    """

    def __init__(self, sample: Callable, batch_size: int, total_steps: int, seed: int = 0, num_workers: int = 0):
        if batch_size < 1 or total_steps < 1 or num_workers < 0:
            raise ValueError(
                f"need batch_size >= 1, total_steps >= 1 and num_workers >= 0, got {batch_size}, {total_steps}, "
                f"{num_workers}"
            )
        self.sample, self.batch_size, self.total_steps = sample, int(batch_size), int(total_steps)
        self.seed, self.num_workers = int(seed), int(num_workers)

    def __call__(self, first_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        steps = self.total_steps - int(first_step)
        if steps <= 0:
            return iter(())
        ds = _Samples(self.sample, self.seed, first_step * self.batch_size, steps * self.batch_size)
        loader = DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=False,
            prefetch_factor=2 if self.num_workers else None,
        )
        return iter(loader)
