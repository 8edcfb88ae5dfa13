import pytest

from .pytest_support import run_case, suite_params
from .trial_overhead import SUITE


@pytest.mark.parametrize("case,device", suite_params(SUITE))
def test_trial_overhead(benchmark, case, device):
    run_case(benchmark, SUITE, case, device)
