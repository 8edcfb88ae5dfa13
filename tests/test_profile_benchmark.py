"""The runner's additions for the memory_prediction suite: 'seconds' ratios, suite metrics, missing spaces."""

from benchmarks import memory_prediction
from benchmarks.core import Case, Ratio, Suite
from benchmarks.run import SUITES, format_table, run_suite


def test_seconds_ratio_and_metrics_reach_the_document():
    suite = Suite(
        name="toy_metrics",
        cases=(Case("work", lambda device: lambda: sum(range(100)), "nas3d"),),
        ratios=(Ratio("work_seconds", "work", "", kind="seconds"),),
        metrics=lambda quick: {
            "ratios": {"error_pct": 2.5},
            "units": {"error_pct": "%"},
            "details": {"quick": quick},
            "missing": {"space_x": "module not in this build"},
        },
    )
    doc = run_suite(suite, quick=True, repeats=3, memory=False, progress=False)
    assert 0 < doc["ratios"]["work_seconds"] == doc["cases"]["work"]["median_s"]
    assert doc["ratios"]["error_pct"] == 2.5 and doc["details"] == {"quick": True}
    table = format_table(doc)
    assert "space_x" in table and "MISSING" in table
    assert "2.50%" in table and any(
        line.startswith("work_seconds") and line.endswith("s") for line in table.splitlines()
    )


def test_memory_prediction_suite_accounts_for_every_space():
    assert "memory_prediction" in SUITES
    found, missing = memory_prediction.present_spaces()
    assert set(found) | set(missing) == set(memory_prediction.SPACES)
    assert not set(found) & set(missing)
    assert all(reason for reason in missing.values())
