"""SCNAS's stochastic bi-level search (SCNAS §2.2, Algorithm 1) on any space with a supernet.

Each step samples k = 2 candidates per edge with ``ops.gumbel_topk`` (weights renormalised over the two,
so only those run), once for a weight step on the weight cases and once, differentiably in the logits,
for an architecture step on the architecture cases. The temperature anneals from ``tau_start`` to
``tau_end`` over the search, so the sampled weights tend to one op per edge. The paper gives neither the
schedule nor its ends: the defaults (exponential, 1.0 -> 0.1) follow GDAS, the Gumbel search SCNAS builds on.

The noise of step s comes from a generator seeded by (seed, s, weight or architecture step, group):
a resumed search draws exactly the noise it would have drawn, and every process of a distributed search
samples the same paths.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import gumbel_topk
from .base import SupernetSearch

TAU_SCHEDULES = ("exponential", "linear", "constant")
TAU_RANGE = (1e-4, 1e4)  # the range gumbel_topk accepts


def tau_at(step: int, total_steps: int, start: float, end: float, schedule: str) -> float:
    """The temperature of 0-based ``step`` of ``total_steps``: ``start`` at the first, ``end`` at the last."""
    if schedule == "constant" or total_steps <= 1:
        return float(start)
    t = min(max(step / (total_steps - 1), 0.0), 1.0)
    if schedule == "linear":
        return float(start + (end - start) * t)
    return float(start * (end / start) ** t)


def uniform_noise(shape, seed_words, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(E, K) uniform samples in the open interval (0, 1), from a CPU generator seeded by ``seed_words``
    (so the draw is the same on every device and every process)."""
    seed = int(np.random.SeedSequence([int(w) for w in seed_words]).generate_state(1, np.uint64)[0] >> 1)
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    finfo = torch.finfo(dtype)
    return u.clamp_(finfo.tiny, 1.0 - finfo.eps).to(dtype=dtype, device=device)


class GumbelSearch(SupernetSearch):
    """SCNAS's Gumbel search (module docstring). Options: ``k`` candidates per edge (2; 1 is one path per
    step), ``tau_start``/``tau_end`` (1.0, 0.1) and ``tau_schedule`` (exponential, linear, constant).
    The rest is :class:`~nas3d_fast.search.base.SupernetSearch`'s."""

    name = "gumbel"
    extra_names = ("tau",)

    def __init__(self, *args, k: int = 2, tau_start: float = 1.0, tau_end: float = 0.1,
                 tau_schedule: str = "exponential", **kwargs):
        if k not in (1, 2):
            raise ValueError(f"k must be 1 or 2 candidates per edge (SCNAS samples 2), got {k!r}")
        low, high = TAU_RANGE
        for name, value in (("tau_start", tau_start), ("tau_end", tau_end)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
        if tau_schedule not in TAU_SCHEDULES:
            raise ValueError(f"tau_schedule must be one of {TAU_SCHEDULES}, got {tau_schedule!r}")
        self.k, self.tau_start, self.tau_end, self.tau_schedule = k, float(tau_start), float(tau_end), tau_schedule
        super().__init__(*args, **kwargs)

    def options(self) -> dict:
        return {"k": self.k, "tau_start": self.tau_start, "tau_end": self.tau_end, "tau_schedule": self.tau_schedule}

    def tau(self, step: int) -> float:
        return tau_at(step, self.config.total_steps, self.tau_start, self.tau_end, self.tau_schedule)

    def path_weights(self, step: int, for_arch: bool) -> dict:
        tau = self.tau(step)
        out = {}
        for g, (name, logits) in enumerate(self.logits.items()):
            noise = uniform_noise(logits.shape, (self.config.seed, step, int(for_arch), g), logits.dtype, logits.device)
            source = logits if for_arch else logits.detach()
            out[name] = gumbel_topk(source, tau, k=min(self.k, logits.shape[1]), noise=noise)
        return out

    def extra_row(self, step: int) -> dict:
        return {"tau": self.tau(step)}
