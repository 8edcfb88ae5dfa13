"""Suite ``gumbel``: Gumbel top-k sampling of all supernet edges, forward + backward.

nas3d side: ``nas3d_fast.ops.gumbel_topk`` on the cpu backend (cuda on GPUs). Baseline ``eager``: the
composition users write today with autograd (noise, softmax, topk, gather, renormalise, scatter).
"""

from __future__ import annotations

import torch

import nas3d_fast
from nas3d_fast.ops import gumbel_topk

from .core import Case, Ratio, Suite

K = 8
TAU = 0.5
SIZES = (200, 20000)


def eager_gumbel_top2(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Gumbel top-2 with renormalised weights, composed of plain PyTorch ops as the issue lists them:
    noise, softmax, topk, gather, renormalise, scatter."""
    u = torch.rand_like(logits)
    y = torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)
    idx = y.topk(2, dim=-1).indices
    chosen = y.gather(-1, idx)
    return torch.zeros_like(y).scatter(-1, idx, chosen / chosen.sum(-1, keepdim=True))


def _step(sample):
    def make(E: int):
        def build(device: str):
            logits = torch.randn(E, K, device=device, requires_grad=True)
            cot = torch.randn(E, K, device=device)

            def step():
                logits.grad = None
                weights = sample(logits)
                weights.backward(cot)

            return step

        return build

    return make


_nas3d = _step(lambda logits: gumbel_topk(logits, TAU, k=2)[0])
_eager = _step(lambda logits: eager_gumbel_top2(logits, TAU))
# The cheapest possible differentiable step (one multiply, forward + backward): what any single-op
# implementation pays for the Python call and the autograd engine. eager / floor bounds the speedup
# a fused op can show on this machine at this size.
_floor = _step(lambda logits: logits * 1.0)


def _nas3d_skip(device: str) -> str | None:
    wanted = "cuda" if device == "cuda" else "cpu"
    status = nas3d_fast.backends()[wanted]
    return None if status.usable else f"{wanted} backend: {status.reason}"


CASES = tuple(
    case
    for E in SIZES
    for case in (
        Case(f"nas3d_E{E}_K{K}", _nas3d(E), "nas3d", devices=("cpu", "cuda"), skip_reason=_nas3d_skip),
        Case(f"eager_E{E}_K{K}", _eager(E), "eager", devices=("cpu", "cuda")),
    )
) + (Case(f"floor_E200_K{K}", _floor(200), "floor", devices=("cpu", "cuda")),)

SUITE = Suite(
    name="gumbel",
    description=f"gumbel_topk forward + backward, k=2, K={K}, vs eager PyTorch with autograd",
    cases=CASES,
    ratios=(
        Ratio("speedup_vs_eager", f"nas3d_E200_K{K}", f"eager_E200_K{K}"),
        Ratio("speedup_vs_eager_E20000", f"nas3d_E20000_K{K}", f"eager_E20000_K{K}"),
        Ratio("memory_vs_eager_E20000", f"nas3d_E20000_K{K}", f"eager_E20000_K{K}", kind="memory"),
        # Not a result: the largest speedup_vs_eager any op could show here (see _floor).
        Ratio("speedup_ceiling_E200", f"floor_E200_K{K}", f"eager_E200_K{K}"),
    ),
    quick_cases=(f"nas3d_E200_K{K}", f"eager_E200_K{K}"),
)
