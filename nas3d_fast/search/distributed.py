"""Data-parallel supernet searches under ``torchrun`` (torch.distributed: gloo on the CPU, NCCL on GPUs).

Every process builds the same supernet and logits (same seed, then a broadcast from rank 0), draws the
same Gumbel noise (seeded by the step), and takes its own share of each step's batch. After every
backward pass the gradients are averaged over the processes, so the weights and the architecture logits
stay identical on every rank, and so does the architecture each one derives. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist


class ProcessGroup:
    """The processes of one search: ``rank`` of ``world`` (1 and 0 without torchrun)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_type: str) -> ProcessGroup:
        """The group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK), joined here with
        NCCL for CUDA and gloo otherwise; a single process when WORLD_SIZE is unset or 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def broadcast(self, tensors: Iterable[torch.Tensor]) -> None:
        """Rank 0's values into every rank's tensors (in place)."""
        if self.active:
            with torch.no_grad():
                for t in tensors:
                    dist.broadcast(t.data, 0)

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over the ranks, in one flat all-reduce. Parameters without a
        gradient (a candidate no sampled path used) are left out; they must be the same on every rank."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        count = torch.tensor([len(grads), -len(grads)], dtype=torch.float64)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        if count[0] != -count[1]:
            raise RuntimeError(
                "the ranks computed gradients for different parameters: their sampled paths differ (the Gumbel "
                "noise must come from the shared seed)"
            )
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, value: float) -> float:
        """The mean of a number over the ranks (losses for the log and the plateau rule)."""
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.world

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (e.g. the time budget is spent)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


class RankSamples:
    """A rank's share of every step: with B samples per rank and step, rank r of W takes global samples
    (step * W + r) * B ... + B - 1, so the W ranks together see W * B distinct samples per step, and sample g
    is drawn with ``numpy.random.default_rng([seed, g])`` whatever the rank (``StepBatches``' rule). Use as
    ``StepBatches(RankSamples(sample, B, group, seed), B, total_steps, seed)``."""

    def __init__(self, sample, batch_size: int, group: ProcessGroup, seed: int):
        self.sample, self.batch_size, self.group, self.seed = sample, int(batch_size), group, int(seed)

    def global_index(self, i: int) -> int:
        step, j = divmod(int(i), self.batch_size)
        return (step * self.group.world + self.group.rank) * self.batch_size + j

    def __call__(self, i: int, rng):
        g = self.global_index(i)
        return self.sample(g, np.random.default_rng([self.seed, g]))
