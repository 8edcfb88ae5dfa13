import pytest

from .pytest_support import run_case, suite_params
from .search_step import SUITE


@pytest.mark.parametrize("case,device", suite_params(SUITE))
def test_search_step(benchmark, case, device):
    run_case(benchmark, SUITE, case, device)
