"""Modules on the fast ops: the supernet edge MixedEdge3d and its candidate vocabulary, and T-AutoML's
axial-attention modules."""

from .axial import AxialAttention3d, AxialAttentionBlock3d
from .candidates import CANDIDATES, make_candidate
from .mixed_edge import MixedEdge3d

__all__ = ["CANDIDATES", "AxialAttention3d", "AxialAttentionBlock3d", "MixedEdge3d", "make_candidate"]
