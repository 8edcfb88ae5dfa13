"""The scnas space: encodings, JSON, the cell plan, discrete networks, cost, supernet == extracted network."""

import itertools

import numpy as np
import pytest
import torch

from nas3d_fast import ops, spaces
from nas3d_fast.spaces import Arch, ArchError
from nas3d_fast.spaces.scnas import CELL_CANDIDATES, CELL_TYPES, EDGES, OPS, PLAN, ScnasArch, edge_index


@pytest.fixture(scope="module")
def space():
    return spaces.get("scnas", base_channels=1)


def test_layout_follows_the_paper(space):
    assert len(PLAN) == 12
    kinds = [k for k, _, _ in PLAN]
    assert kinds.count("red") == 3 and kinds.count("exp") == 3 and kinds.count("inter") == 1
    assert set(CELL_CANDIDATES) == {*OPS, "zero"} and len(CELL_CANDIDATES) == 8
    assert space.stride == 8 and len(space.vector_choices()) == 64
    assert space.vector_choices()[:8] == [2, 7, 2, 7, 3, 7, 3, 7]
    assert [edge_index(j, p) for j in range(4) for p in range(j + 2)] == list(range(EDGES))
    with pytest.raises(ValueError, match="base_channels"):
        spaces.get("scnas", base_channels=0)


def test_thousand_samples_round_trip_encoding_and_json(space):
    rng = np.random.default_rng(0)
    pairs = {j: set() for j in range(4)}
    for _ in range(1000):
        arch = space.sample(rng)
        vec = space.encode(arch)
        assert space.decode(vec) == arch
        assert Arch.from_json(arch.to_json()) == arch
        assert space.arch_from_json(arch.to_json(indent=1)) == arch
        for j, node in enumerate(arch.enc):
            pairs[j].add((node[0][0], node[1][0]))
    # every predecessor pair of every node is drawn
    assert all(pairs[j] == set(itertools.combinations(range(j + 2), 2)) for j in range(4))


def test_twenty_samples_build_forward_backward_at_64(space):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 64, 64, 64)
    for seed in range(20):
        net = space.build(space.sample(seed), 2, 3)
        y = net(x)
        assert y.shape == (1, 3, 64, 64, 64)
        y.square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_cells_see_their_inputs_and_channels_double(space):
    wide = spaces.get("scnas", base_channels=3)
    net = wide.build(wide.sample(5), 1, 2)
    # cell outputs: 4 nodes x base * 2**level channels
    pres = [(cell.pre[0].kind, cell.pre[1].kind, cell.pre[1].norm.num_features) for cell in net.cells]
    assert pres == [
        ("same", "same", 6),  # red -> level 1
        ("down", "same", 6),  # enc 1: stem (level 0), red 1
        ("same", "same", 12),  # red -> level 2
        ("down", "same", 12),
        ("same", "same", 24),  # red -> level 3
        ("down", "same", 24),  # inter
        ("up", "up", 12),  # exp -> level 2
        ("up", "same", 12),  # dec 2: inter (level 3), exp
        ("up", "up", 6),
        ("up", "same", 6),
        ("up", "up", 3),
        ("up", "same", 3),
    ]
    # reduction cells: stride 2 on the edges that leave the cell inputs only
    red = net.cells[0]
    strides = [edge.op.stride for edge in red.edges]
    preds = [p for node in red.structure for p, _ in node]
    assert strides == [2 if p < 2 else 1 for p in preds]


def test_cost_params_match_built_module(space):
    for seed in range(3):
        arch = space.sample(seed)
        cost = space.cost(arch, (2, 32, 32, 32), num_classes=3)
        assert cost.params == sum(p.numel() for p in space.build(arch, 2, 3).parameters())
        assert cost.flops > 0
    # pooling and identity everywhere: only the fixed convolutions hold weights
    bare = space.decode([v if i % 2 == 0 else OPS.index("identity") for i, v in enumerate(space.encode(arch))])
    assert space.cost(bare, (2, 32, 32, 32), 3).params < space.cost(arch, (2, 32, 32, 32), 3).params


def _node(arch, cell, j, node):
    return ScnasArch(
        **{
            t: getattr(arch, t) if t != cell else tuple(node if i == j else n for i, n in enumerate(getattr(arch, t)))
            for t in CELL_TYPES
        }
    )


def test_bad_architectures_name_the_position(space):
    arch = space.sample(1)
    with pytest.raises(ArchError, match="position 18: predecessor 3 of node 0 of the red cell does not exist"):
        space.encode(_node(arch, "red", 0, ((0, "identity"), (3, "conv3x3x3"))))
    with pytest.raises(ArchError, match="position 37: op 'conv5x5x5' of node 1 of the dec cell"):
        space.encode(_node(arch, "dec", 1, ((0, "conv5x5x5"), (2, "identity"))))
    with pytest.raises(ArchError, match="position 54: the second predecessor of node 1 of the exp cell"):
        space.encode(_node(arch, "exp", 1, ((2, "identity"), (1, "identity"))))
    with pytest.raises(ArchError, match="node 2 of the enc cell must be two"):
        space.encode(_node(arch, "enc", 2, ((0, "identity"),)))
    vec = space.encode(arch)
    with pytest.raises(ArchError, match="length 63, expected 64"):
        space.decode(vec[:-1])
    vec[9] = 7
    with pytest.raises(ArchError, match="position 9: value 7 outside 0..6"):
        space.decode(vec)
    vec[9], vec[12] = 0, 5
    with pytest.raises(ArchError, match="position 12: value 5 outside 0..4"):
        space.decode(vec)
    with pytest.raises(ArchError, match="position 18"):
        space.build(_node(arch, "red", 0, ((0, "identity"), (3, "conv3x3x3"))), 1, 2)


def test_one_hot_supernet_equals_extracted_network(space):
    torch.manual_seed(1)
    supernet = space.supernet(2, 3)
    assert supernet.arch_shapes() == {t: (14, 8) for t in CELL_TYPES}
    x = torch.randn(1, 2, 16, 16, 16)
    arch = space.sample(7)
    one_hot = supernet.one_hot(arch)
    assert all(w.sum() == 14 for w in one_hot.values())
    with torch.no_grad():
        want = supernet.extract(arch)(x)
        assert torch.allclose(supernet(x, one_hot), want, atol=1e-5)
        # the same one-hot weights as a top-1 sample: only the chosen candidates run
        top1 = {t: (w, w.argmax(1, keepdim=True)) for t, w in one_hot.items()}
        assert torch.allclose(supernet(x, top1), want, atol=1e-5)
    other = space.sample(8)
    with torch.no_grad():
        assert torch.allclose(
            supernet(x, {t: (w, w.argmax(1, keepdim=True)) for t, w in supernet.one_hot(other).items()}),
            supernet.extract(other)(x),
            atol=1e-5,
        )


def test_supernet_trains_on_gumbel_samples(space):
    torch.manual_seed(2)
    supernet = space.supernet(1, 2)
    logits = supernet.arch_logits()
    x = torch.randn(1, 1, 16, 16, 16)
    weights = {t: ops.gumbel_topk(v, 1.0, k=2) for t, v in logits.items()}
    supernet(x, weights).square().mean().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in logits.values())
    # a sample that leaves every red edge only zero: red cells output zeros at half the size
    zero = CELL_CANDIDATES.index("zero")
    hot = torch.zeros(14, 8)
    hot[:, zero] = 1
    seen = []
    hooks = [supernet.cells[i].register_forward_hook(lambda m, i, o: seen.append(o)) for i in (0, 2)]
    with torch.no_grad():
        y = supernet(x, {**weights, "red": (hot, torch.full((14, 1), zero))})
    for h in hooks:
        h.remove()
    assert y.shape == (1, 2, 16, 16, 16) and torch.isfinite(y).all()
    assert [tuple(o.shape) for o in seen] == [(1, 8, 8, 8, 8), (1, 16, 4, 4, 4)] and all((o == 0).all() for o in seen)
    with pytest.raises(ValueError, match=r"weights\['dec'\] must have shape \(14, 8\)"):
        supernet(x, {**{t: v.softmax(-1) for t, v in logits.items()}, "dec": torch.ones(14, 7)})
    with pytest.raises(ValueError, match="groups"):
        supernet(x, {"enc": logits["enc"].softmax(-1)})


def test_derive_keeps_the_two_strongest_edges_per_node(space):
    supernet = space.supernet(1, 2)
    for seed in range(10):
        arch = space.sample(seed)
        assert space.derive(supernet.one_hot(arch)) == arch
    w = {t: torch.zeros(14, 8) for t in CELL_TYPES}
    w["enc"][:, CELL_CANDIDATES.index("zero")] = 10.0  # zero never counts
    w["enc"][edge_index(3, 4), OPS.index("avg_pool3")] = 3.0
    w["enc"][edge_index(3, 1), OPS.index("sep_dil3x3x3_r4")] = 2.0
    w["enc"][edge_index(3, 0), OPS.index("conv3x3x3")] = 1.0
    arch = space.derive(w)
    assert arch.enc[3] == ((1, "sep_dil3x3x3_r4"), (4, "avg_pool3"))
    assert arch.red[0] == ((0, OPS[0]), (1, OPS[0]))  # all ties: lowest predecessors and op
    with pytest.raises(ValueError, match=r"weights\['exp'\] must be a \(14, 8\) tensor"):
        space.derive({t: w[t] for t in ("enc", "red", "dec")})
