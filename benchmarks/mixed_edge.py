"""Suite ``mixed_edge``: one supernet edge, forward + backward, CPU (and CUDA where present).

nas3d side: ``nas3d_fast.nn.MixedEdge3d`` (merged linear candidates, memory-efficient recompute path,
fused kernels). Baseline ``eager``: the same edge, same parameters, written the DARTS way with torch
built-ins (``nas3d_fast.reference.mixed_edge``: every candidate computed and kept for backward, a
Python sum). The sampled case's baseline is the dense eager edge (what a user runs without sampling).
``max_pool3`` compares the op with ``F.max_pool3d``. ``kernel_merge`` merges the five kernels of a
DiNTS edge at its deepest scale (256 channels: conv3x3x3, three composed P3D pairs, the identity as a
1x1x1 kernel), forward + backward, against the F.pad and weighted sum users write
(``nas3d_fast.reference.mixed.kernel_merge``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import nas3d_fast
from nas3d_fast.nn import MixedEdge3d
from nas3d_fast.ops import gumbel_topk, kernel_merge, max_pool3
from nas3d_fast.reference.mixed import kernel_merge as eager_kernel_merge
from nas3d_fast.reference.mixed_edge import mixed_edge as eager_edge

from .core import Case, Ratio, Suite

SCNAS8 = (
    "conv3x3x3",
    "sep_dil3x3x3_r2",
    "sep_dil3x3x3_r3",
    "sep_dil3x3x3_r4",
    "max_pool3",
    "avg_pool3",
    "identity",
    "zero",
)
DINTS5 = ("identity", "conv3x3x3", "p3d_3x3x1_1x1x3", "p3d_3x1x3_1x3x1", "p3d_1x3x3_3x1x1")
SIZE = (48, 48, 48)


def _edge_step(candidates, channels: int, norm: str, act: str, side: str, sampled: bool = False):
    def build(device: str):
        torch.manual_seed(0)
        edge = MixedEdge3d(channels, channels, candidates, norm=norm, act=act).to(device)
        x = torch.randn(1, channels, *SIZE, device=device, requires_grad=True)
        logits = torch.randn(len(candidates), device=device, requires_grad=True)
        cot = torch.randn(1, channels, *SIZE, device=device)
        generator = torch.Generator(device=device).manual_seed(0)

        def step():
            x.grad = logits.grad = None
            edge.zero_grad(set_to_none=True)
            if sampled:
                w, idx = gumbel_topk(logits[None], 1.0, k=2, generator=generator)
                out = edge(x, (w[0], idx[0]))
            else:
                w = torch.softmax(logits, 0)
                out = edge(x, w) if side == "nas3d" else eager_edge(edge, x, w)
            out.backward(cot)

        return step

    return build


def _pool_step(fn):
    def build(device: str):
        torch.manual_seed(0)
        x = torch.randn(1, 16, *SIZE, device=device, requires_grad=True)
        cot = torch.randn(1, 16, *SIZE, device=device)

        def step():
            x.grad = None
            fn(x).backward(cot)

        return step

    return build


def _merge_step(merge, channels: int = 256):
    def build(device: str):
        torch.manual_seed(0)
        sizes = [(3, 3, 3)] * 4 + [(1, 1, 1)]
        kernels = [torch.randn(channels, channels, *k, device=device, requires_grad=True) for k in sizes]
        weights = torch.softmax(torch.randn(len(sizes), device=device), 0).requires_grad_(True)
        cot = torch.randn(channels, channels, 3, 3, 3, device=device)

        def step():
            for t in (*kernels, weights):
                t.grad = None
            merge(kernels, weights).backward(cot)

        return step

    return build


def _nas3d_skip(device: str) -> str | None:
    wanted = "cuda" if device == "cuda" else "cpu"
    status = nas3d_fast.backends()[wanted]
    return None if status.usable else f"{wanted} backend: {status.reason}"


EDGES = {
    # name: (candidates, channels, norm, act, sampled)
    "scnas8_shared": (SCNAS8, 16, "shared", "leaky_relu", False),
    "scnas8_per_op": (SCNAS8, 16, "per_op", "leaky_relu", False),
    "dints5_shared": (DINTS5, 32, "shared", "relu", False),
    "scnas8_sampled2": (SCNAS8, 16, "shared", "leaky_relu", True),
}

_DEVICES = ("cpu", "cuda")
CASES = tuple(
    case
    for name, (cands, ch, norm, act, sampled) in EDGES.items()
    for case in (
        Case(f"{name}_nas3d", _edge_step(cands, ch, norm, act, "nas3d", sampled), "nas3d", _DEVICES, _nas3d_skip),
        Case(f"{name}_eager", _edge_step(cands, ch, norm, act, "eager"), "eager", _DEVICES),
    )
) + (
    Case("max_pool3_nas3d", _pool_step(max_pool3), "nas3d", _DEVICES, _nas3d_skip),
    Case("max_pool3_torch", _pool_step(lambda x: F.max_pool3d(x, 3, 1, 1)), "torch", _DEVICES),
    Case("kernel_merge_nas3d", _merge_step(kernel_merge), "nas3d", _DEVICES, _nas3d_skip),
    Case("kernel_merge_eager", _merge_step(eager_kernel_merge), "eager", _DEVICES),
)

SUITE = Suite(
    name="mixed_edge",
    description="MixedEdge3d forward + backward vs the eager DARTS-style edge, x (1, C, 48, 48, 48)",
    cases=CASES,
    ratios=tuple(
        r
        for name in EDGES
        for r in (
            Ratio(f"{name}.speedup_vs_eager", f"{name}_nas3d", f"{name}_eager"),
            Ratio(f"{name}.memory_vs_eager", f"{name}_nas3d", f"{name}_eager", kind="memory"),
        )
    )
    + (
        Ratio("max_pool3.speedup_vs_torch", "max_pool3_nas3d", "max_pool3_torch"),
        Ratio("kernel_merge.speedup_vs_eager", "kernel_merge_nas3d", "kernel_merge_eager"),
    ),
    quick_cases=("scnas8_shared_nas3d", "scnas8_shared_eager", "max_pool3_nas3d", "max_pool3_torch"),
)
