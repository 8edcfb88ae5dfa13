"""Training-step peak memory predicted without running the step: the step is traced on meta tensors
(shapes and dtypes only, no memory, no compute, no target device; the nas3d ops run their fake
kernels, which serve as their meta kernels), every storage's lifetime is
followed (``trace.LifetimeTracker``) and the allocations are replayed through a model of the target's
allocator (``allocators``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..nn.conv import meta_as_cpu
from . import allocators
from .loss import make_loss
from .report import CATEGORIES, MemoryReport
from .step import check_args, init_optimizer_state, make_optimizer, training_step
from .trace import LifetimeTracker
from .workspace import cpu_workspace

TARGETS = ("cuda", "cpu")


def trace_training(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int,
    num_classes: int,
    loss: str | Callable = "dice_ce",
    optimizer: str | Callable = "adam",
    amp: bool = False,
    steps: int = 2,
    target: str = "cuda",
) -> LifetimeTracker:
    """The allocation trace of training steps of ``model`` on meta tensors: the first step when
    ``steps`` is 1, else a step of the steady state (the optimiser's state allocated before it).

    The model's parameters and buffers (real or meta) are stood in for by meta tensors of the
    same shapes (``torch.func.functional_call``; the model itself is not changed). Parameters are
    allocated first, in ``named_parameters`` order, then buffers. The optimiser runs foreach (as torch
    does on CUDA) for target "cuda" and one tensor at a time (torch's CPU default) for "cpu".
    """
    shape = check_args(input_shape, batch_size, num_classes, steps)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if amp:
        raise NotImplementedError(
            "amp=True is not predicted: autocast does not apply to meta tensors; use measure_training_memory"
        )
    loss_fn = make_loss(loss)
    tracker = LifetimeTracker(workspace=cpu_workspace if target == "cpu" else None)
    params = {
        name: torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device="meta").requires_grad_(p.requires_grad)
        for name, p in model.named_parameters()
    }
    buffers = {
        name: torch.empty_strided(b.shape, b.stride(), dtype=b.dtype, device="meta")
        for name, b in model.named_buffers()
    }
    for t in params.values():
        tracker.track(t, "parameters")
    for t in buffers.values():
        tracker.track(t, "parameters")
    state = {**params, **buffers}
    trainable = [p for p in params.values() if p.requires_grad]
    opt = make_optimizer(optimizer, trainable, foreach=True if target == "cuda" else None)
    phase = _phases(tracker, trainable, opt, target)

    def forward(x):
        return torch.func.functional_call(model, state, (x,))

    # the CPU picks kernels from shapes (nas3d_fast.nn.conv): the trace follows the CPU's choices
    with tracker, meta_as_cpu() if target == "cpu" else contextlib.nullcontext():
        if steps > 1:
            # From the second step on, steps repeat exactly: the optimiser's state exists throughout,
            # the previous gradients are freed by zero_grad. One traced step with the state already
            # there (made, unrecorded, on stand-in gradients) is that steady state.
            tracker.recording = False
            for p in trainable:
                p.grad = torch.empty_like(p)
            if not init_optimizer_state(opt):
                opt.step()
            opt.zero_grad(set_to_none=True)
            tracker.recording = True
            for st in opt.state.values():
                for value in st.values():
                    if isinstance(value, torch.Tensor):
                        tracker.track(value)
            phase("idle")  # files the state as optimizer_state (or host)
        tracker.set_phase("inputs")
        x = torch.empty(batch_size, *shape, device="meta")
        y = torch.empty(batch_size, *shape[1:], dtype=torch.int64, device="meta")
        try:
            training_step(forward, opt, loss_fn, x, y, amp, "cpu", phase=phase)
        except NotImplementedError as exc:
            if "meta tensor" not in str(exc):
                raise
            raise ValueError(
                "the model's forward copies tensor values to the host (.tolist(), .cpu(), .numpy()), "
                "which a prediction on meta tensors cannot follow; make that choice from Python values, "
                "or use measure_training_memory (.item() gets a placeholder, 1 or True, instead)"
            ) from exc
    tracker.close()
    return tracker


def _phases(tracker: LifetimeTracker, params: list[torch.Tensor], opt, target: str):
    def phase(name: str) -> None:
        if name == "optimizer":  # gradients are complete: file their storages
            for p in params:
                if p.grad is not None:
                    tracker.set_category(p.grad, "gradients")
        if name == "idle":
            for st in opt.state.values():
                for key, value in st.items():
                    if isinstance(value, torch.Tensor):
                        # torch keeps Adam's step counters on the host unless capturable/fused
                        host = target == "cuda" and key == "step" and value.dim() == 0
                        tracker.set_category(value, "host" if host else "optimizer_state")
        tracker.set_phase(name)

    return phase


def predict_training_memory(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int,
    num_classes: int,
    loss: str | Callable = "dice_ce",
    optimizer: str | Callable = "adam",
    amp: bool = False,
    device: str | torch.device | None = None,
    steps: int = 3,
    target: str = "cuda",
) -> MemoryReport:
    """Predicted peak memory of ``steps`` training steps (see ``measure_training_memory`` for the step).

    Args:
        model: any module mapping (N, C, X, Y, Z) to (N, num_classes, X, Y, Z); real, meta or fake
            parameters. Models of nas3d ops work through the ops' fake kernels.
        input_shape: (C, X, Y, Z) of one sample. batch_size, num_classes, loss, optimizer: as measured.
        amp: must be False (autocast does not apply to meta tensors: mixed precision is not predicted).
        device: ignored (accepted so that the measure and predict calls take the same arguments).
        steps: training steps; one step is traced: the first when steps is 1, else one with the
            optimiser's state already allocated (from the second step on, steps repeat exactly).
        target: "cuda" (the caching allocator model) or "cpu" (the CPU allocator, with modelled
            convolution workspaces).

    Returns a :class:`MemoryReport` with method "predicted". Everything runs on meta tensors:
    no real compute, no GPU needed.
    """
    start = time.perf_counter()
    tracker = trace_training(
        model,
        input_shape,
        batch_size=batch_size,
        num_classes=num_classes,
        loss=loss,
        optimizer=optimizer,
        amp=amp,
        steps=steps,
        target=target,
    )
    peak, reserved, at_peak = allocators.replay(tracker.events, tracker.sizes, tracker.categories, target)
    breakdown = {k: int(at_peak.get(k, 0)) for k in CATEGORIES}
    return MemoryReport(
        peak_bytes=int(peak),
        reserved_bytes=int(reserved),
        breakdown=breakdown,
        device=target,
        method="predicted",
        seconds=time.perf_counter() - start,
    )
