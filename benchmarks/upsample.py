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

from .core import per_shape_suite

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


SUITE = per_shape_suite(
    "upsample",
    "trilinear up-sampling by 2 as three matrix products vs F.interpolate, forward + backward",
    SHAPES,
    _step,
)
