"""
6. Writing a new search space
=============================

Every search space implements one interface, :class:`nas3d_fast.spaces.SearchSpace`; searchers, the
profiler and ``nas3d train`` talk to spaces only through it. So a space you write is searched, profiled
and trained by the same code as the five that ship with the package. This tutorial writes a small one,
``chain``: a stem, L residual layers that each choose one op, and a 1x1x1 head. It implements

- an :class:`~nas3d_fast.spaces.Arch` (the architecture, JSON in and out);
- ``sample``, ``vector_choices``, ``encode`` and ``decode`` (the 1D integer encoding of T-AutoML);
- ``build`` (the discrete network) and ``supernet`` (the weight-sharing network on
  :class:`~nas3d_fast.nn.MixedEdge3d`), with the supernet's ``arch_shapes``, ``one_hot`` and ``extract``;
- ``arch_shapes`` and ``derive`` on the space, which supernet searchers call.

Then it is registered, searched with the Gumbel searcher and profiled.
"""

# %%
# The architecture
# ----------------
# An architecture is a frozen dataclass whose fields are JSON-able; ``space`` names the space.
import dataclasses
import os
import tempfile
from typing import ClassVar

import torch
from torch import nn

from nas3d_fast import data, spaces
from nas3d_fast.nn import MixedEdge3d, make_candidate
from nas3d_fast.ops import gumbel_topk
from nas3d_fast.profile import predict_training_memory
from nas3d_fast.search import SearchConfig, search
from nas3d_fast.spaces import Arch, ArchError, SearchSpace, Supernet, as_rng, check_vector
from nas3d_fast.train.run import DataSettings


@dataclasses.dataclass(frozen=True)
class ChainArch(Arch):
    space: ClassVar[str] = "chain"
    ops: tuple[str, ...]  # one candidate name per layer


# %%
# The networks
# ------------
# The discrete layer is ``x + norm(op(relu(x)))``. The supernet's layer is the same with a
# ``MixedEdge3d`` in place of the op: with ``norm="shared"`` the edge computes
# ``norm(sum_k w_k op_k(relu(x)))``, so under one-hot weights it is exactly the discrete layer, and the
# discrete network can inherit the supernet's weights (``extract``).
OPS = ("conv3x3x3", "conv3x3x1", "sep_dil3x3x3_r2", "avg_pool3", "identity")


class ChainLayer(nn.Module):
    def __init__(self, channels: int, op: str):
        super().__init__()
        self.op = make_candidate(op, channels, channels)
        self.norm = nn.InstanceNorm3d(channels, affine=True)

    def forward(self, x):
        return x + self.norm(self.op(torch.relu(x)))


class ChainNet(nn.Module):
    def __init__(self, arch: ChainArch, in_channels: int, num_classes: int, channels: int):
        super().__init__()
        self.stem = nn.Conv3d(in_channels, channels, 3, padding=1)
        self.layers = nn.ModuleList(ChainLayer(channels, op) for op in arch.ops)
        self.head = nn.Conv3d(channels, num_classes, 1)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class ChainSupernet(Supernet):
    def __init__(self, space: "ChainSpace", in_channels: int, num_classes: int):
        super().__init__()
        self.space, self.in_channels, self.num_classes = space, in_channels, num_classes
        c = space.channels
        self.stem = nn.Conv3d(in_channels, c, 3, padding=1)
        self.edges = nn.ModuleList(MixedEdge3d(c, c, OPS, norm="shared") for _ in range(space.layers))
        self.head = nn.Conv3d(c, num_classes, 1)

    def arch_shapes(self):
        return self.space.arch_shapes()

    def forward(self, x, weights):
        w = weights["ops"]  # dense (E, K), or the (weights, indices) pair of gumbel_topk
        x = self.stem(x)
        for e, edge in enumerate(self.edges):
            x = x + edge(x, (w[0][e], w[1][e]) if isinstance(w, tuple) else w[e])
        return self.head(x)

    def one_hot(self, arch):
        hot = torch.zeros(self.space.arch_shapes()["ops"], device=self.stem.weight.device)
        hot[torch.arange(len(arch.ops)), torch.tensor(self.space.encode(arch))] = 1
        return {"ops": hot}

    def extract(self, arch):
        net = self.space.build(arch, self.in_channels, self.num_classes).to(self.stem.weight.device)
        net.stem.load_state_dict(self.stem.state_dict())
        net.head.load_state_dict(self.head.state_dict())
        for layer, edge, op in zip(net.layers, self.edges, arch.ops):
            layer.op.load_state_dict(edge.ops[OPS.index(op)].state_dict())
            layer.norm.load_state_dict(edge.norm.state_dict())
        return net


# %%
# The space
# ---------
# Options are constructor keyword arguments (recorded in ``self.options``, so checkpoints can rebuild
# the space); ``register`` makes ``spaces.get("chain", ...)`` find it.
@spaces.register
class ChainSpace(SearchSpace):
    name = "chain"
    arch_type = ChainArch
    stride = 1  # no down-sampling: any patch size works

    def __init__(self, channels: int = 8, layers: int = 4):
        super().__init__(channels=channels, layers=layers)
        self.channels, self.layers = channels, layers

    def sample(self, rng=None):
        rng = as_rng(rng)
        return ChainArch(tuple(OPS[i] for i in rng.integers(0, len(OPS), self.layers)))

    def vector_choices(self):
        return [len(OPS)] * self.layers

    def encode(self, arch):
        if len(arch.ops) != self.layers:
            raise ArchError(f"chain: {len(arch.ops)} layers, expected {self.layers}")
        for i, op in enumerate(arch.ops):
            if op not in OPS:
                raise ArchError(f"chain: position {i}: unknown op {op!r}")
        return [OPS.index(op) for op in arch.ops]

    def decode(self, vector):
        return ChainArch(tuple(OPS[i] for i in check_vector(vector, self.vector_choices(), self.name)))

    def build(self, arch, in_channels, num_classes):
        self.check(arch)
        return ChainNet(arch, in_channels, num_classes, self.channels)

    def supernet(self, in_channels, num_classes, **options):
        return ChainSupernet(self, in_channels, num_classes)

    def arch_shapes(self):
        return {"ops": (self.layers, len(OPS))}

    def derive(self, logits):
        """Each layer's most probable op (ties to the lower index)."""
        return self.decode(self.check_logits(logits)["ops"].argmax(1).tolist())


# %%
# Using it
# --------
# The interface's shared machinery now works on it: JSON, checks that name the position, costs on the
# meta device, the supernet and the derivation.
space = spaces.get("chain", channels=8, layers=4)
arch = space.sample(0)
print(arch, space.encode(arch))
assert space.decode(space.encode(arch)) == arch
assert space.arch_from_json(arch.to_json()) == arch
try:
    space.decode([0, 1, 9, 0])
except ArchError as exc:
    print("ArchError:", exc)
print(space.cost(arch, (1, 32, 32, 32)))

supernet = space.supernet(1, 2)
x = torch.randn(1, 1, 16, 16, 16)
logits = supernet.arch_logits()
y = supernet(x, {"ops": gumbel_topk(logits["ops"], 1.0, k=2)})
with torch.no_grad():
    diff = (supernet.extract(arch)(x) - supernet(x, supernet.one_hot(arch))).abs().max().item()
print("output", tuple(y.shape), "| extract matches the supernet to", diff)

# %%
# A search on it, with the same searcher and run folder as the built-in spaces (tutorial 3):
work = tempfile.mkdtemp(prefix="nas3d_tutorial_space_")
root = data.make_synthetic(os.path.join(work, "blobs"), train=5, test=1, shape=(20, 20, 20), validation=1)
summary = search("chain", "gumbel", root, os.path.join(work, "search"),
                 SearchConfig(epochs=2, steps_per_epoch=3, device="cpu", progress=False),
                 DataSettings(patch=(16, 16, 16), batch_size=2, augment=0.0),
                 space_options={"channels": 4, "layers": 3})
print("found:", summary["arch"])

# %%
# And the profiler predicts its training memory like any other network's:
report = predict_training_memory(space.build(arch, 1, 2), (1, 64, 64, 64), batch_size=2, num_classes=2)
print(f"predicted CUDA training peak at 64^3, batch 2: {report.peak_bytes / 2**20:.1f} MiB")

# %%
# ``nas3d train`` and ``nas3d infer`` find spaces by name in the process that runs them, so a space of
# your own is used from Python (``nas3d_fast.train.run.train``, ``nas3d_fast.search.search``) after
# ``register``, or by adding its module to ``nas3d_fast/spaces/base.py``'s table of spaces. Look at
# ``nas3d_fast/spaces/ronasmis.py`` for a complete space with deep supervision and a documented
# encoding table.
