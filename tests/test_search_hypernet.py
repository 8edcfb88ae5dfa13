"""HyperNetSearch (issue 22 item 2): the Meta-Assistant Network's masking, the annealing to w_fixed, the
memory-constrained search (predicted and measured CPU peaks inside the budget window, BudgetError), resume
after SIGKILL, and the errors of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nas3d_fast import cli
from nas3d_fast.profile import BudgetError, measure_training_memory
from nas3d_fast.profile.sample import candidate_memory
from nas3d_fast.search import HyperNetSearch, SearchConfig, search
from nas3d_fast.search.cli import memory_size
from nas3d_fast.spaces import base
from nas3d_fast.train.run import DataSettings

sys.path.insert(0, os.path.dirname(__file__))
from search_fixtures import synthetic_dataset  # noqa: E402

SPACE = "dints"
SPACE_OPTIONS = {"num_blocks": 3, "num_depths": 2, "channel_mul": 0.125}
CLI_SPACE = ["--space", SPACE, *sum((["--space-option", f"{k}={v}"] for k, v in SPACE_OPTIONS.items()), [])]
PATCH = (16, 16, 16)
OPTIONS = {"candidates": 4, "eval_batches": 1, "encoder_width": 2, "image_dim": 8, "hidden": 16}
MiB = 2**20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory)


def _config(**kw):
    return SearchConfig(**{"epochs": 2, "steps_per_epoch": 3, "progress": False, "device": "cpu",
                           "checkpoint_every": 1, **kw})


def _search(dataset, out, options=OPTIONS, on_step=None, batch_size=2, **config):
    return search(SPACE, "hypernet", dataset, str(out), _config(**config),
                  DataSettings(patch=PATCH, batch_size=batch_size, augment=0.0), space_options=SPACE_OPTIONS,
                  searcher_options=options, on_step=on_step)


def _searcher(dataset, tmp_path, **options) -> HyperNetSearch:
    """A HyperNetSearch over two fixed random batches (no data pipeline: for unit checks)."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 1, *PATCH), torch.randint(0, 2, (2, 1, *PATCH))

    def batches(first):
        while True:
            yield x, y

    meta = {"in_channels": 1, "num_classes": 2, "data": {"patch": list(PATCH), "batch_size": 2}}
    return HyperNetSearch(base.get(SPACE, **SPACE_OPTIONS), _config(), str(tmp_path / "unit"), batches, batches,
                          meta, **{**OPTIONS, **options})


def test_the_paper_space_has_27648_channel_weights():
    space = base.get("dints", use_downsample=False)  # scales of 32, 64, 128, 256 channels (HyperSegNAS §4)
    with torch.device("meta"):
        supernet = space.supernet(1, 2)
    slots = supernet.modulation_slots()
    assert len(slots) == 12 * 10
    assert sum(c * k for c, k in slots.values()) == 27_648


def test_the_man_starts_at_w_fixed_and_its_inactive_weights_get_no_gradient(dataset, tmp_path):
    s = _searcher(dataset, tmp_path)
    arch = s.space.sample(np.random.default_rng(3))
    x = torch.randn(2, 1, *PATCH)
    raw = s.man(x, s.arch_vector(arch))
    assert raw.shape == (2, s.total_channels) and torch.all(raw == 0.5)  # the last layer starts at zero
    # train the MAN a few steps so its output is no longer constant, then check the masking
    opt = torch.optim.Adam(s.man.parameters(), lr=0.05)
    for _ in range(3):
        out = s.supernet(x, s.supernet.child_weights(arch), channel_scales=s.channel_scales(x, arch, 0.0))
        opt.zero_grad()
        out.square().mean().backward()
        opt.step()
    raw = s.man(x, s.arch_vector(arch))
    raw.retain_grad()
    weights = raw * s.slot_mask(arch)
    scales = {}
    for key, k in s.supernet.active_slots(arch).items():
        c = s.slots[key][0]
        scales[key] = weights[:, s.offsets[key] + k * c: s.offsets[key] + (k + 1) * c]
    s.supernet(x, s.supernet.child_weights(arch), channel_scales=scales).square().mean().backward()
    mask = s.slot_mask(arch).bool()
    assert 0 < int(mask.sum()) < s.total_channels
    assert torch.all(raw.grad[:, ~mask] == 0)
    assert torch.count_nonzero(raw.grad[:, mask]) > 0
    # and the masked weights the search uses are the same function as this by-hand slicing
    a = s.supernet(x, s.supernet.child_weights(arch), channel_scales=s.channel_scales(x, arch, 0.0))
    b = s.supernet(x, s.supernet.child_weights(arch), channel_scales={k: v.detach() for k, v in scales.items()})
    torch.testing.assert_close(a, b)
    # the parameters of the HyperNet's output rows of inactive channels get no gradient either
    s.man.zero_grad()
    a.square().mean().backward()
    last = s.man.hypernet[-1]
    assert torch.all(last.weight.grad[~mask] == 0) and torch.all(last.bias.grad[~mask] == 0)


def test_annealing_is_linear_to_w_fixed_and_the_supernet_then_needs_no_man(dataset, tmp_path):
    s = _searcher(dataset, tmp_path, anneal_steps=3)  # 6 steps: annealing over steps 3, 4, 5
    assert [s.anneal(i) for i in range(6)] == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1])
    arch = s.space.sample(np.random.default_rng(5))
    x = torch.randn(2, 1, *PATCH)
    with torch.no_grad():
        for p in s.man.hypernet[-1].parameters():
            p.normal_()  # a MAN far from 0.5
        man = s.man_weights(x, arch)
        at_one = {}
        for key, k in s.supernet.active_slots(arch).items():
            c = s.slots[key][0]
            at_one[key] = 1.0 * s.w_fixed + 0.0 * man[:, s.offsets[key] + k * c: s.offsets[key] + (k + 1) * c]
        weights = s.supernet.child_weights(arch)
        with_man = s.supernet(x, weights, channel_scales=at_one)
        without = s.supernet_output(x, weights)  # the MAN removed: every edge scaled by w_fixed
        torch.testing.assert_close(with_man, without)
        halfway = s.supernet(x, weights, channel_scales=s.channel_scales(x, arch, 0.5))
        assert not torch.allclose(halfway, without)
        # fine-tuning starts from exactly the annealed supernet's function
        torch.testing.assert_close(s.extract(arch)(x), without)
    assert all(v == s.w_fixed for v in s.channel_scales(x, arch, 1.0).values())


def test_a_hypernet_search_ranks_and_fine_tunes_and_its_result_trains(dataset, tmp_path):
    out = tmp_path / "run"
    summary = _search(dataset, out, {**OPTIONS, "finetune_top": 2, "finetune_steps": 2})
    assert summary["searcher"] == "hypernet" and summary["steps"] == 6
    assert len(summary["ranking"]) == 4
    assert summary["hypernet"]["anneal_steps"] == 1  # a ninth of 6 steps, at least one
    with open(out / "search.csv") as f:
        rows = f.read().splitlines()
    header = rows[0].split(",")
    anneal = [float(r.split(",")[header.index("anneal")]) for r in rows[1:]]
    assert anneal == [0, 0, 0, 0, 0, 1]
    for name in ("arch.json", "search.csv", "history.jsonl", "report.png", "summary.json", "checkpoint.pt",
                 "trials.db"):
        assert (out / name).exists(), name
    argv = ["train", *CLI_SPACE, "--arch", str(out / "arch.json"), "--data", dataset, "--out", str(tmp_path / "t"),
            "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16", "16", "16", "--quiet", "--device", "cpu"]
    assert cli.main(argv) == 0


def _peaks(n=12, batch_size=1):
    space = base.get(SPACE, **SPACE_OPTIONS)
    rng = np.random.default_rng(1)
    archs = {space.sample(rng) for _ in range(n)}
    return space, sorted(candidate_memory(space, a, (1, *PATCH), batch_size, target="cpu").peak_bytes for a in archs)


def _edge_in_a_gap(peaks, near):
    """A window edge between two predicted peaks, in the widest gap among those near ``near`` (index): the
    CPU prediction's error (<= 0.5% at batch 1 here) then never moves a candidate across it."""
    gaps = [(peaks[i + 1] - peaks[i], i) for i in range(max(0, near - 3), min(len(peaks) - 1, near + 3))]
    _, i = max(gaps)
    return (peaks[i] + peaks[i + 1]) // 2


def test_a_memory_budget_returns_an_architecture_inside_the_window_predicted_and_measured(dataset, tmp_path):
    # batch 1: at batch 2 the CPU prediction of these tiny networks is off by up to 7% (conv workspace)
    space, peaks = _peaks(40)
    budget = _edge_in_a_gap(peaks, 3 * len(peaks) // 4)
    tolerance = budget - _edge_in_a_gap(peaks, len(peaks) // 4)
    options = {**OPTIONS, "memory_budget": budget, "tolerance": tolerance, "target": "cpu"}
    summary = _search(dataset, tmp_path / "run", options, batch_size=1)
    window = (budget - tolerance, budget)
    info = summary["memory_budget"]
    assert info["budget_bytes"] == budget and info["candidates_found"] == 4
    assert window[0] <= info["predicted_peak_bytes"] <= window[1]
    assert all(window[0] <= r["predicted_memory"] <= window[1] for r in summary["ranking"])
    arch = space.arch_from_json(json.dumps(summary["arch"]))
    torch.manual_seed(0)
    measured = measure_training_memory(space.build(arch, 1, 2), (1, *PATCH), batch_size=1, num_classes=2,
                                       device="cpu").peak_bytes
    assert window[0] <= measured <= window[1], (window, measured, info["predicted_peak_bytes"])
    with open(tmp_path / "run" / "candidates.json") as f:
        assert len(json.load(f)["candidates"]) == 4
    before = (tmp_path / "run" / "candidates.json").read_bytes()
    with pytest.raises(ValueError, match="memory_budget"):  # other settings: refused, the run's files kept
        _search(dataset, tmp_path / "run", {**options, "memory_budget": budget + 1}, batch_size=1)
    assert (tmp_path / "run" / "candidates.json").read_bytes() == before


def test_a_budget_below_every_candidate_is_a_budget_error_before_any_file(dataset, tmp_path):
    _, peaks = _peaks(4)
    out = tmp_path / "run"
    with pytest.raises(BudgetError, match="below the smallest candidate"):
        _search(dataset, out, {**OPTIONS, "memory_budget": peaks[0] // 4, "tolerance": 0, "target": "cpu",
                               "max_tries": 10})
    assert not out.exists()
    assert cli.main(["search", *CLI_SPACE, "--searcher", "hypernet", "--data", dataset, "--out", str(out),
                     "--patch", "16", "16", "16", "--memory-budget", "1KiB", "--tolerance", "0", "--target", "cpu",
                     "--quiet", "--device", "cpu"]) == 2
    assert not out.exists()


KILLER = r"""
import os, signal, sys
from nas3d_fast.search import SearchConfig, search
from nas3d_fast.train.run import DataSettings
dataset, out, options = sys.argv[1], sys.argv[2], eval(sys.argv[3])
def on_step(step):
    if step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
search("dints", "hypernet", dataset, out,
       SearchConfig(epochs=2, steps_per_epoch=3, progress=False, device="cpu", checkpoint_every=1),
       DataSettings(patch=(16, 16, 16), batch_size=2, augment=0.0),
       space_options=eval(sys.argv[4]), searcher_options=options, on_step=on_step)
"""


def test_killed_during_training_it_resumes_to_the_same_result(dataset, tmp_path):
    options = {**OPTIONS, "anneal_steps": 3}
    want = _search(dataset, tmp_path / "whole", options)
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER, dataset, str(killed), repr(options), repr(SPACE_OPTIONS)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    got = _search(dataset, killed, options)
    assert got["arch"] == want["arch"] and got["ranking"] == want["ranking"]
    a = torch.load(killed / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    for key in b["man"]:
        assert torch.equal(a["man"][key], b["man"][key]), key
    for key in b["supernet"]:
        assert torch.equal(a["supernet"][key], b["supernet"][key]), key


@pytest.mark.parametrize("options, message", [
    ({"memory_budget": 64 * MiB}, "needs the target device"),
    ({"memory_budget": 64 * MiB, "target": "cpu", "tolerance": 65 * MiB}, "is above the memory budget"),
    ({"target": "cuda"}, "give memory_budget too"),
    ({"w_fixed": 0}, "w_fixed must be a number in (0, 1]"),
    ({"anneal_steps": 7}, "anneal_steps must be an int in [1, 6]"),
    ({"man_lr": 0}, "man_lr must be a number > 0"),
    ({"memory_budget": 64 * MiB, "target": "cpu", "proposer": "evolution"}, "use proposer='random'"),
])
def test_bad_options(dataset, tmp_path, options, message):
    with pytest.raises(ValueError) as err:
        _search(dataset, tmp_path / "run", {**OPTIONS, **options})
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_space_without_channel_modulation_is_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match="needs a supernet with channel modulation.*'ronasmis'"):
        search("ronasmis", "hypernet", dataset, str(tmp_path / "run"), _config(),
               DataSettings(patch=PATCH, batch_size=2, augment=0.0),
               space_options={"base_channels": 2, "depth": 2, "layers_per_stage": 1}, searcher_options=OPTIONS)


def test_cli_errors_name_the_argument(dataset, tmp_path, capsys):
    base_argv = ["search", *CLI_SPACE, "--searcher", "hypernet", "--data", dataset, "--out", str(tmp_path / "r"),
                 "--patch", "16", "16", "16", "--quiet", "--device", "cpu"]
    assert cli.main([*base_argv, "--memory-budget", "8GiB"]) == 2
    assert "needs the target device" in capsys.readouterr().err
    assert cli.main([*base_argv, "--memory-budget", "100MiB", "--tolerance", "1GiB", "--target", "cpu"]) == 2
    assert "above the memory budget" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*base_argv, "--memory-budget", "eight gigs"])
    assert "is not a memory size" in capsys.readouterr().err


def test_memory_sizes():
    assert memory_size("8GiB") == 8 * 2**30
    assert memory_size("300MiB") == 300 * MiB
    assert memory_size("2.5GB") == 2_500_000_000
    assert memory_size("512") == 512 * MiB  # a bare number is MiB, as --memory-budget always took
