"""The T-AutoML search space (Yang et al., T-AutoML, papers/t-automl.md §3.1-3.2): a SpineNet-style
network of N blocks and the training configuration, in one 1D encoding.

Network (§3.1)
--------------
A stem (3x3x3 convolution, stride 2, InstanceNorm, ReLU) halves the input, then N blocks (5..12) are
added one by one. Block i has a type (3D residual, 3D bottleneck, or 3D axial attention in order
X-Y-Z or Y-X-Z) and a resolution level l in 2..5, where the feature maps are 1/2^(l-1) of the input
and have 2^(l-1) * c1 channels (c1 = 16 in the paper, option ``base_channels``; the paper's
"2^{(l-1) c1}" reads as this product: 32 channels at level 2 up to 256 at level 5). Block 0 takes the
stem's output, block 1 block 0's, and every later block two earlier blocks j < k (any two: "not
necessarily adjacent"). Each input is resampled to the block's level and channels and the inputs are
summed, "following the fashion of SpineNet [58]"; the paper gives no more detail, so here:

- same level: the input as it is (same level means same channels);
- to a finer level (up): 1x1x1 convolution to the target channels, InstanceNorm, then trilinear
  up-sampling by 2^(levels) (1x1x1 convolution and interpolation commute; this order is cheaper);
- to a coarser level (down): 3x3x3 convolution with stride 2 to the target channels, InstanceNorm,
  then max pooling by 2^(levels - 1) for the rest of the way (SpineNet's choice);
- the sum passes a ReLU and enters the block.

The last block ("the one before the final activation layer") gives the output: it is resampled to
level 2 as above, a 1x1x1 convolution with bias gives the class logits and trilinear up-sampling by 2
restores the input size ("linear interpolation"; again convolution first, which commutes). Blocks
whose output never reaches the last block are not built (they could not change the output; their
parameters would receive no gradient). The network's stride is 16 (level 5).

Blocks (ResNet post-activation order, InstanceNorm throughout, ``nas3d_fast.nn.norm.InstanceNorm3d``):

- ``residual``: 3x3x3 conv - IN - ReLU - 3x3x3 conv - IN, plus the input, ReLU;
- ``bottleneck``: 1x1x1 conv to C/4 - IN - ReLU - 3x3x3 conv - IN - ReLU - 1x1x1 conv to C - IN,
  plus the input, ReLU (the paper does not give the bottleneck ratio; 4 is ResNet's);
- ``axial_xyz``, ``axial_yxz``: ``nas3d_fast.nn.AxialAttentionBlock3d`` with that order (reduction 2,
  ``num_heads`` heads, relative positional embeddings up to ``max_length`` voxels per axis).

Training configuration (§3.2)
-----------------------------
Five augmentation slots applied in sequence, each one of the 8 candidates ``AUGMENTATIONS`` (a
candidate may fill several slots: the paper gives every slot all m candidates), each applied with
probability 0.15 (``AUGMENTATION_PROB``); a learning rate from ``LEARNING_RATES``; a scheduler from
``SCHEDULERS`` (constant or polynomial decay, "poly"); a loss from ``LOSSES``, the five of §3.2: soft
Dice "with or without squared prediction", CE, Dice + CE, Dice + focal (Table 1's "Dice loss (no squared
prediction) + CE" hints at squared variants of the combinations too; §3.2 does not list them, so they
are left out); an optimiser from ``OPTIMIZERS`` ("momentum" is SGD with heavy-ball momentum,
"nesterov" SGD with Nesterov momentum). The names are those of ``nas3d_fast.data`` (augmentations) and
``nas3d_fast.train`` (losses, optimisers, schedules). ``training_config(arch)`` gives them as
a dict for the trainer; ``build`` ignores them.

Encoding (58 integers)
----------------------
The paper encodes each block by five integers (block ID, operation, level, two predecessor IDs, with
-1 for "none": (-1, -1) for the first block and (0, -1) for the second). Here the block ID is the
block's slot (not stored), and the vector has a fixed length: 12 block slots always, slots at and
beyond N are padding that ``encode`` writes as 0 and ``decode`` ignores (their values must still be
within the position's choices). Positions with one choice hold 0; the predecessors of blocks 0 and 1
are fixed (the stem; block 0).

| position | meaning | choices |
| --- | --- | --- |
| 0 | number of blocks N - 5 | 8 (N = 5..12) |
| 1 + 4i | block i type: 0 residual, 1 bottleneck, 2 axial_xyz, 3 axial_yxz | 4 |
| 2 + 4i | block i level - 2 | 4 (levels 2..5) |
| 3 + 4i | block i first predecessor j (i >= 2; 0 for i < 2) | max(1, i - 1): j in 0..i-2 |
| 4 + 4i | block i second predecessor k > j (i >= 2; 0 for i < 2) | max(1, i): k in j+1..i-1 |
| 49..53 | augmentation slot s = 0..4 (index into ``AUGMENTATIONS``) | 8 |
| 54 | learning rate (index into ``LEARNING_RATES``) | 5 |
| 55 | scheduler: 0 constant, 1 poly | 2 |
| 56 | loss (index into ``LOSSES``) | 5 |
| 57 | optimiser (index into ``OPTIMIZERS``) | 5 |

(i = 0..11.) The predecessors are stored in increasing order, so each network has one encoding.

``sample`` draws uniformly: N, then each block's type, level and pair of predecessors, then each
configuration choice. The space has ~4 x 10^25 block structures and 8.2 x 10^6 training configurations
(3 x 10^32 members): ``enumerate`` is not available.

Supernet
--------
None: ``supernet``, ``arch_shapes`` and ``derive`` raise ``NoSupernetError`` (a ValueError, and a
NotImplementedError for older callers) pointing to the trial searchers. T-AutoML trains every sampled
configuration from scratch (100 configurations, 10,000 iterations each, §4.1) to fit its binary relation predictor; it shares no
weights. Its training-configuration positions (augmentation, learning rate, scheduler, loss,
optimiser) cannot be weight-shared choices at all, and its block types are whole residual/bottleneck/attention blocks, not
candidates of a ``MixedEdge3d`` edge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn import AxialAttentionBlock3d
from ..nn.norm import InstanceNorm3d
from ._int_vector import integers
from .base import Arch, ArchError, SearchSpace, Supernet, as_rng, check_vector, register

MIN_BLOCKS, MAX_BLOCKS = 5, 12
MIN_LEVEL, MAX_LEVEL = 2, 5
BLOCK_TYPES = ("residual", "bottleneck", "axial_xyz", "axial_yxz")
AUGMENTATION_SLOTS = 5
AUGMENTATION_PROB = 0.15
# The names of nas3d_fast.data's augmentation operations (flip along X/Y/Z, 90-degree rotation in the
# X-Y plane, zoom, Gaussian noise, intensity shift, intensity scale-and-shift).
AUGMENTATIONS = ("flip_x", "flip_y", "flip_z", "rotate90", "zoom", "noise", "shift", "scale_shift")
LEARNING_RATES = (0.01, 0.005, 0.001, 0.0005, 0.0001)
SCHEDULERS = ("constant", "poly")
LOSSES = ("dice", "dice_squared", "ce", "dice_ce", "dice_focal")
OPTIMIZERS = ("adam", "sgd", "momentum", "nesterov", "novograd")

SLOT = 4  # positions per block slot
CONFIG_START = 1 + SLOT * MAX_BLOCKS  # 49
VECTOR_LENGTH = CONFIG_START + AUGMENTATION_SLOTS + 4  # 58


def _pos(block: int, field: int) -> int:
    """Vector position of ``field`` (0 type, 1 level, 2 first, 3 second predecessor) of ``block``."""
    return 1 + SLOT * block + field


@dataclasses.dataclass(frozen=True)
class TAutoMLArch(Arch):
    """``blocks``: one (type, level, first predecessor, second predecessor) per block, the paper's
    -1 for "none" ((-1, -1) for block 0, (0, -1) for block 1); the training configuration as names and
    the learning rate as a float from the candidate lists."""

    space = "tautoml"
    blocks: tuple[tuple[str, int, int, int], ...]
    augmentations: tuple[str, ...]
    learning_rate: float
    scheduler: str
    loss: str
    optimizer: str


def fixed_predecessors(block: int) -> tuple[int, int] | None:
    """The paper's predecessors of blocks 0 and 1; None for later blocks (two are chosen)."""
    return (-1, -1) if block == 0 else (0, -1) if block == 1 else None


def _check_predecessors(i: int, j: Any, k: Any) -> None:
    fixed = fixed_predecessors(i)
    if fixed is not None:
        if (j, k) != fixed:
            raise ArchError(f"tautoml: position {_pos(i, 2)}: block {i}'s predecessors are {fixed}, got {(j, k)}")
        return
    for field, p in ((2, j), (3, k)):
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise ArchError(f"tautoml: position {_pos(i, field)}: block {i}'s predecessor must be an int, got {p!r}")
        if not 0 <= p < i:
            raise ArchError(
                f"tautoml: position {_pos(i, field)}: block {i}'s predecessor {p} does not exist "
                f"(blocks 0..{i - 1} precede it)"
            )
    if not j < k:
        raise ArchError(
            f"tautoml: position {_pos(i, 3)}: block {i}'s predecessors must be two different blocks in "
            f"increasing order, got ({j}, {k})"
        )


def _check_level(i: int, level: Any) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not MIN_LEVEL <= level <= MAX_LEVEL:
        raise ArchError(f"tautoml: position {_pos(i, 1)}: block {i}'s level {level!r} outside {MIN_LEVEL}..{MAX_LEVEL}")
    return int(level)


def _index(name: str, value: Any, candidates: Sequence, position: int) -> int:
    for n, c in enumerate(candidates):
        same_kind = isinstance(value, str) if isinstance(c, str) else isinstance(value, float)
        if same_kind and c == value:
            return n
    raise ArchError(f"tautoml: position {position}: {name} {value!r} is not one of {tuple(candidates)}")


# -- modules ----------------------------------------------------------------------------------------


def channels_at(level: int, base_channels: int) -> int:
    """Channels at resolution ``level``: 2^(level-1) * c1."""
    return 2 ** (level - 1) * base_channels


class ConvNorm(nn.Sequential):
    """Conv3d (no bias, "same" padding) then InstanceNorm3d."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1):
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
            InstanceNorm3d(out_channels),
        )


class Resample(nn.Module):
    """From (N, C_from, S) at level ``source`` to (N, C_to, S * 2^(source - target)) at ``target``
    (see the module docstring)."""

    def __init__(self, source: int, target: int, base_channels: int):
        super().__init__()
        self.source, self.target = source, target
        c_in, c_out = channels_at(source, base_channels), channels_at(target, base_channels)
        if source > target:
            self.conv = ConvNorm(c_in, c_out, 1)
        elif source < target:
            self.conv = ConvNorm(c_in, c_out, 3, stride=2)
        else:
            self.conv = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.source > self.target:
            return F.interpolate(
                y, scale_factor=2 ** (self.source - self.target), mode="trilinear", align_corners=False
            )
        if self.target - self.source > 1:
            factor = 2 ** (self.target - self.source - 1)
            return F.max_pool3d(y, factor, factor)
        return y


class ResidualBlock(nn.Module):
    """3x3x3 conv - IN - ReLU - 3x3x3 conv - IN, + x, ReLU; (N, C, X, Y, Z) -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.conv2 = ConvNorm(channels, channels, 3), ConvNorm(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + x)


class BottleneckBlock(nn.Module):
    """1x1x1 conv to C/4 - IN - ReLU - 3x3x3 conv - IN - ReLU - 1x1x1 conv to C - IN, + x, ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        mid = channels // 4
        self.reduce, self.conv, self.expand = (
            ConvNorm(channels, mid, 1),
            ConvNorm(mid, mid, 3),
            ConvNorm(mid, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.expand(F.relu(self.conv(F.relu(self.reduce(x))))) + x)


class Node(nn.Module):
    """One block with the resamplers of its inputs: sum of resampled inputs, ReLU, block."""

    def __init__(self, kind: str, level: int, sources: Sequence[int], options: dict):
        super().__init__()
        c1 = options["base_channels"]
        self.resample = nn.ModuleList(Resample(s, level, c1) for s in sources)
        c = channels_at(level, c1)
        if kind == "residual":
            self.block = ResidualBlock(c)
        elif kind == "bottleneck":
            self.block = BottleneckBlock(c)
        else:
            self.block = AxialAttentionBlock3d(
                c,
                options["num_heads"],
                kind.split("_")[1],
                options["positional"],
                reduction=2,
                max_length=options["max_length"],
            )

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        total = None
        for x, resample in zip(inputs, self.resample):
            y = resample(x)
            total = y if total is None else total + y
        return self.block(F.relu(total))


class TAutoMLNetwork(nn.Module):
    """The network of an architecture: (N, C_in, X, Y, Z) -> (N, num_classes, X, Y, Z) logits, X, Y, Z
    multiples of 16. ``nodes`` holds the blocks that reach the output, keyed by block index."""

    def __init__(self, arch: TAutoMLArch, in_channels: int, num_classes: int, options: dict):
        super().__init__()
        c1 = options["base_channels"]
        blocks = arch.blocks
        self.levels = [b[1] for b in blocks]
        self.preds = [[p for p in b[2:] if p >= 0] for b in blocks]
        live = {len(blocks) - 1}
        for i in range(len(blocks) - 1, -1, -1):
            if i in live:
                live.update(self.preds[i])
        self.order = sorted(live)
        self.stem = ConvNorm(in_channels, channels_at(MIN_LEVEL, c1), 3, stride=2)
        self.nodes = nn.ModuleDict()
        for i in self.order:
            kind, level = blocks[i][0], blocks[i][1]
            sources = [self.levels[p] for p in self.preds[i]] if self.preds[i] else [MIN_LEVEL]
            self.nodes[str(i)] = Node(kind, level, sources, options)
        self.head_resample = Resample(self.levels[-1], MIN_LEVEL, c1)
        self.classifier = nn.Conv3d(channels_at(MIN_LEVEL, c1), num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = {-1: F.relu(self.stem(x))}
        for i in self.order:
            outputs[i] = self.nodes[str(i)]([outputs[p] for p in (self.preds[i] or [-1])])
        y = self.classifier(F.relu(self.head_resample(outputs[self.order[-1]])))
        return F.interpolate(y, scale_factor=2, mode="trilinear", align_corners=False)


# -- the space ----------------------------------------------------------------------------------------


@register
class TAutoMLSpace(SearchSpace):
    """T-AutoML's space (see the module docstring). Options: ``base_channels`` c1 (16; even, so that
    bottlenecks have C/4 channels, and divisible by ``num_heads``, the attention's bottleneck width at
    level 2), ``num_heads`` (4) of the axial attention, ``positional`` (True) relative embeddings and
    their ``max_length`` (64 voxels: the paper's 128^3 patches at level 2)."""

    name = "tautoml"
    arch_type = TAutoMLArch
    stride = 2 ** (MAX_LEVEL - 1)
    no_supernet_reason = (
        "T-AutoML (§3.3, §4.1) trains each sampled configuration from scratch and ranks configurations with "
        "a binary relation predictor; it shares no weights. Its training configuration (augmentations, "
        "learning rate, scheduler, loss, optimiser) cannot be a weight-shared choice, and its block types are "
        "whole residual/bottleneck/axial-attention blocks, not MixedEdge3d candidates"
    )

    def __init__(self, base_channels: int = 16, num_heads: int = 4, positional: bool = True, max_length: int = 64):
        for arg, value in (("base_channels", base_channels), ("num_heads", num_heads), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if base_channels % 2:
            raise ValueError(f"base_channels must be even (bottleneck blocks use C/4 channels), got {base_channels}")
        if base_channels % num_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must divide base_channels ({base_channels}), the axial attention's "
                "width at level 2"
            )
        super().__init__(
            base_channels=base_channels, num_heads=num_heads, positional=bool(positional), max_length=max_length
        )

    # -- encodings ---------------------------------------------------------------------------------

    def vector_choices(self) -> list[int]:
        choices = [MAX_BLOCKS - MIN_BLOCKS + 1]
        for i in range(MAX_BLOCKS):
            choices += [len(BLOCK_TYPES), MAX_LEVEL - MIN_LEVEL + 1, max(1, i - 1), max(1, i)]
        choices += [len(AUGMENTATIONS)] * AUGMENTATION_SLOTS
        choices += [len(LEARNING_RATES), len(SCHEDULERS), len(LOSSES), len(OPTIMIZERS)]
        assert len(choices) == VECTOR_LENGTH
        return choices

    def sample(self, rng: np.random.Generator | int | None = None) -> TAutoMLArch:
        rng = as_rng(rng)
        n = int(rng.integers(MIN_BLOCKS, MAX_BLOCKS + 1))
        blocks = []
        for i in range(n):
            kind = BLOCK_TYPES[int(rng.integers(len(BLOCK_TYPES)))]
            level = int(rng.integers(MIN_LEVEL, MAX_LEVEL + 1))
            preds = fixed_predecessors(i) or tuple(sorted(int(p) for p in rng.choice(i, 2, replace=False)))
            blocks.append((kind, level, *preds))
        augmentations = tuple(AUGMENTATIONS[int(k)] for k in rng.integers(len(AUGMENTATIONS), size=AUGMENTATION_SLOTS))
        return TAutoMLArch(
            tuple(blocks),
            augmentations,
            LEARNING_RATES[int(rng.integers(len(LEARNING_RATES)))],
            SCHEDULERS[int(rng.integers(len(SCHEDULERS)))],
            LOSSES[int(rng.integers(len(LOSSES)))],
            OPTIMIZERS[int(rng.integers(len(OPTIMIZERS)))],
        )

    def encode(self, arch: Arch) -> list[int]:
        if not isinstance(arch, TAutoMLArch):
            raise ArchError(f"tautoml: expected a TAutoMLArch, got {type(arch).__name__}")
        n = len(arch.blocks)
        if not MIN_BLOCKS <= n <= MAX_BLOCKS:
            raise ArchError(f"tautoml: position 0: {n} blocks outside {MIN_BLOCKS}..{MAX_BLOCKS}")
        vector = [n - MIN_BLOCKS]
        for i, block in enumerate(arch.blocks):
            if not isinstance(block, tuple) or len(block) != 4:
                raise ArchError(
                    f"tautoml: position {_pos(i, 0)}: block {i} must be (type, level, predecessor, predecessor), got {block!r}"
                )
            kind, level, j, k = block
            t = _index(f"block {i}'s type", kind, BLOCK_TYPES, _pos(i, 0))
            level = _check_level(i, level)
            _check_predecessors(i, j, k)
            vector += [t, level - MIN_LEVEL, *((0, 0) if i < 2 else (int(j), int(k)))]
        vector += [0] * (SLOT * (MAX_BLOCKS - n))
        if not isinstance(arch.augmentations, tuple) or len(arch.augmentations) != AUGMENTATION_SLOTS:
            raise ArchError(
                f"tautoml: position {CONFIG_START}: {AUGMENTATION_SLOTS} augmentations expected, got {arch.augmentations!r}"
            )
        vector += [_index("augmentation", a, AUGMENTATIONS, CONFIG_START + s) for s, a in enumerate(arch.augmentations)]
        p = CONFIG_START + AUGMENTATION_SLOTS
        vector += [
            _index("learning rate", arch.learning_rate, LEARNING_RATES, p),
            _index("scheduler", arch.scheduler, SCHEDULERS, p + 1),
            _index("loss", arch.loss, LOSSES, p + 2),
            _index("optimizer", arch.optimizer, OPTIMIZERS, p + 3),
        ]
        return vector

    def decode(self, vector: Sequence[int]) -> TAutoMLArch:
        choices = self.vector_choices()
        if len(vector) != VECTOR_LENGTH:
            raise ArchError(f"tautoml: the encoding has length {len(vector)}, expected {VECTOR_LENGTH}")
        raw = integers(vector, self.name)
        # Readable messages for the architecture's own positions first, then the generic range checks.
        if not 0 <= raw[0] < choices[0]:
            raise ArchError(
                f"tautoml: position 0: N - {MIN_BLOCKS} = {raw[0]} outside 0..{choices[0] - 1} (N = {MIN_BLOCKS}..{MAX_BLOCKS})"
            )
        for i in range(MIN_BLOCKS + raw[0]):
            _check_level(i, MIN_LEVEL + raw[_pos(i, 1)])
            if i >= 2:
                _check_predecessors(i, raw[_pos(i, 2)], raw[_pos(i, 3)])
        values = check_vector(raw, choices, self.name)
        n = MIN_BLOCKS + values[0]
        blocks = []
        for i in range(n):
            t, level, j, k = values[_pos(i, 0) : _pos(i, 0) + SLOT]
            blocks.append((BLOCK_TYPES[t], MIN_LEVEL + level, *(fixed_predecessors(i) or (j, k))))
        config = values[CONFIG_START:]
        a = AUGMENTATION_SLOTS
        return TAutoMLArch(
            tuple(blocks),
            tuple(AUGMENTATIONS[v] for v in config[:a]),
            LEARNING_RATES[config[a]],
            SCHEDULERS[config[a + 1]],
            LOSSES[config[a + 2]],
            OPTIMIZERS[config[a + 3]],
        )

    @staticmethod
    def training_config(arch: TAutoMLArch) -> dict:
        """The training part of ``arch`` for the trainer: augmentations (in order, each with
        probability ``AUGMENTATION_PROB``), learning rate, scheduler, loss and optimiser names."""
        return {
            "augmentations": list(arch.augmentations),
            "augmentation_prob": AUGMENTATION_PROB,
            "learning_rate": arch.learning_rate,
            "scheduler": arch.scheduler,
            "loss": arch.loss,
            "optimizer": arch.optimizer,
        }

    # -- networks ------------------------------------------------------------------------------------

    def build(self, arch: Arch, in_channels: int, num_classes: int) -> TAutoMLNetwork:
        self.encode(arch)  # validates
        for arg, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        return TAutoMLNetwork(arch, in_channels, num_classes, self.options)

    def supernet(self, in_channels: int, num_classes: int, **options: Any) -> Supernet:
        """No supernet (see the module docstring): raises :class:`NoSupernetError`, as ``arch_shapes`` and
        ``derive`` do."""
        raise self.no_supernet_error()
