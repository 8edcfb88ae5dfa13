"""Plain-PyTorch references of the mixed-edge kernels: weighted sum, kernel merge, 3x3x3 pooling and
the depthwise dilated 3x3x3 convolution. Short and obviously correct; autograd gives the gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_sum(xs: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] * xs[k]."""
    return sum(w * x for w, x in zip(weights.unbind(0), xs))


def kernel_merge(kernels: list[torch.Tensor], weights: torch.Tensor, size=(3, 3, 3)) -> torch.Tensor:
    """sum_k weights[k] * kernels[k] zero-padded (centred) from (O, I, k0, k1, k2) to (O, I, *size)."""
    padded = []
    for k in kernels:
        pad = []
        for d in (2, 1, 0):  # F.pad lists the last dimension first
            extra = (size[d] - k.shape[2 + d]) // 2
            pad += [extra, extra]
        padded.append(F.pad(k, pad))
    return weighted_sum(padded, weights)


def max_pool3(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """3x3x3 max pooling, padding 1."""
    return F.max_pool3d(x, 3, stride, 1)


def avg_pool3(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """3x3x3 average pooling, padding 1, dividing by 27 everywhere (count_include_pad=True).

    The zero padding is explicit: torch's avg_pool3d refuses sides shorter than the window even when
    padded. torch has no float16/bfloat16 avg_pool3d on CPU: there the sum runs in float32, rounded
    back once."""
    padded = F.pad(x, [1] * 6)
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        return F.avg_pool3d(padded.float(), 3, stride).to(x.dtype)
    return F.avg_pool3d(padded, 3, stride)


def depthwise_conv3(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """Depthwise 3x3x3 convolution, weight (C, 1, 3, 3, 3), padding = dilation."""
    return F.conv3d(x, weight, stride=stride, padding=dilation, dilation=dilation, groups=x.shape[1])
