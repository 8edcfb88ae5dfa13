"""Modules built on the fast ops."""

from .axial import AxialAttention3d, AxialAttentionBlock3d

__all__ = ["AxialAttention3d", "AxialAttentionBlock3d"]
