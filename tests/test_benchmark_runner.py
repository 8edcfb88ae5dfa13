"""The benchmark runner's measurement and reporting (not the speed targets: those live in benchmarks/)."""

import json
import time

import pytest

from benchmarks import core, run


def test_time_interleaved_orders_cases_by_cost():
    medians = core.time_interleaved({"fast": lambda: None, "slow": lambda: time.sleep(0.002)}, "cpu", repeats=3)
    assert medians["slow"] > medians["fast"] and medians["slow"] >= 0.0019


def test_peak_memory_sees_a_large_allocation():
    import torch

    def allocate():
        x = torch.ones(64, 1024, 1024)  # 256 MiB, touched
        return float(x[-1, -1, -1])

    peak = core.peak_memory_mib(allocate, "cpu")
    if peak is None:
        pytest.skip("no /proc on this system")
    assert 200 < peak < 600


def test_json_written_atomically(tmp_path):
    doc = {"suite": "x", "machine": {}, "cases": {"a": {"median_s": 1.0, "peak_mib": None}}, "ratios": {"k": 2.0}}
    path = tmp_path / "sub" / "out.json"
    run.write_json(doc, str(path))
    assert json.loads(path.read_text()) == doc
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_unknown_suite_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown suite 'nope'"):
        run.load_suite("nope")
