"""ENASSearch (issue 22 item 3): the controller samples children of the shared supernet and learns by
REINFORCE; its state is in the search checkpoint (bit-identical resume after SIGKILL); the resource term."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from nas3d_fast import cli
from nas3d_fast.search import SearchConfig, search
from nas3d_fast.train.run import DataSettings

sys.path.insert(0, os.path.dirname(__file__))
from search_fixtures import CLI_SPACE, SPACE, SPACE_OPTIONS, synthetic_dataset  # noqa: E402



@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory)


def _search(dataset, out, options=None):
    config = SearchConfig(epochs=2, steps_per_epoch=3, progress=False, device="cpu", checkpoint_every=1)
    return search(SPACE, "enas", dataset, str(out), config, DataSettings(patch=(16, 16, 16), batch_size=2,
                  augment=0.0), space_options=SPACE_OPTIONS, searcher_options={"children": 2, **(options or {})})


def _controller(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), map_location="cpu", weights_only=False)["controller"]


def test_an_enas_search_trains_its_controller_and_the_result_trains(dataset, tmp_path):
    out = tmp_path / "run"
    summary = _search(dataset, out)
    assert summary["steps"] == 6
    header, *rows = (out / "search.csv").read_text().splitlines()
    assert "reward" in header.split(",") and "baseline" in header.split(",")
    assert _controller(out)["steps"] == 6  # one REINFORCE step per search step
    for name in ("arch.json", "history.jsonl", "report.png", "summary.json"):
        assert (out / name).exists(), name
    argv = ["train", *CLI_SPACE, "--arch", str(out / "arch.json"), "--data", dataset, "--out", str(tmp_path / "t"),
            "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16", "16", "16", "--quiet", "--device", "cpu"]
    assert cli.main(argv) == 0


def test_the_resource_term_scales_the_reward(dataset, tmp_path, monkeypatch):
    import nas3d_fast.search.enas as enas

    monkeypatch.setattr(enas, "mean_dice", lambda logits, labels: 0.5)  # every child equally good

    def rewards(out):
        rows = [r.split(",") for r in (out / "search.csv").read_text().splitlines()[1:]]
        return [float(r[5]) for r in rows if r[5]]

    _search(dataset, tmp_path / "plain")
    _search(dataset, tmp_path / "flops", {"resource": "flops", "resource_target": 1e3, "resource_weight": -0.5})
    assert rewards(tmp_path / "plain") == [0.5] * 6
    scaled = rewards(tmp_path / "flops")
    assert len(scaled) == 6 and all(0 < r < 0.5 for r in scaled)  # FLOPs far above the target: less reward


KILLER = r"""
import os, signal, sys
from nas3d_fast.search import SearchConfig, search
from nas3d_fast.train.run import DataSettings
def on_step(step):
    if step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
search("ronasmis", "enas", sys.argv[1], sys.argv[2],
       SearchConfig(epochs=2, steps_per_epoch=3, progress=False, device="cpu", checkpoint_every=1),
       DataSettings(patch=(16, 16, 16), batch_size=2, augment=0.0),
       space_options={"base_channels": 2, "depth": 2, "layers_per_stage": 1}, searcher_options={"children": 2},
       on_step=on_step)
"""


def test_killed_and_resumed_the_controller_ends_bit_identical(dataset, tmp_path):
    want = _search(dataset, tmp_path / "whole")
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER, dataset, str(killed)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    got = _search(dataset, killed)
    assert got["arch"] == want["arch"]
    a, b = _controller(tmp_path / "whole"), _controller(killed)
    for name, value in a["controller"].items():
        assert torch.equal(b["controller"][name], value), name
    assert a["baseline"] == b["baseline"]


@pytest.mark.parametrize("options, message", [
    ({"resource": "memory"}, "needs resource_target > 0"),
    ({"resource": "latency", "resource_target": 1.0}, "resource must be one of"),
    ({"children": 0}, "children must be an int >= 1"),
])
def test_bad_options(dataset, tmp_path, options, message):
    with pytest.raises(ValueError) as err:
        _search(dataset, tmp_path / "run", options)
    assert message in str(err.value)


def test_a_space_without_a_supernet_is_refused(dataset, tmp_path, capsys):
    argv = ["search", "--space", "tautoml", "--searcher", "enas", "--data", dataset, "--out", str(tmp_path / "r"),
            "--patch", "16", "16", "16", "--quiet", "--device", "cpu"]
    assert cli.main(argv) == 2
    assert "trial searcher" in capsys.readouterr().err


def test_a_memory_budget_is_the_memory_resources_target(dataset, tmp_path, capsys):
    argv = ["search", *CLI_SPACE, "--searcher", "enas", "--children", "2", "--data", dataset, "--epochs", "1",
            "--steps-per-epoch", "2", "--patch", "16", "16", "16", "--batch-size", "1", "--quiet", "--device", "cpu"]
    assert cli.main([*argv, "--out", str(tmp_path / "a"), "--memory-budget", "8MiB"]) == 2
    assert "--memory-budget needs --target" in capsys.readouterr().err
    assert cli.main([*argv, "--out", str(tmp_path / "b"), "--memory-budget", "8MiB", "--target", "cpu",
                     "--resource", "flops"]) == 2
    assert "either it or --resource" in capsys.readouterr().err
    assert cli.main([*argv, "--out", str(tmp_path / "c"), "--memory-budget", "8MiB", "--target", "cpu"]) == 0
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["options"]["resource"] == "memory" and summary["options"]["memory_target"] == "cpu"
    assert summary["options"]["resource_target"] == 8 * 2**20
