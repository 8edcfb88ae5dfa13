"""Plain-PyTorch references of the mixed-edge kernels: weighted sum, kernel merge, 3x3x3 pooling and
the depthwise dilated 3x3x3 convolution. Short and obviously correct; autograd gives the gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_sum(xs: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] * xs[k]; float16/bfloat16 computed in float32 and rounded once, as the kernels
    do (products such as grad * x of a weight gradient then overflow only where the float32 sum does)."""
    dtype = xs[0].dtype
    if dtype in (torch.float16, torch.bfloat16):
        return weighted_sum([x.float() for x in xs], weights.float()).to(dtype)
    return sum(w * x for w, x in zip(weights.unbind(0), xs))


def kernel_merge(kernels: list[torch.Tensor], weights: torch.Tensor, size=(3, 3, 3)) -> torch.Tensor:
    """sum_k weights[k] * kernels[k] zero-padded (centred) from (O, I, k0, k1, k2) to (O, I, *size).
    A weight multiplies its kernel's own taps only, as in the kernels: the padding is added after the
    product (so an infinite weight gives NaN nowhere that its kernel does not reach)."""
    dtype = kernels[0].dtype
    if dtype in (torch.float16, torch.bfloat16):
        return kernel_merge([k.float() for k in kernels], weights.float(), size).to(dtype)
    out = 0
    for w, k in zip(weights.unbind(0), kernels):
        pad = []
        for d in (2, 1, 0):  # F.pad lists the last dimension first
            extra = (size[d] - k.shape[2 + d]) // 2
            pad += [extra, extra]
        out = out + F.pad(w * k, pad)
    return out


def _windows(x: torch.Tensor, stride: int, value: float) -> torch.Tensor:
    """(N, C, X', Y', Z', 27): the 3x3x3 windows of x padded by 1 with ``value``, taps in raster order
    (dx slowest, dz fastest). A copy; autograd sums the overlapping windows' gradients back into x."""
    padded = F.pad(x, [1] * 6, value=value)
    win = padded.unfold(2, 3, stride).unfold(3, 3, stride).unfold(4, 3, stride)
    return win.reshape(*win.shape[:5], 27)


def max_pool3(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """3x3x3 max pooling, padding 1 (padding never chosen), with the documented choice of the element
    that gets the gradient: the first tap in raster (dx, dy, dz) order that holds the window's maximum,
    where a NaN beats every number (the first NaN, if any). torch's max_pool3d keeps the last NaN."""
    win = _windows(x, stride, float("-inf"))
    inside = _windows(torch.ones_like(x, dtype=torch.bool), stride, False)
    nan = win.isnan()
    top = win.masked_fill(~inside, float("-inf")).amax(-1, keepdim=True)
    first_max = ((win == top) & inside).to(torch.uint8).argmax(-1)  # argmax: the first of equal maxima
    first_nan = nan.to(torch.uint8).argmax(-1)
    tap = torch.where(nan.any(-1), first_nan, first_max)
    return win.gather(-1, tap.unsqueeze(-1)).squeeze(-1)


def _empty_pooled(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The (empty) result for an x without elements (a zero batch or channel count, which torch's
    pooling and grouped convolution refuse): x's strided slice has the output's shape, (n - 1) // stride
    + 1, and keeps the result in x's autograd graph."""
    return x[:, :, ::stride, ::stride, ::stride].clone(memory_format=torch.contiguous_format)


def avg_pool3(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """3x3x3 average pooling, padding 1, dividing by 27 everywhere (count_include_pad=True).

    The zero padding is explicit: torch's avg_pool3d refuses sides shorter than the window even when
    padded. torch has no float16/bfloat16 avg_pool3d on CPU: there the sum runs in float32, rounded
    back once."""
    if x.numel() == 0:
        return _empty_pooled(x, stride)
    padded = F.pad(x, [1] * 6)
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        return F.avg_pool3d(padded.float(), 3, stride).to(x.dtype)
    return F.avg_pool3d(padded, 3, stride)


def depthwise_conv3(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """Depthwise 3x3x3 convolution, weight (C, 1, 3, 3, 3), padding = dilation, where a tap that falls
    outside the volume is skipped (contributes nothing), as in every kernel. With finite weights that is
    F.conv3d with zero padding (0 * w = 0); with a non-finite weight F.conv3d would give 0 * inf = NaN at
    every output whose tap reads the padding, so those weights take the explicit sum over the taps
    inside the volume (slower, but only then)."""
    if x.numel() == 0:  # the output size (n + 2r - 2r - 1) // stride + 1 does not depend on r
        return _empty_pooled(x, stride) + weight.sum()
    if weight.device.type == "meta" or bool(weight.isfinite().all()):
        return F.conv3d(x, weight, stride=stride, padding=dilation, dilation=dilation, groups=x.shape[1])
    return _depthwise_conv3_in_volume(x, weight, stride, dilation)


def _depthwise_conv3_in_volume(x: torch.Tensor, weight: torch.Tensor, stride: int, r: int) -> torch.Tensor:
    """sum over the taps d whose input o * stride + (d - 1) * r lies inside the volume of w[c, d] * x[...]:
    the windows of x padded by r (taps 0, r, 2r of each 2r + 1 wide window), each product masked out
    where its tap reads the padding (after the multiplication, so that 0 * inf never enters the sum; the
    NaN that autograd sends back there lands in the padding, which F.pad's backward drops). float16 and
    bfloat16 in float32, rounded once, as the kernels accumulate."""
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    k = 2 * r + 1

    def windows(t, value):
        t = F.pad(t, [r] * 6, value=value)
        return t.unfold(2, k, stride).unfold(3, k, stride).unfold(4, k, stride)[..., ::r, ::r, ::r]

    win = windows(work, 0.0)  # (N, C, OX, OY, OZ, 3, 3, 3)
    inside = windows(torch.ones_like(work, dtype=torch.bool), False)
    w = weight.to(work.dtype).reshape(1, x.shape[1], 1, 1, 1, 3, 3, 3)
    terms = torch.where(inside, win * w, torch.zeros((), dtype=work.dtype, device=work.device))
    return terms.sum((-3, -2, -1)).to(x.dtype)
