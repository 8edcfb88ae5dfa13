"""Suite ``conv_route``: ``nas3d_fast.nn.conv.conv3d`` against ``F.conv3d`` on the batch-1 CPU volumes
torch sends to its im2col ``slow_conv3d`` (the coarse scales of the dints supernet at channel_mul 0.5).

One case per shape and side: forward + backward (input and weight gradients) of a 3x3x3, stride 1,
"same" convolution with C in and out channels on (1, C, S, S, S). Ratio keys
``c{C}_s{S}.speedup_vs_torch``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nas3d_fast.nn.conv import conv3d

from .core import per_shape_suite

SHAPES = ((64, 16), (128, 8), (256, 4))


def _step(channels: int, size: int, ours: bool):
    def build(device: str):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, channels, size, size, size, generator=g).requires_grad_()
        w = torch.randn(channels, channels, 3, 3, 3, generator=g).requires_grad_()
        grad = torch.randn(1, channels, size, size, size, generator=g)
        conv = (lambda: conv3d(x, w, 1, 1)) if ours else (lambda: F.conv3d(x, w, padding=1))

        def step():
            torch.autograd.grad(conv(), (x, w), grad)

        return step

    return build


SUITE = per_shape_suite(
    "conv_route",
    "conv3d (oneDNN for batch-1 CPU volumes) vs F.conv3d (slow_conv3d there), forward + backward",
    SHAPES,
    _step,
)
