"""The tautoml space: the fixed-length encoding of blocks and training configuration, networks, cost."""

import numpy as np
import pytest
import torch

from nas3d_fast import spaces
from nas3d_fast.nn import AxialAttention3d, AxialAttentionBlock3d
from nas3d_fast.spaces import Arch, ArchError
from nas3d_fast.spaces.tautoml import (
    AUGMENTATIONS,
    BLOCK_TYPES,
    LEARNING_RATES,
    LOSSES,
    OPTIMIZERS,
    TAutoMLArch,
    TAutoMLNetwork,
)


def _arch(blocks, **config):
    defaults = {
        "augmentations": ("flip_x", "noise", "shift", "zoom", "scale_shift"),
        "learning_rate": 0.0001,
        "scheduler": "constant",
        "loss": "dice_ce",
        "optimizer": "adam",
    }
    return TAutoMLArch(tuple(blocks), **{**defaults, **config})


CHAIN = [
    ("residual", 2, -1, -1),
    ("bottleneck", 3, 0, -1),
    ("axial_xyz", 4, 0, 1),
    ("axial_yxz", 5, 1, 2),
    ("residual", 3, 2, 3),
]


def test_the_vector_table():
    space = spaces.get("tautoml")
    choices = space.vector_choices()
    assert len(choices) == 58 and choices[0] == 8
    for i in range(12):
        assert choices[1 + 4 * i : 5 + 4 * i] == [4, 4, max(1, i - 1), max(1, i)]
    assert choices[49:] == [8] * 5 + [5, 2, 5, 5]
    arch = _arch(CHAIN)
    v = space.encode(arch)
    # N - 5; block 0: residual at level 2; block 1: bottleneck at 3; block 2: axial_xyz at 4 from (0, 1)...
    assert v[:21] == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2, 2, 0, 1, 3, 3, 1, 2, 0, 1, 2, 3]
    assert v[21:49] == [0] * 28  # padding slots 5..11
    assert v[49:] == [0, 5, 6, 4, 7, 4, 0, 3, 0]
    assert space.training_config(arch) == {
        "augmentations": list(arch.augmentations),
        "augmentation_prob": 0.15,
        "learning_rate": 0.0001,
        "scheduler": "constant",
        "loss": "dice_ce",
        "optimizer": "adam",
    }


def test_padding_positions_are_ignored_beyond_n():
    space = spaces.get("tautoml")
    arch = _arch(CHAIN)
    v = space.encode(arch)
    noisy = list(v)
    noisy[21:49] = [3, 3, 3, 4] * 7  # in range for slots 5..11, and not a valid block 5 of its own
    assert space.decode(noisy) == arch
    longer = list(noisy)
    longer[0] = 1  # six blocks: slot 5 now counts, and (3, 4) are valid predecessors of block 5
    assert space.decode(longer).blocks[5] == ("axial_yxz", 5, 3, 4)


def test_sampled_archs_round_trip_through_vectors_and_json():
    space = spaces.get("tautoml")
    rng = np.random.default_rng(0)
    choices = space.vector_choices()
    sizes, kinds, levels = set(), set(), set()
    for _ in range(1000):
        arch = space.sample(rng)
        vector = space.encode(arch)
        assert len(vector) == 58 and all(0 <= v < n for v, n in zip(vector, choices))
        assert space.decode(vector) == arch
        assert space.encode(space.decode(vector)) == vector
        assert Arch.from_json(arch.to_json()) == arch
        assert space.arch_from_json(arch.to_json(indent=1)) == arch
        sizes.add(len(arch.blocks))
        kinds.update(b[0] for b in arch.blocks)
        levels.update(b[1] for b in arch.blocks)
        assert all(0 <= b[2] < b[3] < i for i, b in enumerate(arch.blocks) if i >= 2)
    assert sizes == set(range(5, 13)) and kinds == set(BLOCK_TYPES) and levels == {2, 3, 4, 5}


def test_bad_architectures_name_the_position():
    space = spaces.get("tautoml")
    v = space.encode(_arch(CHAIN))
    with pytest.raises(ArchError, match="length 57, expected 58"):
        space.decode(v[:-1])
    bad = list(v)
    bad[19] = 3  # block 4's first predecessor: blocks 0..3 exist, but it must precede the second (3)
    with pytest.raises(ArchError, match="position 20: block 4's predecessors must be two different blocks"):
        space.decode(bad)
    bad = list(v)
    bad[16] = 4  # block 3's second predecessor: only blocks 0..2 precede it
    with pytest.raises(ArchError, match="position 16: block 3's predecessor 4 does not exist"):
        space.decode(bad)
    bad[16] = 4.0  # integral floats are read as integers, and checked as such
    with pytest.raises(ArchError, match="position 16: block 3's predecessor 4 does not exist"):
        space.decode(bad)
    bad[16] = 1.5
    with pytest.raises(ArchError, match="position 16: 1.5 is not an integer"):
        space.decode(bad)
    bad = list(v)
    bad[10] = 4  # block 2's level - 2
    with pytest.raises(ArchError, match="position 10: block 2's level 6 outside 2..5"):
        space.decode(bad)
    bad = list(v)
    bad[0] = 8
    with pytest.raises(ArchError, match="position 0"):
        space.decode(bad)
    bad = list(v)
    bad[56] = 5
    with pytest.raises(ArchError, match="position 56: value 5 outside 0..4"):
        space.decode(bad)
    # the same checks on architectures
    with pytest.raises(ArchError, match="position 16: block 3's predecessor 3 does not exist"):
        space.encode(_arch([*CHAIN[:3], ("residual", 2, 1, 3), CHAIN[4]]))
    with pytest.raises(ArchError, match="position 6: block 1's level 1 outside"):
        space.encode(_arch([CHAIN[0], ("bottleneck", 1, 0, -1), *CHAIN[2:]]))
    with pytest.raises(ArchError, match="position 7: block 1's predecessors are \\(0, -1\\)"):
        space.encode(_arch([CHAIN[0], ("bottleneck", 3, 0, 0), *CHAIN[2:]]))
    with pytest.raises(ArchError, match="position 0: 4 blocks outside 5..12"):
        space.encode(_arch(CHAIN[:4]))
    with pytest.raises(ArchError, match="position 1: block 0's type 'conv'"):
        space.encode(_arch([("conv", 2, -1, -1), *CHAIN[1:]]))
    with pytest.raises(ArchError, match="position 54: learning rate 0.02"):
        space.encode(_arch(CHAIN, learning_rate=0.02))
    with pytest.raises(ArchError, match="position 57: optimizer 'rmsprop'"):
        space.encode(_arch(CHAIN, optimizer="rmsprop"))
    assert set(OPTIMIZERS) >= {"adam", "novograd"} and len(LOSSES) == 5 and len(LEARNING_RATES) == 5
    assert len(AUGMENTATIONS) == 8


def test_blocks_that_do_not_reach_the_output_are_not_built():
    space = spaces.get("tautoml", base_channels=4, num_heads=2)
    blocks = [*CHAIN, ("residual", 2, 0, 4), ("bottleneck", 2, 1, 5)]  # block 6 reads 1 and 5, not 2..4
    model = space.build(_arch(blocks), 1, 2)
    assert isinstance(model, TAutoMLNetwork)
    assert sorted(model.nodes, key=int) == ["0", "1", "2", "3", "4", "5", "6"]
    blocks = [*CHAIN, ("residual", 2, 0, 1), ("bottleneck", 2, 1, 5)]  # now 2, 3, 4 feed nothing
    model = space.build(_arch(blocks), 1, 2)
    assert sorted(model.nodes, key=int) == ["0", "1", "5", "6"]
    x = torch.randn(1, 1, 32, 32, 32)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_sampled_networks_run_forward_and_backward_on_64_cubed_patches():
    space = spaces.get("tautoml", base_channels=2, num_heads=1)
    rng = np.random.default_rng(5)
    torch.manual_seed(0)
    x = torch.randn(1, 2, 64, 64, 64)
    kinds = set()
    for _ in range(20):
        arch = space.sample(rng)
        model = space.build(arch, 2, 3)
        kinds.update(type(node.block).__name__ for node in model.nodes.values())
        y = model(x)
        assert y.shape == (1, 3, 64, 64, 64)
        y.square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert kinds == {"ResidualBlock", "BottleneckBlock", "AxialAttentionBlock3d"}


def test_cost_counts_parameters_and_axial_attention_flops():
    space = spaces.get("tautoml")
    for seed in range(3):
        arch = space.sample(seed)
        cost = space.cost(arch, (1, 128, 128, 128), num_classes=3)
        assert cost.params == sum(p.numel() for p in space.build(arch, 1, 3).parameters())
    # the registered formula: 2 B C X Y Z L per term (q.k, p.v and the three relative embeddings)
    from torch.utils.flop_counter import FlopCounterMode

    attention = AxialAttention3d(8, 2, "yxz", positional=True)
    with FlopCounterMode(display=False) as counter:
        attention(torch.randn(1, 8, 4, 6, 8))
    convs = 2 * 192 * (8 * 24 + 8 * 8)  # the qkv and output 1x1x1 convolutions
    assert counter.get_total_flops() == convs + 2 * 8 * 192 * (4 + 6 + 8) * 5
    # an axial block costs more than its convolutions alone
    arch = _arch([("axial_xyz", 2, -1, -1), *CHAIN[1:]])
    block = AxialAttentionBlock3d(32, 4, "xyz")
    with FlopCounterMode(display=False) as counter:
        block(torch.randn(1, 32, 8, 8, 8))
    assert counter.get_total_flops() > 2 * 512 * sum(p.numel() for n, p in block.named_parameters() if "weight" in n)
    assert space.cost(arch, (1, 64, 64, 64)).flops > 0


def test_supernet_is_not_part_of_t_automl():
    with pytest.raises(NotImplementedError, match="trains each sampled configuration from scratch"):
        spaces.get("tautoml").supernet(1, 2)


def test_options_are_checked():
    with pytest.raises(ValueError, match="base_channels must be even"):
        spaces.get("tautoml", base_channels=3)
    with pytest.raises(ValueError, match="num_heads \\(3\\) must divide base_channels \\(16\\)"):
        spaces.get("tautoml", num_heads=3)
    with pytest.raises(ValueError, match="multiples of 16"):
        spaces.get("tautoml").cost(_arch(CHAIN), (1, 24, 24, 24))
