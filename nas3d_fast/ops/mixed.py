"""The kernels of a mixed supernet edge (SPEC §2 "mixed edge"): the weighted multi-tensor sum with its
fused weight gradient, the kernel merge, 3x3x3 max/average pooling and the depthwise dilated 3x3x3
convolution. ``nas3d_fast.nn.MixedEdge3d`` builds on them; they are public for users' own supernets."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from .. import _extension, dispatch
from ..reference import mixed as reference
from ._checks import check_tensor

CUDA_ORDER = ("triton", "cuda")
STRIDES = (1, 2)


def _triton():
    from ..kernels.triton import mixed as triton_mixed  # registers the nas3d::*_triton ops

    return triton_mixed


def _check_same(ts: Sequence[torch.Tensor], name: str, ref: torch.Tensor, ref_name: str, shape=True) -> None:
    for i, t in enumerate(ts):
        check_tensor(t, f"{name}[{i}]")
        if shape and t.shape != ref.shape:
            raise ValueError(f"{name}[{i}] must have the shape of {name}[0] {tuple(ref.shape)}, got {tuple(t.shape)}")
        if t.dtype != ref.dtype:
            raise ValueError(f"{name}[{i}] must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{name}[{i}] must be on the device of {ref_name} ({ref.device}), got {t.device}")


def _check_weights(weights: torch.Tensor, count: int, what: str) -> None:
    check_tensor(weights, "weights", dim=1)
    if weights.shape[0] != count:
        raise ValueError(
            f"weights must have one entry per tensor of {what} ({count}), got shape {tuple(weights.shape)}"
        )


def weighted_sum(xs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """out = sum_k weights[k] * xs[k] in one pass, with a fused weight gradient.

    Args:
        xs: K >= 1 tensors of one shape, dtype (float16/bfloat16/float32/float64) and device.
        weights: (K,) of the same dtype and device, e.g. the softmax of one edge's architecture logits.

    Returns:
        A contiguous tensor of xs[0]'s shape. Gradients: xs[k] gets weights[k] * grad; weights[k] gets
        <grad, xs[k]>, all K reduced in one pass over grad (deterministically: fixed blocks, fixed order).
        float16/bfloat16 compute in float32 and round once (the reference too), so a weight gradient
        is infinite only where the float32 sum overflows the dtype, never NaN from products of finite
        values that overflow.

    Range: results are specified while max(K, n) * max(1, W) * M * max(1, G) <= finfo(acc).max, with n
    the elements of one tensor, W, M and G the largest magnitudes of weights, xs and grad, acc float32
    (float64 for float64 inputs). Beyond it a partial sum overflows, to +inf, -inf or NaN depending on
    each backend's summation order.
    """
    xs = list(xs)
    if not xs:
        raise ValueError("xs must hold at least one tensor")
    check_tensor(xs[0], "xs[0]")
    _check_same(xs, "xs", xs[0], "xs[0]")
    _check_weights(weights, len(xs), "xs")
    _check_same([weights], "weights", xs[0], "xs[0]", shape=False)
    backend = dispatch.choose("weighted_sum", xs[0].device, CUDA_ORDER)
    if backend == "reference":
        return reference.weighted_sum(xs, weights)
    if backend == "triton":
        return _triton().weighted_sum(xs, weights)
    return torch.ops.nas3d.weighted_sum(xs, weights)


def weight_grads(grad: torch.Tensor, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """(K,) the dots <grad, xs[k]> in one pass over grad: the weight gradient of ``weighted_sum``,
    also used alone when candidates are recomputed one at a time. Not differentiable."""
    backend = dispatch.choose("weighted_sum", grad.device, CUDA_ORDER)
    if backend == "reference" or any(x.dtype != grad.dtype or x.shape != grad.shape for x in xs):
        return torch.stack([(grad * x).sum() for x in xs])
    if backend == "triton":
        return _triton().weight_grads(grad, list(xs))
    return torch.ops.nas3d.weighted_sum_backward(grad, list(xs))


def _check_size(size) -> tuple[int, int, int]:
    """kernel_merge's size as a tuple of 3 odd positive ints (a sequence of ints, torch.Size, or integer
    scalars such as numpy ints; not a string, None, floats or bools)."""
    bad = ValueError(f"size must be 3 odd positive ints, got {size!r}")
    if isinstance(size, (str, bytes)) or not isinstance(size, Sequence):
        raise bad
    out = []
    for s in size:
        if isinstance(s, bool):
            raise bad
        try:
            out.append(operator.index(s))
        except TypeError:
            raise bad from None
    if len(out) != 3 or any(s < 1 or s % 2 == 0 for s in out):
        raise bad
    return tuple(out)


def kernel_merge(
    kernels: Sequence[torch.Tensor], weights: torch.Tensor, size: Sequence[int] = (3, 3, 3)
) -> torch.Tensor:
    """The weighted sum of convolution kernels zero-padded (centred) to one size.

    Args:
        kernels: K >= 1 kernels (O, I, k0, k1, k2), the same O and I, every k odd and at most ``size``.
        weights: (K,) of the kernels' dtype and device.
        size: the merged kernel's spatial size: a sequence of 3 odd positive ints (ValueError naming
            ``size`` otherwise).

    Returns:
        (O, I, *size): one convolution with it equals the weighted sum of the K convolutions with
        "same" padding. Differentiable in kernels and weights. A weight multiplies only its own
        kernel's taps (the padding is not a product: an infinite weight gives no NaN where its kernel
        does not reach), and float16/bfloat16 sum in float32, rounded once, on every backend.

    Range: as weighted_sum's, with n the elements of the merged kernel and M that of the kernels.
    """
    kernels = list(kernels)
    if not kernels:
        raise ValueError("kernels must hold at least one tensor")
    size = _check_size(size)
    first = kernels[0]
    check_tensor(first, "kernels[0]", dim=5)
    _check_same(kernels, "kernels", first, "kernels[0]", shape=False)
    for i, k in enumerate(kernels):
        if k.dim() != 5 or k.shape[:2] != first.shape[:2]:
            raise ValueError(
                f"kernels[{i}] must have shape (O, I, k0, k1, k2) with O, I = {tuple(first.shape[:2])}, got {tuple(k.shape)}"
            )
        if any(n % 2 == 0 or n > s for n, s in zip(k.shape[2:], size)):
            raise ValueError(f"kernels[{i}] must have odd sizes at most {size}, got {tuple(k.shape)}")
    _check_weights(weights, len(kernels), "kernels")
    _check_same([weights], "weights", first, "kernels[0]", shape=False)
    backend = dispatch.choose("kernel_merge", first.device, CUDA_ORDER)
    if backend == "reference":
        return reference.kernel_merge(kernels, weights, size)
    if backend == "triton":
        return _triton().kernel_merge(kernels, weights, size)
    return torch.ops.nas3d.kernel_merge(kernels, weights, list(size))


def _check_pool_args(x: torch.Tensor, stride: int) -> None:
    check_tensor(x, "x", dim=5)
    if stride not in STRIDES or isinstance(stride, bool):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"x must have non-empty spatial sizes, got shape {tuple(x.shape)}")


def max_pool3(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """3x3x3 max pooling with padding 1: torch's ``F.max_pool3d(x, 3, stride, 1)``, computed as three 1D
    passes.

    Args:
        x: (N, C, X, Y, Z) floating; any strides (read as a contiguous copy if not contiguous).
        stride: 1 or 2; outputs have spatial sizes (n - 1) // stride + 1.

    Returns:
        (N, C, X', Y', Z'). The backward routes each output's gradient to the element the forward
        chose (ties to the lowest (dx, dy, dz) offset; NaN propagates), keeping one byte per output
        instead of torch's int64 indices.
    """
    _check_pool_args(x, stride)
    backend = dispatch.choose("max_pool3", x.device, CUDA_ORDER)
    if backend == "reference":
        return reference.max_pool3(x, stride)
    if backend == "triton":
        return _triton().max_pool3(x, stride)
    return torch.ops.nas3d.max_pool3(x, stride)[0]


def avg_pool3(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """3x3x3 average pooling with padding 1, dividing by 27 everywhere (``count_include_pad=True``, so
    that it is a linear convolution and merges with the other linear candidates), as three 1D passes.

    Args:
        x: (N, C, X, Y, Z) floating. stride: 1 or 2.
    """
    _check_pool_args(x, stride)
    backend = dispatch.choose("avg_pool3", x.device, CUDA_ORDER)
    if backend == "reference":
        return reference.avg_pool3(x, stride)
    if backend == "triton":
        return _triton().avg_pool3(x, stride)
    return torch.ops.nas3d.avg_pool3(x, stride)


def depthwise_conv3(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """Depthwise 3x3x3 convolution with dilation r and padding r (the first half of the dilated
    depthwise-separable candidates): ``F.conv3d(x, weight, stride=stride, padding=r, dilation=r,
    groups=C)``, except that a tap falling outside the volume is skipped instead of multiplied by the
    zero padding. The two agree for finite weights; a non-finite weight (inf, NaN) reaches only the
    outputs whose tap reads inside the volume, where F.conv3d gives NaN (0 * inf) at every output whose
    tap reads the padding. Every backend (reference, cpu, cuda, triton) follows this rule, forward and
    backward.

    Args:
        x: (N, C, X, Y, Z) floating. weight: (C, 1, 3, 3, 3), x's dtype and device.
        stride: 1 or 2. dilation: >= 1 (any size: one at least the largest spatial size gives the
            centre tap only, like that size).
    """
    _check_pool_args(x, stride)
    check_tensor(weight, "weight", dim=5)
    if tuple(weight.shape) != (x.shape[1], 1, 3, 3, 3):
        raise ValueError(f"weight must have shape (C, 1, 3, 3, 3) with C = {x.shape[1]}, got {tuple(weight.shape)}")
    _check_same([weight], "weight", x, "x", shape=False)
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    # A dilation >= every spatial size leaves only the centre tap inside the volume (the others are
    # skipped), as that size does: clamped, so that no backend's index arithmetic (o * stride +
    # dilation) overflows 64 bits and F.conv3d's padding stays small (issue 27; the C++ entry points
    # clamp too, dwconv3_args.h).
    dilation = min(dilation, max(1, *x.shape[2:]))
    backend = dispatch.choose("depthwise_conv3", x.device, CUDA_ORDER)
    if backend == "reference":
        return reference.depthwise_conv3(x, weight, stride, dilation)
    if backend == "triton":
        return _triton().depthwise_conv3(x, weight, stride, dilation)
    return torch.ops.nas3d.depthwise_conv3(x, weight, stride, dilation)


# --- registrations of the compiled ops: fake kernels (shapes only) and autograd --------------------------


def _pooled(x: torch.Tensor, stride: int) -> list:
    return [*x.shape[:2], *((n - 1) // stride + 1 for n in x.shape[2:])]


def _register() -> None:
    lib = torch.library

    @lib.register_fake("nas3d::weighted_sum")
    def _(xs, weights):
        return torch.empty_like(xs[0], memory_format=torch.contiguous_format)

    @lib.register_fake("nas3d::weighted_sum_backward")
    def _(grad, xs):
        return grad.new_empty((len(xs),))

    @lib.register_fake("nas3d::kernel_merge")
    def _(kernels, weights, size):
        return kernels[0].new_empty((*kernels[0].shape[:2], *size))

    @lib.register_fake("nas3d::kernel_merge_backward")
    def _(grad, kernels, weights):
        return [torch.empty_like(k, memory_format=torch.contiguous_format) for k in kernels], weights.new_empty(
            weights.shape
        )

    @lib.register_fake("nas3d::max_pool3")
    def _(x, stride):
        shape = _pooled(x, stride)
        return x.new_empty(shape), x.new_empty(shape, dtype=torch.uint8)

    @lib.register_fake("nas3d::max_pool3_backward")
    def _(grad, code, input_size, stride):
        return grad.new_empty(input_size)

    @lib.register_fake("nas3d::avg_pool3")
    def _(x, stride):
        return x.new_empty(_pooled(x, stride))

    @lib.register_fake("nas3d::avg_pool3_backward")
    def _(grad, input_size, stride):
        return grad.new_empty(input_size)

    @lib.register_fake("nas3d::depthwise_conv3")
    def _(x, weight, stride, dilation):
        return x.new_empty(_pooled(x, stride))

    @lib.register_fake("nas3d::depthwise_conv3_backward")
    def _(grad, x, weight, stride, dilation, mask):
        dx = x.new_empty(x.shape) if mask[0] else None
        dw = weight.new_empty(weight.shape) if mask[1] else None
        return dx, dw

    # weighted_sum
    def ws_setup(ctx, inputs, output):
        xs, weights = inputs
        ctx.save_for_backward(weights, *xs)

    def ws_backward(ctx, grad):
        weights, *xs = ctx.saved_tensors
        grad_xs = [grad * w for w in weights.unbind(0)] if any(ctx.needs_input_grad[0:1]) else None
        grad_w = torch.ops.nas3d.weighted_sum_backward(grad, xs) if ctx.needs_input_grad[1] else None
        return grad_xs, grad_w

    lib.register_autograd("nas3d::weighted_sum", ws_backward, setup_context=ws_setup)

    def km_setup(ctx, inputs, output):
        kernels, weights, _size = inputs
        ctx.save_for_backward(weights, *kernels)

    def km_backward(ctx, grad):
        weights, *kernels = ctx.saved_tensors
        grad_kernels, grad_w = torch.ops.nas3d.kernel_merge_backward(grad, kernels, weights)
        return grad_kernels, grad_w, None

    lib.register_autograd("nas3d::kernel_merge", km_backward, setup_context=km_setup)

    def mp_setup(ctx, inputs, output):
        x, stride = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.shape, ctx.stride = list(x.shape), stride

    def mp_backward(ctx, grad, _grad_code):
        (code,) = ctx.saved_tensors
        return torch.ops.nas3d.max_pool3_backward(grad, code, ctx.shape, ctx.stride), None

    lib.register_autograd("nas3d::max_pool3", mp_backward, setup_context=mp_setup)

    def ap_setup(ctx, inputs, output):
        x, stride = inputs
        ctx.shape, ctx.stride = list(x.shape), stride

    def ap_backward(ctx, grad):
        return torch.ops.nas3d.avg_pool3_backward(grad, ctx.shape, ctx.stride), None

    lib.register_autograd("nas3d::avg_pool3", ap_backward, setup_context=ap_setup)

    def dw_setup(ctx, inputs, output):
        x, weight, stride, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.dilation = stride, dilation

    def dw_backward(ctx, grad):
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
        dx, dw = torch.ops.nas3d.depthwise_conv3_backward(grad, x, weight, ctx.stride, ctx.dilation, mask)
        return dx, dw, None, None

    lib.register_autograd("nas3d::depthwise_conv3", dw_backward, setup_context=dw_setup)


if _extension.available():
    _register()
