"""Suite ``upsample``: ``nas3d_fast.nn.resample.upsample_trilinear`` (three matrix products) against
``F.interpolate(mode="trilinear")`` (torch's eight-neighbour kernel) on CPU.

One case per shape and side: forward + backward of up-sampling (1, C, S, S, S) by 2 with
align_corners=True, the up edges of the dints supernet at channel_mul 0.5. Ratio keys
``c{C}_s{S}.speedup_vs_torch``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nas3d_fast.nn.resample import upsample_trilinear

from .core import Case, Ratio, Suite

SHAPES = ((64, 16), (128, 8), (256, 4))


def _step(channels: int, size: int, ours: bool):
    def build(device: str):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, channels, size, size, size, generator=g).to(device).requires_grad_()
        grad = torch.randn(1, channels, 2 * size, 2 * size, 2 * size, generator=g).to(device)
        if ours:
            up = lambda: upsample_trilinear(x, 2, align_corners=True)
        else:
            up = lambda: F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)

        def step():
            torch.autograd.grad(up(), (x,), grad)

        return step

    return build


CASES = tuple(
    Case(f"c{c}_s{s}_{side}", _step(c, s, side == "nas3d"), side) for c, s in SHAPES for side in ("nas3d", "torch")
)

SUITE = Suite(
    name="upsample",
    description="trilinear up-sampling by 2 as three matrix products vs F.interpolate, forward + backward",
    cases=CASES,
    ratios=tuple(Ratio(f"c{c}_s{s}.speedup_vs_torch", f"c{c}_s{s}_nas3d", f"c{c}_s{s}_torch") for c, s in SHAPES),
    quick_cases=("c64_s16_nas3d", "c64_s16_torch"),
)
