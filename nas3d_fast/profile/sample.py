"""Rejection sampling of a space's architectures inside a training-memory budget (HyperSegNAS §4
samples candidates "within 300 MB of a target")."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

from .measure import measure_training_memory
from .predict import predict_training_memory
from .report import MemoryReport

MODES = ("predict", "measure")
MiB = 2**20


class BudgetError(ValueError):
    """No architecture of the space was found inside the budget (too small, or too narrow a window)."""


def candidate_memory(
    space,
    arch,
    input_shape: Sequence[int],
    batch_size: int,
    *,
    num_classes: int = 2,
    mode: str = "predict",
    target: str = "cuda",
    device: str | None = None,
    **step: object,
) -> MemoryReport:
    """Training-step peak of ``space.build(arch, C, num_classes)``: predicted for ``target`` (built on
    the meta device: no memory, no initialisation) or measured on ``device``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    C = int(input_shape[0])
    if mode == "predict":
        with torch.device("meta"):
            model = space.build(arch, C, num_classes)
        return predict_training_memory(
            model, input_shape, batch_size=batch_size, num_classes=num_classes, target=target, **step
        )
    model = space.build(arch, C, num_classes)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return measure_training_memory(
        model, input_shape, batch_size=batch_size, num_classes=num_classes, device=device, **step
    )


def sample_within(
    space,
    budget_bytes: int,
    input_shape: Sequence[int],
    batch_size: int,
    rng: np.random.Generator | int | None = None,
    *,
    tolerance: int = 300 * MiB,
    mode: str = "predict",
    max_tries: int = 100,
    num_classes: int = 2,
    target: str = "cuda",
    device: str | None = None,
    return_report: bool = False,
    cache: dict | None = None,
    exclude: Collection = (),
    **step: object,
):
    """A random architecture of ``space`` whose training-step peak lies in
    [budget_bytes - tolerance, budget_bytes].

    Args:
        space: a ``nas3d_fast.spaces.SearchSpace``.
        budget_bytes: the memory budget (bytes); tolerance: how far below it a candidate may stay
            (bytes, default 300 MiB as in HyperSegNAS; use budget_bytes to accept anything that fits).
        input_shape: (C, X, Y, Z) patch; X, Y, Z multiples of ``space.stride``. batch_size: N.
        rng: numpy Generator, seed or None. mode: "predict" (``predict_training_memory`` for
            ``target``, "cuda" or "cpu") or "measure" (``measure_training_memory`` on ``device``).
        max_tries: candidates drawn before giving up. num_classes and ``step`` (loss, optimizer,
            amp, steps): as in the profiler functions.
        return_report: return (arch, MemoryReport) instead of the architecture alone.
        cache: a dict (architecture -> MemoryReport) kept across calls with the same other arguments, so
            that drawing many candidates (HyperSegNAS's constrained set) measures or predicts each
            architecture once; filled here.
        exclude: architectures not to return (e.g. the candidates already drawn); they count as tries.

    Raises BudgetError when no drawn candidate fits: the message says whether the budget is below
    the smallest candidate found (infeasible for the space) or the window was missed, with the range
    of peaks seen.
    """
    from ..spaces.base import as_rng

    budget = int(budget_bytes)
    if budget <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    if tolerance is None or int(tolerance) < 0:
        raise ValueError(f"tolerance must be >= 0 bytes, got {tolerance}")
    if int(max_tries) < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    if len(tuple(input_shape)) != 4:
        raise ValueError(f"input_shape must be (C, X, Y, Z), got {tuple(input_shape)}")
    space.check_patch(tuple(input_shape)[1:])
    rng = as_rng(rng)
    low = budget - int(tolerance)
    known = cache if cache is not None else {}
    seen: dict = {}
    for _ in range(int(max_tries)):
        arch = space.sample(rng)
        if arch not in known:
            known[arch] = candidate_memory(
                space,
                arch,
                input_shape,
                batch_size,
                num_classes=num_classes,
                mode=mode,
                target=target,
                device=device,
                **step,
            )
        report = seen[arch] = known[arch]
        if arch not in exclude and low <= report.peak_bytes <= budget:
            return (arch, report) if return_report else arch
    peaks = [r.peak_bytes for r in seen.values()]
    where = f"measured on {device}" if mode == "measure" else f"predicted for {target}"
    span = f"peaks {min(peaks) / MiB:.1f}..{max(peaks) / MiB:.1f} MiB ({where}) over {len(seen)} distinct candidates"
    if min(peaks) > budget:
        raise BudgetError(
            f"{space.name}: budget {budget} bytes ({budget / MiB:.1f} MiB) is below the smallest candidate found "
            f"({min(peaks) / MiB:.1f} MiB) after {max_tries} tries at patch {tuple(input_shape)}, batch "
            f"{batch_size}: infeasible for this space; {span}"
        )
    raise BudgetError(
        f"{space.name}: no candidate within [{low / MiB:.1f}, {budget / MiB:.1f}] MiB after {max_tries} tries; "
        f"{span}; widen tolerance or change the budget"
    )
