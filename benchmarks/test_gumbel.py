import pytest

from .gumbel import SUITE
from .pytest_support import run_case, suite_params


@pytest.mark.parametrize("case,device", suite_params(SUITE))
def test_gumbel(benchmark, case, device):
    run_case(benchmark, SUITE, case, device)
