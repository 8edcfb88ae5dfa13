"""The tabular benchmark (issue 23 item 1): build / export / load / lookup / train_missing on a tiny protocol
(the full table is not built yet)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nas3d_fast.search import bench
from nas3d_fast.spaces import base

FIELDS = {"encoding", "seed", "mean_dice", "dice_per_class", "mean_nsd", "nsd_per_class", "params", "flops",
          "predicted_memory", "measured_memory", "seconds"}


@pytest.fixture
def tiny(monkeypatch):
    protocol = {**bench.PROTOCOL, "subjects": 3, "patch": [32, 32, 32], "batch_size": 1, "steps": 2,
                "max_val_cases": 1, "space_options": {"num_blocks": 3, "num_depths": 2, "channel_mul": 0.125}}
    monkeypatch.setattr(bench, "PROTOCOL", protocol)
    return protocol


def test_build_export_load_and_train_missing(tiny, tmp_path):
    out = str(tmp_path / "runs")
    table = bench.build(out, archs=2, seed_archs=1, progress=False)
    assert table["summary"]["architectures"] == 2 and table["summary"]["rows"] == 2 + 1 * 2
    path = str(tmp_path / "table.json")
    bench.export(out, path=path)
    loaded = bench.load(path)
    repeated = [c for c in loaded.encodings() if len(loaded.lookup(c)["seeds"]) == 3]
    assert len(repeated) == 1 and loaded.summary()["seed_repeated"] == 1
    ratio = loaded.separation_ratio()
    assert ratio is None or ratio >= 0
    again = bench.build(out, archs=2, seed_archs=1, progress=False)  # resumes: nothing trained again
    assert again["rows"] == table["rows"]
    space = base.get("dints", **tiny["space_options"])
    known = set(loaded.encodings())
    rng = np.random.default_rng(9)
    new = next(a for a in (space.sample(rng) for _ in range(50)) if tuple(space.encode(a)) not in known)
    row = loaded.train_missing(space.encode(new), str(tmp_path / "m"))
    assert row["encoding"] == list(space.encode(new)) and set(row) == FIELDS
    assert os.path.exists(tmp_path / "m" / "seed0" / "trials.db")


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no benchmark table"):
        bench.load(str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match="not a nas3d benchmark table"):
        bench.Bench({"format": "x"})
    with pytest.raises(ValueError, match="seed_archs"):
        bench.build(str(tmp_path), archs=2, seed_archs=3)
