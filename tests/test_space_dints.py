"""The dints space: encodings, feasibility errors, networks, supernet extraction, and the decode against
MONAI's TopologySearch.decode()."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from nas3d_fast import spaces
from nas3d_fast.spaces import ArchError
from nas3d_fast.spaces.dints import DintsArch
from nas3d_fast.spaces.dints_topology import decode_topology, decode_topology_python, edge_scales

# Tiny channels keep the 64^3 forward/backward runs within CI's budget.
TINY = {"channel_mul": 0.0625, "p3d": True}


def _monai_search(**kwargs):
    from monai.networks.nets.dints import TopologySearch

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a patch-size recommendation
        return TopologySearch(**kwargs)


def test_registered_and_options():
    space = spaces.get("dints")
    assert space.ops == ("identity", "conv3x3x3")
    assert len(space.vector_choices()) == 12 * 10 and set(space.vector_choices()) == {3}
    assert space.layout.channels == (32, 64, 128, 256, 512)
    assert spaces.get("dints", p3d=True).vector_choices()[0] == 6
    assert space.stride == 16
    with pytest.raises(ValueError, match="num_depths"):
        spaces.get("dints", num_depths=1)
    with pytest.raises(ValueError, match="norm"):
        spaces.get("dints", norm="batch")


def test_edge_scales_are_monais():
    reads, writes, resample = edge_scales(4)
    assert reads == (0, 1, 0, 1, 2, 1, 2, 3, 2, 3)
    assert writes == (0, 0, 1, 1, 1, 2, 2, 2, 3, 3)
    assert resample == (0, 1, -1, 0, 1, -1, 0, 1, -1, 0)


def test_round_trip_1000_samples():
    space = spaces.get("dints", p3d=True)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(1000):
        arch = space.sample(rng)
        vector = space.encode(arch)
        assert len(vector) == 120 and all(0 <= v <= 5 for v in vector)
        assert space.decode(vector) == arch
        text = arch.to_json()
        assert json.loads(text)["space"] == "dints"
        assert DintsArch.from_json(text) == arch
        assert space.arch_from_json(text) == arch
        assert DintsArch.from_matrix(arch.matrix(5)) == arch
        seen.add(arch)
    assert len(seen) == 1000  # sampling explores the space


def test_samples_are_feasible_as_monai_requires():
    space = spaces.get("dints")
    reads, writes, _ = edge_scales(4)
    for seed in range(50):
        e = np.asarray(space.sample(seed).edges) > 0
        assert e.any(1).all()
        for layer in range(1, 12):
            assert {writes[i] for i in np.flatnonzero(e[layer - 1])} == {reads[i] for i in np.flatnonzero(e[layer])}


def test_bad_architectures_name_the_position():
    space = spaces.get("dints")
    good = space.encode(space.sample(1))
    with pytest.raises(ArchError, match="length 119, expected 120"):
        space.decode(good[:-1])
    bad = list(good)
    bad[17] = 3
    with pytest.raises(ArchError, match="position 17: value 3 outside 0..2"):
        space.decode(bad)
    bad = list(good)
    bad[5] = -1
    with pytest.raises(ArchError, match="position 5"):
        space.decode(bad)
    # layer 0 only writes scale 0 (edge 0: 0 -> 0); layer 1 edge 3 reads scale 1, which nobody wrote.
    vec = [0] * 120
    vec[0] = 1
    vec[10 + 0] = 1
    vec[10 + 3] = 2
    for layer in range(2, 12):
        vec[10 * layer] = 1
    with pytest.raises(ArchError, match=r"position 13 \(layer 1, edge 3.*predecessor.*does not exist"):
        space.decode(vec)
    # layer 0 writes scales 0 and 1 (edges 0 and 2), layer 1 reads only scale 0: scale 1 is a dead end.
    vec = [0] * 120
    vec[0], vec[2] = 1, 1
    for layer in range(1, 12):
        vec[10 * layer] = 1
    with pytest.raises(ArchError, match=r"position 2 \(layer 0, edge 2.*dead end"):
        space.decode(vec)
    vec = [0] * 120
    with pytest.raises(ArchError, match=r"positions 0..9: layer 0 has no active edge"):
        space.decode(vec)
    with pytest.raises(ArchError, match="11 rows"):
        spaces.get("dints", num_blocks=11).encode(space.sample(0))


def test_build_forward_backward_20_samples():
    # 4 layers instead of 12: each 64^3 step stays well under a second on CI's 2 cores.
    space = spaces.get("dints", num_blocks=4, **TINY)
    x = torch.randn(1, 1, 64, 64, 64)
    for seed in range(20):
        arch = space.sample(seed)
        net = space.build(arch, 1, 3)
        y = net(x)
        assert y.shape == (1, 3, 64, 64, 64)
        y.square().mean().backward()
        grads = [p.grad for p in net.cells.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        if seed < 3:
            cost = space.cost(arch, (1, 64, 64, 64), num_classes=3)
            assert cost.params == sum(p.numel() for p in net.parameters())
            assert cost.flops > 0


def test_build_equals_monai_dints_with_the_same_weights():
    from monai.networks.nets.dints import DiNTS, TopologyInstance

    space = spaces.get("dints", num_blocks=4, num_depths=3, channel_mul=0.125, p3d=True)
    arch = space.sample(3)
    node_a, code_a, code_c = space.monai_codes(arch)
    with contextlib.redirect_stdout(io.StringIO()):
        inst = TopologyInstance(arch_code=[code_a, code_c], channel_mul=0.125, num_blocks=4, num_depths=3)
    torch.manual_seed(0)
    ref = DiNTS(inst, in_channels=1, num_classes=2, node_a=torch.from_numpy(node_a))
    for p in ref.parameters():  # away from the default 1/0 norm parameters, so their order is tested too
        p.data.uniform_(-0.5, 0.5)
    net = space.build(arch, 1, 2)
    theirs, ours = list(ref.state_dict().values()), list(net.state_dict().values())
    assert [t.shape for t in theirs] == [t.shape for t in ours]
    net.load_state_dict(dict(zip(net.state_dict(), theirs)))
    x = torch.randn(1, 1, 32, 32, 32)
    torch.testing.assert_close(net(x), ref(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm", ["per_op", "shared"])
def test_one_hot_supernet_equals_extracted_network(norm):
    space = spaces.get("dints", num_blocks=4, **TINY)
    supernet = space.supernet(1, 2, norm=norm)
    for p in supernet.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 1, 32, 32, 32)
    for seed in range(3):
        arch = space.sample(seed)
        net = supernet.extract(arch)
        with torch.no_grad():
            torch.testing.assert_close(supernet(x, supernet.one_hot(arch)), net(x), atol=1e-5, rtol=1e-4)
    if norm == "per_op":  # the per_op extraction is the network build() makes
        assert [p.shape for p in net.parameters()] == [p.shape for p in space.build(arch, 1, 2).parameters()]


def test_supernet_dense_and_sampled_weights_train():
    from nas3d_fast.ops import gumbel_topk

    space = spaces.get("dints", num_blocks=3, **TINY)
    supernet = space.supernet(1, 2, norm="shared")
    logits = supernet.arch_logits()
    x = torch.randn(1, 1, 32, 32, 32)
    dense = {name: torch.softmax(l, -1) for name, l in logits.items()}
    supernet(x, dense).square().mean().backward()
    assert all(l.grad is not None and l.grad.abs().sum() > 0 for l in logits.values())
    sampled = {name: gumbel_topk(l, 1.0, k=1 if name == "paths" else 2) for name, l in logits.items()}
    y = supernet(x, sampled)
    assert y.shape == (1, 2, 32, 32, 32)
    with pytest.raises(ValueError, match="'paths' and 'ops'"):
        supernet(x, {"ops": dense["ops"]})


def test_monai_weights_match_monai_probabilities():
    space = spaces.get("dints", num_blocks=4, num_depths=3, **TINY)
    search = _monai_search(channel_mul=0.0625, num_blocks=4, num_depths=3)
    supernet = space.supernet(1, 2)
    w = supernet.monai_weights(search.log_alpha_a, search.log_alpha_c)
    _, prob_a = search.get_prob_a()
    torch.testing.assert_close(w["paths"][:, 1], prob_a.reshape(-1))
    torch.testing.assert_close(w["ops"], torch.softmax(search.log_alpha_c, -1).reshape(-1, 5))


# MONAI's decode at 4 scales takes 6-8 s per call (minutes on a loaded machine): the tests use 3 scales,
# the supernet benchmark suite checks agreement at 12 x 4 on every run.
@pytest.mark.parametrize("blocks,depths", [(4, 3), (12, 3)])
def test_decode_agrees_with_monai(blocks, depths):
    search = _monai_search(channel_mul=0.0625, num_blocks=blocks, num_depths=depths)
    space = spaces.get("dints", num_blocks=blocks, num_depths=depths, **TINY)
    torch.manual_seed(blocks * 10 + depths)
    for _ in range(3):
        with torch.no_grad():
            search.log_alpha_a.normal_(0, 1.5)
            search.log_alpha_c.normal_(0, 1)
        node_a, code_a, code_c, _ = search.decode()
        arch = space.decode_logits(search.log_alpha_a, search.log_alpha_c)
        ours_node_a, ours_a, ours_c = space.monai_codes(arch)
        np.testing.assert_array_equal(ours_a, code_a)
        np.testing.assert_array_equal(ours_node_a, node_a)
        np.testing.assert_array_equal(ours_c[ours_a > 0], code_c[code_a > 0])


def test_compiled_and_python_decode_agree():
    from nas3d_fast import _extension

    if _extension._C is None or not hasattr(_extension._C, "dints_decode"):
        pytest.skip("nas3d_fast._C is not built with dints_decode")
    reads, writes, _ = edge_scales(4)
    rng = np.random.default_rng(0)
    for _ in range(5):
        logits = rng.normal(0, 2, size=(12, 10))
        assert decode_topology(logits, reads, writes) == decode_topology_python(logits, reads, writes)
    with pytest.raises(ValueError, match="log_alpha"):
        _extension._C.dints_decode([0.0] * 5, 12, list(reads), list(writes), 4)
