"""``nas3d profile`` and ``sample_within`` on every search space (prediction on fake tensors, at twice
each space's stride: at the stride itself some spaces reach a 1^3 bottleneck, which instance norm
refuses in training, and the CLI says so)."""

import json

import numpy as np
import pytest
import torch

from nas3d_fast import cli, spaces
from nas3d_fast.profile import BudgetError, predict_training_memory

SPACES = ("c2fnas", "dints", "ronasmis", "scnas", "tautoml")


def _shape(space):
    return (1, *(2 * space.stride,) * 3)


def _predicted(space, arch):
    with torch.device("meta"):
        model = space.build(arch, 1, 2)
    return predict_training_memory(model, _shape(space), batch_size=1, num_classes=2, target="cuda").peak_bytes


@pytest.mark.parametrize("name", SPACES)
def test_cli_profile_predicts_every_space(name, tmp_path, capsys):
    side = str(2 * spaces.get(name).stride)
    out = tmp_path / "rows.json"
    argv = ["profile", "--space", name, "--sample", "2", "--patch", side, side, side, "--batch", "1"]
    assert cli.main([*argv, "--mode", "predict", "--json", str(out), "--quiet"]) == 0
    assert "predicted MiB" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert len(doc["rows"]) == 2
    for row in doc["rows"]:
        assert row["params"] > 0 and row["flops"] > 0 and row["predicted"]["peak_bytes"] > 0


@pytest.mark.parametrize("name", SPACES)
def test_sample_within_every_space(name):
    space = spaces.get(name)
    rng = np.random.default_rng(0)
    peaks = [_predicted(space, space.sample(rng)) for _ in range(3)]
    budget = max(peaks)
    arch, report = space.sample_within(
        budget, _shape(space), 1, np.random.default_rng(1), tolerance=budget, target="cuda", return_report=True
    )
    assert report.peak_bytes <= budget and report.peak_bytes == _predicted(space, arch)
    with pytest.raises(BudgetError, match="below the smallest candidate"):
        space.sample_within(min(peaks) // 100, _shape(space), 1, 0, target="cuda", max_tries=5)
