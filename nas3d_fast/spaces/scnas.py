"""The SCNAS space (Kim et al., "Scalable Neural Architecture Search for 3D Medical Image Segmentation",
``papers/scnas.md`` §2.1 and §3): a U-Net of DARTS-style cells of four types.

What the paper fixes:

- Four cell types, encoder-normal (enc), reduction (red), decoder-normal (dec) and expansion (exp); all
  cells of one type share one structure, whatever their level (§2.1). An inter cell, a copy of the
  enc structure, sits between encoder and decoder. 12 cells in all, three reductions and three
  expansions (three downsamplings and upsamplings by 2, §3).
- Every cell takes the outputs of the two previous cells; the first reduction cell takes the stem's
  output twice. In the decoder, the output of the previous cell is summed with the output of the
  encoder cell at the same level before the current cell uses it (§2.1, footnote 4).
- A cell is a DAG of 4 intermediate nodes, x_j = sum over incoming edges of o(x_i); the cell output
  is the channel concatenation of the 4 nodes (§2.1).
- Candidates (§3): conv3x3x3, depthwise-separable dilated 3x3x3 with rate 2, 3, 4, 3x3x3 max and
  average pooling, identity, zero; convolutions are LeakyReLU-Conv-InstanceNorm. Reduction cells'
  operations have stride 2, expansion cells pre-upsample their inputs; reduction and expansion cells
  double and halve the channels (§3). A stem cell and an out cell, both fixed.

What the paper leaves open, chosen here:

- **Cell order** (the 12 cells, level in brackets, level l has 2**-l of the input's size):
  stem [0], red [1], enc [1], red [2], enc [2], red [3], inter [3], exp [2], dec [2], exp [1],
  dec [1], exp [0], dec [0], out. The encoder ends with its third reduction, so 2 enc cells + the inter
  cell carry the enc structure and 3 dec cells the dec structure.
- **Skips.** "Encoder cell at the same level" = the last encoder cell (or the stem) whose output is at
  the level of the previous cell's output: every cell after the inter cell uses
  (previous-but-one output, previous output + encoder output at the previous output's level). For the
  first expansion that encoder output is the third reduction's.
- **Channels.** Node channels at level l are ``base_channels * 2**l``; a cell outputs 4 times that
  (its 4 nodes). The stem (3x3x3 convolution, InstanceNorm) outputs ``4 * base_channels``, so that
  the paper's 48 stem channels during search are ``base_channels=12`` (its 68 for retraining: 17).
- **Inputs of a cell** (DARTS's preprocessing) are brought to the cell's node channels by
  LeakyReLU-Conv-InstanceNorm with a 1x1x1 convolution when the input is at the cell's level, a 2x2x2
  convolution of stride 2 when it is one level finer, and a 2x2x2 transposed convolution of stride 2
  when one level coarser. Reduction cells preprocess at their inputs' level and then the edges that
  leave the two cell inputs have stride 2 (edges between intermediate nodes cannot have stride 2);
  expansion cells preprocess with the transposed convolution (their "pre-upsampling").
- **Discrete cells** (DARTS's derivation): every node keeps two incoming edges from distinct
  predecessors, each with one non-zero candidate (zero is what the unchosen edges of the supernet
  carry). Predecessors of node j: 0 and 1 are the cell inputs (previous-but-one and previous cell), 2 +
  i is node i < j.
- **Out cell**: LeakyReLU then a 1x1x1 convolution with bias to the class logits.

The encoded vector: 4 cell types t (0 enc, 1 red, 2 dec, 3 exp) x 4 nodes j x 4 entries, position
16 t + 4 j + e:

| e | meaning | choices |
| --- | --- | --- |
| 0 | first predecessor p_a of node j | 0 .. j + 1 |
| 1 | operation of edge (p_a, j) | index into ``OPS`` (7: conv3x3x3, sep_dil3x3x3_r2/_r3/_r4, max_pool3, avg_pool3, identity) |
| 2 | second predecessor p_b of node j, p_b > p_a | 0 .. j + 1 |
| 3 | operation of edge (p_b, j) | index into ``OPS`` |

``sample`` is uniform over the predecessor pairs and the ops. The space is finite (about 1.2e36
architectures) but too large to enumerate.

The supernet has every edge of every cell (14 per cell: node j has j + 2) as a ``MixedEdge3d`` over the
8 candidates ``CELL_CANDIDATES`` with per-op placement (LeakyReLU-Conv-InstanceNorm on convolutions, the
others bare) and act "leaky_relu". Architecture weights come in one group per cell type, (14, 8) each,
shared by all cells of that type; edge e of a cell is node j's edge from predecessor p with
e = j (j + 3) / 2 + p. ``derive(logits)`` turns those logits into the discrete cells by DARTS's
derivation (softmax per edge; each node's two edges with the strongest non-zero candidate).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..nn import MixedEdge3d, make_candidate
from ..nn.mixed_edge import activation, has_norm
from ..nn.norm import InstanceNorm3d
from .base import Arch, ArchError, SearchSpace, Supernet, as_rng, check_vector, register

#: the discrete edges' operations (SCNAS §3 without zero).
OPS = ("conv3x3x3", "sep_dil3x3x3_r2", "sep_dil3x3x3_r3", "sep_dil3x3x3_r4", "max_pool3", "avg_pool3", "identity")
#: the supernet edges' candidates: the 8 of SCNAS §3.
CELL_CANDIDATES = (*OPS, "zero")
CELL_TYPES = ("enc", "red", "dec", "exp")
NODES = 4
EDGES = NODES * (NODES + 3) // 2  # 14: node j has j + 2 predecessors
ACT = "leaky_relu"
#: (cell type, structure, output level) of the 12 cells in order; "inter" has the enc structure.
PLAN = (
    ("red", "red", 1),
    ("enc", "enc", 1),
    ("red", "red", 2),
    ("enc", "enc", 2),
    ("red", "red", 3),
    ("inter", "enc", 3),
    ("exp", "exp", 2),
    ("dec", "dec", 2),
    ("exp", "exp", 1),
    ("dec", "dec", 1),
    ("exp", "exp", 0),
    ("dec", "dec", 0),
)
DEPTH = 4  # levels 0..3


def edge_index(node: int, pred: int) -> int:
    """Row of edge (pred -> node) in a cell's (14, K) architecture weights."""
    return node * (node + 3) // 2 + pred


@dataclasses.dataclass(frozen=True)
class ScnasArch(Arch):
    """One structure per cell type: 4 nodes, each ((pred_a, op_a), (pred_b, op_b)) with pred_a < pred_b
    (see the module docstring for the numbering) and ops from ``OPS``."""

    space = "scnas"
    enc: tuple
    red: tuple
    dec: tuple
    exp: tuple


# -- networks -----------------------------------------------------------------------------------


class _Pre(nn.Module):
    """LeakyReLU, convolution (``kind`` "same": 1x1x1; "down": 2x2x2 stride 2; "up": 2x2x2 transposed,
    stride 2), InstanceNorm: brings a cell input to the cell's node channels and resolution."""

    def __init__(self, kind: str, in_channels: int, channels: int):
        super().__init__()
        self.kind = kind
        if kind == "up":
            self.conv = nn.ConvTranspose3d(in_channels, channels, 2, stride=2, bias=False)
        else:
            k = 1 if kind == "same" else 2
            self.conv = nn.Conv3d(in_channels, channels, k, stride=k, bias=False)
        self.norm = InstanceNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(activation(x, ACT)))

    def extra_repr(self) -> str:
        return repr(self.kind)


class ScnasEdge(nn.Module):
    """A discrete edge: LeakyReLU-op-InstanceNorm for candidates with weights, the bare op for pooling
    and identity (as a per-op ``MixedEdge3d`` computes each candidate)."""

    def __init__(self, op: str, channels: int, stride: int):
        super().__init__()
        self.op = make_candidate(op, channels, channels, stride)
        self.norm = InstanceNorm3d(channels) if has_norm(self.op) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x) if self.norm is None else self.norm(self.op(activation(x, ACT)))


class _Cell(nn.Module):
    """A cell: preprocess both inputs, then 4 nodes from their edges, output the concatenation
    (N, 4 c, ...) of the nodes. Subclasses hold ``edges`` and define ``_node``."""

    def __init__(self, kinds: tuple[str, str], in_channels: tuple[int, int], channels: int, reduction: bool):
        super().__init__()
        self.reduction = reduction
        self.pre = nn.ModuleList(_Pre(k, c, channels) for k, c in zip(kinds, in_channels))

    def stride(self, pred: int) -> int:
        return 2 if self.reduction and pred < 2 else 1

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, *args) -> torch.Tensor:
        states = [self.pre[0](s0), self.pre[1](s1)]
        for j in range(NODES):
            states.append(self._node(j, states, *args))
        return torch.cat(states[2:], dim=1)


class ScnasCell(_Cell):
    """A discrete cell of ``structure`` (4 nodes of two (pred, op) pairs)."""

    def __init__(self, structure: tuple, kinds, in_channels, channels: int, reduction: bool):
        super().__init__(kinds, in_channels, channels, reduction)
        self.structure = structure
        self.edges = nn.ModuleList(
            ScnasEdge(op, channels, self.stride(pred)) for node in structure for pred, op in node
        )

    def _node(self, j: int, states: list[torch.Tensor]) -> torch.Tensor:
        (pa, _), (pb, _) = self.structure[j]
        return self.edges[2 * j](states[pa]) + self.edges[2 * j + 1](states[pb])


class ScnasSuperCell(_Cell):
    """A supernet cell: all 14 edges as MixedEdge3d over ``CELL_CANDIDATES``."""

    def __init__(self, kinds, in_channels, channels: int, reduction: bool):
        super().__init__(kinds, in_channels, channels, reduction)
        self.edges = nn.ModuleList(
            MixedEdge3d(channels, channels, CELL_CANDIDATES, stride=self.stride(p), norm="per_op", act=ACT)
            for j in range(NODES)
            for p in range(j + 2)
        )

    def _node(self, j: int, states: list[torch.Tensor], row, skip: set[int]) -> torch.Tensor:
        out = None
        for p in range(j + 2):
            e = edge_index(j, p)
            if e in skip:  # a sampled path that only holds zero on this edge: adds nothing
                continue
            y = self.edges[e](states[p], row(e))
            out = y if out is None else out + y
        if out is None:  # every edge sampled zero: the node is zeros at the cell's resolution
            ref = states[0]
            size = [(s - 1) // self.stride(0) + 1 for s in ref.shape[2:]]
            out = ref.new_zeros((ref.shape[0], ref.shape[1], *size))
        return out


class _Frame(nn.Module):
    """Stem, the 12 cells of ``PLAN``, out cell; ``make_cell(structure_name, kinds, in_channels, channels,
    reduction)`` builds each cell."""

    def __init__(self, in_channels: int, num_classes: int, base_channels: int, make_cell):
        super().__init__()
        ch = [base_channels * 2**lv for lv in range(DEPTH)]
        self.stem = nn.Conv3d(in_channels, NODES * ch[0], 3, padding=1, bias=False)
        self.stem_norm = InstanceNorm3d(NODES * ch[0])
        cells, levels = [], [0, 0]  # levels of the two previous outputs
        for kind, structure, level in PLAN:
            if kind == "red":
                kinds = ("same", "same")
            elif kind == "exp":
                kinds = ("up", "up")
            else:
                kinds = tuple({level: "same", level - 1: "down", level + 1: "up"}[lv] for lv in levels)
            ins = tuple(NODES * ch[lv] for lv in levels)
            cells.append(make_cell(structure, kinds, ins, ch[level], kind == "red"))
            levels = [levels[1], level]
        self.cells = nn.ModuleList(cells)
        self.out = nn.Conv3d(NODES * ch[0], num_classes, 1)

    def _run(self, x: torch.Tensor, *cell_args) -> torch.Tensor:
        h = self.stem_norm(self.stem(x))
        states, levels = [h, h], [0, 0]
        encoder = {0: h}  # level -> last encoder output there
        decoding = False
        for (kind, structure, level), cell in zip(PLAN, self.cells):
            s0, s1 = states
            if decoding:
                s1 = s1 + encoder[levels[1]]
            out = cell(s0, s1, *(a[structure] for a in cell_args))
            if kind in ("red", "enc"):
                encoder[level] = out
            decoding = decoding or kind == "inter"
            states, levels = [states[1], out], [levels[1], level]  # the next cell gets the unsummed output
        return self.out(activation(states[1], ACT))


class ScnasNet(_Frame):
    """The discrete network of an SCNAS architecture: (N, C_in, X, Y, Z) -> (N, num_classes, X, Y, Z)
    logits, X, Y, Z multiples of 8."""

    def __init__(self, arch: ScnasArch, in_channels: int, num_classes: int, base_channels: int):
        def make(structure, kinds, ins, channels, reduction):
            return ScnasCell(getattr(arch, structure), kinds, ins, channels, reduction)

        super().__init__(in_channels, num_classes, base_channels, make)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)


class ScnasSupernet(_Frame, Supernet):
    """The weight-sharing network. ``forward(x, weights)``: weights maps each cell type ("enc", "red",
    "dec", "exp") to dense (14, 8) weights or the (weights (14, 8), indices (14, k)) pair of
    ``ops.gumbel_topk``; all cells of a type use their type's weights."""

    def __init__(self, space: ScnasSpace, in_channels: int, num_classes: int):
        super().__init__(
            in_channels, num_classes, space.base_channels, lambda s, k, i, c, r: ScnasSuperCell(k, i, c, r)
        )
        self.space, self.in_channels, self.num_classes = space, in_channels, num_classes

    def arch_shapes(self) -> dict[str, tuple[int, int]]:
        return {t: (EDGES, len(CELL_CANDIDATES)) for t in CELL_TYPES}

    def forward(self, x: torch.Tensor, weights: dict) -> torch.Tensor:
        if not isinstance(weights, dict) or set(weights) != set(CELL_TYPES):
            got = sorted(weights) if isinstance(weights, dict) else type(weights).__name__
            raise ValueError(f"weights must be a dict with the groups {list(CELL_TYPES)}, got {got}")
        rows, skips = {}, {}
        zero = CELL_CANDIDATES.index("zero")
        for t in CELL_TYPES:
            rows[t], skips[t] = _rows(weights[t], t, zero)
        return self._run(x, rows, skips)

    def one_hot(self, arch: Arch) -> dict[str, torch.Tensor]:
        self.space.check(arch)
        dev = self.stem.weight.device
        out = {}
        for t in CELL_TYPES:
            w = torch.zeros(EDGES, len(CELL_CANDIDATES), device=dev)
            w[:, CELL_CANDIDATES.index("zero")] = 1
            for j, node in enumerate(getattr(arch, t)):
                for pred, op in node:
                    e = edge_index(j, pred)
                    w[e].zero_()
                    w[e, CELL_CANDIDATES.index(op)] = 1
            out[t] = w
        return out

    def extract(self, arch: Arch) -> ScnasNet:
        net = self.space.build(arch, self.in_channels, self.num_classes)
        net.to(self.stem.weight.device)
        for name in ("stem", "stem_norm", "out"):
            getattr(net, name).load_state_dict(getattr(self, name).state_dict())
        for cell, supercell in zip(net.cells, self.cells):
            cell.pre.load_state_dict(supercell.pre.state_dict())
            for j, node in enumerate(cell.structure):
                for i, (pred, op) in enumerate(node):
                    mixed, edge = supercell.edges[edge_index(j, pred)], cell.edges[2 * j + i]
                    k = CELL_CANDIDATES.index(op)
                    edge.op.load_state_dict(mixed.ops[k].state_dict())
                    if edge.norm is not None:
                        edge.norm.load_state_dict(mixed.norms[str(k)].state_dict())
        return net


def _rows(w, name: str, zero: int):
    """(row(e) giving edge e's weights as MixedEdge3d takes them, set of edges that only sample zero)."""
    shape = (EDGES, len(CELL_CANDIDATES))
    if isinstance(w, (tuple, list)):
        ok = len(w) == 2 and all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in w)
        if not ok or tuple(w[0].shape) != shape or w[1].shape[0] != EDGES:
            raise ValueError(
                f"weights[{name!r}]: expected the (weights {shape}, indices ({EDGES}, k)) pair of ops.gumbel_topk"
            )
        only_zero = {e for e, idx in enumerate(w[1].tolist()) if set(idx) == {zero}}
        return (lambda e: (w[0][e], w[1][e])), only_zero
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != shape:
        raise ValueError(f"weights[{name!r}] must have shape {shape}, got {getattr(w, 'shape', type(w).__name__)}")
    return (lambda e: w[e]), set()


# -- the space ----------------------------------------------------------------------------------


@register
class ScnasSpace(SearchSpace):
    """The SCNAS space (see the module docstring). Option: ``base_channels`` (12: node channels at
    level 0; the stem has 4 times as many)."""

    name = "scnas"
    arch_type = ScnasArch
    stride = 2 ** (DEPTH - 1)

    def __init__(self, base_channels: int = 12):
        if not isinstance(base_channels, (int, np.integer)) or isinstance(base_channels, bool) or base_channels < 1:
            raise ValueError(f"scnas: base_channels must be a positive int, got {base_channels!r}")
        super().__init__(base_channels=int(base_channels))
        self.base_channels = int(base_channels)

    def vector_choices(self) -> list[int]:
        node = [[j + 2, len(OPS), j + 2, len(OPS)] for j in range(NODES)]
        return [c for _ in CELL_TYPES for n in node for c in n]

    def sample(self, rng: np.random.Generator | int | None = None) -> ScnasArch:
        rng = as_rng(rng)
        cells = {}
        for t in CELL_TYPES:
            nodes = []
            for j in range(NODES):
                pairs = list(itertools.combinations(range(j + 2), 2))
                pa, pb = pairs[int(rng.integers(len(pairs)))]
                oa, ob = (OPS[int(k)] for k in rng.integers(0, len(OPS), 2))
                nodes.append(((pa, oa), (pb, ob)))
            cells[t] = tuple(nodes)
        return ScnasArch(**cells)

    def encode(self, arch: Arch) -> list[int]:
        if not isinstance(arch, ScnasArch):
            raise ArchError(f"scnas: expected a ScnasArch, got {type(arch).__name__}")
        vector = []
        for t, cell_type in enumerate(CELL_TYPES):
            cell = getattr(arch, cell_type)
            if not isinstance(cell, tuple) or len(cell) != NODES:
                raise ArchError(f"scnas: the {cell_type} cell must be a tuple of {NODES} nodes, got {cell!r}")
            for j, node in enumerate(cell):
                base = 16 * t + 4 * j
                if (
                    not isinstance(node, tuple)
                    or len(node) != 2
                    or not all(isinstance(e, tuple) and len(e) == 2 for e in node)
                ):
                    raise ArchError(
                        f"scnas: positions {base}..{base + 3}: node {j} of the {cell_type} cell must be two "
                        f"(predecessor, op) pairs, got {node!r}"
                    )
                for i, (pred, op) in enumerate(node):
                    if isinstance(pred, bool) or not isinstance(pred, (int, np.integer)) or not 0 <= pred <= j + 1:
                        raise ArchError(
                            f"scnas: position {base + 2 * i}: predecessor {pred!r} of node {j} of the {cell_type} "
                            f"cell does not exist (0..{j + 1}: the two cell inputs, then earlier nodes)"
                        )
                    if op not in OPS:
                        raise ArchError(
                            f"scnas: position {base + 2 * i + 1}: op {op!r} of node {j} of the {cell_type} cell "
                            f"is not one of {OPS}"
                        )
                    vector += [int(pred), OPS.index(op)]
        self.decode(vector)  # checks the ranges and the predecessor order
        return vector

    def decode(self, vector: Sequence[int]) -> ScnasArch:
        v = check_vector(vector, self.vector_choices(), self.name)
        cells = {}
        for t, cell_type in enumerate(CELL_TYPES):
            nodes = []
            for j in range(NODES):
                base = 16 * t + 4 * j
                pa, oa, pb, ob = v[base : base + 4]
                if pb <= pa:
                    raise ArchError(
                        f"scnas: position {base + 2}: the second predecessor of node {j} of the {cell_type} cell "
                        f"({pb}) must be greater than the first ({pa})"
                    )
                nodes.append(((pa, OPS[oa]), (pb, OPS[ob])))
            cells[cell_type] = tuple(nodes)
        return ScnasArch(**cells)

    def arch_shapes(self) -> dict[str, tuple[int, int]]:
        return {t: (EDGES, len(CELL_CANDIDATES)) for t in CELL_TYPES}

    def derive(self, logits: Mapping[str, torch.Tensor]) -> ScnasArch:
        """The supernet search's architecture, by DARTS §2.4's derivation (which SCNAS §2.2 follows): per
        cell type, each edge's candidate weights are the softmax of its 8 logits; each node keeps the
        two incoming edges whose strongest non-zero candidate weighs most, each with that candidate.
        ``logits``: {cell type: (14, 8)} as ``supernet.arch_logits()`` holds them (ties go to the lower
        predecessor and op)."""
        zero = CELL_CANDIDATES.index("zero")
        cells = {}
        for t, w in self.check_logits(logits).items():
            w = torch.softmax(w, dim=1)
            w[:, zero] = -1.0  # zero never counts (its edge is the one DARTS drops)
            best, op = w.max(dim=1)  # max returns the first maximum: ties go to the lower op
            nodes = []
            for j in range(NODES):
                rows = [edge_index(j, p) for p in range(j + 2)]
                order = sorted(range(j + 2), key=lambda p: (-best[rows[p]].item(), p))
                pa, pb = sorted(order[:2])
                nodes.append(tuple((p, CELL_CANDIDATES[int(op[rows[p]])]) for p in (pa, pb)))
            cells[t] = tuple(nodes)
        return ScnasArch(**cells)

    def build(self, arch: Arch, in_channels: int, num_classes: int) -> ScnasNet:
        self.check(arch)
        _check_channels(in_channels, num_classes)
        return ScnasNet(arch, in_channels, num_classes, self.base_channels)

    def supernet(self, in_channels: int, num_classes: int, **options: Any) -> ScnasSupernet:
        """The weight-sharing network (per-op LeakyReLU-Conv-InstanceNorm edges, as in SCNAS §3)."""
        if options:
            raise ValueError(f"scnas supernet: unknown options {sorted(options)}; it takes none")
        _check_channels(in_channels, num_classes)
        return ScnasSupernet(self, in_channels, num_classes)


def _check_channels(in_channels: int, num_classes: int) -> None:
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
