"""The candidate operations of a supernet edge: one vocabulary shared by every search space.

Each candidate maps (N, C_in, X, Y, Z) to (N, C_out, X', Y', Z') with X' = (X - 1) // stride + 1
("same" padding; stride 1, or 2 in reduction cells). Candidates hold their weights; activation and
normalisation belong to the edge (``MixedEdge3d``), which places them "shared" or "per_op".

| name | what | channels |
| --- | --- | --- |
| ``zero`` | zeros (a disconnection) | any |
| ``identity`` | x; stride 2 keeps every second voxel per axis | C_in = C_out |
| ``conv3x3x3``, ``conv3x3x1``, ``conv3x1x3``, ``conv1x3x3`` | convolution, no bias | any |
| ``p3d_3x3x1_1x1x3`` and rotations ``p3d_3x1x3_1x3x1``, ``p3d_1x3x3_3x1x1`` | pseudo-3D pair: the first convolution (C_in -> C_out) then the second (C_out -> C_out), nothing between, so the pair is exactly one 3x3x3 convolution | any |
| ``sep_dil3x3x3_r2``/``_r3``/``_r4`` | depthwise 3x3x3 with dilation r, then pointwise 1x1x1 | any |
| ``max_pool3``, ``avg_pool3`` | 3x3x3 pooling, padding 1 (average divides by 27: count_include_pad) | C_in = C_out |

Candidates whose support fits a 3x3x3 kernel and that are linear (zero, identity, the convolutions,
the P3D pairs, average pooling) report ``mergeable = True`` and give their kernel via ``kernel(like)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .. import ops
from .conv import conv3d

#: every candidate op name, in the order search spaces index them (the table above says what each computes).
CANDIDATES = (
    "zero",
    "identity",
    "conv3x3x3",
    "conv3x3x1",
    "conv3x1x3",
    "conv1x3x3",
    "p3d_3x3x1_1x1x3",
    "p3d_3x1x3_1x3x1",
    "p3d_1x3x3_3x1x1",
    "sep_dil3x3x3_r2",
    "sep_dil3x3x3_r3",
    "sep_dil3x3x3_r4",
    "max_pool3",
    "avg_pool3",
)

# The P3D pairs: first kernel, second kernel, and the axes (of x, y, z) the first one spans.
_P3D = {
    "p3d_3x3x1_1x1x3": ((3, 3, 1), (1, 1, 3)),
    "p3d_3x1x3_1x3x1": ((3, 1, 3), (1, 3, 1)),
    "p3d_1x3x3_3x1x1": ((1, 3, 3), (3, 1, 1)),
}
_CONV = {"conv3x3x3": (3, 3, 3), "conv3x3x1": (3, 3, 1), "conv3x1x3": (3, 1, 3), "conv1x3x3": (1, 3, 3)}


def out_size(n: int, stride: int) -> int:
    """Spatial size after a candidate of ``stride`` ("same" padding)."""
    return (n - 1) // stride + 1


def _kaiming(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    w = torch.empty(shape)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # torch's Conv3d default
    return nn.Parameter(w)


class Candidate(nn.Module):
    """Base class. ``forward(x)`` computes the candidate; ``kernel(like)`` (mergeable ones only) returns
    its (C_out, C_in, k0, k1, k2) kernel, odd sizes, centred, for stride ``stride`` and padding k // 2."""

    mergeable = False
    composes = False  # whether kernel_from costs matrix products (the P3D pairs), not just copies
    kernel_size: tuple[int, int, int] | None = None  # spatial size of kernel_from's kernel
    name = ""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def kernel(self, like: torch.Tensor) -> torch.Tensor | None:
        """The kernel in ``like``'s dtype and device (mergeable candidates only)."""
        return self.kernel_from(tuple(self.parameters()), like)

    def kernel_from(self, params: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor | None:
        """The kernel built from ``params`` in place of this candidate's parameters (same order as
        ``parameters()``): a merged edge rebuilds it in backward from the tensors its forward saw."""
        raise TypeError(f"candidate {self.name!r} is not mergeable")

    def kernel_vjp(self, params: Sequence[torch.Tensor], grad_kernel: torch.Tensor):
        """What a merged edge's backward needs of this candidate, for ``grad_kernel`` (the gradient of
        the loss with respect to ``kernel_from(params)``, of its shape): (the gradients with respect to
        ``params``, a list; and the inner product <grad_kernel, kernel_from(params)>, a 0-dim tensor).
        This default forms the kernel and differentiates it; candidates that know a cheaper way override it."""
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_() for p in params]
            kernel = self.kernel_from(leaves, grad_kernel)
            grads = list(torch.autograd.grad(kernel, leaves, grad_kernel)) if leaves else []
        return grads, (kernel.detach() * grad_kernel).sum()

    def merges_at(self, out_voxels: int) -> bool:
        """Whether merging this candidate into an edge's one convolution pays at ``out_voxels`` output
        voxels (N * X' * Y' * Z'): always for a mergeable candidate whose kernel costs nothing to form."""
        return self.mergeable

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class Zero(Candidate):
    mergeable = True
    name = "zero"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return x.new_zeros((n, self.out_channels, *(out_size(s, self.stride) for s in x.shape[2:])))

    def kernel_from(self, params: Sequence[torch.Tensor], like: torch.Tensor) -> None:
        return None  # contributes nothing to a merged kernel


class Identity(Candidate):
    mergeable = True
    kernel_size = (1, 1, 1)
    name = "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride, :: self.stride]

    def kernel_from(self, params: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        return _eye_kernel(self.in_channels, (1, 1, 1), like)

    def kernel_vjp(self, params: Sequence[torch.Tensor], grad_kernel: torch.Tensor):
        return [], _diagonal_sum(grad_kernel)


class AvgPool(Identity):
    kernel_size = (3, 3, 3)
    name = "avg_pool3"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.avg_pool3(x, self.stride)

    def kernel_from(self, params: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        return _eye_kernel(self.in_channels, (3, 3, 3), like) / 27

    def kernel_vjp(self, params: Sequence[torch.Tensor], grad_kernel: torch.Tensor):
        return [], _diagonal_sum(grad_kernel) / 27


class MaxPool(Candidate):
    name = "max_pool3"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.max_pool3(x, self.stride)


class Conv(Candidate):
    mergeable = True

    def __init__(self, name: str, in_channels: int, out_channels: int, stride: int):
        super().__init__(in_channels, out_channels, stride)
        self.name = name
        k = _CONV[name]
        self.weight = _kaiming((out_channels, in_channels, *k), in_channels * math.prod(k))
        self.kernel_size = tuple(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.weight.shape[2:]
        return conv3d(x, self.weight, self.stride, tuple(n // 2 for n in k))

    def kernel_from(self, params: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        (weight,) = params
        return weight

    def kernel_vjp(self, params: Sequence[torch.Tensor], grad_kernel: torch.Tensor):
        (weight,) = params
        return [grad_kernel], (weight * grad_kernel).sum()


class P3D(Candidate):
    """Pseudo-3D pair: ``first`` (C_in -> C_out, stride on its axes) then ``second`` (C_out -> C_out,
    stride on its axis). The two span disjoint axes, so the pair is one 3x3x3 convolution with the
    composed kernel K[o, i] = sum_m second[o, m] (outer) first[m, i]."""

    mergeable = True
    composes = True
    kernel_size = (3, 3, 3)

    def __init__(self, name: str, in_channels: int, out_channels: int, stride: int):
        super().__init__(in_channels, out_channels, stride)
        self.name = name
        k1, k2 = _P3D[name]
        self.first = _kaiming((out_channels, in_channels, *k1), in_channels * math.prod(k1))
        self.second = _kaiming((out_channels, out_channels, *k2), out_channels * math.prod(k2))
        self._k1, self._k2 = k1, k2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = tuple(self.stride if k == 3 else 1 for k in self._k1)
        s2 = tuple(self.stride if k == 3 else 1 for k in self._k2)
        y = conv3d(x, self.first, s1, tuple(k // 2 for k in self._k1))
        return conv3d(y, self.second, s2, tuple(k // 2 for k in self._k2))

    def merges_at(self, out_voxels: int) -> bool:
        """Composing the kernel costs O * O * I * 27 multiply-adds whatever the input size; running the
        pair costs about out_voxels * O * (9 I + 3 O). On coarse, wide scales (e.g. 4^3 voxels at 256
        channels) composing costs ~9x more than running the pair, so it runs on its own there."""
        o, i = self.out_channels, self.in_channels
        return o * i * 27 <= out_voxels * (9 * i + 3 * o)

    def _tap_axes(self) -> list[int]:
        """The spatial axes of the composed (O, I, 9 first taps, 3 second taps) layout: first's two
        axes, then second's axis."""
        return [*(a for a in range(3) if self._k1[a] == 3), next(a for a in range(3) if self._k2[a] == 3)]

    def kernel_from(self, params: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        first, second = params
        o, i = first.shape[:2]
        # One product (O * 3 second taps, O) @ (O, I * 9 first taps), viewed (not copied) as (O, I,
        # 3, 3, 3) with the taps on their axes: kernel_merge reads kernels in place whatever their strides.
        k = torch.mm(second.reshape(o, o, 3).transpose(1, 2).reshape(o * 3, o), first.reshape(o, i * 9))
        k = k.view(o, 3, i, 3, 3).permute(0, 2, 3, 4, 1)  # (O, I, first taps, second tap)
        order = self._tap_axes()  # which spatial axis each of dims 2, 3, 4 of k is
        return k.permute(0, 1, *(2 + order.index(a) for a in range(3)))

    def kernel_vjp(self, params: Sequence[torch.Tensor], grad_kernel: torch.Tensor):
        """Without composing the kernel: with G the kernel gradient in the composed layout,
        H[m, i, p] = sum_{o, q} second[o, m, q] G[o, i, p, q] is first's gradient, second's is
        sum_{i, p} G[o, i, p, q] first[m, i, p], and <G, K> = <first, H>. Two matrix products, where
        differentiating the composed kernel took three (composing it again, then its backward)."""
        first, second = params
        o, i = first.shape[:2]
        # G as an (O * 3 second taps, I * 9 first taps) matrix: the one copy of the kernel gradient.
        axes = self._tap_axes()
        g = grad_kernel.permute(0, 2 + axes[2], 1, 2 + axes[0], 2 + axes[1]).reshape(o * 3, i * 9)
        h = torch.mm(second.reshape(o, o, 3).permute(1, 0, 2).reshape(o, o * 3), g)  # (M, I * 9)
        grad_second = torch.mm(g, first.reshape(o, i * 9).t())  # (O * 3, M)
        grad_second = grad_second.view(o, 3, o).transpose(1, 2).reshape(second.shape)
        return [h.view(first.shape), grad_second], torch.dot(first.reshape(-1), h.view(-1))


class SepDil(Candidate):
    """Depthwise 3x3x3 convolution with dilation r (stride on it), then a pointwise 1x1x1 convolution."""

    def __init__(self, name: str, in_channels: int, out_channels: int, stride: int):
        super().__init__(in_channels, out_channels, stride)
        self.name = name
        self.dilation = int(name[-1])
        self.depthwise = _kaiming((in_channels, 1, 3, 3, 3), 27)
        self.pointwise = _kaiming((out_channels, in_channels, 1, 1, 1), in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.depthwise_conv3(x, self.depthwise, self.stride, self.dilation)
        return conv3d(y, self.pointwise)


def _diagonal_sum(kernel: torch.Tensor) -> torch.Tensor:
    """sum over c and the taps of kernel[c, c, ...]: the inner product with a channel-diagonal kernel of ones."""
    return kernel.diagonal(dim1=0, dim2=1).sum()


def _eye_kernel(channels: int, size: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
    """(C, C, *size) of ones on the channel diagonal, in like's dtype and device."""
    eye = torch.eye(channels, dtype=like.dtype, device=like.device)
    return eye.reshape(channels, channels, 1, 1, 1).expand(channels, channels, *size)


def make_candidate(name: str, in_channels: int, out_channels: int, stride: int = 1) -> Candidate:
    """The candidate ``name`` (one of ``CANDIDATES``) mapping in_channels to out_channels at ``stride``.

    Raises ValueError for unknown names, a stride other than 1 or 2, or a channel change the candidate
    cannot make (identity and pooling keep the channel count)."""
    if name not in CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; candidates: {', '.join(CANDIDATES)}")
    if stride not in (1, 2) or isinstance(stride, bool):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if name in ("identity", "max_pool3", "avg_pool3") and in_channels != out_channels:
        raise ValueError(
            f"candidate {name!r} keeps the channel count: in_channels ({in_channels}) must equal "
            f"out_channels ({out_channels})"
        )
    if name == "zero":
        return Zero(in_channels, out_channels, stride)
    if name == "identity":
        return Identity(in_channels, out_channels, stride)
    if name == "avg_pool3":
        return AvgPool(in_channels, out_channels, stride)
    if name == "max_pool3":
        return MaxPool(in_channels, out_channels, stride)
    if name in _CONV:
        return Conv(name, in_channels, out_channels, stride)
    if name in _P3D:
        return P3D(name, in_channels, out_channels, stride)
    return SepDil(name, in_channels, out_channels, stride)
