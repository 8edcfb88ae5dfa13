import pytest

from .pytest_support import run_case, suite_params
from .supernet import SUITE


@pytest.mark.parametrize("case,device", suite_params(SUITE))
def test_supernet(benchmark, case, device):
    run_case(benchmark, SUITE, case, device)
