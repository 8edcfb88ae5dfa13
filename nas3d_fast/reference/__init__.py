"""Plain-PyTorch references of every nas3d op: short, obviously correct, differentiable by autograd.

They are the ground truth the cpu, cuda and triton backends are tested against, and the fallback when
no compiled backend can run.
"""

from .axial import axial_attention
from .gumbel import gumbel_topk
from .window import window_gather, window_stitch

__all__ = ["axial_attention", "gumbel_topk", "window_gather", "window_stitch"]
