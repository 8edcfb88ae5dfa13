"""What the search tests share: a tiny ronasmis space (its options, as ``nas3d`` arguments too), a small
synthetic MSD dataset, and one torch thread for a module's tests."""

from __future__ import annotations

import torch

from nas3d_fast.data import make_synthetic

SPACE = "ronasmis"
SPACE_OPTIONS = {"base_channels": 2, "depth": 2, "layers_per_stage": 1}
CLI_SPACE = ["--space", SPACE, *sum((["--space-option", f"{k}={v}"] for k, v in SPACE_OPTIONS.items()), [])]


def synthetic_dataset(tmp_path_factory, train: int = 5) -> str:
    """A 20^3 synthetic dataset with ``train`` training cases, one validation case and one test case."""
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(str(root), train=train, test=1, shape=(20, 20, 20), validation=1, seed=0)
    return str(root)


def one_torch_thread():
    """One torch thread while a test runs, the previous number restored after (set at a module's import, it
    would hold for the whole session and change other tests' float results). A plain generator: a module
    takes it as an autouse fixture with ``one_torch_thread = pytest.fixture(autouse=True)(one_torch_thread)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
