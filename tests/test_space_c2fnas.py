"""The c2fnas space: the 924 topologies of the priors, encodings, networks, cost and the fine-stage supernet."""

import itertools
import math

import numpy as np
import pytest
import torch

from nas3d_fast import spaces
from nas3d_fast.spaces import Arch, ArchError
from nas3d_fast.spaces.c2fnas import CELL_OPS, C2FNASArch, C2FNASNetwork, cell_inputs, topologies


def _moves(code):
    return [b - a for a, b in zip((0, *code[:-1]), code)]


def test_enumerate_gives_the_924_topologies_of_the_priors():
    space = spaces.get("c2fnas")
    archs = list(space.enumerate())
    codes = {a.topology for a in archs}
    assert len(archs) == len(codes) == 924 == math.comb(12, 6)
    assert all(a.ops == ("conv3x3x3",) * 12 for a in archs)  # the coarse stage's colouring c_0
    assert codes == set(topologies())
    for code in codes:
        moves = _moves(code)
        assert set(moves) <= {-1, 0, 1}
        assert [m for m in moves if m] == [1, 1, 1, -1, -1, -1]  # 3 downs, then 3 ups: the U-shape
        assert min(code) == 0 and max(code) == 3 and code[-1] == 0
    # Independently: every sequence of cell moves that the priors admit, by brute force over 3^12.
    admitted = set()
    for moves in itertools.product((-1, 0, 1), repeat=12):
        if moves.count(1) == 3 and moves.count(-1) == 3 and [m for m in moves if m] == [1, 1, 1, -1, -1, -1]:
            admitted.add(tuple(int(v) for v in np.cumsum(moves)))
    assert admitted == codes


def test_the_unpruned_lattice_has_auto_deeplabs_count():
    # The docstring's 2.9e4: 12 cells over 4 levels, first cell on the top level, one level per step.
    counts = [1, 0, 0, 0]
    for _ in range(11):
        counts = [sum(counts[m] for m in (n - 1, n, n + 1) if 0 <= m < 4) for n in range(4)]
    assert sum(counts) == 28657


def test_two_input_cells_follow_section_4_1():
    with pytest.raises(ArchError, match="position 10: a down-sampling after an up-sampling"):
        spaces.get("c2fnas").decode([1, 1, 2, 2, 3, 2, 1, 0, 0, 0, 1, 0, *[0] * 12])
    # Node 0 is the stem's output (level 0), node i + 1 cell i's output. Levels of nodes 0..12:
    # 0 | 0 1 1 2 3 2 2 1 0 0 0 0
    code = (0, 1, 1, 2, 3, 2, 2, 1, 0, 0, 0, 0)
    assert cell_inputs(code) == [
        (0, None),  # the first cell: no previous-previous cell
        (1, None),  # down 0 -> 1: the stem (level 0) is not at level 1
        (2, None),  # normal at 1: node 1 (cell 0) is at level 0
        (3, None),  # down 1 -> 2
        (4, None),  # down 2 -> 3
        (5, 4),  # up 3 -> 2: node 4 fed the down-sampling 2 -> 3 (here also the previous-previous)
        (6, None),  # normal at 2: node 5 (cell 4) is at level 3
        (7, 3),  # up 2 -> 1: node 3 (cell 2, level 1) fed the down-sampling 1 -> 2 of cell 3
        (8, 1),  # up 1 -> 0: node 1 (cell 0) fed the down-sampling 0 -> 1 of cell 1
        (9, None),  # normal at 0: node 8 (cell 7) is at level 1
        (10, 9),  # normal at 0, previous-previous at 0
        (11, 10),
    ]
    model = C2FNASNetwork(code, 1, 2, 2, lambda i, c: torch.nn.Identity())
    assert [len(cell.pre) for cell in model.cells] == [1, 1, 1, 1, 1, 2, 1, 2, 2, 1, 2, 2]


def test_sampled_archs_round_trip_through_vectors_and_json():
    space = spaces.get("c2fnas")
    rng = np.random.default_rng(0)
    choices = space.vector_choices()
    assert choices == [4] * 12 + [3] * 12
    seen = set()
    for _ in range(1000):
        arch = space.sample(rng)
        vector = space.encode(arch)
        assert len(vector) == 24 and all(0 <= v < n for v, n in zip(vector, choices))
        assert space.decode(vector) == arch
        assert Arch.from_json(arch.to_json()) == arch
        assert space.arch_from_json(arch.to_json(indent=1)) == arch
        seen.add(arch.topology)
    assert len(seen) > 500  # uniform over 924 topologies: 1000 draws see ~620 of them


def test_bad_architectures_name_the_position():
    space = spaces.get("c2fnas")
    good = space.encode(space.sample(1))
    with pytest.raises(ArchError, match="length 23, expected 24"):
        space.decode(good[:-1])
    with pytest.raises(ArchError, match="position 2: level 4 outside 0..3"):
        space.decode([1, 2, 4, *good[3:]])
    with pytest.raises(ArchError, match="position 1: level jumps from 0 to 2"):
        space.decode([0, 2, *good[2:]])
    with pytest.raises(ArchError, match="position 11: the code ends at level 1"):
        space.decode([1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 2, 1, *good[12:]])
    with pytest.raises(ArchError, match="position 11: the code reaches level 2"):
        space.decode([1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 0, *good[12:]])
    with pytest.raises(ArchError, match="position 15: value 3 outside 0..2"):
        space.decode([*good[:15], 3, *good[16:]])
    arch = space.sample(2)
    with pytest.raises(ArchError, match="position 17: cell 5 operation 'conv3x1x3'"):
        space.encode(C2FNASArch(arch.topology, (*arch.ops[:5], "conv3x1x3", *arch.ops[6:])))
    with pytest.raises(ArchError):
        space.build(C2FNASArch((0,) * 12, arch.ops), 1, 2)


def test_cost_counts_the_built_modules_parameters():
    space = spaces.get("c2fnas")
    for seed in range(3):
        arch = space.sample(seed)
        model = space.build(arch, 1, 3)
        cost = space.cost(arch, (1, 96, 96, 96), num_classes=3)
        assert cost.params == sum(p.numel() for p in model.parameters())
        assert cost.flops > 2 * cost.params  # every weight is used at least once per voxel of its level
    # 2D cells are cheaper than 3D cells in both counts.
    code = topologies()[0]
    flat, full = C2FNASArch(code, ("conv3x3x1",) * 12), C2FNASArch(code, ("conv3x3x3",) * 12)
    a, b = space.cost(flat, (1, 32, 32, 32)), space.cost(full, (1, 32, 32, 32))
    assert a.params < b.params and a.flops < b.flops
    with pytest.raises(ValueError, match="multiples of 16"):
        space.cost(full, (1, 40, 40, 40))


def test_sampled_networks_run_forward_and_backward_on_64_cubed_patches():
    space = spaces.get("c2fnas", channels=2)
    rng = np.random.default_rng(7)
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64, 64, 64)
    ops_seen = set()
    for _ in range(20):
        arch = space.sample(rng)
        ops_seen.update(arch.ops)
        model = space.build(arch, 1, 2)
        y = model(x)
        assert y.shape == (1, 2, 64, 64, 64)
        y.square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert ops_seen == set(CELL_OPS)


@pytest.mark.parametrize("norm", ["shared", "per_op"])
def test_supernet_with_one_hot_weights_equals_the_extracted_network(norm):
    space = spaces.get("c2fnas", channels=2)
    arch = space.sample(11)
    # float64: twelve cells of instance norms amplify float32 rounding (the shared placement merges
    # the P3D pair into one kernel) past any tight tolerance; in float64 the two agree to ~1e-12.
    supernet = space.supernet(2, 3, topology=arch, norm=norm).double()
    assert supernet.arch_shapes() == {"ops": (12, 3)}
    torch.manual_seed(1)
    with torch.no_grad():  # non-trivial norm weights too, so that a wrong copy would show
        for p in supernet.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(1, 2, 32, 32, 32, dtype=torch.float64)
    model = supernet.extract(arch)
    assert isinstance(model, C2FNASNetwork)
    assert sum(p.numel() for p in model.parameters()) == space.cost(arch, (2, 32, 32, 32), num_classes=3).params
    expected = model(x)
    torch.testing.assert_close(supernet(x, supernet.one_hot(arch)), expected, rtol=1e-9, atol=1e-9)
    # the single path of one-shot sampling: weight 1 on the arch's operation of every cell
    index = torch.tensor([[CELL_OPS.index(op)] for op in arch.ops])
    sampled = supernet(x, {"ops": (supernet.one_hot(arch)["ops"], index)})
    torch.testing.assert_close(sampled, expected, rtol=1e-9, atol=1e-9)
    # dense weights reach every operation's gradient and the architecture weights
    logits = supernet.arch_logits()
    supernet(x, {"ops": logits["ops"].softmax(-1)}).square().mean().backward()
    assert logits["ops"].grad is not None and logits["ops"].grad.abs().sum() > 0
    other = next(a for a in (space.sample(s) for s in range(50)) if a.topology != arch.topology)
    with pytest.raises(ArchError, match="not this supernet's"):
        supernet.extract(other)
    with pytest.raises(ValueError, match="needs topology="):
        space.supernet(2, 3)
    with pytest.raises(ValueError, match="shape \\(12, 3\\)"):
        supernet(x, {"ops": torch.ones(12, 2, dtype=torch.float64)})
