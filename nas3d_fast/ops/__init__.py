"""The fast ops of nas3d_fast: one public function per op, each dispatching to the reference, cpu, cuda
or triton backend (see nas3d_fast.dispatch)."""

from .gumbel import gumbel_topk
from .window import window_gather, window_stitch

__all__ = ["gumbel_topk", "window_gather", "window_stitch"]
