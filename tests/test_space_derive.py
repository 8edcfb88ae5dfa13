"""``space.derive(logits)``, the one call every supernet searcher ends with (issue 20 item 2): round trips
of strongly favouring logits, valid results for any logits, logits on any dtype/device with gradients,
clear errors; tautoml's NoSupernetError; the dints export as MONAI's search codes, loaded into MONAI's
``TopologyInstance``/``DiNTS`` as its tutorial's ``train_dints.py`` does."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nas3d_fast import spaces
from nas3d_fast.spaces.base import NoSupernetError
from nas3d_fast.spaces.c2fnas import CELL_OPS, topologies
from nas3d_fast.spaces.dints import load_monai_codes, most_probable_children
from nas3d_fast.spaces.scnas import CELL_CANDIDATES, CELL_TYPES, OPS, edge_index

# Tiny spaces: derive never runs a network, the supernets are only built for one_hot and arch_shapes.
TOPOLOGY = topologies()[100]
CASES = {
    "dints": ({"num_blocks": 3, "num_depths": 2, "channel_mul": 0.0625, "p3d": True}, {}),
    "scnas": ({"base_channels": 1}, {}),
    "c2fnas": ({"channels": 2, "topology": list(TOPOLOGY)}, {}),
    "ronasmis": ({"base_channels": 2, "depth": 2, "layers_per_stage": 1}, {}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    options, supernet_options = CASES[request.param]
    space = spaces.get(request.param, **options)
    return space, space.supernet(1, 2, **supernet_options)


def _random_logits(space, seed: int, scale: float = 1.0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(*shape, generator=g, dtype=dtype) for k, shape in space.arch_shapes().items()}


def test_arch_shapes_are_the_supernets(case):
    space, supernet = case
    assert space.arch_shapes() == supernet.arch_shapes()
    assert {k: tuple(p.shape) for k, p in supernet.arch_logits().items()} == space.arch_shapes()


def test_strongly_favouring_logits_give_the_architecture_back(case):
    space, supernet = case
    rng = np.random.default_rng(0)
    for _ in range(30):
        arch = space.sample(rng)
        for scale in (10.0, 1e4):
            logits = {g: scale * w for g, w in supernet.one_hot(arch).items()}
            assert space.derive(logits) == arch


def test_any_logits_derive_a_valid_architecture(case):
    space, supernet = case
    for seed in range(30):
        arch = space.derive(_random_logits(space, seed, scale=(0.01, 1.0, 50.0)[seed % 3]))
        space.check(arch)
        assert isinstance(arch, space.arch_type)
    space.check(space.derive({k: torch.zeros(*s) for k, s in space.arch_shapes().items()}))  # all ties
    space.check(space.derive(dict(supernet.arch_logits())))  # the searchers' own call


def test_logits_on_any_dtype_and_device_with_gradients(case):
    space, _ = case
    base = _random_logits(space, 7, dtype=torch.float64)
    expected = space.derive(base)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.float64):
            logits = {
                k: torch.nn.Parameter(v.to(device, dtype).clone()) for k, v in base.items()
            }  # requires_grad, as arch_logits() holds them
            before = {k: v.detach().clone() for k, v in logits.items()}
            assert space.derive(logits) == expected
            assert space.derive(torch.nn.ParameterDict(logits)) == expected
            for k, v in logits.items():
                assert torch.equal(v.detach(), before[k]) and v.grad is None  # untouched
    assert space.derive({k: v.numpy() for k, v in base.items()}) == expected


def test_bad_logits_name_the_group_and_shape(case):
    space, _ = case
    shapes = space.arch_shapes()
    good = _random_logits(space, 1)
    group, shape = next(iter(shapes.items()))
    want = rf"weights\['{group}'\] must be a \({shape[0]}, {shape[1]}\) tensor"
    with pytest.raises(ValueError, match=want + ".*missing"):
        space.derive({k: v for k, v in good.items() if k != group})
    with pytest.raises(ValueError, match=r"unknown groups \['extra'\]"):
        space.derive({**good, "extra": torch.zeros(1, 1)})
    with pytest.raises(ValueError, match=want + rf".*got shape \({shape[0]}, {shape[1] + 1}\)"):
        space.derive({**good, group: torch.zeros(shape[0], shape[1] + 1)})
    with pytest.raises(ValueError, match=want + ".*got shape"):
        space.derive({**good, group: torch.zeros(shape[0] * shape[1])})
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = good[group].clone()
        t[shape[0] - 1, 0] = bad
        with pytest.raises(ValueError, match=want + rf".*finite values; rows \[{shape[0] - 1}\]"):
            space.derive({**good, group: t})
    with pytest.raises(ValueError, match=want + ".*got list"):
        space.derive({**good, group: good[group].tolist()})
    with pytest.raises(ValueError, match=want + ".*meta tensor"):
        space.derive({**good, group: torch.empty(shape, device="meta")})
    with pytest.raises(ValueError, match="takes a dict"):
        space.derive(list(good.values()))


def test_tautoml_has_no_supernet_and_says_which_searchers_fit():
    space = spaces.get("tautoml")
    message = r"space 'tautoml' has no supernet: search it with a trial searcher \(random, evolution, relation\)"
    for call in (lambda: space.supernet(1, 2), lambda: space.derive({}), space.arch_shapes):
        with pytest.raises(NoSupernetError, match=message) as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, NotImplementedError)
        assert "trains each sampled configuration from scratch" in str(info.value)


# -- the rules of each space ---------------------------------------------------------------------


def test_dints_derive_is_decode_logits_of_monai_style_logits():
    space = spaces.get("dints", **CASES["dints"][0])
    L, E, O = space.layout.num_blocks, space.num_edges, len(space.ops)
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        a, c = torch.randn(L, E, generator=g) * 2, torch.randn(L, E, O, generator=g)
        expected = space.decode_logits(a, c)
        # a MONAI-style search's paths, (0, a): on - off = a
        assert space.derive({"paths": torch.stack([torch.zeros_like(a), a], -1).reshape(-1, 2),
                             "ops": c.reshape(-1, O)}) == expected
        # only the difference counts
        shift = torch.randn(L * E, 1, generator=g)
        assert space.derive({"paths": torch.stack([-a / 2, a / 2], -1).reshape(-1, 2) + shift,
                             "ops": c.reshape(-1, O)}) == expected


def test_scnas_derive_follows_darts():
    space = spaces.get("scnas", base_channels=1)
    logits = {t: torch.zeros(14, 8) for t in CELL_TYPES}
    zero = CELL_CANDIDATES.index("zero")
    enc = logits["enc"]
    # edge (0 -> node 3): its best raw logit (4, avg_pool) is the largest, but its zero logit is larger
    # still, so its softmax weight is small: DARTS ranks edges on the softmax, not on the raw logits.
    enc[edge_index(3, 0), zero], enc[edge_index(3, 0), OPS.index("avg_pool3")] = 9.0, 4.0
    enc[edge_index(3, 2), OPS.index("identity")] = 2.0
    enc[edge_index(3, 4), OPS.index("max_pool3")] = 1.5
    enc[edge_index(3, 1), zero] = 20.0  # an edge whose zero wins is what DARTS drops
    arch = space.derive(logits)
    assert arch.enc[3] == ((2, "identity"), (4, "max_pool3"))
    # the zero candidate is never chosen even where it dominates every edge of a node
    logits["red"][:, zero] = 50.0
    arch = space.derive(logits)
    assert all(op in OPS for node in arch.red for _, op in node)
    assert arch.red[1] == ((0, OPS[0]), (1, OPS[0]))  # ties: lower predecessors, lower op


def test_ronasmis_derive_is_the_argmax_per_layer():
    space = spaces.get("ronasmis", **CASES["ronasmis"][0])
    L, K = space.arch_shapes()["op"]
    logits = {"op": torch.zeros(L, K), "skip": torch.zeros(L, 2)}
    logits["op"][1, 3], logits["skip"][2, 1] = 0.5, 0.1
    arch = space.derive(logits)
    assert arch.ops[1] == space.ops[3] and arch.ops[0] == space.ops[0]
    assert arch.skips == tuple(int(i == 2) for i in range(L))


def test_c2fnas_derive_on_the_fine_stage_topology():
    fine = spaces.get("c2fnas", channels=2, topology=TOPOLOGY)
    logits = {"ops": torch.zeros(12, 3)}
    logits["ops"][5, 2], logits["ops"][0, 0] = 1.0, 1.0
    arch = fine.derive(logits)
    assert arch.topology == TOPOLOGY
    assert arch.ops == tuple(CELL_OPS[2] if i == 5 else CELL_OPS[0] for i in range(12))
    assert fine.options == {"channels": 2, "topology": list(TOPOLOGY)}
    assert fine.supernet(1, 2).topology == TOPOLOGY  # the supernet defaults to the space's topology
    assert {fine.sample(s).topology for s in range(5)} == {TOPOLOGY}
    other = topologies()[0]
    with pytest.raises(spaces.ArchError, match="not this fine-stage space's topology"):
        fine.check(spaces.get("c2fnas").sample(0).__class__(other, ("conv3x3x3",) * 12))
    with pytest.raises(ValueError, match="not this fine-stage space's topology"):
        fine.supernet(1, 2, topology=other)
    joint = spaces.get("c2fnas", channels=2)
    assert joint.options == {"channels": 2}
    with pytest.raises(ValueError, match="derive needs the fine stage's topology"):
        joint.derive(logits)
    assert joint.derive(logits, topology=TOPOLOGY) == arch
    assert next(iter(fine.enumerate())) == type(arch)(TOPOLOGY, (CELL_OPS[0],) * 12)


# -- the dints export for MONAI --------------------------------------------------------------------


def _quiet(factory, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):  # MONAI prints a patch-size recommendation
        return factory(*args, **kwargs)


@pytest.mark.parametrize("depths", [2, 3])
def test_dints_export_trains_in_monai(tmp_path, depths):
    nets = pytest.importorskip("monai.networks.nets")
    options = {"num_blocks": 3, "num_depths": depths, "channel_mul": 0.0625, "use_downsample": True, "p3d": True}
    space = spaces.get("dints", **options)
    supernet = space.supernet(1, 2)
    for seed in range(3):
        arch = space.sample(seed)
        path = tmp_path / f"search_code_{seed}.pth"
        space.export_monai(arch, path, iter_num=10 * seed, epochs=seed, best_dsc=0.5)
        assert sorted(os.listdir(tmp_path)) == sorted(f"search_code_{s}.pth" for s in range(seed + 1))  # no tmp

        # train_dints.py: torch.load(args.arch_ckpt, weights_only=True), with numpy arrays allowed
        ckpt = load_monai_codes(path)
        node_a, arch_code_a, arch_code_c = ckpt["node_a"], ckpt["arch_code_a"], ckpt["arch_code_c"]
        assert (ckpt["iter_num"], ckpt["epochs"], ckpt["best_dsc"]) == (10 * seed, seed, 0.5)
        assert node_a.dtype == np.int64 and arch_code_a.dtype == np.float64 and arch_code_c.dtype == np.int64
        for key in ("code_a", "code_c", "code_a_max"):  # Auto3DSeg's dints template's names
            np.testing.assert_array_equal(ckpt[key], ckpt["arch_" + key])
        assert space.from_monai(arch_code_a, arch_code_c) == arch
        dints_space = _quiet(
            nets.TopologyInstance,
            channel_mul=options["channel_mul"],
            num_blocks=options["num_blocks"],
            num_depths=depths,
            use_downsample=True,
            arch_code=[arch_code_a, arch_code_c],
            device="cpu",
        )
        model = nets.DiNTS(dints_space=dints_space, in_channels=1, num_classes=2, use_downsample=True, node_a=node_a)
        with torch.no_grad():
            y = model(torch.randn(1, 1, 16, 16, 16))
        assert y.shape == (1, 2, 16, 16, 16) and torch.isfinite(y).all()
        # the MONAI network is the architecture: its cells are exactly the active edges, with their ops
        active = {tuple(map(int, k.strip("()").split(","))) for k in dints_space.cell_tree}
        assert active == {(l, e) for l, row in enumerate(arch.edges) for e, v in enumerate(row) if v}
        # and it has the parameters of the discrete network this package builds from the supernet
        ours = supernet.extract(arch)
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ours.parameters())


def test_dints_export_with_logits_is_monais_decode(tmp_path):
    pytest.importorskip("monai")
    from monai.networks.nets.dints import TopologySearch

    space = spaces.get("dints", num_blocks=3, num_depths=2, channel_mul=0.0625, p3d=True)
    search = _quiet(TopologySearch, channel_mul=0.0625, num_blocks=3, num_depths=2)
    torch.manual_seed(0)
    for i in range(4):
        with torch.no_grad():
            search.log_alpha_a.normal_(0, 1.5)
            search.log_alpha_c.normal_(0, 1)
        a, c = search.log_alpha_a.detach(), search.log_alpha_c.detach()
        logits = {"paths": torch.stack([torch.zeros_like(a), a], -1).reshape(-1, 2), "ops": c.reshape(-1, 5)}
        arch = space.derive(logits)
        record = space.export_monai(arch, tmp_path / f"codes_{i}.pth", logits)
        node_a, code_a, code_c, code_a_max = search.decode()
        np.testing.assert_array_equal(record["node_a"], node_a)
        np.testing.assert_array_equal(record["arch_code_a"], code_a)
        np.testing.assert_array_equal(record["arch_code_c"], code_c)
        np.testing.assert_array_equal(record["arch_code_a_max"], code_a_max)
        np.testing.assert_array_equal(most_probable_children(a.numpy()), code_a_max)
        loaded = load_monai_codes(tmp_path / f"codes_{i}.pth")
        assert loaded.keys() == record.keys()
    with pytest.raises(ValueError, match="not the argmax of these logits"):
        other = next(x for x in (space.sample(s) for s in range(50)) if x != arch)
        space.export_monai(other, tmp_path / "bad.pth", logits)
    assert not (tmp_path / "bad.pth").exists()


def test_dints_export_refuses_bad_input(tmp_path):
    space = spaces.get("dints", num_blocks=3, num_depths=2, channel_mul=0.0625)
    arch = space.sample(0)
    with pytest.raises(spaces.ArchError):
        space.export_monai(type(arch)(edges=((0,) * 4,) * 3), tmp_path / "x.pth")
    with pytest.raises(ValueError, match="iter_num"):
        space.export_monai(arch, tmp_path / "x.pth", iter_num=-1)
    with pytest.raises(ValueError, match="metric best_dsc"):
        space.export_monai(arch, tmp_path / "x.pth", best_dsc="high")
    assert not os.listdir(tmp_path)


def test_importing_the_package_never_imports_monai():
    code = (
        "import sys, nas3d_fast, nas3d_fast.spaces.dints, nas3d_fast.spaces.base; "
        "from nas3d_fast import spaces; spaces.get('dints', num_blocks=2, num_depths=2).sample(0); "
        "assert not any(m == 'monai' or m.startswith('monai.') for m in sys.modules), 'monai imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_child_weights_run_exactly_the_architecture(case):
    """``supernet.child_weights(arch)``: one candidate per edge, in the sampled-path form; the same output
    as the dense one-hot weights (issue 22: single-path one-shot and ENAS children)."""
    space, supernet = case
    supernet.eval()
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    for i in range(3):
        arch = space.sample(i)
        weights = supernet.child_weights(arch)
        for group, (w, idx) in weights.items():
            assert idx.shape == (w.shape[0], 1) and torch.equal(w.gather(1, idx), torch.ones_like(idx, dtype=w.dtype))
        with torch.no_grad():
            torch.testing.assert_close(supernet(x, weights), supernet(x, supernet.one_hot(arch)), atol=1e-4, rtol=1e-4)
