"""Runs the suites' cases under pytest-benchmark (``make bench``; ``pytest benchmarks``).

Every case is parametrised over the devices present; CUDA cases synchronise the device around each
call and record torch.cuda.max_memory_allocated in extra_info. Cases that cannot run are skipped,
never failed.
"""

from __future__ import annotations

import pytest
import torch

from .core import Suite, peak_memory_mib, synchronize


def suite_params(suite: Suite) -> list:
    params = []
    for case in suite.cases:
        for device in case.devices:
            marks = []
            if device == "cuda" and not torch.cuda.is_available():
                marks.append(pytest.mark.skip(reason="no CUDA device"))
            elif case.skip_reason(device):
                marks.append(pytest.mark.skip(reason=case.skip_reason(device)))
            params.append(pytest.param(case, device, id=f"{case.name}-{device}", marks=marks))
    return params


def run_case(benchmark, suite: Suite, case, device: str) -> None:
    fn = case.make(device)

    def call():
        fn()
        synchronize(device)

    benchmark.group = f"{suite.name}:{case.name.split('_', 1)[-1]}:{device}"
    benchmark.extra_info.update({"suite": suite.name, "side": case.side, "device": device})
    if device.startswith("cuda"):
        benchmark.extra_info["peak_mib"] = peak_memory_mib(fn, device)
    benchmark(call)
