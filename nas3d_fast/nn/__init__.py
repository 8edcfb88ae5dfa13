"""Modules on the fast ops: the supernet edge MixedEdge3d and its candidate vocabulary."""

from .candidates import CANDIDATES, make_candidate
from .mixed_edge import MixedEdge3d

__all__ = ["CANDIDATES", "MixedEdge3d", "make_candidate"]
