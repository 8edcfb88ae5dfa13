"""The networks of the dints space: the discrete network (MONAI's ``DiNTS`` around a
``TopologyInstance``) and the supernet (MONAI's ``DiNTS`` around a ``TopologySearch``, its edges
``MixedEdge3d``). Both register their modules in MONAI's order with MONAI's parameter shapes (cells,
then the stems: stem_down, stem_up, stem_finals), so MONAI's state dicts carry over value by value.

Shapes: input (N, C_in, X, Y, Z) with X, Y, Z multiples of ``2 ** (num_depths - 1 + use_downsample)``;
scale d of the search space holds ``channels[d + use_downsample]`` channels at 1 / 2 ** (d +
use_downsample) of the input size; output (N, num_classes, X, Y, Z) logits.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import MixedEdge3d, make_candidate
from ..nn.conv import Conv3d
from ..nn.norm import InstanceNorm3d
from ..nn.resample import UpsampleTrilinear, factorized_reduce, upsample_trilinear
from .base import Supernet
from .dints_topology import edge_scales


@dataclass(frozen=True)
class Layout:
    """What a dints network's shape depends on: the space's options."""

    num_blocks: int
    num_depths: int
    channels: tuple[int, ...]  # num_depths + 1 filter numbers (MONAI's filter_nums)
    use_downsample: bool
    ops: tuple[str, ...]  # candidate names (nas3d_fast.nn.CANDIDATES) in the order of the op axis

    @property
    def num_edges(self) -> int:
        return 3 * self.num_depths - 2

    def scale_channels(self, d: int) -> int:
        return self.channels[d + int(self.use_downsample)]


class ActConvNorm(nn.Module):
    """ReLU, convolution (no bias, "same" padding), InstanceNorm (MONAI's ActiConvNormBlock)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3):
        super().__init__()
        self.conv = Conv3d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.norm = InstanceNorm3d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(F.relu(x)))


class FactorizedReduce(nn.Module):
    """Down by 2: ReLU, two 1x1x1 stride-2 convolutions (the second shifted by one voxel) concatenated,
    InstanceNorm (MONAI's FactorizedReduceBlock). Spatial sizes must be even."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_1 = nn.Conv3d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv3d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.norm = InstanceNorm3d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(factorized_reduce(x, self.conv_1.weight, self.conv_2.weight))


class FactorizedIncrease(nn.Module):
    """Up by 2: trilinear upsampling (align_corners), ReLU, 1x1x1 convolution, InstanceNorm (MONAI's
    FactorizedIncreaseBlock)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = Conv3d(c_in, c_out, 1, bias=False)
        self.norm = InstanceNorm3d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = upsample_trilinear(x, 2, align_corners=True)
        return self.norm(self.conv(F.relu(up)))


def make_resample(kind: int, c_in: int, c_out: int) -> nn.Module:
    """An edge's resampling: -1 down, 0 same (identity; a same-scale edge keeps its channels), +1 up."""
    if kind == -1:
        return FactorizedReduce(c_in, c_out)
    if kind == 1:
        return FactorizedIncrease(c_in, c_out)
    return nn.Identity()


class EdgeOp(nn.Module):
    """The discrete op of an edge: ``candidate`` (a ``nas3d_fast.nn`` candidate module) with, when
    ``norm`` is given, ReLU before it and the norm after (MONAI's ReLU-Conv-Norm); without ``norm`` the
    candidate alone (MONAI's skip_connect)."""

    def __init__(self, candidate: nn.Module, norm: nn.Module | None):
        super().__init__()
        self.op = candidate
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return self.op(x)
        return self.norm(self.op(F.relu(x)))


class Stems(nn.Module):
    """MONAI DiNTS's multi-scale stems. ``down(x)``: one input per scale; ``up(outputs, active)``: from
    the coarsest active scale of the last layer up to the input size, then ``stem_finals``."""

    def __init__(self, layout: Layout, in_channels: int, num_classes: int):
        super().__init__()
        ch, ds = layout.channels, layout.use_downsample
        self.stem_down = nn.ModuleList()
        self.stem_up = nn.ModuleList()
        for d in range(layout.num_depths):
            down = [
                nn.Upsample(scale_factor=1 / 2**d, mode="trilinear", align_corners=True),
                Conv3d(in_channels, ch[d], 3, padding=1, bias=False),
                InstanceNorm3d(ch[d]),
            ]
            if ds:
                down += [
                    nn.ReLU(),
                    Conv3d(ch[d], ch[d + 1], 3, stride=2, padding=1, bias=False),
                    InstanceNorm3d(ch[d + 1]),
                ]
                up_in, up_out, scale = ch[d + 1], ch[d], 2
            else:
                up_in, up_out, scale = ch[d], ch[max(d - 1, 0)], 2 ** (d != 0)
            self.stem_down.append(nn.Sequential(*down))
            self.stem_up.append(
                nn.Sequential(
                    nn.ReLU(),
                    Conv3d(up_in, up_out, 3, padding=1, bias=False),
                    InstanceNorm3d(up_out),
                    UpsampleTrilinear(scale, align_corners=True),
                )
            )
        self.stem_finals = nn.Sequential(ActConvNorm(ch[0], ch[0]), nn.Conv3d(ch[0], num_classes, 1, bias=True))

    def down(self, x: torch.Tensor, wanted: Sequence[bool]) -> list[torch.Tensor | None]:
        return [stem(x) if want else None for stem, want in zip(self.stem_down, wanted)]

    def up(self, outputs: Sequence[torch.Tensor | None], active: Sequence[bool]) -> torch.Tensor:
        tmp = None
        for d in range(len(outputs) - 1, -1, -1):
            if tmp is not None:
                tmp = self.stem_up[d](tmp if outputs[d] is None else outputs[d] + tmp)
            elif active[d]:
                tmp = self.stem_up[d](outputs[d])
        if tmp is None:
            raise RuntimeError("dints: no scale of the last layer is active")
        return self.stem_finals(tmp)


def _cell(resample: nn.Module, op: nn.Module) -> nn.Sequential:
    return nn.Sequential(resample, op)


class DintsNet(nn.Module):
    """The discrete network of a dints architecture. ``edges`` (L, E): 0 = edge off, k = op k - 1 of
    ``layout.ops``. ``placement`` "per_op" (MONAI: identity bare, the others ReLU-op-Norm) or "shared"
    (every op, identity included, ReLU-op-Norm: what a shared-norm supernet's edge is at one-hot).
    ``edge_scale``: a constant multiplying every edge's output (None: none), what the supernet's
    ``channel_scales`` give with one value everywhere (HyperSegNAS's w_fixed, ``DintsSupernet.extract``)."""

    def __init__(
        self,
        layout: Layout,
        edges: Sequence[Sequence[int]],
        in_channels: int,
        num_classes: int,
        placement: str = "per_op",
        cells: dict[str, nn.Module] | None = None,
        stems: Stems | None = None,
        edge_scale: float | None = None,
    ):
        super().__init__()
        self.layout, self.placement = layout, placement
        self.edge_scale = None if edge_scale is None else float(edge_scale)
        self.edges = tuple(tuple(int(v) for v in row) for row in edges)
        self.reads, self.writes, self.resample = edge_scales(layout.num_depths)
        self.cells = nn.ModuleDict()
        for layer, row in enumerate(self.edges):
            for e, v in enumerate(row):
                if v:
                    key = f"{layer}_{e}"
                    self.cells[key] = cells[key] if cells is not None else self._fresh_cell(e, v - 1)
        self.stems = stems if stems is not None else Stems(layout, in_channels, num_classes)
        first = {self.reads[e] for e, v in enumerate(self.edges[0]) if v}
        self._first_reads = [d in first for d in range(layout.num_depths)]
        last = {self.writes[e] for e, v in enumerate(self.edges[-1]) if v}
        self._last_writes = [d in last for d in range(layout.num_depths)]

    def _fresh_cell(self, e: int, op: int) -> nn.Module:
        lay = self.layout
        c_in, c_out = lay.scale_channels(self.reads[e]), lay.scale_channels(self.writes[e])
        name = lay.ops[op]
        norm = None if (name == "identity" and self.placement == "per_op") else InstanceNorm3d(c_out)
        return _cell(make_resample(self.resample[e], c_in, c_out), EdgeOp(make_candidate(name, c_out, c_out), norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stems = self.stems
        inputs = stems.down(x, self._first_reads)
        for layer, row in enumerate(self.edges):
            outputs: list[torch.Tensor | None] = [None] * self.layout.num_depths
            for e, v in enumerate(row):
                if v:
                    y = self.cells[f"{layer}_{e}"](inputs[self.reads[e]])
                    if self.edge_scale is not None:
                        y = y * self.edge_scale
                    w = self.writes[e]
                    outputs[w] = y if outputs[w] is None else outputs[w] + y
            inputs = outputs
        return stems.up(inputs, self._last_writes)


class DintsSupernet(Supernet):
    """The dints supernet: every edge of every layer, each a resampling then a ``MixedEdge3d`` over the
    space's ops (at the written scale's channels), its output scaled by the edge's path weight and summed
    into the written scale (MONAI's TopologySearch forward).

    Groups (``arch_shapes``): "paths" (L * E, 2): (off, on) per edge, row l * E + e; "ops" (L * E, O).
    ``forward(x, weights)``: each group dense, or the ``(weights, indices)`` pair of ``ops.gumbel_topk``.
    Dense paths: an edge's output is multiplied by its column-1 weight (the "off" column is not used:
    MONAI's path probabilities are not a softmax, see ``monai_weights``). Sampled paths: an edge runs
    only when index 1 ("on") is among its sampled indices, scaled by that index's weight. Sampled ops:
    only the sampled candidates run (``MixedEdge3d``).

    A scale of the last layer is "active" (its output stem runs, as DiNTS's ``node_a``) when at least
    one edge writing it is on with a non-zero weight; with dense softmax/sigmoid weights every scale is.
    ``norm``: "per_op" (MONAI's ReLU-Conv-Norm per op, identity bare) or "shared" (one InstanceNorm per
    edge over the merged candidates).

    Channel modulation (HyperSegNAS's Meta-Assistant Network, ``nas3d_fast.search.hypernet``):
    ``forward(x, weights, channel_scales)`` multiplies the output of edge "l_e" channel by channel by
    ``channel_scales["l_e"]``, (N, C) (one row per sample), (C,) or a number; ``modulation_slots()`` gives each
    edge's (channels, candidates), ``active_slots(arch)`` the candidate each of ``arch``'s edges runs. The
    scales multiply the edge's normalised output: scaling its kernels instead would be undone by the
    InstanceNorm that follows them.
    """

    def __init__(self, layout: Layout, in_channels: int, num_classes: int, norm: str = "per_op"):
        super().__init__()
        self.layout, self.norm_placement = layout, norm
        self.in_channels, self.num_classes = in_channels, num_classes
        self.reads, self.writes, self.resample = edge_scales(layout.num_depths)
        self.cells = nn.ModuleDict()
        for layer in range(layout.num_blocks):
            for e in range(layout.num_edges):
                c_in, c_out = layout.scale_channels(self.reads[e]), layout.scale_channels(self.writes[e])
                self.cells[f"{layer}_{e}"] = _cell(
                    make_resample(self.resample[e], c_in, c_out), MixedEdge3d(c_out, c_out, layout.ops, norm=norm)
                )
        self.stems = Stems(layout, in_channels, num_classes)

    def arch_shapes(self) -> dict[str, tuple[int, int]]:
        n = self.layout.num_blocks * self.layout.num_edges
        return {"paths": (n, 2), "ops": (n, len(self.layout.ops))}

    def monai_weights(self, log_alpha_a: torch.Tensor, log_alpha_c: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense weights from MONAI's TopologySearch parameters: log_alpha_a (L, E) path logits ->
        "paths" column 1 = sigmoid(a) / (1 - prod_e (1 - sigmoid(a))) (MONAI's ``get_prob_a``), column 0 =
        1 - that; log_alpha_c (L, E, O) -> "ops" = softmax over O. Differentiable in both."""
        lay = self.layout
        if tuple(log_alpha_a.shape) != (lay.num_blocks, lay.num_edges):
            raise ValueError(
                f"log_alpha_a must have shape {(lay.num_blocks, lay.num_edges)}, got {tuple(log_alpha_a.shape)}"
            )
        if tuple(log_alpha_c.shape) != (lay.num_blocks, lay.num_edges, len(lay.ops)):
            raise ValueError(
                f"log_alpha_c must have shape {(lay.num_blocks, lay.num_edges, len(lay.ops))}, got {tuple(log_alpha_c.shape)}"
            )
        s = torch.sigmoid(log_alpha_a)
        on = (s / (1 - (1 - s).prod(-1, keepdim=True))).reshape(-1)
        return {
            "paths": torch.stack([1 - on, on], dim=1),
            "ops": torch.softmax(log_alpha_c, -1).reshape(-1, len(lay.ops)),
        }

    def one_hot(self, arch) -> dict[str, torch.Tensor]:
        edges = torch.tensor(arch.edges, dtype=torch.int64).reshape(-1)
        device = next(self.parameters()).device
        paths = F.one_hot((edges > 0).long(), 2).float().to(device)
        ops = F.one_hot((edges - 1).clamp(min=0), len(self.layout.ops)).float().to(device)
        return {"paths": paths, "ops": ops}

    def modulation_slots(self) -> dict[str, tuple[int, int]]:
        """Edge name "l_e" -> (its output channels, its candidates), in layer then edge order."""
        lay = self.layout
        return {f"{layer}_{e}": (lay.scale_channels(self.writes[e]), len(lay.ops))
                for layer in range(lay.num_blocks) for e in range(lay.num_edges)}

    def active_slots(self, arch) -> dict[str, int]:
        """Edge name -> the candidate (index into the space's ops) ``arch`` runs on it, for its edges that are on."""
        return {f"{layer}_{e}": v - 1 for layer, row in enumerate(arch.edges) for e, v in enumerate(row) if v}

    def extract(self, arch, edge_scale: float | None = None) -> DintsNet:
        """The discrete network of ``arch`` with this supernet's weights (copies); ``edge_scale``: a constant
        multiplying every edge's output, as ``channel_scales`` of that one value do in ``forward``."""
        cells = {}
        for layer, row in enumerate(arch.edges):
            for e, v in enumerate(row):
                if v:
                    resample, edge = self.cells[f"{layer}_{e}"]
                    k = v - 1
                    if self.norm_placement == "shared":
                        norm = edge.norm
                    else:
                        norm = edge.norms[str(k)] if str(k) in edge.norms else None  # noqa: SIM401 (ModuleDict)
                    cells[f"{layer}_{e}"] = _cell(
                        copy.deepcopy(resample), EdgeOp(copy.deepcopy(edge.ops[k]), copy.deepcopy(norm))
                    )
        stems = copy.deepcopy(self.stems)
        return DintsNet(self.layout, arch.edges, self.in_channels, self.num_classes, self.norm_placement,
                        cells=cells, stems=stems, edge_scale=edge_scale)

    # -- forward ---------------------------------------------------------------------------------

    def _parse(self, weights) -> tuple[list[bool], torch.Tensor, list[int], object]:
        """(edge runs?, path weight per edge (L*E,), its column in that tensor per edge, ops weights)."""
        if not isinstance(weights, dict) or set(weights) != {"paths", "ops"}:
            raise ValueError("weights must be a dict with the groups 'paths' and 'ops' (see arch_shapes())")
        shapes = self.arch_shapes()
        n = shapes["paths"][0]
        paths = weights["paths"]
        if isinstance(paths, (tuple, list)):  # gumbel_topk: weights (n, 2) zero off the sample, indices (n, k)
            w, idx = paths
            if tuple(w.shape) != shapes["paths"] or idx.dim() != 2 or idx.shape[0] != n:
                raise ValueError(
                    f"sampled 'paths' must be gumbel_topk's (weights {shapes['paths']}, indices ({n}, k)), "
                    f"got {tuple(w.shape)} and {tuple(idx.shape)}"
                )
            return (idx == 1).any(1).tolist(), w[:, 1], [0] * n, weights["ops"]
        if not isinstance(paths, torch.Tensor) or tuple(paths.shape) != shapes["paths"]:
            raise ValueError(f"'paths' must be a dense tensor of shape {shapes['paths']} or a gumbel_topk pair")
        return [True] * n, paths[:, 1], [0] * n, weights["ops"]

    def _op_weights(self, ops, i: int):
        if isinstance(ops, (tuple, list)):
            return ops[0][i], ops[1][i]
        return ops[i]

    def _channel_scale(self, y: torch.Tensor, scale) -> torch.Tensor:
        if not isinstance(scale, torch.Tensor):
            return y * float(scale)
        if scale.dim() == 1:
            scale = scale.view(1, -1)
        if scale.dim() != 2 or scale.shape[1] != y.shape[1] or scale.shape[0] not in (1, y.shape[0]):
            raise ValueError(f"a channel scale must be (N={y.shape[0]}, C={y.shape[1]}) or (C,), "
                             f"got {tuple(scale.shape)}")
        return y * scale.to(y.dtype)[:, :, None, None, None]

    def forward(self, x: torch.Tensor, weights, channel_scales: dict | None = None) -> torch.Tensor:
        lay = self.layout
        runs, path_w, _, ops = self._parse(weights)
        if isinstance(ops, torch.Tensor) and tuple(ops.shape) != self.arch_shapes()["ops"]:
            raise ValueError(f"'ops' must have shape {self.arch_shapes()['ops']}, got {tuple(ops.shape)}")
        stems = self.stems
        E = lay.num_edges
        inputs = stems.down(x, [True] * lay.num_depths)
        shapes = [t.shape for t in inputs]
        # One host sync: which last-layer scales are active. Meta tensors (a memory prediction's trace)
        # hold no values: every scale counts as active, the larger network (dense weights, softmax
        # and sigmoid, are never exactly zero anyway).
        nonzero = [True] * len(path_w) if path_w.device.type == "meta" else (path_w != 0).tolist()
        for layer in range(lay.num_blocks):
            outputs: list[torch.Tensor | None] = [None] * lay.num_depths
            for e in range(E):
                i = layer * E + e
                if not runs[i]:
                    continue
                resample, edge = self.cells[f"{layer}_{e}"]
                src = inputs[self.reads[e]]
                if src is None:  # nothing was sampled into that scale: it holds zeros
                    src = x.new_zeros(shapes[self.reads[e]])
                y = edge(resample(src), self._op_weights(ops, i), scale=path_w[i])
                if channel_scales is not None and f"{layer}_{e}" in channel_scales:
                    y = self._channel_scale(y, channel_scales[f"{layer}_{e}"])
                w = self.writes[e]
                # y is fresh and no backward reads it (norms and sums keep their inputs): sum in place.
                outputs[w] = y if outputs[w] is None else outputs[w].add_(y)
            inputs = outputs
        last = lay.num_blocks - 1
        active = [False] * lay.num_depths
        for e in range(E):
            i = last * E + e
            if runs[i] and nonzero[i]:
                active[self.writes[e]] = True
        return stems.up(inputs, active)
