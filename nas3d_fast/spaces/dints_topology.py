"""The DiNTS topology: which scale each edge of a layer reads and writes, feasibility, and decoding
architecture logits into the most probable feasible topology (MONAI's ``TopologySearch.decode()``).

With D scales a layer has E = 3D - 2 edges, in MONAI's order (``arch_code2in``/``arch_code2out``):
edge ``e`` reads scale ``(e + 1) // 3 - 1 + (e + 1) % 3`` and writes scale ``(e + 1) // 3``; its
resampling is "same" (0), "up" (+1: from the coarser scale) or "down" (-1: from the finer scale). For
D = 4: reads (0, 1, 0, 1, 2, 1, 2, 3, 2, 3), writes (0, 0, 1, 1, 1, 2, 2, 2, 3, 3).

A topology is one bit mask of active edges per layer. It is feasible (what MONAI's decode and
``TopologyInstance`` admit) when every layer has an active edge and, from the second layer on, the
scales a layer reads are exactly the scales the layer before writes: no edge reads a scale that
nothing wrote (a predecessor that does not exist), and no written scale is left unread (a dead end).
The first layer reads the stems, which provide every scale; the last layer's written scales feed the
output stems.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

RESAMPLE_NAMES = {-1: "down", 0: "same", 1: "up"}


def edge_scales(num_depths: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(reads, writes, resample) per edge for ``num_depths`` scales; resample -1 down, 0 same, 1 up."""
    edges = 3 * num_depths - 2
    reads = tuple((e + 1) // 3 - 1 + (e + 1) % 3 for e in range(edges))
    writes = tuple((e + 1) // 3 for e in range(edges))
    resample = tuple(r - w for r, w in zip(reads, writes))  # +1: reads the coarser scale (MONAI's arch_code2ops)
    return reads, writes, resample


def masks_of(active: np.ndarray) -> list[int]:
    """(L, E) 0/1 activity -> one bit mask per layer (bit e = edge e)."""
    return [int(sum(1 << e for e in np.flatnonzero(row))) for row in np.asarray(active)]


def _scales(mask: int, scale_of: Sequence[int]) -> int:
    s = 0
    for e, scale in enumerate(scale_of):
        if mask >> e & 1:
            s |= 1 << scale
    return s


def decode_topology_python(log_alpha: np.ndarray, reads: Sequence[int], writes: Sequence[int]) -> list[int]:
    """Pure-Python twin of ``nas3d_fast._C.dints_decode`` (csrc/dints/decode.h has the cost): the edge
    mask of each layer of the most probable feasible topology, by a dynamic programme over layers.

    log_alpha (L, E) float path logits. O(L * 2^E * E) work and O(L * 2^E) memory."""
    log_alpha = np.asarray(log_alpha, dtype=np.float64)
    layers, edges = log_alpha.shape
    masks = np.arange(1 << edges)
    bits = (masks[:, None] >> np.arange(edges)[None, :]) & 1  # (2^E, E)
    num_scales = max(max(reads), max(writes)) + 1
    scale_bits = 1 << np.arange(num_scales)
    read_set = np.bitwise_or.reduce(bits * scale_bits[np.asarray(reads)], axis=1)
    write_set = np.bitwise_or.reduce(bits * scale_bits[np.asarray(writes)], axis=1)

    def layer_cost(row: np.ndarray) -> np.ndarray:
        s = 1.0 / (1.0 + np.exp(-row))
        q = np.where(bits == 1, s[None, :], 1.0 - s[None, :]).prod(axis=1)
        norm = 1.0 - np.prod(1.0 - s)
        cost = -np.log(q / norm + 1e-5)
        cost[0] = np.inf
        return cost

    best = layer_cost(log_alpha[0])
    back = np.zeros((layers, 1 << edges), dtype=np.int64)
    for layer in range(1, layers):
        cheapest = np.full(1 << num_scales, np.inf)
        argbest = np.zeros(1 << num_scales, dtype=np.int64)
        for m in range(1, 1 << edges):  # first (smallest) mask wins ties, as in the C++ programme
            if best[m] < cheapest[write_set[m]]:
                cheapest[write_set[m]] = best[m]
                argbest[write_set[m]] = m
        best = layer_cost(log_alpha[layer]) + cheapest[read_set]
        best[0] = np.inf
        back[layer] = argbest[read_set]
    last = int(np.argmin(best))
    if not math.isfinite(best[last]):
        raise RuntimeError("dints decode: no feasible architecture (non-finite logits?)")
    out = [0] * layers
    for layer in range(layers - 1, -1, -1):
        out[layer] = last
        last = int(back[layer, last])
    return out


def decode_topology(log_alpha: torch.Tensor | np.ndarray, reads: Sequence[int], writes: Sequence[int]) -> list[int]:
    """The edge mask of each layer of the most probable feasible topology for path logits
    ``log_alpha`` (L, E): the C++ programme of ``nas3d_fast._C`` when the extension is built, else the
    Python one (same result)."""
    if isinstance(log_alpha, torch.Tensor):
        log_alpha = log_alpha.detach().to("cpu", torch.float64).numpy()
    log_alpha = np.asarray(log_alpha, dtype=np.float64)
    if log_alpha.ndim != 2 or log_alpha.shape[1] != len(reads):
        raise ValueError(f"path logits must have shape (layers, {len(reads)}), got {log_alpha.shape}")
    compiled = _compiled_decode()
    if compiled is None:
        return decode_topology_python(log_alpha, reads, writes)
    num_scales = max(max(reads), max(writes)) + 1
    layers = log_alpha.shape[0]
    return [int(m) for m in compiled(log_alpha.ravel().tolist(), layers, list(reads), list(writes), num_scales)]


def _compiled_decode():
    from .._extension import _C

    return getattr(_C, "dints_decode", None)  # None without _C, or with a _C built before the decode
