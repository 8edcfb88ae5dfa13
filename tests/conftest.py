"""Test configuration: Triton kernels run on CPU tensors through the Triton interpreter, so the triton
backend is tested on machines without a GPU. This must be set before triton is imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import nas3d_fast  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_backend():
    """Each test starts and ends with automatic backend choice."""
    before = nas3d_fast.get_backend()
    yield
    nas3d_fast.set_backend(before)


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
