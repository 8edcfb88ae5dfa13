"""Modules on the fast ops: the supernet edge MixedEdge3d and its candidate vocabulary, T-AutoML's
axial-attention modules, and the export of networks built on them (torch.export programs in torch's
own operators, ONNX)."""

from .axial import AxialAttention3d, AxialAttentionBlock3d
from .candidates import CANDIDATES, make_candidate
from .export import export_onnx, portable_decompositions, portable_program
from .mixed_edge import MixedEdge3d

__all__ = [
    "CANDIDATES",
    "AxialAttention3d",
    "AxialAttentionBlock3d",
    "MixedEdge3d",
    "export_onnx",
    "make_candidate",
    "portable_decompositions",
    "portable_program",
]
