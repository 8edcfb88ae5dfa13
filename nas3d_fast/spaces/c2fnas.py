"""The C2FNAS search space (Yu et al., C2FNAS, papers/c2fnas.md §3.3-3.4, §4.1).

A network is 12 cells between two stems. The **topology** (coarse stage, §3.3) says at which
resolution level each cell works; the **operations** (fine stage, §3.4) give each cell one
convolution type ("the colour of each node").

Topology codes (§4.1)
---------------------
The code is the list of the 12 cells' levels: it "starts at 0 and increases one after a
down-sampling and decreases one after an up-sampling". Level 0 is the stem's output resolution (1/2
of the input), level l works at 1/2^(l+1) with ``channels * 2^l`` filters ("starts with 32, doubled
after a down-sampling and halved after an up-sampling"). Choice the paper leaves open: the level before
the first cell is 0 and every cell, the first one included, may be a resampling cell, so cell i is a
*down-sampling cell* when code[i] = code[i-1] + 1, an *up-sampling cell* when code[i] = code[i-1] - 1,
and a normal cell otherwise (code[-1] = 0, the stem).

The priors (§3.3), as the rules ``check_topology`` enforces:

1. each cell changes the level by at most one (the lattice of Auto-DeepLab [15]);
2. exactly 3 down-sampling and 3 up-sampling cells (§4.1);
3. U-shape prior: no down-sampling cell after an up-sampling cell (an encoder, then a decoder);
4. skip prior: every up-sampling cell is matched with the down-sampling cell that left its level,
   whose input it receives as the encoder-decoder skip; so the code never goes below 0 and ends at
   level 0, where the final stem up-samples to the input resolution.

Counting: rules 2 and 3 fix the order of the six resampling cells (three downs, then three ups), so a
topology is exactly the choice of which 6 of the 12 cells resample: C(12, 6) = **924**, the paper's
9.24 x 10^2 (rule 4 then holds automatically, and levels stay in 0..3). For comparison, the unpruned
space of §3.2, "up to 2.9 x 10^4 candidates for a network with 12 cells [15]", is Auto-DeepLab's
lattice: 28,657 paths of 12 cells over 4 levels starting at the finest level and moving at most one level
per cell; with our first-cell convention there are 75,025 codes with levels in 0..3, 4,620 of them
with exactly three downs and three ups, and 924 of those are U-shaped. ``topologies()`` lists the 924
in lexicographic order of their resampling positions.

Cells (§4.1, Fig. 5 right)
--------------------------
A cell takes the previous cell's output and, as a second input,

- (1) the previous-previous cell's output if that is at the cell's level (the stem's output counts as
  the cell before the first cell; choice left open by the paper), or
- (2) for an up-sampling cell, the output of the last cell before the matching down-sampling (the
  skip connection; the stem's output when the down-sampling was the first cell). At the peak of the U
  (a down cell right before an up cell) (1) and (2) name the same tensor, which is taken once.

The first input is first resampled to the cell's level: down-sampling by a 3x3x3 convolution with
stride 2, up-sampling by trilinear interpolation (scale 2) followed by a 1x1x1 convolution. Each
input then gets its own 1x1x1 pre-processing convolution and its own convolution of the cell's type,
the branches are summed, and a 1x1x1 convolution gives the output. Every convolution here is a
*unit* ReLU -> conv -> InstanceNorm (the paper uses InstanceNorm and ReLU but leaves the order open;
pre-activation is the order of ``MixedEdge3d``, so a supernet edge with one-hot weights is exactly the
discrete unit). Convolutions have no bias except the final one.

Cell operations (§3.4): index 0 ``conv3x3x1`` (2D), 1 ``conv3x3x3`` (3D), 2 ``p3d_3x3x1_1x1x3``
(P3D: 3x3x1 then 1x1x3), the names of ``nas3d_fast.nn.CANDIDATES``; both branches of a two-input
cell use the cell's type. 3^12 = 531,441 colourings, the paper's 5.3 x 10^5.

Stems (§4.1): two 3x3x3 convolutions with strides 1 and 2 (the first one without the ReLU, on the
raw input); at the end a 3x3x3 convolution unit, trilinear up-sampling by 2, and a 3x3x3
convolution with bias (after a ReLU) to the class logits. The network's stride is 16.

Encoding (24 integers)
----------------------
| positions | meaning | choices |
| --- | --- | --- |
| 0..11 | topology code: level of cell i | 4 (levels 0..3) |
| 12..23 | operation of cell i - 12 | 3 (2D, 3D, P3D) |

``enumerate()`` lists the coarse-stage space (§3.3): the 924 topologies with the default colouring
c_0 ("standard 3D convolution everywhere", eq. 2-3). The joint space (924 x 3^12 = 4.9 x 10^8) is
searched by sampling, as the paper's fine stage does.

Supernet (§3.4)
---------------
The paper shares weights only in the fine stage: the coarse stage trains every topology from scratch
(a topology supernet is "infeasible" there for memory and fairness), the fine stage trains a
super-network over the *fixed* searched topology s* with single-path one-shot uniform sampling
(eq. 6-7). ``supernet(..., topology=code)`` is that network: each cell branch's convolution is a
``MixedEdge3d`` over the three operations; group ``"ops"`` has shape (12, 3), row i driving both
branches of cell i. Single-path sampling passes ``(one_hot (12, 3), indices (12, 1))``; dense weights
work too. The space's ``topology`` option makes it the fine stage's space over that topology:
``supernet()`` defaults to it and ``derive(logits)`` (each cell's argmax operation) puts the result on it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn import MixedEdge3d, make_candidate
from ..nn.norm import InstanceNorm3d
from ._int_vector import integers
from .base import Arch, ArchError, SearchSpace, Supernet, as_rng, check_vector, register

NUM_CELLS = 12
NUM_DOWN = 3  # and as many up-sampling cells
MAX_LEVEL = NUM_DOWN
CELL_OPS = ("conv3x3x1", "conv3x3x3", "p3d_3x3x1_1x1x3")  # 2D, 3D, P3D (§3.4)
DEFAULT_OP = "conv3x3x3"  # c_0 of the coarse stage


# -- topologies --------------------------------------------------------------------------------------


def topologies() -> list[tuple[int, ...]]:
    """The 924 topology codes the priors allow (see the module docstring), in lexicographic order of
    the positions of their six resampling cells."""
    codes = []
    for positions in itertools.combinations(range(NUM_CELLS), 2 * NUM_DOWN):
        moves = [0] * NUM_CELLS
        for rank, p in enumerate(positions):
            moves[p] = 1 if rank < NUM_DOWN else -1
        codes.append(tuple(int(v) for v in np.cumsum(moves)))
    return codes


def check_topology(code: Sequence[int], offset: int = 0) -> tuple[int, ...]:
    """``code`` as a tuple after checking the priors; ArchError names the first bad position (plus
    ``offset``, the code's place in a longer vector)."""
    if len(code) != NUM_CELLS:
        raise ArchError(f"c2fnas: the topology code has {len(code)} levels, expected {NUM_CELLS}")
    levels, previous, ups = [], 0, 0
    for i, v in enumerate(code):
        pos = offset + i
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ArchError(f"c2fnas: position {pos}: level must be an int, got {v!r}")
        v = int(v)
        if not 0 <= v <= MAX_LEVEL:
            raise ArchError(f"c2fnas: position {pos}: level {v} outside 0..{MAX_LEVEL}")
        if abs(v - previous) > 1:
            raise ArchError(
                f"c2fnas: position {pos}: level jumps from {previous} to {v} (a cell moves one level at most)"
            )
        if v > previous and ups:
            raise ArchError(f"c2fnas: position {pos}: a down-sampling after an up-sampling breaks the U-shape prior")
        ups += v < previous
        levels.append(v)
        previous = v
    last = offset + NUM_CELLS - 1
    if max(levels) != MAX_LEVEL:
        raise ArchError(
            f"c2fnas: position {last}: the code reaches level {max(levels)}; the space has exactly "
            f"{NUM_DOWN} down-sampling cells (levels up to {MAX_LEVEL})"
        )
    if levels[-1] != 0:
        raise ArchError(
            f"c2fnas: position {last}: the code ends at level {levels[-1]}; the skip prior matches every "
            f"down-sampling with an up-sampling, so it must end at level 0"
        )
    return tuple(levels)


def cell_inputs(code: Sequence[int]) -> list[tuple[int, int | None]]:
    """For each cell i, (first input node, second input node or None). Node 0 is the stem's output,
    node i + 1 the output of cell i; the first input is always node i (the previous cell)."""
    node_level = [0, *code]
    inputs = []
    for i, level in enumerate(code):
        second = None
        if level < node_level[i]:  # up-sampling cell: skip from before the matching down-sampling
            for d in range(i - 1, -1, -1):
                if node_level[d] == level and node_level[d + 1] == level + 1:
                    second = d
                    break
        elif i >= 1 and node_level[i - 1] == level:  # previous-previous cell at the same level
            second = i - 1
        inputs.append((i, second))
    return inputs


# -- architectures --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class C2FNASArch(Arch):
    """``topology``: the 12 cell levels (the paper's code); ``ops``: the 12 cell operations, names
    from ``CELL_OPS``."""

    space = "c2fnas"
    topology: tuple[int, ...]
    ops: tuple[str, ...]


def _check_ops(ops: Sequence[str]) -> tuple[str, ...]:
    if len(ops) != NUM_CELLS:
        raise ArchError(f"c2fnas: {len(ops)} cell operations, expected {NUM_CELLS}")
    for i, op in enumerate(ops):
        if op not in CELL_OPS:
            raise ArchError(f"c2fnas: position {NUM_CELLS + i}: cell {i} operation {op!r} is not one of {CELL_OPS}")
    return tuple(ops)


# -- modules ----------------------------------------------------------------------------------------


class ConvUnit(nn.Module):
    """ReLU (unless ``act=False``) -> Conv3d (no bias, "same" padding) -> InstanceNorm3d.
    (N, C_in, X, Y, Z) -> (N, C_out, X', Y', Z'), X' = X / stride."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, act: bool = True):
        super().__init__()
        self.act = act
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.norm = InstanceNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(F.relu(x) if self.act else x))


class Upsample(nn.Module):
    """Trilinear interpolation by 2 then a 1x1x1 convolution unit (§4.1's up-sampling)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.unit = ConvUnit(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False))


class CellOp(nn.Module):
    """One branch's operation of a discrete cell: ReLU -> candidate ``name`` -> InstanceNorm3d, the
    computation of a ``MixedEdge3d`` with one-hot weights (so its ``op`` and ``norm`` take that edge's
    weights)."""

    def __init__(self, name: str, channels: int):
        super().__init__()
        self.name = name
        self.op = make_candidate(name, channels, channels, 1)
        self.norm = InstanceNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.op(F.relu(x)))


class Cell(nn.Module):
    """Fig. 5 (right): per input a 1x1x1 pre-processing unit and an operation, summed, then a 1x1x1
    unit. ``ops`` are ``CellOp`` (discrete) or ``MixedEdge3d`` (supernet), one per input."""

    def __init__(self, channels: int, ops: Sequence[nn.Module]):
        super().__init__()
        self.pre = nn.ModuleList(ConvUnit(channels, channels, 1) for _ in ops)
        self.ops = nn.ModuleList(ops)
        self.post = ConvUnit(channels, channels, 1)

    def forward(self, inputs: Sequence[torch.Tensor], weights: Any = None) -> torch.Tensor:
        total = None
        for x, pre, op in zip(inputs, self.pre, self.ops):
            h = pre(x)
            y = op(h) if weights is None else op(h, weights)
            total = y if total is None else total + y
        return self.post(total)


class C2FNASNetwork(nn.Module):
    """The network of one topology: (N, C_in, X, Y, Z) -> (N, num_classes, X, Y, Z) logits, X, Y, Z
    multiples of 16. ``make_op(cell, channels)`` gives each cell branch's operation module."""

    def __init__(self, topology: Sequence[int], in_channels: int, num_classes: int, channels: int, make_op):
        super().__init__()
        self.topology = tuple(topology)
        self.inputs = cell_inputs(self.topology)
        width = [channels * 2**level for level in range(MAX_LEVEL + 1)]
        self.stem = nn.Sequential(
            ConvUnit(in_channels, channels, 3, act=False), ConvUnit(channels, channels, 3, stride=2)
        )
        node_level = [0, *self.topology]
        self.resample = nn.ModuleList()
        self.cells = nn.ModuleList()
        for i, level in enumerate(self.topology):
            before = node_level[i]
            if level > before:
                self.resample.append(ConvUnit(width[before], width[level], 3, stride=2))
            elif level < before:
                self.resample.append(Upsample(width[before], width[level]))
            else:
                self.resample.append(nn.Identity())
            n_inputs = 1 if self.inputs[i][1] is None else 2
            self.cells.append(Cell(width[level], [make_op(i, width[level]) for _ in range(n_inputs)]))
        self.head_unit = ConvUnit(channels, channels, 3)
        self.classifier = nn.Conv3d(channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor, weights: Any = None) -> torch.Tensor:
        """``weights``: None (discrete), or a function cell index -> that cell's edge weights."""
        nodes = [self.stem(x)]
        for i, cell in enumerate(self.cells):
            first, second = self.inputs[i]
            inputs = [self.resample[i](nodes[first])]
            if second is not None:
                inputs.append(nodes[second])
            nodes.append(cell(inputs, None if weights is None else weights(i)))
        y = self.head_unit(nodes[-1])
        y = F.interpolate(y, scale_factor=2, mode="trilinear", align_corners=False)
        return self.classifier(F.relu(y))


class C2FNASSupernet(Supernet):
    """The fine-stage super-network (§3.4) over one fixed topology: every cell branch's operation is a
    ``MixedEdge3d`` over ``CELL_OPS``. Group ``"ops"``: (12, 3); row i drives both branches of cell i.

    ``forward(x, {"ops": w})``: w a dense (12, 3) tensor, or the pair (weights (12, 3), indices (12, k))
    that ``ops.gumbel_topk`` returns; only the indexed operations run (single-path uniform sampling:
    k = 1, one-hot weights)."""

    def __init__(self, topology: Sequence[int], in_channels: int, num_classes: int, channels: int, norm: str):
        super().__init__()
        self.topology = check_topology(topology)
        self.in_channels, self.num_classes, self.channels = in_channels, num_classes, channels
        self.norm = norm
        self.network = C2FNASNetwork(
            self.topology, in_channels, num_classes, channels, lambda i, c: MixedEdge3d(c, c, CELL_OPS, norm=norm)
        )

    def arch_shapes(self) -> dict[str, tuple[int, int]]:
        return {"ops": (NUM_CELLS, len(CELL_OPS))}

    def forward(self, x: torch.Tensor, weights: dict) -> torch.Tensor:
        if not isinstance(weights, dict) or set(weights) != {"ops"}:
            raise ValueError(f"weights must be a dict with the one group 'ops', got {_keys(weights)}")
        w = weights["ops"]
        shape = (NUM_CELLS, len(CELL_OPS))
        if isinstance(w, (tuple, list)):
            if len(w) != 2 or any(
                not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != NUM_CELLS for t in w
            ):
                raise ValueError(
                    f"weights['ops'] as a sample must be the pair (weights (12, 3), indices (12, k)), got {w!r}"
                )
            rows = lambda i: (w[0][i], w[1][i])
        else:
            if not isinstance(w, torch.Tensor) or tuple(w.shape) != shape:
                raise ValueError(f"weights['ops'] must be a dense tensor of shape {shape}, got {_describe(w)}")
            rows = lambda i: w[i]
        return self.network(x, rows)

    def one_hot(self, arch: Arch) -> dict[str, torch.Tensor]:
        arch = self._own(arch)
        p = next(self.parameters())
        w = torch.zeros(NUM_CELLS, len(CELL_OPS), dtype=p.dtype, device=p.device)
        for i, op in enumerate(arch.ops):
            w[i, CELL_OPS.index(op)] = 1
        return {"ops": w}

    def extract(self, arch: Arch) -> nn.Module:
        arch = self._own(arch)
        p = next(self.parameters())
        with torch.device(p.device):
            model = C2FNASNetwork(
                arch.topology, self.in_channels, self.num_classes, self.channels, lambda i, c: CellOp(arch.ops[i], c)
            ).to(p.dtype)  # before loading, so that no weight is rounded on the way
        source = self.network.state_dict()
        state = {}
        for key in model.state_dict():
            parts = key.split(".")
            # cells.{i}.ops.{j}.op.<param> / cells.{i}.ops.{j}.norm.<param> of the discrete CellOp
            if parts[0] == "cells" and parts[2] == "ops" and parts[4] in ("op", "norm"):
                k = CELL_OPS.index(arch.ops[int(parts[1])])
                head, rest = ".".join(parts[:4]), ".".join(parts[5:])
                if parts[4] == "op":
                    key_src = f"{head}.ops.{k}.{rest}"
                else:
                    key_src = f"{head}.norm.{rest}" if self.norm == "shared" else f"{head}.norms.{k}.{rest}"
            else:
                key_src = key
            state[key] = source[key_src]
        model.load_state_dict(state)
        return model

    def _own(self, arch: Arch) -> C2FNASArch:
        if not isinstance(arch, C2FNASArch):
            raise ArchError(f"c2fnas: expected a C2FNASArch, got {type(arch).__name__}")
        check_topology(arch.topology)
        _check_ops(arch.ops)
        if tuple(arch.topology) != self.topology:
            raise ArchError(
                f"c2fnas: the architecture's topology {arch.topology} is not this supernet's {self.topology}"
            )
        return arch


def _keys(w: Any) -> str:
    return repr(sorted(w)) if isinstance(w, dict) else type(w).__name__


def _describe(t: Any) -> str:
    return f"a tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


# -- the space ----------------------------------------------------------------------------------------


@register
class C2FNASSpace(SearchSpace):
    """C2FNAS's space (see the module docstring). Options: ``channels`` (filters at level 0, 32 in
    the paper; the ablation of §5.3 scales it) and ``topology`` (None: the joint space; a code or a
    ``C2FNASArch``: the fine stage's space over that searched topology s* (§3.4), where ``sample`` draws
    colourings of it, architectures of other topologies are refused, ``supernet`` defaults to it and
    ``derive`` reads it)."""

    name = "c2fnas"
    arch_type = C2FNASArch
    stride = 2 * 2**NUM_DOWN  # the stem's stride 2, then three down-samplings

    def __init__(self, channels: int = 32, topology: Sequence[int] | C2FNASArch | None = None):
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        fixed = None if topology is None else _topology_code(topology)
        options: dict[str, Any] = {"channels": channels}
        if fixed is not None:  # recorded only when set: the joint space's options stay {"channels": ...}
            options["topology"] = list(fixed)
        super().__init__(**options)
        self.channels = channels
        #: the fine stage's fixed topology, or None (the joint space)
        self.topology: tuple[int, ...] | None = fixed

    def _check_fixed(self, topology: tuple[int, ...]) -> None:
        if self.topology is not None and tuple(topology) != self.topology:
            first = next(i for i, (a, b) in enumerate(zip(topology, self.topology)) if a != b)
            raise ArchError(
                f"c2fnas: position {first}: topology {tuple(topology)} is not this fine-stage space's "
                f"topology {self.topology}"
            )

    # -- supernet searches (the fine stage) -------------------------------------------------------

    def arch_shapes(self) -> dict[str, tuple[int, int]]:
        return {"ops": (NUM_CELLS, len(CELL_OPS))}

    def derive(
        self, logits: Mapping[str, torch.Tensor], topology: Sequence[int] | C2FNASArch | None = None
    ) -> C2FNASArch:
        """The fine stage's result: each cell's most probable operation (argmax of its row of
        ``logits["ops"]`` (12, 3), the supernet's one group; ties go to the lower index), on the fixed
        topology: ``topology`` when given, else the space's ``topology`` option. (The paper ranks the
        sampled colourings on the inherited weights, eq. 7; with learned logits their argmax is the
        colouring the supernet prefers.)"""
        w = self.check_logits(logits)
        if topology is None:
            if self.topology is None:
                raise ValueError(
                    "c2fnas: derive needs the fine stage's topology: the logits (12 cells x 3 operations) do "
                    "not hold it. Construct the space with topology=<code> (--space-option "
                    "topology=[0,1,...]), as the supernet was built on, or pass derive(logits, topology=...)"
                )
            code = self.topology
        else:
            code = _topology_code(topology)
            self._check_fixed(code)
        ops = tuple(CELL_OPS[k] for k in w["ops"].argmax(dim=1).tolist())
        return C2FNASArch(code, ops)

    # -- encodings ---------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator | int | None = None) -> C2FNASArch:
        """Uniform over the 924 topologies (the space's fixed ``topology`` when set) and, independently,
        over each cell's operation."""
        rng = as_rng(rng)
        if self.topology is not None:
            ops = tuple(CELL_OPS[int(k)] for k in rng.integers(0, len(CELL_OPS), NUM_CELLS))
            return C2FNASArch(self.topology, ops)
        positions = sorted(int(p) for p in rng.choice(NUM_CELLS, 2 * NUM_DOWN, replace=False))
        moves = [0] * NUM_CELLS
        for rank, p in enumerate(positions):
            moves[p] = 1 if rank < NUM_DOWN else -1
        topology = tuple(int(v) for v in np.cumsum(moves))
        ops = tuple(CELL_OPS[int(k)] for k in rng.integers(0, len(CELL_OPS), NUM_CELLS))
        return C2FNASArch(topology, ops)

    def vector_choices(self) -> list[int]:
        return [MAX_LEVEL + 1] * NUM_CELLS + [len(CELL_OPS)] * NUM_CELLS

    def topology_positions(self) -> list[int]:
        """The topology code: the first ``NUM_CELLS`` positions (each cell's resolution level)."""
        return list(range(NUM_CELLS))

    def encode(self, arch: Arch) -> list[int]:
        if not isinstance(arch, C2FNASArch):
            raise ArchError(f"c2fnas: expected a C2FNASArch, got {type(arch).__name__}")
        topology = check_topology(arch.topology)
        self._check_fixed(topology)
        ops = _check_ops(arch.ops)
        return [*topology, *(CELL_OPS.index(op) for op in ops)]

    def decode(self, vector: Sequence[int]) -> C2FNASArch:
        choices = self.vector_choices()
        if len(vector) != len(choices):
            raise ArchError(f"c2fnas: the encoding has length {len(vector)}, expected {len(choices)}")
        values = integers(vector, self.name)
        topology = check_topology(values[:NUM_CELLS])  # the priors' messages name the position
        self._check_fixed(topology)
        ops = check_vector(values, choices, self.name)[NUM_CELLS:]
        return C2FNASArch(topology, tuple(CELL_OPS[k] for k in ops))

    def enumerate(self) -> Iterator[C2FNASArch]:
        """The coarse-stage space: the 924 topologies, each with the default colouring c_0 (3D
        convolution in every cell). The joint space's colourings are sampled, not listed. With a fixed
        ``topology`` (the fine stage's space): its 3^12 colourings, lazily, in lexicographic order."""
        if self.topology is not None:
            for ops in itertools.product(CELL_OPS, repeat=NUM_CELLS):
                yield C2FNASArch(self.topology, ops)
            return
        for code in topologies():
            yield C2FNASArch(code, (DEFAULT_OP,) * NUM_CELLS)

    # -- networks ------------------------------------------------------------------------------------

    def build(self, arch: Arch, in_channels: int, num_classes: int) -> nn.Module:
        self.encode(arch)  # validates
        _check_sizes(in_channels, num_classes)
        return C2FNASNetwork(
            arch.topology, in_channels, num_classes, self.channels, lambda i, c: CellOp(arch.ops[i], c)
        )

    def supernet(
        self, in_channels: int, num_classes: int, *, topology: Sequence[int] | Arch | None = None, norm: str = "shared"
    ) -> C2FNASSupernet:
        """The fine-stage supernet over ``topology`` (a code, or an architecture whose topology is
        taken; default the space's ``topology`` option). ``norm``: MixedEdge3d's placement, "shared" or
        "per_op" (equal for one-hot weights)."""
        _check_sizes(in_channels, num_classes)
        if topology is not None and self.topology is not None:
            try:
                self._check_fixed(_topology_code(topology))
            except ArchError as exc:
                raise ValueError(f"c2fnas: supernet(topology=...): {exc}") from exc
        topology = self.topology if topology is None else topology
        if topology is None:
            raise ValueError(
                "c2fnas: supernet() needs topology=<code or C2FNASArch>: C2FNAS shares weights only in the fine "
                "stage, over the topology the coarse stage found (§3.4); the coarse stage trains every topology "
                "from scratch (§3.3), e.g. over enumerate(); or construct the space with topology=<code>"
            )
        code = topology.topology if isinstance(topology, C2FNASArch) else topology
        if isinstance(code, (str, bytes)) or not isinstance(code, Sequence):
            raise TypeError(f"topology must be a code of {NUM_CELLS} levels or a C2FNASArch, got {topology!r}")
        return C2FNASSupernet(code, in_channels, num_classes, self.channels, norm)


def _topology_code(topology: Sequence[int] | C2FNASArch) -> tuple[int, ...]:
    """The checked code of a topology given as a code or as a ``C2FNASArch``."""
    code = topology.topology if isinstance(topology, C2FNASArch) else topology
    if isinstance(code, (str, bytes)) or not isinstance(code, Sequence):
        raise TypeError(f"topology must be a code of {NUM_CELLS} levels or a C2FNASArch, got {topology!r}")
    return check_topology(code)


def _check_sizes(in_channels: int, num_classes: int) -> None:
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
