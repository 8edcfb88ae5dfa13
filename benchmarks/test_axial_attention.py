import pytest

from .axial_attention import SUITE
from .pytest_support import run_case, suite_params


@pytest.mark.parametrize("case,device", suite_params(SUITE))
def test_axial_attention(benchmark, case, device):
    run_case(benchmark, SUITE, case, device)
