"""Case definitions and measurement shared by the runner and the pytest-benchmark suites."""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class Case:
    """One measured thing. ``make(device)`` builds the inputs and returns the zero-argument callable
    that is timed (it must do the whole job, e.g. forward + backward)."""

    name: str
    make: Callable[[str], Callable[[], object]]
    side: str  # "nas3d" or the baseline's name ("eager", "monai", ...)
    devices: tuple[str, ...] = ("cpu",)
    skip_reason: Callable[[str], str | None] = lambda device: None


@dataclass(frozen=True)
class Ratio:
    """``speedup``: baseline median time / ``case`` median time. ``memory``: ``case`` peak / baseline peak.
    ``seconds``: ``case``'s median time itself (no baseline; e.g. a time budget per call).
    ``case`` is the nas3d side, except for diagnostic ratios (e.g. a speedup ceiling)."""

    key: str
    case: str
    baseline: str
    kind: str = "speedup"


@dataclass(frozen=True)
class Suite:
    name: str
    cases: tuple[Case, ...]
    ratios: tuple[Ratio, ...]
    description: str = ""
    quick_cases: tuple[str, ...] = field(default=())
    #: keys that are not time or memory ratios (e.g. prediction errors): ``metrics(quick)`` returns
    #: {"ratios": {key: value}, "units": {key: "%"...}, "details": {...}, "missing": {name: reason}}
    metrics: Callable[[bool], dict] | None = None

    def case(self, name: str) -> Case:
        for c in self.cases:
            if c.name == name:
                return c
        raise KeyError(f"suite {self.name!r} has no case {name!r}; cases: {[c.name for c in self.cases]}")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def calibrate(fn: Callable[[], object], device: str, target_s: float = 0.01) -> int:
    """Calls per timed sample so that one sample lasts about ``target_s`` (clock resolution and the
    timer's own cost stay negligible for microsecond-scale cases)."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= target_s or number >= 1 << 16:
            return number
        number = max(number * 2, int(number * target_s / max(elapsed, 1e-9)))


def per_shape_suite(name: str, description: str, shapes, step) -> Suite:
    """A suite of one nas3d and one torch case per (channels, size) in ``shapes``, named
    ``c{C}_s{S}_nas3d`` / ``c{C}_s{S}_torch``, with ratio keys ``c{C}_s{S}.speedup_vs_torch``;
    ``step(channels, size, ours)`` builds a case (``Case.build``)."""
    cases = tuple(
        Case(f"c{c}_s{s}_{side}", step(c, s, side == "nas3d"), side) for c, s in shapes for side in ("nas3d", "torch")
    )
    ratios = tuple(Ratio(f"c{c}_s{s}.speedup_vs_torch", f"c{c}_s{s}_nas3d", f"c{c}_s{s}_torch") for c, s in shapes)
    c, s = shapes[0]
    return Suite(name, cases, ratios, description, quick_cases=(f"c{c}_s{s}_nas3d", f"c{c}_s{s}_torch"))


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: str,
    repeats: int,
    warmup: int = 3,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each function, measured in turns (a, b, a, b, ...) so that load on a
    shared machine hits every side alike."""
    numbers = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        numbers[name] = calibrate(fn, device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / numbers[name])
        if progress is not None:
            progress(r + 1)
    return {name: statistics.median(values) for name, values in samples.items()}


def _rss_bytes(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def peak_memory_mib(fn: Callable[[], object], device: str) -> float | None:
    """Peak memory of one call above what was live before it, in MiB.

    CUDA: torch.cuda.max_memory_allocated. CPU: the process's peak resident set (VmHWM, reset through
    /proc/self/clear_refs) above its resident set before the call. Run it in a fresh process (the
    runner does): allocator caches of earlier cases would hide a case's peak. None where it cannot be
    measured (no /proc, as on macOS).
    """
    fn()  # first call: lazy initialisation is not the case's memory
    gc.collect()
    synchronize(device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    before = _rss_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident set
    fn()
    return max(0, _rss_bytes("VmHWM") - before) / 2**20
