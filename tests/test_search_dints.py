"""DiNTSSearch: MONAI's memory and topology terms, its warm-up and objective, and a search on the dints space
(issue 20 item 4)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from nas3d_fast import spaces
from nas3d_fast.data import make_synthetic
from nas3d_fast.search import DiNTSSearch, SearchConfig, search
from nas3d_fast.search.dints import DintsCosts
from nas3d_fast.train.run import DataSettings

TINY = {"num_blocks": 3, "num_depths": 2, "channel_mul": 0.125}


@pytest.mark.parametrize("layers, depths, downsample", [(3, 3, True), (4, 4, False), (12, 4, True)])
def test_costs_equal_monai_topology_search(layers, depths, downsample):
    """The analytic terms are MONAI's (TopologySearch's get_prob_a, get_ram_cost_usage,
    get_topology_entropy), on MONAI's five ops."""
    monai_nets = pytest.importorskip("monai.networks.nets")
    space = spaces.get("dints", num_blocks=layers, num_depths=depths, channel_mul=0.5, use_downsample=downsample,
                       p3d=True)
    theirs = monai_nets.TopologySearch(channel_mul=0.5, num_blocks=layers, num_depths=depths,
                                       use_downsample=downsample, device="cpu")
    assert list(theirs.arch_code2in) == list(space.reads) and list(theirs.arch_code2out) == list(space.writes)
    costs = DintsCosts(space)
    gen = torch.Generator().manual_seed(layers)
    a = torch.randn(layers, len(space.reads), generator=gen)
    c = torch.randn(layers, len(space.reads), len(space.ops), generator=gen)
    with torch.no_grad():
        theirs.log_alpha_a.copy_(a)
        theirs.log_alpha_c.copy_(c)
        probs_m, path_m = theirs.get_prob_a(child=True)
        probs = costs.probs(a)
        # the same patterns, perhaps in another order
        torch.testing.assert_close(probs.sort(-1).values, probs_m.float().sort(-1).values, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(costs.path_probs(a), path_m.float())
        torch.testing.assert_close(costs.topology(probs), theirs.get_topology_entropy(probs_m).float(), rtol=1e-5,
                                   atol=0)
        for full in (False, True):
            shape = (2, 1, 32, 48, 32)
            torch.testing.assert_close(costs.usage(a, c, shape, full),
                                       torch.as_tensor(theirs.get_ram_cost_usage(shape, full=full)).float(),
                                       rtol=1e-5, atol=0)


def test_costs_are_differentiable_in_both_logits():
    space = spaces.get("dints", **TINY)
    costs = DintsCosts(space)
    a = torch.zeros(3, len(space.reads), requires_grad=True)
    c = torch.zeros(3, len(space.reads), len(space.ops), requires_grad=True)
    loss = costs.topology(costs.probs(a)) + costs.usage(a, c, (1, 1, 16, 16, 16))
    ga, gc = torch.autograd.grad(loss, (a, c))
    assert torch.isfinite(ga).all() and ga.abs().sum() > 0 and gc.abs().sum() > 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(str(root), train=5, test=1, shape=(20, 20, 20), validation=1, seed=0)
    return str(root)


@pytest.mark.parametrize("sample_ops", [False, True])
def test_a_dints_search_warms_up_then_searches(dataset, tmp_path, sample_ops):
    out = tmp_path / "run"
    config = SearchConfig(epochs=3, steps_per_epoch=2, progress=False, device="cpu", weight_lr=0.01)
    summary = search("dints", "dints", dataset, str(out), config, DataSettings(patch=(16, 16, 16), batch_size=1,
                     augment=0), space_options=TINY, searcher_options={"warmup_epochs": 1, "sample_ops": sample_ops})
    lines = (out / "search.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, r.split(","))) for r in lines[1:]]
    assert [r["arch_loss"] == "" for r in rows] == [True, True, False, False, False, False]  # warm-up: weights only
    assert [float(r["ramp"]) for r in rows[2:]] == [0.0, 0.0, 1.0, 1.0]
    for r in rows[2:]:
        want = float(r["seg_loss"]) + float(r["ramp"]) * (float(r["entropy_a"]) + float(r["entropy_c"])) \
            + abs(0.8 - float(r["usage_fraction"])) + 0.001 * float(r["topology"])
        assert float(r["arch_loss"]) == pytest.approx(want, rel=1e-5)
    arch = spaces.get("dints", **TINY).arch_from_json(json.dumps(summary["arch"]))
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    a, c = state["logits"]["a"], state["logits"]["c"]
    assert arch == spaces.get("dints", **TINY).decode_logits(a, c)  # derive is MONAI's decode


def test_the_dints_searcher_needs_the_dints_space_and_a_valid_warmup():
    with pytest.raises(ValueError, match="searches the dints space"):
        DiNTSSearch(spaces.get("ronasmis"), SearchConfig(), "x", None, None, {"in_channels": 1, "num_classes": 2})
    with pytest.raises(ValueError, match=r"warmup_epochs must be an int in \[0, epochs = 2\)"):
        DiNTSSearch(spaces.get("dints", **TINY), SearchConfig(epochs=2), "x", None, None,
                    {"in_channels": 1, "num_classes": 2}, warmup_epochs=2)
