"""Training-step peak memory measured by running the steps.

CUDA: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` after ``reset_peak_memory_stats``
(the model is moved to the device first; the peaks include it and the inputs, not the CUDA context).

CPU: the CPU allocator's own accounting, read from ``torch.profiler`` memory events (with
``profile_memory=True`` every allocation and free of PyTorch's CPU allocator is reported with its size,
including buffers that kernels allocate internally): the peak is the model's parameters and buffers
(live before the steps) plus the highest running sum of those events over the steps (allocations made
during the steps and their frees; frees of older blocks are left out, see ``_session_memory_events``). It counts tensor
memory only: not the process's other memory (Python objects, libraries, oneDNN's own caches), and
not what the C library keeps around after a free, so it is not the process's resident set.

Breakdown: the steps also run under ``trace.LifetimeTracker``, which sees every tensor that Python
sees; at the moment of the peak, its categories give parameters, gradients, optimiser state and
activations, and what the allocator held beyond them is workspace.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import allocators
from .loss import make_loss
from .report import CATEGORIES, MemoryReport
from .step import check_args, init_optimizer_state, make_optimizer, training_step
from .trace import LifetimeTracker


def _inputs(shape, batch_size: int, num_classes: int, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch_size, *shape, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch_size, *shape[1:]), generator=g).to(device)
    return x, y


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st._cdata not in seen:
            seen.add(st._cdata)
            total += st.nbytes()
    return total


def measure_training_memory(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int,
    num_classes: int,
    loss: str | Callable = "dice_ce",
    optimizer: str | Callable = "adam",
    amp: bool = False,
    device: str | torch.device,
    steps: int = 3,
    steady_state: bool = False,
) -> MemoryReport:
    """Peak memory of ``steps`` full training steps of ``model`` on ``device``.

    Args:
        model: maps (N, C, X, Y, Z) to (N, num_classes, X, Y, Z) logits. It is moved to ``device`` and
            trained (its weights change; pass a copy to keep them).
        input_shape: (C, X, Y, Z) of one sample; inputs are random normal, labels random in
            [0, num_classes).
        batch_size: N. num_classes: the logits' channels.
        loss: "dice_ce" (``profile.loss.dice_ce``), "ce", or a callable ``loss(logits, target)``.
        optimizer: "adam", "adamw", "sgd" (torch.optim, torch's default implementation for the device)
            or a callable ``optimizer(params)``.
        amp: autocast the forward (float16 on CUDA, bfloat16 on CPU; no gradient scaler).
        device: "cpu" or a CUDA device.
        steps: training steps (Adam's state appears in the first one; the peak usually in the second).
        steady_state: before the steps, make the optimiser's state as a first step would (torch's
            own initialisation for Adam/AdamW, else an optimiser step on zero gradients; no forward or
            backward), so that every measured step is a steady-state step. ``steps=1,
            steady_state=True`` measures the peak of ``steps=2`` at about half the compute: steps
            repeat exactly from the second on, and the first never holds more than the second (the
            same forward and backward without the state, the same optimiser phase). On CUDA the
            reserved peak may still differ, the caching allocator's segments depending on history.

    Returns a :class:`MemoryReport` (bytes) with method "measured"; see the module docstring for what
    each device counts.
    """
    shape = check_args(input_shape, batch_size, num_classes, steps)
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device")
    loss_fn = make_loss(loss)
    start = time.perf_counter()
    if device.type == "cuda":
        report = _measure_cuda(
            model, shape, batch_size, num_classes, loss_fn, optimizer, amp, device, steps, steady_state
        )
    else:
        report = _measure_cpu(model, shape, batch_size, num_classes, loss_fn, optimizer, amp, steps, steady_state)
    return MemoryReport(**{**report.to_dict(), "seconds": time.perf_counter() - start})


def _phases(tracker: LifetimeTracker, model: nn.Module, opt):
    params = [p for p in model.parameters() if p.requires_grad]

    def phase(name: str) -> None:
        if name == "optimizer":
            for p in params:
                if p.grad is not None:
                    tracker.set_category(p.grad, "gradients")
        if name == "idle":
            for st in opt.state.values():
                for value in st.values():
                    if isinstance(value, torch.Tensor) and value.device.type != "meta":
                        tracker.set_category(value, "optimizer_state")
        tracker.set_phase(name)

    return phase


def _make_state(model: nn.Module, opt, phase) -> None:
    """The optimiser's state of a first step, made without a forward or backward (``steady_state``):
    zero gradients stand in for the backward's, and are dropped again as the next step's zero_grad
    drops them."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    phase("optimizer")
    if not init_optimizer_state(opt):
        opt.step()
    phase("idle")
    opt.zero_grad(set_to_none=True)


def _register_model(tracker: LifetimeTracker, model: nn.Module) -> None:
    for t in list(model.parameters()) + list(model.buffers()):
        tracker.track(t, "parameters")


def _measure_cpu(model, shape, batch_size, num_classes, loss_fn, optimizer, amp, steps, steady_state) -> MemoryReport:
    from torch.profiler import ProfilerActivity, profile

    model = model.to("cpu")
    opt = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], foreach=None)
    base = _storage_bytes(list(model.parameters()) + list(model.buffers()))
    tracker = LifetimeTracker(clock=True)
    _register_model(tracker, model)
    gc.collect()  # earlier garbage (a previous candidate's model or optimiser state) goes before, not during
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, tracker:
        tracker.set_phase("inputs")
        x, y = _inputs(shape, batch_size, num_classes, torch.device("cpu"))
        if steady_state:
            _make_state(model, opt, _phases(tracker, model, opt))
        for _ in range(steps):
            training_step(model, opt, loss_fn, x, y, amp, "cpu", phase=_phases(tracker, model, opt))
        del x, y
    tracker.close()
    memory = _session_memory_events(prof)
    running, peak, peak_ns = 0, 0, None
    for t_ns, nbytes in memory:
        running += nbytes
        if running > peak:
            peak, peak_ns = running, t_ns
    peak += base
    breakdown = _breakdown_at(tracker, peak_ns, peak)
    return MemoryReport(peak, peak, breakdown, "cpu", "measured")


def _session_memory_events(prof) -> list[tuple[int, int]]:
    """(time in ns, bytes) of the CPU allocations made during the profiling session and of their frees,
    in time order.

    A free of a block allocated before the session is left out. The CPU allocator's reporter keeps its
    pointer-to-size table across profiling sessions, so such a free (a block of an earlier session that
    a garbage collection releases now, or an address whose entry went stale) comes with a size this
    session never counted: summing it made the running total, and so the peak, too low by that size.
    """
    allocation = torch._C._profiler._EventType.Allocation
    stack, events = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.ptr))
    events.sort()  # at equal times a free sorts before an allocation (it may free the address reused)
    live, memory = {}, []
    for t_ns, nbytes, ptr in events:
        if nbytes > 0:
            live[ptr] = nbytes
            memory.append((t_ns, nbytes))
        elif ptr in live:
            memory.append((t_ns, -live.pop(ptr)))
    return memory


def _breakdown_at(tracker: LifetimeTracker, t_ns: int | None, total: int) -> dict:
    """The tracker's live bytes per category at time ``t_ns`` (all of them set up before the steps
    when None); what ``total`` holds beyond them is workspace."""
    held = dict.fromkeys(CATEGORIES, 0)
    live = {}
    for e, when in zip(tracker.events, tracker.times):
        if t_ns is not None and when > t_ns:
            break
        if e >= 0:
            live[e] = tracker.sizes[e]
        else:
            live.pop(~e, None)
    # allocations recorded before the clock started (the model) have no time: they are live
    for i, nbytes in live.items():
        cat = tracker.categories[i]
        held[cat if cat in held else "activations"] += nbytes
    seen = sum(held.values())
    held["workspace"] += max(0, total - seen)
    return held


def _measure_cuda(
    model, shape, batch_size, num_classes, loss_fn, optimizer, amp, device, steps, steady_state
) -> MemoryReport:
    model = model.to(device)
    opt = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], foreach=None)
    tracker = LifetimeTracker(host=lambda t: t.device.type == "cpu")  # e.g. Adam's step counters
    _register_model(tracker, model)
    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()  # segments cached by earlier work would inflate the reserved peak
    torch.cuda.reset_peak_memory_stats(device)
    with tracker:
        tracker.set_phase("inputs")
        x, y = _inputs(shape, batch_size, num_classes, device)
        if steady_state:
            _make_state(model, opt, _phases(tracker, model, opt))
        for _ in range(steps):
            training_step(model, opt, loss_fn, x, y, amp, "cuda", phase=_phases(tracker, model, opt))
        del x, y
    torch.cuda.synchronize(device)
    tracker.close()
    peak = torch.cuda.max_memory_allocated(device)
    reserved = torch.cuda.max_memory_reserved(device)
    # the tracked tensors at their own (rounded) peak; the rest of the measured peak is workspace
    _, _, at_peak = allocators.replay(tracker.events, tracker.sizes, tracker.categories, "cuda")
    breakdown = {k: int(at_peak.get(k, 0)) for k in CATEGORIES}
    breakdown["workspace"] += max(0, peak - sum(breakdown.values()))
    return MemoryReport(int(peak), int(reserved), breakdown, str(device), "measured")
