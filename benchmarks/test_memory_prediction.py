import pytest

from .memory_prediction import SUITE, evaluate, present_spaces
from .pytest_support import run_case, suite_params


@pytest.mark.parametrize("case,device", suite_params(SUITE))
def test_memory_prediction(benchmark, case, device):
    run_case(benchmark, SUITE, case, device)


def test_memory_prediction_errors_quick():
    """The metrics in quick mode: every present space is evaluated, missing ones are listed."""
    found, missing = present_spaces()
    doc = evaluate(quick=True, progress=False)
    assert set(doc["missing"]) >= set(missing)
    assert doc["details"]["candidates"] == 3 * len(found)
    if found:
        assert doc["ratios"]["max_abs_error_pct"] <= 10
