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


# -- the memory term calibrated from predicted training memory (beyond MONAI) ---------------------------


def test_the_memory_model_fits_predicted_peaks_and_its_expectation_is_the_arch_at_one_hot():
    from nas3d_fast.profile.sample import candidate_memory
    from nas3d_fast.search.memory_model import calibrate
    from nas3d_fast.train.losses import make_loss

    space = spaces.get("dints", **TINY)
    supernet = space.supernet(1, 2)
    model = calibrate(space, supernet, (1, 1, 16, 16, 16), num_classes=2, loss=make_loss("dice_ce"),
                      target="cuda", samples=12, seed=0)
    fit = model.fit_stats
    assert fit["samples"] == 12 and all(c >= 0 for c in model.coef)
    assert fit["loo_mean_rel_error"] < 0.15, fit  # it predicts networks it was not fitted on
    # a held-out architecture: the model against the profiler's own prediction
    arch = space.sample(99)
    peak = candidate_memory(space, arch, (1, 16, 16, 16), 1, num_classes=2, target="cuda").peak_bytes
    assert model.predict(arch.edges) == pytest.approx(peak, rel=0.3)
    # the differentiable expectation at one-hot probabilities is the architecture's own value
    e = torch.tensor(arch.edges)
    paths = (e > 0).float()
    ops = torch.nn.functional.one_hot((e - 1).clamp(min=0), len(space.ops)).float()
    assert float(model.expected(paths, ops)) == pytest.approx(model.predict(arch.edges), rel=1e-5)
    # and it has a gradient for both logits
    a = torch.zeros(e.shape, requires_grad=True)
    c = torch.zeros(*e.shape, len(space.ops), requires_grad=True)
    costs = DintsCosts(space)
    ga, gc = torch.autograd.grad(model.expected(costs.path_probs(a), torch.softmax(c, -1)), (a, c))
    assert ga.abs().sum() > 0 and gc.abs().sum() > 0


def test_a_dints_search_with_the_predicted_memory_model_resumes_it_and_exports_monai_codes(dataset, tmp_path):
    from nas3d_fast.spaces.dints import load_monai_codes

    out = tmp_path / "run"
    config = SearchConfig(epochs=2, steps_per_epoch=2, progress=False, device="cpu", weight_lr=0.01)
    options = {"warmup_epochs": 1, "memory_model": "predicted", "memory_samples": 8, "memory_budget_mib": 20.0}
    data = DataSettings(patch=(16, 16, 16), batch_size=1, augment=0)
    summary = search("dints", "dints", dataset, str(out), config, data, space_options=TINY, searcher_options=options)
    lines = (out / "search.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, r.split(","))) for r in lines[1:]]
    for r in rows[2:]:  # |budget - usage| / full, with usage_fraction = usage / full
        usage = float(r["usage_mib"])
        full = usage / float(r["usage_fraction"])
        assert float(r["memory_term"]) == pytest.approx(abs(20.0 - usage) / full, rel=1e-4)
    mm = summary["memory_model"]
    assert mm["kind"] == "predicted" and mm["target"] == "cpu" and mm["fit"]["samples"] == 8
    assert mm["arch_peak_mib_modelled"] > 0 and mm["budget_mib"] == 20.0
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["memory"]["coef"] is not None  # fitted once, kept: a resume does not refit
    # MONAI's codes of the result
    space = spaces.get("dints", **TINY)
    codes = load_monai_codes(out / "arch_monai.pth")
    arch = space.arch_from_json(json.dumps(summary["arch"]))
    assert space.from_monai(codes["arch_code_a"], codes["arch_code_c"]) == arch
    assert codes["iter_num"] == 4 and codes["epochs"] == 2
    # rerun: nothing left to do, the same model and result
    again = search("dints", "dints", dataset, str(out), config, data, space_options=TINY, searcher_options=options)
    assert again["memory_model"] == mm and again["arch"] == summary["arch"]
    # another memory setting is a different search: refused, naming it
    with pytest.raises(ValueError, match="memory_budget_mib"):
        search("dints", "dints", dataset, str(out), config, data, space_options=TINY,
               searcher_options={**options, "memory_budget_mib": 30.0})


@pytest.mark.parametrize("options, message", [
    ({"memory_model": "exact"}, "memory_model must be one of"),
    ({"memory_budget_mib": 100.0}, "memory_budget_mib needs memory_model='predicted'"),
    ({"memory_model": "predicted", "memory_budget_mib": -1.0}, "memory_budget_mib must be a positive number"),
    ({"memory_model": "predicted", "memory_samples": 3}, "memory_samples must be an int >= 8"),
    ({"memory_target": "tpu"}, "memory_target must be"),
])
def test_bad_memory_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        DiNTSSearch(spaces.get("dints", **TINY), SearchConfig(epochs=2), "x", None, None,
                    {"in_channels": 1, "num_classes": 2}, **options)
