"""The RONASMIS space (Bae et al., "Resource Optimized Neural Architecture Search for 3D Medical Image
Segmentation", ``papers/ronasmis.md``): a micro search space over a fixed U-Net base.

What the paper fixes (§"The Proposed Base Architecture", Fig. 2): a U-Net whose decoder takes the
encoder features through 1x1x1 convolution skips (DeepLabV3+), with deep supervision (Kayalibay et al.),
instance normalisation instead of batch normalisation, and addition-based skips; the search is micro
(per-layer choices made by an RNN controller, Fig. 1), trained with ENAS parameter sharing.

What the paper leaves open (its Table 1 is not in the slides), chosen here:

- **Base.** ``depth`` resolution levels (default 4, so patches are multiples of 2**(depth-1) = 8) with
  ``base_channels * 2**level`` channels. A stem (3x3x3 convolution, InstanceNorm) maps the input to
  level 0; each deeper level starts with a down block (activation, 3x3x3 convolution with stride 2,
  InstanceNorm). Each decoder level starts with an up block: a 2x2x2 transposed convolution of the
  deeper decoder output plus a 1x1x1 convolution of the same-level encoder output (the decoder 1x1x1
  skip, joined by addition), then InstanceNorm. Activation is LeakyReLU (slope 0.01) by default.
- **Searchable layers.** Every level has ``layers_per_stage`` (default 2) searchable layers after its
  stem/down/up block, in the encoder (``depth`` levels, the bottom one included) and in the decoder
  (``depth - 1`` levels): 2 * (2 * depth - 1) = 14 layers by default, each C -> C. A layer is
  ``act -> op -> InstanceNorm`` (pre-activation), and its two choices are
    * ``op``, the kernel shape and dilation: ``conv3x3x3``, the three anisotropic ``conv3x3x1``,
      ``conv3x1x3``, ``conv1x3x3`` (dilation 1), and depthwise-separable 3x3x3 convolutions with
      dilation 2 and 3 (``sep_dil3x3x3_r2``, ``sep_dil3x3x3_r3``: dilated dense 3x3x3 convolutions are
      not in the shared candidate vocabulary, and the separable form is also cheaper);
    * ``skip`` on/off, a residual addition around the layer (out = layer(x) + x).
- **Deep supervision.** A head (activation, 1x1x1 convolution with bias) on the output of every
  decoder level; the level-0 head gives the logits. The other heads are used only when the network
  was built with ``deep_supervision=True`` *and* is in training mode: then ``forward`` returns the
  tuple (logits, aux_1, ..., aux_{depth-2}) where aux_l comes from decoder level l, upsampled
  trilinearly to the input size, all (N, num_classes, X, Y, Z). A typical loss weighs aux_l by
  2**-l. Otherwise ``forward`` returns the logits tensor. The heads are always part of the module
  (and of ``cost().params``), so checkpoints do not depend on the flag.

The encoded vector (T-AutoML §3.2 style), layer i = 0 .. L-1 in the order encoder level 0, 1, ...,
depth-1 (layers within a level in order), then decoder level depth-2, ..., 0:

| position | meaning | choices |
| --- | --- | --- |
| 2 i | op of layer i | index into ``space.ops`` (default 6: conv3x3x3, conv3x3x1, conv3x1x3, conv1x3x3, sep_dil3x3x3_r2, sep_dil3x3x3_r3) |
| 2 i + 1 | skip of layer i | 0 off, 1 on |

``space.default_arch()`` is the plain U-Net (every op conv3x3x3, every skip off). ``sample`` is
uniform over each position. The space is finite (6**14 * 2**14 by default) but too large to enumerate.

The supernet (ENAS-style sharing): each layer's op is a ``MixedEdge3d`` over ``space.ops`` (group
"op", (L, K)) and its skip a ``MixedEdge3d`` over (zero, identity) with per-op placement, which is
exactly w_identity * x (group "skip", (L, 2)). ``supernet.child_weights(arch)`` gives the top-1
(weights, indices) pairs that run only ``arch``'s ops, as an ENAS child network does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn import CANDIDATES, MixedEdge3d, make_candidate
from ..nn.mixed_edge import ACTS, NORMS, activation
from ..nn.norm import InstanceNorm3d
from .base import Arch, ArchError, SearchSpace, Supernet, as_rng, check_vector, register

DEFAULT_OPS = ("conv3x3x3", "conv3x3x1", "conv3x1x3", "conv1x3x3", "sep_dil3x3x3_r2", "sep_dil3x3x3_r3")
SKIP_CANDIDATES = ("zero", "identity")


@dataclasses.dataclass(frozen=True)
class RonasmisArch(Arch):
    """Per searchable layer (in the order of the module docstring): ``ops[i]`` a candidate name from
    the space's ``ops`` and ``skips[i]`` 0 or 1."""

    space = "ronasmis"
    ops: tuple[str, ...]
    skips: tuple[int, ...]


# -- building blocks shared by the discrete network and the supernet ------------------------------


class _Stem(nn.Module):
    """3x3x3 convolution (no bias) then InstanceNorm: (N, C_in, ...) -> (N, C, ...)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, channels, 3, padding=1, bias=False)
        self.norm = InstanceNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class _Down(nn.Module):
    """act, 3x3x3 convolution with stride 2 (no bias), InstanceNorm: halves each spatial size."""

    def __init__(self, in_channels: int, channels: int, act: str):
        super().__init__()
        self.act = act
        self.conv = nn.Conv3d(in_channels, channels, 3, stride=2, padding=1, bias=False)
        self.norm = InstanceNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(activation(x, self.act)))


class _Up(nn.Module):
    """InstanceNorm(up(deeper) + skip(encoder)): 2x2x2 transposed convolution of the deeper decoder
    output (C_deep -> C) plus the 1x1x1 convolution skip of the same-level encoder output (C -> C)."""

    def __init__(self, deep_channels: int, channels: int):
        super().__init__()
        self.up = nn.ConvTranspose3d(deep_channels, channels, 2, stride=2, bias=False)
        self.skip = nn.Conv3d(channels, channels, 1, bias=False)
        self.norm = InstanceNorm3d(channels)

    def forward(self, deep: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
        return self.norm(self.up(deep) + self.skip(encoder))


class _Head(nn.Module):
    """act then a 1x1x1 convolution with bias to the class logits."""

    def __init__(self, channels: int, num_classes: int, act: str):
        super().__init__()
        self.act = act
        self.conv = nn.Conv3d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(activation(x, self.act))


class RonasmisLayer(nn.Module):
    """One searchable layer of a discrete network: act -> candidate ``op`` -> InstanceNorm, plus x when
    ``skip``. (N, C, X, Y, Z) -> same shape."""

    def __init__(self, channels: int, op: str, skip: bool, act: str):
        super().__init__()
        self.act, self.skip = act, bool(skip)
        self.op = make_candidate(op, channels, channels, 1)
        self.norm = InstanceNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.op(activation(x, self.act)))
        return y + x if self.skip else y

    def extra_repr(self) -> str:
        return f"skip={self.skip}"


class _UNet(nn.Module):
    """The fixed U-Net frame around ``layers`` (a callable per searchable layer index).

    Holds the stem, down, up blocks and heads; subclasses provide the searchable layers and call
    ``_run(x, layer_fn)``."""

    def __init__(self, in_channels: int, num_classes: int, base_channels: int, depth: int, act: str):
        super().__init__()
        ch = [base_channels * 2**level for level in range(depth)]
        self.depth, self.channels, self.act = depth, ch, act
        self.stem = _Stem(in_channels, ch[0])
        self.downs = nn.ModuleList(_Down(ch[lv - 1], ch[lv], act) for lv in range(1, depth))
        self.ups = nn.ModuleList(_Up(ch[lv + 1], ch[lv]) for lv in range(depth - 1))  # ups[l]: into level l
        self.heads = nn.ModuleList(_Head(ch[lv], num_classes, act) for lv in range(depth - 1))

    def layer_channels(self, layers_per_stage: int) -> list[int]:
        """Channels of each searchable layer, in encoding order."""
        enc = [self.channels[lv] for lv in range(self.depth) for _ in range(layers_per_stage)]
        dec = [self.channels[lv] for lv in reversed(range(self.depth - 1)) for _ in range(layers_per_stage)]
        return enc + dec

    def _run(self, x: torch.Tensor, layer, per_stage: int, aux: bool):
        size = x.shape[2:]
        i = 0
        h = self.stem(x)
        skips = []
        for lv in range(self.depth):
            if lv:
                h = self.downs[lv - 1](h)
            for _ in range(per_stage):
                h, i = layer(i, h), i + 1
            skips.append(h)
        outs = []
        for lv in reversed(range(self.depth - 1)):
            h = self.ups[lv](h, skips[lv])
            for _ in range(per_stage):
                h, i = layer(i, h), i + 1
            if aux and lv:
                outs.append(F.interpolate(self.heads[lv](h), size=size, mode="trilinear", align_corners=False))
        logits = self.heads[0](h)
        return (logits, *reversed(outs)) if aux else logits


class RonasmisNet(_UNet):
    """The discrete network of a RONASMIS architecture: (N, C_in, X, Y, Z) -> (N, num_classes, X, Y, Z)
    logits (X, Y, Z multiples of 2**(depth-1)); with ``deep_supervision`` and in training mode, the
    tuple (logits, aux_1, ..., aux_{depth-2}) of full-size logits (see the module docstring)."""

    def __init__(
        self,
        arch: RonasmisArch,
        in_channels: int,
        num_classes: int,
        base_channels: int,
        depth: int,
        layers_per_stage: int,
        act: str,
        deep_supervision: bool = False,
    ):
        super().__init__(in_channels, num_classes, base_channels, depth, act)
        self.layers_per_stage, self.deep_supervision = layers_per_stage, deep_supervision
        chans = self.layer_channels(layers_per_stage)
        self.layers = nn.ModuleList(RonasmisLayer(c, op, skip, act) for c, op, skip in zip(chans, arch.ops, arch.skips))

    def forward(self, x: torch.Tensor):
        aux = self.deep_supervision and self.training
        return self._run(x, lambda i, h: self.layers[i](h), self.layers_per_stage, aux)


class RonasmisSupernet(_UNet, Supernet):
    """The weight-sharing network: the frame of ``RonasmisNet`` with a ``MixedEdge3d`` op edge and a
    (zero, identity) skip edge per searchable layer. ``forward(x, weights)`` with weights
    {"op": (L, K) or (w (L, k), idx (L, k)), "skip": (L, 2) or (w, idx)} returns logits."""

    def __init__(self, space: RonasmisSpace, in_channels: int, num_classes: int, norm: str = "shared"):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        super().__init__(in_channels, num_classes, space.base_channels, space.depth, space.act)
        self.space, self.in_channels, self.num_classes = space, in_channels, num_classes
        chans = self.layer_channels(space.layers_per_stage)
        self.op_edges = nn.ModuleList(MixedEdge3d(c, c, space.ops, norm=norm, act=space.act) for c in chans)
        self.skip_edges = nn.ModuleList(MixedEdge3d(c, c, SKIP_CANDIDATES, norm="per_op") for c in chans)

    def arch_shapes(self) -> dict[str, tuple[int, int]]:
        n = len(self.op_edges)
        return {"op": (n, len(self.space.ops)), "skip": (n, len(SKIP_CANDIDATES))}

    def forward(self, x: torch.Tensor, weights: dict) -> torch.Tensor:
        op_w, skip_w = _group(weights, "op", self.arch_shapes()), _group(weights, "skip", self.arch_shapes())

        def layer(i: int, h: torch.Tensor) -> torch.Tensor:
            return self.op_edges[i](h, op_w(i)) + self.skip_edges[i](h, skip_w(i))

        return self._run(x, layer, self.space.layers_per_stage, aux=False)

    def one_hot(self, arch: Arch) -> dict[str, torch.Tensor]:
        vec = self.space.encode(arch)
        dev = self.stem.conv.weight.device
        op = torch.zeros(self.arch_shapes()["op"], device=dev)
        skip = torch.zeros(self.arch_shapes()["skip"], device=dev)
        op[torch.arange(len(op)), torch.tensor(vec[0::2])] = 1
        skip[torch.arange(len(skip)), torch.tensor(vec[1::2])] = 1
        return {"op": op, "skip": skip}

    def child_weights(self, arch: Arch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Top-1 pairs (one-hot weights (L, K), indices (L, 1)) per group, in ``ops.gumbel_topk``'s format:
        only ``arch``'s candidates run (an ENAS child network on the shared weights)."""
        vec = self.space.encode(arch)
        dev = self.stem.conv.weight.device
        hot = self.one_hot(arch)
        return {
            name: (hot[name], torch.tensor(picks, dtype=torch.int64, device=dev).view(-1, 1))
            for name, picks in (("op", vec[0::2]), ("skip", vec[1::2]))
        }

    def extract(self, arch: Arch) -> RonasmisNet:
        self.space.check(arch)
        net = self.space.build(arch, self.in_channels, self.num_classes)
        net.to(self.stem.conv.weight.device)
        for name in ("stem", "downs", "ups", "heads"):
            getattr(net, name).load_state_dict(getattr(self, name).state_dict())
        for i, (layer, edge) in enumerate(zip(net.layers, self.op_edges)):
            k = self.space.ops.index(arch.ops[i])
            layer.op.load_state_dict(edge.ops[k].state_dict())
            norm = edge.norm if edge.norm_placement == "shared" else edge.norms[str(k)]
            layer.norm.load_state_dict(norm.state_dict())
        return net


def _group(weights: dict, name: str, shapes: dict[str, tuple[int, int]]):
    """Row i of group ``name``'s weights (dense (E, K) or a (weights, indices) pair), as MixedEdge3d takes it."""
    if not isinstance(weights, dict) or name not in weights:
        raise ValueError(f"weights must be a dict with the groups {sorted(shapes)}, got {_keys(weights)}")
    w = weights[name]
    e, k = shapes[name]
    if isinstance(w, (tuple, list)):
        ok = len(w) == 2 and all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in w)
        if not ok or tuple(w[0].shape) != (e, k) or w[1].shape[0] != e:
            raise ValueError(
                f"weights[{name!r}]: expected the (weights ({e}, {k}), indices ({e}, k)) pair of ops.gumbel_topk"
            )
        return lambda i: (w[0][i], w[1][i])
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (e, k):
        raise ValueError(f"weights[{name!r}] must have shape ({e}, {k}), got {getattr(w, 'shape', type(w).__name__)}")
    return lambda i: w[i]


def _keys(weights: Any) -> Any:
    return sorted(weights) if isinstance(weights, dict) else type(weights).__name__


@register
class RonasmisSpace(SearchSpace):
    """The RONASMIS micro space (see the module docstring).

    Options: ``base_channels`` (16; channels at level l are base_channels * 2**l), ``depth`` (4
    levels), ``layers_per_stage`` (2 searchable layers per level), ``ops`` (the op choices, names from
    ``nas3d_fast.nn.CANDIDATES`` that keep the channel count), ``act`` ("leaky_relu" or "relu").
    """

    name = "ronasmis"
    arch_type = RonasmisArch

    def __init__(
        self,
        base_channels: int = 16,
        depth: int = 4,
        layers_per_stage: int = 2,
        ops: Sequence[str] = DEFAULT_OPS,
        act: str = "leaky_relu",
    ):
        for arg, value, low in (
            ("base_channels", base_channels, 1),
            ("depth", depth, 2),
            ("layers_per_stage", layers_per_stage, 1),
        ):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"ronasmis: {arg} must be an int >= {low}, got {value!r}")
        ops = tuple(ops)
        bad = [o for o in ops if o not in CANDIDATES or o == "zero"]
        if not ops or bad or len(set(ops)) != len(ops):
            raise ValueError(f"ronasmis: ops must be distinct non-zero names from {CANDIDATES}, got {ops!r}")
        if act not in ACTS:
            raise ValueError(f"ronasmis: act must be one of {ACTS}, got {act!r}")
        super().__init__(
            base_channels=int(base_channels), depth=int(depth), layers_per_stage=int(layers_per_stage), ops=ops, act=act
        )
        self.base_channels, self.depth, self.layers_per_stage = int(base_channels), int(depth), int(layers_per_stage)
        self.ops, self.act = ops, act
        self.stride = 2 ** (self.depth - 1)
        self.num_layers = layers_per_stage * (2 * depth - 1)

    # -- architectures ------------------------------------------------------------------------------

    def default_arch(self) -> RonasmisArch:
        """The plain U-Net: every layer a 3x3x3 convolution (or the first op if conv3x3x3 is not among
        ``ops``), no residual skips."""
        op = "conv3x3x3" if "conv3x3x3" in self.ops else self.ops[0]
        return RonasmisArch(ops=(op,) * self.num_layers, skips=(0,) * self.num_layers)

    def sample(self, rng: np.random.Generator | int | None = None) -> RonasmisArch:
        return self.decode([int(v) for v in as_rng(rng).integers(0, self.vector_choices())])

    def vector_choices(self) -> list[int]:
        return [len(self.ops), 2] * self.num_layers

    def encode(self, arch: Arch) -> list[int]:
        if not isinstance(arch, RonasmisArch):
            raise ArchError(f"ronasmis: expected a RonasmisArch, got {type(arch).__name__}")
        for field in ("ops", "skips"):
            n = len(getattr(arch, field))
            if n != self.num_layers:
                raise ArchError(f"ronasmis: {field} has {n} entries, expected {self.num_layers} (one per layer)")
        vector = []
        for i, (op, skip) in enumerate(zip(arch.ops, arch.skips)):
            if op not in self.ops:
                raise ArchError(f"ronasmis: position {2 * i} (layer {i} op): {op!r} is not one of {self.ops}")
            if skip not in (0, 1) or isinstance(skip, float):
                raise ArchError(f"ronasmis: position {2 * i + 1} (layer {i} skip): {skip!r} is not 0 or 1")
            vector += [self.ops.index(op), int(skip)]
        return vector

    def decode(self, vector: Sequence[int]) -> RonasmisArch:
        v = check_vector(vector, self.vector_choices(), self.name)
        return RonasmisArch(ops=tuple(self.ops[k] for k in v[0::2]), skips=tuple(v[1::2]))

    def arch_shapes(self) -> dict[str, tuple[int, int]]:
        return {"op": (self.num_layers, len(self.ops)), "skip": (self.num_layers, len(SKIP_CANDIDATES))}

    def derive(self, logits: Mapping[str, torch.Tensor]) -> RonasmisArch:
        """The supernet search's architecture: each layer's most probable op and skip (argmax of its
        logits, as the ENAS child network of a trained controller takes its most likely choice; the
        paper gives no rule). ``logits``: {"op": (L, K), "skip": (L, 2)} as ``supernet.arch_logits()``
        holds them; ties go to the lower index."""
        w = self.check_logits(logits)
        vector = []
        for op, skip in zip(w["op"].argmax(dim=1).tolist(), w["skip"].argmax(dim=1).tolist()):
            vector += [op, skip]
        return self.decode(vector)

    # -- networks ----------------------------------------------------------------------------------

    def build(self, arch: Arch, in_channels: int, num_classes: int, deep_supervision: bool = False) -> RonasmisNet:
        """The discrete network (see ``RonasmisNet``); ``deep_supervision`` adds the auxiliary outputs
        in training mode."""
        self.check(arch)
        _check_channels(in_channels, num_classes)
        return RonasmisNet(
            arch,
            in_channels,
            num_classes,
            self.base_channels,
            self.depth,
            self.layers_per_stage,
            self.act,
            deep_supervision,
        )

    def supernet(self, in_channels: int, num_classes: int, norm: str = "shared", **options: Any) -> RonasmisSupernet:
        """The weight-sharing network; ``norm`` places the op edges' InstanceNorm ("shared": one per
        edge, its mergeable candidates run as one convolution; "per_op": one per candidate)."""
        if options:
            raise ValueError(f"ronasmis supernet: unknown options {sorted(options)}; known: norm")
        _check_channels(in_channels, num_classes)
        return RonasmisSupernet(self, in_channels, num_classes, norm)


def _check_channels(in_channels: int, num_classes: int) -> None:
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
