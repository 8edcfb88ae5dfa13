"""T-AutoML's 3D axial-attention block (§3.1): Axial-DeepLab's axial attention extended to 3D, along
X, Y, Z in turn ("xyz") or the axial X-Y plane in the other order first ("yxz"), then Z."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import axial_attention

ORDERS = {"xyz": (2, 3, 4), "yxz": (3, 2, 4)}


class AxialAttention3d(nn.Module):
    """Multi-head axial self-attention of a (B, C, X, Y, Z) volume along its three axes in turn.

    One 1x1x1 convolution projects x to q, k, v (C channels each; the op reads the three channel slices
    in place); the values then pass through the three axes in ``order``,
    v <- axial_attention(q, k, v, axis), so every output voxel attends over the whole volume through
    the three lines that reach it; a 1x1x1 convolution projects the result back to C channels.

    Args:
        channels: C, divisible by ``num_heads``.
        num_heads: attention heads; head_dim = C / num_heads.
        order: "xyz" (X, then Y, then Z) or "yxz" (Y, then X, then Z).
        positional: learn Axial-DeepLab's relative embeddings rel_q, rel_k, rel_v per axis (and per
            layer), shape (2 * max_length - 1, head_dim) each; a line of length L <= max_length uses
            their middle 2L - 1 rows (offsets -(L-1) .. L-1).
        max_length: longest axis the positional embeddings serve (ignored without ``positional``).

    Shapes: input (B, C, X, Y, Z), output the same.
    """

    def __init__(
        self, channels: int, num_heads: int, order: str = "xyz", positional: bool = True, *, max_length: int = 64
    ):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        if not isinstance(num_heads, int) or num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads must be a positive integer dividing channels = {channels}, got {num_heads!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
        if positional and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        self.channels, self.num_heads, self.order, self.positional = channels, num_heads, order, positional
        self.max_length = max_length
        self.head_dim = channels // num_heads
        self.qkv = nn.Conv3d(channels, 3 * channels, kernel_size=1, bias=False)
        self.proj = nn.Conv3d(channels, channels, kernel_size=1)
        if positional:
            shape = (3, 3, 2 * max_length - 1, self.head_dim)  # (axis X/Y/Z, q/k/v, offset, head_dim)
            self.rel = nn.Parameter(torch.randn(shape) * self.head_dim**-0.5)
        else:
            self.register_parameter("rel", None)

    @property
    def axes(self) -> tuple[int, int, int]:
        """The tensor dims attended along, in order (2 = X, 3 = Y, 4 = Z)."""
        return ORDERS[self.order]

    def relative_embeddings(self, axis: int, length: int) -> tuple[torch.Tensor, ...] | tuple[None, None, None]:
        """(rel_q, rel_k, rel_v) for a line of ``length`` along tensor dim ``axis``, each (2L-1, head_dim)."""
        if self.rel is None:
            return None, None, None
        if length > self.max_length:
            raise ValueError(
                f"axis {axis} has length {length} > max_length = {self.max_length} of the positional embeddings; "
                "build the module with a larger max_length"
            )
        rows = slice(self.max_length - length, self.max_length + length - 1)
        return tuple(self.rel[axis - 2, t, rows] for t in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.channels:
            raise ValueError(f"x must have shape (B, {self.channels}, X, Y, Z), got {tuple(x.shape)}")
        q, k, v = self.qkv(x).split(self.channels, dim=1)
        for axis in self.axes:
            rel_q, rel_k, rel_v = self.relative_embeddings(axis, x.shape[axis])
            v = axial_attention(q, k, v, axis, self.num_heads, rel_q=rel_q, rel_k=rel_k, rel_v=rel_v)
        return self.proj(v)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_heads={self.num_heads}, order={self.order!r}, "
            f"positional={self.positional}" + (f", max_length={self.max_length}" if self.positional else "")
        )


class AxialAttentionBlock3d(nn.Module):
    """The residual axial-attention block of T-AutoML's search space (Axial-DeepLab's bottleneck in 3D).

    x -> 1x1x1 conv down to channels / reduction -> norm -> ReLU -> AxialAttention3d -> ReLU
      -> 1x1x1 conv up to channels -> norm -> + x -> ReLU

    Args:
        channels: input and output channels C.
        num_heads: heads of the attention; must divide C / reduction.
        order: "xyz" or "yxz" (see AxialAttention3d).
        positional: relative position embeddings (see AxialAttention3d).
        reduction: bottleneck factor; the attention runs on C / reduction channels.
        max_length: longest axis the positional embeddings serve.
        norm: "instance" (InstanceNorm3d, affine; the usual choice at 3D batch sizes) or "batch".

    Shapes: input (B, C, X, Y, Z), output the same.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 4,
        order: str = "xyz",
        positional: bool = True,
        *,
        reduction: int = 2,
        max_length: int = 64,
        norm: str = "instance",
    ):
        super().__init__()
        if not isinstance(reduction, int) or reduction < 1 or channels % reduction:
            raise ValueError(f"reduction must be a positive integer dividing channels = {channels}, got {reduction!r}")
        mid = channels // reduction
        if mid % num_heads:
            raise ValueError(
                f"num_heads must divide the bottleneck channels channels / reduction = {mid}, got {num_heads!r}"
            )
        norms = {"instance": lambda c: nn.InstanceNorm3d(c, affine=True), "batch": nn.BatchNorm3d}
        if norm not in norms:
            raise ValueError(f"norm must be one of {sorted(norms)}, got {norm!r}")
        self.down = nn.Conv3d(channels, mid, kernel_size=1, bias=False)
        self.norm_down = norms[norm](mid)
        self.attention = AxialAttention3d(mid, num_heads, order, positional, max_length=max_length)
        self.up = nn.Conv3d(mid, channels, kernel_size=1, bias=False)
        self.norm_up = norms[norm](channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm_down(self.down(x)))
        h = self.act(self.attention(h))
        h = self.norm_up(self.up(h))
        return self.act(h + x)


