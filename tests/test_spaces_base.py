"""The space interface itself (nas3d_fast.spaces.base), on a two-layer toy space."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from nas3d_fast import spaces
from nas3d_fast.spaces import Arch, ArchError, SearchSpace, check_vector


@dataclasses.dataclass(frozen=True)
class ToyArch(Arch):
    space = "toy_base_test"
    kernels: tuple


class ToySpace(SearchSpace):
    name = "toy_base_test"
    arch_type = ToyArch
    stride = 2

    def sample(self, rng=None):
        return ToyArch(tuple(int(v) for v in spaces.as_rng(rng).integers(0, 2, 2)))

    def vector_choices(self):
        return [2, 2]

    def encode(self, arch):
        return check_vector(arch.kernels, self.vector_choices(), self.name)

    def decode(self, vector):
        return ToyArch(tuple(check_vector(vector, self.vector_choices(), self.name)))

    def build(self, arch, in_channels, num_classes):
        k0, k1 = (1 + 2 * k for k in arch.kernels)
        return nn.Sequential(nn.Conv3d(in_channels, 4, k0, padding=k0 // 2), nn.Conv3d(4, num_classes, k1, padding=k1 // 2))

    def supernet(self, in_channels, num_classes, **options):
        raise NotImplementedError("the toy space has no supernet")


spaces.register(ToySpace)


def test_registry_and_json_round_trip():
    space = spaces.get("toy_base_test")
    assert "toy_base_test" in spaces.names() and "dints" in spaces.names()
    arch = space.sample(np.random.default_rng(3))
    again = Arch.from_json(arch.to_json())
    assert again == arch and isinstance(again, ToyArch)
    assert space.arch_from_json(arch.to_json(indent=2)) == arch
    assert space.decode(space.encode(arch)) == arch


def test_cost_counts_params_and_conv_flops():
    space = spaces.get("toy_base_test")
    arch = ToyArch((1, 0))  # 3x3x3 conv 1->4 then 1x1x1 conv 4->2
    cost = space.cost(arch, (1, 8, 8, 8), num_classes=2)
    assert cost.params == 1 * 4 * 27 + 4 + 4 * 2 + 2
    assert cost.flops == 2 * 8**3 * (4 * 27 + 2 * 4)


def test_bad_inputs_name_the_problem():
    space = spaces.get("toy_base_test")
    with pytest.raises(ArchError, match="position 1: value 5 outside 0..1"):
        space.decode([0, 5])
    with pytest.raises(ArchError, match="length 3, expected 2"):
        space.decode([0, 1, 1])
    with pytest.raises(ValueError, match="unknown search space 'nope'"):
        spaces.get("nope")
    with pytest.raises(ArchError, match="for space 'scnas', expected 'toy_base_test'"):
        ToyArch.from_json('{"format": "nas3d-arch-1", "space": "scnas", "arch": {}}')
    with pytest.raises(ArchError, match="not valid JSON"):
        Arch.from_json("{")
    with pytest.raises(ArchError, match="missing"):
        ToyArch.from_dict({})
    with pytest.raises(ValueError, match="multiples of 2"):
        space.cost(ToyArch((0, 0)), (1, 8, 8, 7))
    with pytest.raises(TypeError, match="rng must be"):
        space.sample("seed")


def test_supernet_arch_logits_shapes():
    class Net(spaces.Supernet):
        def arch_shapes(self):
            return {"normal": (3, 4), "reduce": (2, 4)}

        def one_hot(self, arch):
            raise NotImplementedError

        def extract(self, arch):
            raise NotImplementedError

    logits = Net().arch_logits()
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"normal": (3, 4), "reduce": (2, 4)}
    assert all(v.requires_grad and v.abs().max() < 0.1 for v in logits.values())
    assert torch.is_tensor(logits["normal"])
