"""nas3d_fast.search: the supernet search loop, its resumable state and `nas3d search` (issue 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from nas3d_fast import cli
from nas3d_fast.data import make_synthetic
from nas3d_fast.search import SearchConfig, search, split_weight_arch
from nas3d_fast.search.gumbel import tau_at, uniform_noise
from nas3d_fast.train.run import DataSettings

SPACE = "ronasmis"
SPACE_OPTIONS = {"base_channels": 2, "depth": 2, "layers_per_stage": 1}
CLI_SPACE = ["--space", SPACE, "--space-option", "base_channels=2", "--space-option", "depth=2",
             "--space-option", "layers_per_stage=1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(str(root), train=5, test=1, shape=(20, 20, 20), validation=1, seed=0)
    return str(root)


def _config(**kw):
    settings = {"epochs": 2, "steps_per_epoch": 3, "progress": False, "device": "cpu", "checkpoint_every": 2}
    return SearchConfig(**{**settings, **kw})


def _data():
    return DataSettings(patch=(16, 16, 16), batch_size=2, augment=0.5)


def _search(dataset, out, **kw):
    return search(SPACE, "gumbel", dataset, str(out), _config(**kw), _data(), space_options=SPACE_OPTIONS)


def _logits(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), map_location="cpu", weights_only=False)["logits"]


def test_a_search_writes_its_run_folder_and_the_arch_trains(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    summary = _search(dataset, out)
    assert summary["steps"] == 6 and not summary["stopped_by_time_budget"]
    assert sorted(os.listdir(out)) == ["arch.json", "checkpoint.pt", "history.jsonl", "report.png", "search.csv",
                                       "summary.json"]
    lines = (out / "search.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert {"step", "weight_loss", "arch_loss", "entropy", "tau", "weight_lr", "arch_lr"} <= set(header)
    assert [int(r.split(",")[0]) for r in lines[1:]] == [1, 2, 3, 4, 5, 6]
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1] and history[-1]["arch"] == summary["arch"]
    assert json.loads((out / "arch.json").read_text()) == summary["arch"]
    tau = [float(r.split(",")[header.index("tau")]) for r in lines[1:]]
    assert tau[0] == 1.0 and abs(tau[-1] - 0.1) < 1e-12 and tau == sorted(tau, reverse=True)
    # the result trains as it is
    argv = ["train", *CLI_SPACE, "--arch", str(out / "arch.json"), "--data", dataset, "--out", str(tmp_path / "t"),
            "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16", "16", "16", "--quiet", "--device", "cpu"]
    assert cli.main(argv) == 0


KILLER = r"""
import os, signal, sys
from nas3d_fast.search import GumbelSearch, SearchConfig, search
from nas3d_fast.train.run import DataSettings
dataset, out, kill_after, kill_in_arch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
original = GumbelSearch.arch_objective
def arch_objective(self, seg, step):
    if step + 1 == kill_in_arch:  # during the architecture step of that step
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, seg, step)
GumbelSearch.arch_objective = arch_objective
def on_step(step):
    if step == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
search("ronasmis", "gumbel", dataset, out,
       SearchConfig(epochs=2, steps_per_epoch=3, progress=False, device="cpu", checkpoint_every=2),
       DataSettings(patch=(16, 16, 16), batch_size=2, augment=0.5),
       space_options={"base_channels": 2, "depth": 2, "layers_per_stage": 1}, on_step=on_step)
"""


def test_a_search_killed_twice_resumes_to_bit_identical_logits(dataset, tmp_path):
    """SIGKILL after step 3 (an epoch end), then during the architecture step of step 6 (after the
    checkpoint of step 4): the resumed search ends with the uninterrupted one's logits, bit for bit."""
    whole = tmp_path / "whole"
    want = _search(dataset, whole)
    killed = tmp_path / "killed"
    for kill_after, kill_in_arch in ((3, 0), (0, 6)):
        proc = subprocess.run([sys.executable, "-c", KILLER, dataset, str(killed), str(kill_after), str(kill_in_arch)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, proc.stderr[-2000:]
    rows = (killed / "search.csv").read_text().splitlines()[1:]
    assert int(rows[-1].split(",")[0]) == 5  # died inside step 6
    got = _search(dataset, killed)
    assert got["arch"] == want["arch"]
    for name, value in _logits(whole).items():
        assert torch.equal(_logits(killed)[name], value), name
    rows = (killed / "search.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4, 5, 6]  # no step logged twice
    whole_rows = (whole / "search.csv").read_text().splitlines()
    strip = [",".join(r.split(",")[:-1]) for r in whole_rows]  # all but the seconds
    assert [",".join(r.split(",")[:-1]) for r in (killed / "search.csv").read_text().splitlines()] == strip


def test_resume_with_other_settings_is_refused_by_name(dataset, tmp_path):
    out = tmp_path / "run"
    _search(dataset, out, epochs=1)
    before = (out / "search.csv").read_text()
    with pytest.raises(ValueError) as err:
        search(SPACE, "gumbel", dataset, str(out), _config(epochs=1, arch_lr=0.01, seed=4), _data(),
               space_options=SPACE_OPTIONS, searcher_options={"tau_end": 0.5})
    text = str(err.value)
    assert "arch_lr: checkpoint 0.003, now 0.01" in text and "seed: checkpoint 0, now 4" in text
    assert "searcher_options.tau_end: checkpoint 0.1, now 0.5" in text and "--no-resume" in text
    assert (out / "search.csv").read_text() == before
    # what does not change the result may change
    assert _search(dataset, out, epochs=1, checkpoint_every=0)["steps"] == 3


def test_cli_search_then_resume(dataset, tmp_path, capsys):
    def argv(epochs):
        return ["search", *CLI_SPACE, "--searcher", "gumbel", "--data", dataset, "--out", str(tmp_path / "run"),
                "--epochs", str(epochs), "--steps-per-epoch", "2", "--patch", "16", "16", "16", "--quiet",
                "--device", "cpu"]

    assert cli.main(argv(1)) == 0
    assert "nas3d train --arch" in capsys.readouterr().out
    assert cli.main(argv(2)) == 2  # a longer search is another search
    assert "epochs: checkpoint 1, now 2" in capsys.readouterr().err
    assert cli.main(argv(1)) == 0  # the finished search reruns as a no-op
    assert "steps 2/2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "change, message",
    [
        (["--searcher", "bayesian"], "invalid choice: 'bayesian'"),
        (["--space", "nowhere"], "nowhere"),
        (["--space", "tautoml"], "tautoml"),
        (["--patch", "16", "16", "15"], "patch"),
        (["--time-budget", "0"], "time_budget"),
        (["--epochs", "0"], "epochs"),
        (["--data", "MISSING"], "dataset.json"),
    ],
)
def test_cli_bad_input_is_a_clear_error_and_writes_nothing(dataset, tmp_path, capsys, change, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    change = [str(empty) if c == "MISSING" else c for c in change]
    base = {"--searcher": ["gumbel"], "--data": [dataset], "--out": [str(tmp_path / "run")],
            "--patch": ["16", "16", "16"], "--epochs": ["1"]}
    for i, arg in enumerate(change):
        if arg.startswith("--"):
            values = []
            for v in change[i + 1:]:
                if v.startswith("--"):
                    break
                values.append(v)
            base[arg] = values
    space = base.pop("--space", None)
    argv = ["search", *(CLI_SPACE if space is None else ["--space", *space]), "--quiet", "--device", "cpu"]
    for key, values in base.items():
        argv += [key, *values]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_split_weight_arch_is_four_to_one_and_seeded():
    ids = [f"c{i}" for i in range(10)]
    w, a = split_weight_arch(ids, 0)
    assert len(w) == 8 and len(a) == 2 and not set(w) & set(a) and sorted(w + a) == ids
    assert split_weight_arch(ids, 0) == (w, a) and split_weight_arch(ids, 1) != (w, a)
    assert [len(x) for x in split_weight_arch(ids[:2], 0)] == [1, 1]
    with pytest.raises(ValueError, match="at least 2 training cases"):
        split_weight_arch(ids[:1], 0)


def test_tau_schedule_and_noise():
    assert tau_at(0, 10, 1.0, 0.1, "exponential") == 1.0 and abs(tau_at(9, 10, 1.0, 0.1, "exponential") - 0.1) < 1e-12
    assert tau_at(5, 11, 1.0, 0.0001, "linear") == pytest.approx(0.50005)
    assert tau_at(3, 10, 2.0, 0.1, "constant") == 2.0
    a = uniform_noise((4, 3), (0, 1, 0, 0), torch.float32, torch.device("cpu"))
    assert torch.equal(a, uniform_noise((4, 3), (0, 1, 0, 0), torch.float32, torch.device("cpu")))
    assert not torch.equal(a, uniform_noise((4, 3), (0, 2, 0, 0), torch.float32, torch.device("cpu")))
    assert (a > 0).all() and (a < 1).all()


def test_search_step_suite_has_the_issue_ratio_keys():
    from benchmarks.search_step import SUITE

    assert {r.key for r in SUITE.ratios} == {
        "dints_search_step.speedup_vs_monai",
        "dints_search_step.memory_vs_monai",
        "gumbel_search_step.speedup_vs_monai",
        "gumbel_search_step.memory_vs_monai",
    }
    for r in SUITE.ratios:
        SUITE.case(r.case), SUITE.case(r.baseline)  # both sides exist
