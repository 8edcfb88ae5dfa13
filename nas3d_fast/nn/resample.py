"""Trilinear up-sampling by an integer factor as three matrix products (CPU).

Linear interpolation along one axis is a product with an (n_out, n_in) matrix holding two non-zero
weights per row, and trilinear interpolation is that product along each of the three axes in turn.
On a (C, D, H, W) volume the three products need no transposes:

- along W: (C * D * H, W) @ M_W^T;
- along H: M_H @ (C * D, H, W'), batched over C * D;
- along D: M_D @ (C, D, H' * W'), batched over C.

torch's CPU ``upsample_trilinear3d`` gathers eight neighbours per output voxel instead. Forward +
backward (autograd's products with the transposed matrices) of (1, 64, 16, 16, 16) up by 2 ran 3.6x
as fast as torch's kernel (``python -m benchmarks.run upsample``); the up edges and output stems of a
dints supernet up-sample 40 times per training step. Results equal ``F.interpolate`` to float32 rounding (the two weights of each
output are summed in another order).

Elsewhere (CUDA, where torch's kernel is bandwidth-bound already; other tensor subclasses; meta tensors
outside ``nn.conv.meta_as_cpu``) it is ``F.interpolate``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .conv import _PLAIN, runs_as_cpu


@functools.lru_cache(maxsize=64)
def interpolation_matrix(
    n_in: int, scale: int, align_corners: bool, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The (n_in * scale, n_in) CPU matrix of linear interpolation by ``scale`` along one axis, with
    torch's source coordinates: align_corners, x_src = x * (n_in - 1) / (n_out - 1); otherwise
    x_src = max((x + 0.5) / scale - 0.5, 0). Cached: callers must not modify it."""
    n_out = n_in * scale
    x = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        src = x * ((n_in - 1) / (n_out - 1)) if n_out > 1 else torch.zeros_like(x)
    else:
        src = ((x + 0.5) / scale - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(dtype)


def _separable(x: torch.Tensor) -> bool:
    return runs_as_cpu(x) and type(x) in _PLAIN and x.dtype in (torch.float32, torch.float64)


def upsample_trilinear(x: torch.Tensor, scale: int = 2, align_corners: bool = False) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=scale, mode="trilinear", align_corners=align_corners)`` for an
    (N, C, D, H, W) float tensor and a positive int ``scale``; returns (N, C, scale * D, scale * H,
    scale * W), differentiable in x."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        raise ValueError(f"x must be an (N, C, D, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not _separable(x):
        return F.interpolate(x, scale_factor=scale, mode="trilinear", align_corners=align_corners)
    n, c, d, h, w = x.shape
    md, mh, mw = (interpolation_matrix(s, scale, align_corners, x.dtype).to(x.device) for s in (d, h, w))
    y = x.reshape(n * c * d * h, w) @ mw.t()
    y = torch.matmul(mh, y.reshape(n * c * d, h, scale * w))
    y = torch.matmul(md, y.reshape(n * c, d, scale * scale * h * w))
    return y.reshape(n, c, scale * d, scale * h, scale * w)


class UpsampleTrilinear(nn.Module):
    """``nn.Upsample(scale_factor=scale, mode="trilinear", align_corners=...)`` for an int scale, on
    ``upsample_trilinear``. It holds no parameters or buffers, so it can replace ``nn.Upsample`` in a
    module without changing its state dict."""

    def __init__(self, scale: int = 2, align_corners: bool = False):
        super().__init__()
        self.scale, self.align_corners = scale, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_trilinear(x, self.scale, self.align_corners)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, align_corners={self.align_corners}"


def factorized_reduce(x: torch.Tensor, weight_1: torch.Tensor, weight_2: torch.Tensor) -> torch.Tensor:
    """MONAI's FactorizedReduceBlock without its norm: cat([conv(relu(x), weight_1, stride 2),
    conv(relu(x)[:, :, 1:, 1:, 1:], weight_2, stride 2)], channels), for 1x1x1 kernels without bias.

    x (N, C, D, H, W) with even D, H, W; weight_1 (C_1, C, 1, 1, 1), weight_2 (C_2, C, 1, 1, 1);
    returns (N, C_1 + C_2, D / 2, H / 2, W / 2). On CPU the two stride-2 convolutions read only the
    voxels at even and at odd coordinates, so the ReLU runs on those quarter of the voxels alone and
    each convolution is one matrix product per sample writing its half of the output (torch would
    apply the ReLU to the whole volume, copy the shifted view and concatenate). Elsewhere torch's
    convolutions.
    """
    if x.dim() != 5 or any(n % 2 for n in x.shape[2:]):
        raise ValueError(f"x must be an (N, C, D, H, W) tensor with even D, H, W, got shape {tuple(x.shape)}")
    fast = (
        _separable(x)
        and all(type(w) in _PLAIN and w.dtype == x.dtype and w.device == x.device for w in (weight_1, weight_2))
        and not torch.is_autocast_enabled("cpu")
    )
    if not fast:
        a = F.relu(x)
        return torch.cat([F.conv3d(a, weight_1, stride=2), F.conv3d(a[:, :, 1:, 1:, 1:], weight_2, stride=2)], 1)
    return _FactorizedReduce.apply(x, weight_1, weight_2)


class _FactorizedReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight_1, weight_2):
        n, c = x.shape[:2]
        halves = [F.relu(x[:, :, s::2, s::2, s::2]).reshape(n, c, -1) for s in (0, 1)]
        mats = [w.reshape(w.shape[0], c) for w in (weight_1, weight_2)]
        c_1 = mats[0].shape[0]
        y = x.new_empty(n, c_1 + mats[1].shape[0], *(s // 2 for s in x.shape[2:]))
        flat = y.view(n, y.shape[1], -1)
        for i in range(n):
            torch.mm(mats[0], halves[0][i], out=flat[i, :c_1])
            torch.mm(mats[1], halves[1][i], out=flat[i, c_1:])
        ctx.save_for_backward(*halves, weight_1, weight_2)
        ctx.x_shape = x.shape
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        *halves, weight_1, weight_2 = ctx.saved_tensors
        n, c = ctx.x_shape[:2]
        mats = [w.reshape(w.shape[0], c) for w in (weight_1, weight_2)]
        c_1 = mats[0].shape[0]
        g = grad.reshape(n, grad.shape[1], -1)
        parts = (g[:, :c_1], g[:, c_1:])
        grad_x = grad_ws = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_ws = []
            for part, half, w in zip(parts, halves, (weight_1, weight_2)):
                gw = torch.bmm(part, half.transpose(1, 2)).sum(0)
                grad_ws.append(gw.view(w.shape))
        if ctx.needs_input_grad[0]:
            grad_x = grad.new_zeros(ctx.x_shape)
            for s, (part, half, m) in enumerate(zip(parts, halves, mats)):
                grad_half = torch.matmul(m.t(), part)  # (n, c, voxels / 8)
                torch.ops.aten.threshold_backward.grad_input(grad_half, half, 0, grad_input=grad_half)
                grad_x[:, :, s::2, s::2, s::2] = grad_half.view(n, c, *(d // 2 for d in ctx.x_shape[2:]))
        return grad_x, *(grad_ws or (None, None))
