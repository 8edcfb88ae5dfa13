import pytest

from .pytest_support import run_case, suite_params
from .upsample import SUITE


@pytest.mark.parametrize("case,device", suite_params(SUITE))
def test_upsample(benchmark, case, device):
    run_case(benchmark, SUITE, case, device)
