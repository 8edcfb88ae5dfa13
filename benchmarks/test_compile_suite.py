import pytest

from .compile import SUITE
from .pytest_support import run_case, suite_params


@pytest.mark.parametrize("case,device", suite_params(SUITE))
def test_compile(benchmark, case, device):
    run_case(benchmark, SUITE, case, device)
