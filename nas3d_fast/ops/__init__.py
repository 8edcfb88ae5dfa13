"""The fast ops of nas3d_fast: one public function per op, each dispatching to the reference, cpu, cuda
or triton backend (see nas3d_fast.dispatch)."""

from .axial import axial_attention
from .gumbel import gumbel_topk

__all__ = ["axial_attention", "gumbel_topk"]
