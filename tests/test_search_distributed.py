"""Two processes under torchrun (gloo on the CPU): identical logits after every step, the same architecture on
both ranks, only rank 0 writing, and a killed distributed search that resumes (issue 20 item 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from nas3d_fast.data import make_synthetic

SCRIPT = r"""
import json, os, signal, sys
import torch
import torch.distributed as dist
from nas3d_fast.search import SearchConfig, search
from nas3d_fast.train.run import DataSettings

dataset, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
same = []

def on_step(step):
    runner_logits = [p.detach().clone() for p in RUNNER[0].logits.values()]
    flat = torch.cat([t.reshape(-1) for t in runner_logits])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    same.append(all(torch.equal(g, gathered[0]) for g in gathered))
    if step == kill_at and dist.get_rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)

RUNNER = []
from nas3d_fast.search import base
original = base.SupernetSearch.__init__
def init(self, *a, **k):
    original(self, *a, **k)
    RUNNER.append(self)
base.SupernetSearch.__init__ = init

summary = search("ronasmis", "gumbel", dataset, out,
                 SearchConfig(epochs=2, steps_per_epoch=3, progress=False, device="cpu", checkpoint_every=2),
                 DataSettings(patch=(16, 16, 16), batch_size=1, augment=0.5),
                 space_options={"base_channels": 2, "depth": 2, "layers_per_stage": 1}, on_step=on_step)
rank = dist.get_rank()
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"arch": summary["arch"], "same": same, "processes": summary["processes"]}, f)
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(str(root), train=5, test=1, shape=(20, 20, 20), validation=1, seed=0)
    return str(root)


def _torchrun(tmp_path, dataset, out, kill_at=0):
    script = tmp_path / "search_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           dataset, str(out), str(kill_at)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _logits(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), map_location="cpu", weights_only=False)["logits"]


def test_two_processes_keep_identical_logits_and_resume_after_a_kill(dataset, tmp_path):
    whole = tmp_path / "whole"
    proc = _torchrun(tmp_path, dataset, whole)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((whole / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["same"] == [True] * 6 and ranks[1]["same"] == [True] * 6
    assert ranks[0]["arch"] == ranks[1]["arch"] and ranks[0]["processes"] == 2
    assert json.loads((whole / "arch.json").read_text()) == ranks[0]["arch"]
    csv_rows = (whole / "search.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in csv_rows[1:]] == [1, 2, 3, 4, 5, 6]  # one writer: no row twice

    killed = tmp_path / "killed"
    proc = _torchrun(tmp_path, dataset, killed, kill_at=3)
    assert proc.returncode != 0 and not (killed / "arch.json").exists()
    proc = _torchrun(tmp_path, dataset, killed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, value in _logits(whole).items():
        assert torch.equal(_logits(killed)[name], value), name
    assert json.loads((killed / "arch.json").read_text()) == ranks[0]["arch"]


WEIGHT_SHARING = r"""
import json, os, sys
import torch
import torch.distributed as dist
from nas3d_fast.search import SearchConfig, base, search
from nas3d_fast.train.run import DataSettings

dataset, out, searcher, space, space_options, options = sys.argv[1:7]
same, RUNNER = [], []
original = base.SupernetSearch.__init__
def init(self, *a, **k):
    original(self, *a, **k)
    RUNNER.append(self)
base.SupernetSearch.__init__ = init

def on_step(step):
    r = RUNNER[0]
    modules = [r.supernet] + [m for m in (getattr(r, "man", None), getattr(r, "controller", None)) if m is not None]
    flat = torch.cat([p.detach().reshape(-1).float() for m in modules for p in m.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    same.append(all(torch.equal(g, gathered[0]) for g in gathered))

summary = search(space, searcher, dataset, out,
                 SearchConfig(epochs=2, steps_per_epoch=2, progress=False, device="cpu"),
                 DataSettings(patch=(16, 16, 16), batch_size=1, augment=0.0),
                 space_options=json.loads(space_options), searcher_options=json.loads(options), on_step=on_step)
with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump({"arch": summary["arch"], "same": same, "ranking": summary.get("ranking")}, f)
"""

TINY_DINTS = {"num_blocks": 3, "num_depths": 2, "channel_mul": 0.125}
TINY_RONASMIS = {"base_channels": 2, "depth": 2, "layers_per_stage": 1}


@pytest.mark.parametrize("searcher, space, space_options, options", [
    ("oneshot", "ronasmis", TINY_RONASMIS, {"candidates": 3, "eval_batches": 1, "finetune_top": 1,
                                            "finetune_steps": 1}),
    ("hypernet", "dints", TINY_DINTS, {"candidates": 3, "eval_batches": 1, "encoder_width": 2, "image_dim": 8,
                                       "hidden": 8, "anneal_steps": 2}),
    ("enas", "ronasmis", TINY_RONASMIS, {"children": 2}),
])
def test_weight_sharing_searchers_keep_every_rank_identical(dataset, tmp_path, searcher, space, space_options,
                                                            options):
    script = tmp_path / "ws_script.py"
    script.write_text(WEIGHT_SHARING)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           dataset, str(out), searcher, space, json.dumps(space_options), json.dumps(options)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["same"] == [True] * 4 and ranks[1]["same"] == [True] * 4  # weights, MAN, controller
    assert ranks[0]["arch"] == ranks[1]["arch"] == json.loads((out / "arch.json").read_text())
    if searcher != "enas":  # every rank scores every candidate on its share of the batches, averaged
        assert [r["inherited_dice"] for r in ranks[0]["ranking"]] == [r["inherited_dice"] for r in ranks[1]["ranking"]]
