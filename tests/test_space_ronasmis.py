"""The ronasmis space: encodings, JSON, discrete networks, cost, supernet == extracted network."""

import numpy as np
import pytest
import torch

from nas3d_fast import ops, spaces
from nas3d_fast.spaces import Arch, ArchError
from nas3d_fast.spaces.ronasmis import DEFAULT_OPS, RonasmisArch


@pytest.fixture(scope="module")
def space():
    return spaces.get("ronasmis", base_channels=2)


def test_registry_options_and_layout(space):
    assert spaces.get("ronasmis").options["base_channels"] == 16
    assert space.stride == 8 and space.num_layers == 14
    assert space.vector_choices() == [len(DEFAULT_OPS), 2] * 14
    assert spaces.get("ronasmis", depth=3, layers_per_stage=1).vector_choices() == [6, 2] * 5
    with pytest.raises(ValueError, match="base_channels"):
        spaces.get("ronasmis", base_channels=0)
    with pytest.raises(ValueError, match="ops"):
        spaces.get("ronasmis", ops=("conv3x3x3", "zero"))


def test_thousand_samples_round_trip_encoding_and_json(space):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(1000):
        arch = space.sample(rng)
        vec = space.encode(arch)
        assert space.decode(vec) == arch
        assert Arch.from_json(arch.to_json()) == arch
        assert space.arch_from_json(arch.to_json(indent=1)) == arch
        seen.add(tuple(vec))
    assert len(seen) == 1000  # uniform over 6**14 * 2**14: no repeats expected
    counts = np.bincount([v for vec in seen for v in vec[0::2]], minlength=6)
    assert counts.min() > 0.8 * counts.mean()  # every op drawn about equally often


def test_default_arch_is_plain_unet(space):
    arch = space.default_arch()
    assert set(arch.ops) == {"conv3x3x3"} and set(arch.skips) == {0}
    net = space.build(arch, 1, 3)
    assert all(not layer.skip and layer.op.name == "conv3x3x3" for layer in net.layers)
    assert [layer.op.in_channels for layer in net.layers] == [2, 2, 4, 4, 8, 8, 16, 16, 8, 8, 4, 4, 2, 2]


def test_twenty_samples_build_forward_backward_at_64(space):
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64, 64, 64)
    for seed in range(20):
        arch = space.sample(seed)
        net = space.build(arch, 1, 2)
        y = net(x)
        assert y.shape == (1, 2, 64, 64, 64)
        y.square().mean().backward()
        # every parameter but the auxiliary heads (unused without deep supervision) gets a gradient
        grads = [p.grad for name, p in net.named_parameters() if not name.startswith(("heads.1", "heads.2"))]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_cost_params_match_built_module(space):
    for seed in range(5):
        arch = space.sample(seed)
        cost = space.cost(arch, (1, 32, 32, 32), num_classes=2)
        net = space.build(arch, 1, 2)
        assert cost.params == sum(p.numel() for p in net.parameters())
        assert cost.flops > 0
    plain, dilated = space.default_arch(), space.decode([4, 0] * space.num_layers)
    # separable convolutions hold fewer weights and cost fewer FLOPs than dense 3x3x3 ones
    assert space.cost(dilated, (1, 32, 32, 32)).params < space.cost(plain, (1, 32, 32, 32)).params
    assert space.cost(dilated, (1, 32, 32, 32)).flops < space.cost(plain, (1, 32, 32, 32)).flops
    with pytest.raises(ValueError, match="multiples of 8"):
        space.cost(plain, (1, 20, 32, 32))


def test_deep_supervision_outputs_only_in_training(space):
    net = space.build(space.default_arch(), 1, 2, deep_supervision=True)
    x = torch.randn(2, 1, 16, 16, 16)
    outs = net(x)
    assert isinstance(outs, tuple) and len(outs) == 3  # logits + decoder levels 1 and 2
    assert all(o.shape == (2, 2, 16, 16, 16) for o in outs)
    net.eval()
    with torch.no_grad():
        logits = net(x)
    assert isinstance(logits, torch.Tensor) and torch.allclose(logits, outs[0].detach(), atol=1e-5)
    plain = space.build(space.default_arch(), 1, 2)
    assert isinstance(plain(x), torch.Tensor)  # without the flag, training mode gives logits only


def test_bad_architectures_name_the_position(space):
    good = space.default_arch()
    with pytest.raises(ArchError, match="length 27, expected 28"):
        space.decode(space.encode(good)[:-1])
    vec = space.encode(good)
    vec[6] = 6
    with pytest.raises(ArchError, match="position 6: value 6 outside 0..5"):
        space.decode(vec)
    vec[6], vec[9] = 0, 2
    with pytest.raises(ArchError, match="position 9: value 2 outside 0..1"):
        space.decode(vec)
    with pytest.raises(ArchError, match=r"position 4 \(layer 2 op\): 'conv5x5x5'"):
        space.encode(RonasmisArch(ops=good.ops[:2] + ("conv5x5x5",) + good.ops[3:], skips=good.skips))
    with pytest.raises(ArchError, match=r"position 3 \(layer 1 skip\)"):
        space.encode(RonasmisArch(ops=good.ops, skips=(0, 3) + good.skips[2:]))
    with pytest.raises(ArchError, match="ops has 13 entries, expected 14"):
        space.build(RonasmisArch(ops=good.ops[:13], skips=good.skips), 1, 2)
    with pytest.raises(ArchError, match="fields"):
        Arch.from_json('{"format": "nas3d-arch-1", "space": "ronasmis", "arch": {"ops": []}}')


@pytest.mark.parametrize("norm", ["shared", "per_op"])
def test_one_hot_supernet_equals_extracted_network(space, norm):
    torch.manual_seed(1)
    supernet = space.supernet(2, 3, norm=norm)
    assert supernet.arch_shapes() == {"op": (14, 6), "skip": (14, 2)}
    x = torch.randn(1, 2, 16, 16, 16)
    for seed in range(3):
        arch = space.sample(seed + 100)
        net = supernet.extract(arch)
        with torch.no_grad():
            want = net(x)
            assert torch.allclose(supernet(x, supernet.one_hot(arch)), want, atol=1e-5)
            assert torch.allclose(supernet(x, supernet.child_weights(arch)), want, atol=1e-5)


def test_supernet_trains_on_dense_and_gumbel_weights(space):
    torch.manual_seed(2)
    supernet = space.supernet(1, 2)
    logits = supernet.arch_logits()
    x = torch.randn(1, 1, 16, 16, 16)
    for weights in (
        {k: v.softmax(-1) for k, v in logits.items()},
        {k: ops.gumbel_topk(v, 1.0, k=2) for k, v in logits.items()},
    ):
        logits.zero_grad()
        supernet(x, weights).square().mean().backward()
        assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in logits.values())
    with pytest.raises(ValueError, match=r"weights\['skip'\] must have shape \(14, 2\)"):
        supernet(x, {"op": logits["op"].softmax(-1), "skip": torch.ones(14, 3)})
    with pytest.raises(ValueError, match="groups"):
        supernet(x, {"op": logits["op"].softmax(-1)})


def test_derive_picks_the_strongest_candidates(space):
    supernet = space.supernet(1, 2)
    for seed in range(10):
        arch = space.sample(seed)
        assert space.derive(supernet.one_hot(arch)) == arch
    logits = {"op": torch.zeros(14, 6), "skip": torch.zeros(14, 2)}
    logits["op"][3, 4], logits["skip"][5, 1] = 2.0, 0.5
    arch = space.derive(logits)
    assert arch.ops[3] == DEFAULT_OPS[4] and arch.ops[0] == DEFAULT_OPS[0] and arch.skips[5] == 1
    with pytest.raises(ValueError, match=r"weights\['skip'\] must be a \(14, 2\) tensor"):
        space.derive({"op": logits["op"]})
