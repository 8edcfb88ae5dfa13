"""The ``dints`` search space: HyperSegNAS §3.1 ("Network Search Space"), which follows DiNTS, and
MONAI's implementation of DiNTS (``monai.networks.nets.dints``: ``TopologySearch``,
``TopologyInstance``, ``DiNTS``), which this space reproduces module for module.

Topology (HyperSegNAS §3.1 "Topology"): L = ``num_blocks`` layers (12) of features at D =
``num_depths`` scales (4); E = 3D - 2 edges (10) between consecutive layers, each a resampling
(down, same, up; MONAI's FactorizedReduce, identity, FactorizedIncrease) then a basic operation, at
the written scale's channels 32, 64, 128, 256 (times ``channel_mul``; MONAI's ``filter_nums``). Edges
meeting at a scale are summed. The multi-scale stems are DiNTS's: the input is resampled to every
scale (and down by 2 more with ``use_downsample``) on the way in, and brought back from the coarsest
active scale of the last layer on the way out (``dints_net``).

Edge operations (HyperSegNAS §3.1 "Edge Operations"): skip connection and 3x3x3 convolution; with
``p3d=True`` also DiNTS's three pseudo-3D ops (3x3x1 then 1x1x3, and rotations), in MONAI's order
(skip_connect, conv_3x3x3, conv_3x3x1, conv_3x1x3, conv_1x3x3 = ``nas3d_fast.nn`` candidates identity,
conv3x3x3, p3d_3x3x1_1x1x3, p3d_3x1x3_1x3x1, p3d_1x3x3_3x1x1). Each convolution is ReLU-Conv-Norm,
the skip connection bare (MONAI's placement).

Architecture (HyperSegNAS's L x E x O matrix): ``DintsArch.edges``, L rows of E ints, 0 = edge off,
k = op k - 1 (``DintsArch.matrix(O)`` gives the 0/1 L x E x O matrix, all-zero for an off edge). The
1D encoding is the rows concatenated: position l * E + e, O + 1 choices each. Feasible architectures
are MONAI's (``dints_topology``): every layer has an edge, and from the second layer on the scales a
layer reads are exactly the ones the previous layer writes.

Choices the paper leaves open, and what this space does:
- Defaults: ``num_blocks=12``, ``num_depths=4`` (the paper's L and |r|; MONAI's defaults are 6 and 3),
  ``p3d=False`` (the paper omits the P3D ops; MONAI includes them), ``channel_mul=1.0``,
  ``use_downsample=True`` (MONAI's defaults).
- "Summed and normalised": MONAI normalises inside each op (ReLU-Conv-Norm) and the resamplings, not
  after the sum; so does ``build``. The supernet's ``norm="shared"`` normalises each edge once after
  its merged candidates; the discrete network extracted from such a supernet then has ReLU-op-Norm on
  every op, identity included.
- Which architectures are valid: MONAI's feasibility (no dead ends, no missing predecessor); the
  last layer may write any non-empty set of scales.
- ``sample`` is not uniform over feasible architectures: layer 0 takes a uniform non-empty subset of
  its edges; each later layer, for every scale the previous layer wrote, a uniform non-empty subset of
  the edges reading that scale; every active edge a uniform op.
- ``decode_logits`` decodes MONAI's parameterisation (sigmoid path logits, softmax op logits): the
  topology maximising the product of MONAI's per-layer child probabilities (its shortest path, found
  here by a dynamic programme over layers, in C++ when ``nas3d_fast._C`` is built), then each active
  edge's most probable op.
- Patch sizes must be multiples of 2 ** (num_depths - 1 + use_downsample) (16 by default), so every
  scale has an even size wherever it is downsampled.

The supernet search's result, ``derive(logits)``: the supernet's groups "paths" (L * E, 2), row l * E + e
(off, on), and "ops" (L * E, O). An edge's path logit (MONAI's ``log_alpha_a``) is
``paths[:, 1] - paths[:, 0]`` (the on-probability of a softmax over (off, on) is sigmoid of that
difference), reshaped (L, E); the op logits reshaped (L, E, O) are MONAI's ``log_alpha_c``; then
``decode_logits``. So a MONAI-style search passes ``paths = stack([0, a], -1)``, and logits favouring an
architecture (``10 * one_hot(arch)``: +-10 path logits) decode to it: every feasible architecture
round-trips. ``export_monai`` writes the result as MONAI's search codes (``search_dints.py``'s file).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from .base import Arch, ArchError, SearchSpace, as_rng, check_vector, register
from .dints_net import DintsNet, DintsSupernet, Layout
from .dints_topology import decode_topology, edge_scales

OPS = ("identity", "conv3x3x3")
P3D_OPS = ("p3d_3x3x1_1x1x3", "p3d_3x1x3_1x3x1", "p3d_1x3x3_3x1x1")
NORMS = ("per_op", "shared")


@dataclasses.dataclass(frozen=True)
class DintsArch(Arch):
    """``edges``: L rows of E ints; 0 = edge off, k >= 1 = the space's op k - 1 on that edge."""

    space: ClassVar[str] = "dints"
    edges: tuple[tuple[int, ...], ...]

    def matrix(self, num_ops: int) -> np.ndarray:
        """HyperSegNAS's L x E x O 0/1 matrix (an off edge is all zeros)."""
        e = np.asarray(self.edges, dtype=np.int64)
        return (e[..., None] == np.arange(1, num_ops + 1)).astype(np.int64)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> DintsArch:
        """The architecture of an L x E x O 0/1 matrix with at most one 1 per edge."""
        m = np.asarray(matrix)
        if m.ndim != 3 or (m.sum(-1) > 1).any() or not np.isin(m, (0, 1)).all():
            raise ArchError(
                f"dints: the matrix must be L x E x O of 0/1 with at most one 1 per edge, got shape {m.shape}"
            )
        edges = np.where(m.sum(-1) > 0, m.argmax(-1) + 1, 0)
        return cls(edges=tuple(tuple(int(v) for v in row) for row in edges))


@register
class DintsSpace(SearchSpace):
    """The dints space (see the module docstring).

    Options: ``num_blocks`` (L, 12), ``num_depths`` (scales, 4), ``channel_mul`` (1.0),
    ``use_downsample`` (True), ``p3d`` (False: ops {identity, conv3x3x3}; True: also the three P3D ops),
    ``norm`` ("per_op": MONAI's placement, used by ``build`` and as the supernet's default; "shared").
    """

    name = "dints"
    arch_type = DintsArch

    def __init__(
        self,
        num_blocks: int = 12,
        num_depths: int = 4,
        channel_mul: float = 1.0,
        use_downsample: bool = True,
        p3d: bool = False,
        norm: str = "per_op",
    ):
        for arg, value, low in (("num_blocks", num_blocks, 1), ("num_depths", num_depths, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
        if num_depths > 8:
            raise ValueError(
                f"num_depths must be at most 8 (2^(3 * num_depths - 2) topologies per layer), got {num_depths}"
            )
        if not isinstance(channel_mul, (int, float)) or channel_mul <= 0:
            raise ValueError(f"channel_mul must be a positive number, got {channel_mul!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        channels = tuple(int(32 * 2**i * channel_mul) for i in range(num_depths + 1))
        if min(channels) < 2:
            raise ValueError(f"channel_mul {channel_mul} leaves fewer than 2 channels at the first scale: {channels}")
        super().__init__(
            num_blocks=num_blocks,
            num_depths=num_depths,
            channel_mul=channel_mul,
            use_downsample=bool(use_downsample),
            p3d=bool(p3d),
            norm=norm,
        )
        self.ops = OPS + (P3D_OPS if p3d else ())
        self.layout = Layout(num_blocks, num_depths, channels, bool(use_downsample), self.ops)
        self.reads, self.writes, self.resample = edge_scales(num_depths)
        self.stride = 2 ** (num_depths - 1 + int(bool(use_downsample)))

    @property
    def num_edges(self) -> int:
        return self.layout.num_edges

    def arch_shapes(self) -> dict[str, tuple[int, int]]:
        n = self.layout.num_blocks * self.num_edges
        return {"paths": (n, 2), "ops": (n, len(self.ops))}

    # -- encodings -------------------------------------------------------------------------------

    def vector_choices(self) -> list[int]:
        return [len(self.ops) + 1] * (self.layout.num_blocks * self.num_edges)

    def encode(self, arch: Arch) -> list[int]:
        if not isinstance(arch, DintsArch):
            raise ArchError(f"dints: expected a DintsArch, got {type(arch).__name__}")
        L, E = self.layout.num_blocks, self.num_edges
        rows = arch.edges
        if not isinstance(rows, tuple) or len(rows) != L:
            raise ArchError(
                f"dints: edges must have {L} rows (layers), got {len(rows) if isinstance(rows, tuple) else rows!r}"
            )
        for layer, row in enumerate(rows):
            if not isinstance(row, tuple) or len(row) != E:
                raise ArchError(
                    f"dints: layer {layer} (positions {layer * E}..{layer * E + E - 1}) must have {E} edges, got {row!r}"
                )
        vector = [v for row in rows for v in row]
        self.decode(vector)  # value ranges and feasibility, errors naming the position
        return [int(v) for v in vector]

    def decode(self, vector: Sequence[int]) -> DintsArch:
        values = check_vector(vector, self.vector_choices(), self.name)
        E = self.num_edges
        rows = tuple(tuple(values[l * E : (l + 1) * E]) for l in range(self.layout.num_blocks))
        self._check_topology(rows)
        return DintsArch(edges=rows)

    def _check_topology(self, rows: tuple[tuple[int, ...], ...]) -> None:
        E = self.num_edges
        for layer, row in enumerate(rows):
            if not any(row):
                raise ArchError(f"dints: positions {layer * E}..{layer * E + E - 1}: layer {layer} has no active edge")
            if layer == 0:
                continue
            written = {self.writes[e] for e, v in enumerate(rows[layer - 1]) if v}
            read = {self.reads[e] for e, v in enumerate(row) if v}
            for e, v in enumerate(row):
                if v and self.reads[e] not in written:
                    raise ArchError(
                        f"dints: position {layer * E + e} (layer {layer}, edge {e}: scale {self.reads[e]} -> "
                        f"{self.writes[e]}): its predecessor, scale {self.reads[e]} of layer {layer - 1}, does not "
                        f"exist (no edge of layer {layer - 1} writes it)"
                    )
            for e, v in enumerate(rows[layer - 1]):
                if v and self.writes[e] not in read:
                    raise ArchError(
                        f"dints: position {(layer - 1) * E + e} (layer {layer - 1}, edge {e}: scale {self.reads[e]} "
                        f"-> {self.writes[e]}): a dead end, no edge of layer {layer} reads scale {self.writes[e]}"
                    )

    def sample(self, rng: np.random.Generator | int | None = None) -> DintsArch:
        rng = as_rng(rng)
        E, O = self.num_edges, len(self.ops)
        rows = []
        for layer in range(self.layout.num_blocks):
            if layer == 0:
                groups = [list(range(E))]
            else:
                written = sorted({self.writes[e] for e, v in enumerate(rows[-1]) if v})
                groups = [[e for e in range(E) if self.reads[e] == s] for s in written]
            row = [0] * E
            for group in groups:
                mask = int(rng.integers(1, 1 << len(group)))  # a uniform non-empty subset
                for j, e in enumerate(group):
                    if mask >> j & 1:
                        row[e] = int(rng.integers(1, O + 1))
            rows.append(tuple(row))
        return DintsArch(edges=tuple(rows))

    def decode_logits(self, path_logits: torch.Tensor | np.ndarray, op_logits: torch.Tensor | np.ndarray) -> DintsArch:
        """The most probable feasible architecture for MONAI-style logits, as ``TopologySearch.decode()``
        finds it: ``path_logits`` (L, E) (MONAI's ``log_alpha_a``) pick the topology (see
        ``dints_topology.decode_topology``), ``op_logits`` (L, E, O) (``log_alpha_c``) each active
        edge's op by argmax."""
        L, E, O = self.layout.num_blocks, self.num_edges, len(self.ops)
        ops = op_logits.detach().cpu().numpy() if isinstance(op_logits, torch.Tensor) else np.asarray(op_logits)
        if tuple(np.shape(path_logits)) != (L, E):
            raise ValueError(f"path_logits must have shape {(L, E)}, got {tuple(np.shape(path_logits))}")
        if ops.shape != (L, E, O):
            raise ValueError(f"op_logits must have shape {(L, E, O)}, got {ops.shape}")
        masks = decode_topology(path_logits, self.reads, self.writes)
        best_op = ops.argmax(-1) + 1
        rows = tuple(tuple(int(best_op[l, e]) if masks[l] >> e & 1 else 0 for e in range(E)) for l in range(L))
        return DintsArch(edges=rows)

    def derive(self, logits: Mapping[str, torch.Tensor]) -> DintsArch:
        """The supernet search's architecture (see the module docstring): path logits
        ``paths[:, 1] - paths[:, 0]`` as (L, E), op logits as (L, E, O), then ``decode_logits``."""
        path, ops = self._monai_logits(logits)
        return self.decode_logits(path, ops)

    def _monai_logits(self, logits: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """(log_alpha_a (L, E), log_alpha_c (L, E, O)) float64 arrays of checked supernet logits."""
        w = self.check_logits(logits)
        L, E, O = self.layout.num_blocks, self.num_edges, len(self.ops)
        path = (w["paths"][:, 1] - w["paths"][:, 0]).reshape(L, E)
        if not torch.isfinite(path).all():  # finite logits whose difference overflows float64
            raise ValueError(f"{self.name}: derive: weights['paths'] (shape {(L * E, 2)}): on - off overflows")
        return path.numpy(), w["ops"].reshape(L, E, O).numpy()

    # -- MONAI's codes -----------------------------------------------------------------------------

    def monai_codes(self, arch: DintsArch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(node_a (L + 1, D), arch_code_a (L, E), arch_code_c (L, E)) as MONAI's ``decode()`` returns
        them and ``TopologyInstance``/``DiNTS`` take them (arch_code_c is 0 on off edges)."""
        self.check(arch)
        e = np.asarray(arch.edges)
        code_a = (e > 0).astype(np.float64)
        code_c = np.maximum(e - 1, 0)
        node_a = np.zeros((self.layout.num_blocks + 1, self.layout.num_depths), dtype=np.int64)
        for edge in range(self.num_edges):
            node_a[0, self.reads[edge]] |= int(code_a[0, edge])
            node_a[1:, self.writes[edge]] |= code_a[:, edge].astype(np.int64)
        return node_a, code_a, code_c

    def export_monai(
        self,
        arch: DintsArch,
        path: str | os.PathLike,
        logits: Mapping[str, torch.Tensor] | None = None,
        *,
        iter_num: int = 0,
        epochs: int = 0,
        **metrics: float,
    ) -> dict[str, Any]:
        """Write ``arch`` as MONAI's search codes, the file MONAI's DiNTS tutorial's ``search_dints.py``
        saves (``torch.save`` of a dict; atomically here) and its ``train_dints.py`` and Auto3DSeg's dints
        template (``configs/network.yaml``) read into ``TopologyInstance(arch_code=[a, c])`` and
        ``DiNTS(node_a=...)``. Returns the dict written.

        Keys, as numpy arrays (MONAI 1.6's ``TopologyInstance`` takes only numpy codes):

        - ``node_a`` (L + 1, D) int64, ``arch_code_a`` (L, E) float64 0/1, ``arch_code_c`` (L, E) int64
          op indices, ``arch_code_a_max`` (L, E) int64: ``TopologySearch.decode()``'s four codes (the
          tutorial's names);
        - ``code_a``, ``code_c``, ``code_a_max``: the same arrays under the Auto3DSeg template's names;
        - ``iter_num``, ``epochs`` (ints), and any ``metrics`` given (e.g. ``best_dsc``, ``best_path``,
          ``dsc``, as the two MONAI searches record them).

        ``logits``: the supernet logits ``arch`` was derived from (as ``derive`` takes them), when known:
        then ``arch_code_a_max`` is each layer's most probable path activation and ``arch_code_c`` every
        edge's op argmax, as MONAI's decode of those logits gives them. Without them ``arch_code_a_max``
        is ``arch_code_a`` and off edges have op 0 (MONAI's network reads neither).

        Loading: numpy arrays are not on ``torch.load(weights_only=True)``'s default allowlist (torch >=
        2.6 refuses MONAI's own search codes too; MONAI issue #9025), so load with
        ``with torch.serialization.safe_globals(dints.MONAI_CODE_GLOBALS): torch.load(path,
        weights_only=True)`` (``load_monai_codes``) or ``weights_only=False`` for a trusted file."""
        from .._atomic import atomic_write

        node_a, code_a, code_c = self.monai_codes(arch)
        code_a_max = code_a.astype(np.int64)
        if logits is not None:
            log_alpha_a, log_alpha_c = self._monai_logits(logits)
            code_c_all = log_alpha_c.argmax(-1).astype(np.int64)
            if not (code_c_all[code_a > 0] == code_c[code_a > 0]).all():
                raise ValueError(
                    f"{self.name}: export_monai: the architecture's ops are not the argmax of these logits"
                )
            code_c = code_c_all
            code_a_max = most_probable_children(log_alpha_a)
        for arg, value in (("iter_num", iter_num), ("epochs", epochs)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{arg} must be a non-negative int, got {value!r}")
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"metric {key} must be a number, got {value!r}")
        codes = {
            "node_a": node_a.astype(np.int64),
            "arch_code_a": code_a.astype(np.float64),
            "arch_code_a_max": code_a_max,
            "arch_code_c": code_c.astype(np.int64),
        }
        record: dict[str, Any] = dict(codes)
        record.update(code_a=codes["arch_code_a"], code_a_max=codes["arch_code_a_max"], code_c=codes["arch_code_c"])
        record.update(iter_num=int(iter_num), epochs=int(epochs))
        record.update({k: (float(v) if isinstance(v, (float, np.floating)) else int(v)) for k, v in metrics.items()})
        atomic_write(os.fspath(path), lambda f: torch.save(record, f), suffix=".pth")
        return record

    def from_monai(self, arch_code_a: np.ndarray, arch_code_c: np.ndarray) -> DintsArch:
        """The architecture of MONAI's (arch_code_a (L, E) 0/1, arch_code_c (L, E) op indices)."""
        a, c = np.asarray(arch_code_a), np.asarray(arch_code_c)
        return self.decode(np.where(a > 0, c + 1, 0).astype(np.int64).ravel().tolist())

    # -- networks ----------------------------------------------------------------------------------

    def build(self, arch: Arch, in_channels: int, num_classes: int) -> DintsNet:
        self.check(arch)
        _check_io(in_channels, num_classes)
        return DintsNet(self.layout, arch.edges, in_channels, num_classes, placement=self.options["norm"])

    def supernet(self, in_channels: int, num_classes: int, **options: Any) -> DintsSupernet:
        """The supernet; ``norm`` ("per_op" or "shared", default the space's) is its only option."""
        unknown = set(options) - {"norm"}
        if unknown:
            raise ValueError(f"dints supernet: unknown options {sorted(unknown)}; the option is 'norm'")
        norm = options.get("norm", self.options["norm"])
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        _check_io(in_channels, num_classes)
        return DintsSupernet(self.layout, in_channels, num_classes, norm=norm)


#: the globals a MONAI search-codes file holds (numpy arrays), to allow in ``torch.load(weights_only=True)``.
def _code_globals() -> list:
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    reconstruct = multiarray._reconstruct
    return [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.int64)),
        type(np.dtype(np.float64)),
        type(np.dtype(np.int32)),
        reconstruct,
        # files pickled by numpy 1 (MONAI's own, e.g. the tutorial's arch_code_cvpr.pth) name numpy.core
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
    ]


#: the globals a MONAI search-codes file holds (numpy arrays), to allow in ``torch.load(weights_only=True)``.
MONAI_CODE_GLOBALS = tuple(_code_globals())


def load_monai_codes(path: str | os.PathLike) -> dict[str, Any]:
    """A MONAI search-codes file (``export_monai``'s, or MONAI's ``search_dints.py``'s) loaded with
    ``torch.load(weights_only=True)``, numpy arrays allowed (``MONAI_CODE_GLOBALS``)."""
    with torch.serialization.safe_globals(list(MONAI_CODE_GLOBALS)):
        return torch.load(os.fspath(path), weights_only=True)


def most_probable_children(log_alpha_a: np.ndarray) -> np.ndarray:
    """(L, E) int64: each layer's most probable non-empty path activation under MONAI's child
    probabilities (prod_e s_e or 1 - s_e, s = sigmoid(log_alpha_a), renormalised without the empty
    one): every edge with s_e > 1/2, or the most probable single edge when there is none. MONAI's
    ``decode()`` returns it as ``arch_code_a_max`` (ties aside: it takes the first child in its
    enumeration order)."""
    a = np.asarray(log_alpha_a, dtype=np.float64)
    out = (a > 0).astype(np.int64)
    for layer in np.flatnonzero(out.sum(1) == 0):
        out[layer, int(a[layer].argmax())] = 1
    return out


def _check_io(in_channels: int, num_classes: int) -> None:
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
