"""The fast ops of nas3d_fast: one public function per op, each dispatching to the reference, cpu, cuda
or triton backend (see nas3d_fast.dispatch)."""

from .axial import axial_attention
from .gumbel import gumbel_topk
from .mixed import avg_pool3, depthwise_conv3, kernel_merge, max_pool3, weighted_sum
from .window import window_argmax, window_gather, window_stitch

__all__ = [
    "avg_pool3",
    "axial_attention",
    "depthwise_conv3",
    "gumbel_topk",
    "kernel_merge",
    "max_pool3",
    "weighted_sum",
    "window_argmax",
    "window_gather",
    "window_stitch",
]
