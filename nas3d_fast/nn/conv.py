"""``conv3d``: ``F.conv3d`` that keeps batch-1 CPU volumes on oneDNN.

torch sends a CPU float32 convolution to oneDNN (mkldnn) only when the batch is larger than 1, or
N * C * D * H > 20480, or the kernel is larger than 3 on both of its last two axes
(``use_mkldnn`` in ATen's ConvUtils.h); otherwise it runs ``slow_conv3d`` (im2col and GEMM). A
batch-1 supernet on a coarse scale, e.g. (1, 64, 16, 16, 16), falls through to it, and there it is
2-3x slower than oneDNN in forward and backward (``python -m benchmarks.run supernet`` spends most of
its time in such convolutions; MONAI's DiNTS runs the same ones). Where that happens, ``conv3d``
calls oneDNN directly:

- forward: ``aten.mkldnn_convolution``;
- input gradient (stride 1): the oneDNN convolution of the output gradient with the kernel transposed
  (in/out channels) and flipped;
- weight gradient (``halves_pay``: X >= 16, or X >= 8 for kernels of 9 or more taps):
  ``aten.convolution_backward`` on the volume cut in two halves along X
  (each with the kernel's halo) and stacked as a batch of 2, which torch itself sends to oneDNN.
  The rest of the backward of strided convolutions is torch's own.

A 1x1x1, stride 1, unpadded convolution on CPU (``is_pointwise``) is a matrix product per sample,
(C_out, C_in) @ (C_in, voxels), and runs as one (``_PointwiseConv3d``): oneDNN would copy the volume,
its output and, in backward, its gradients into blocked layouts, two extra volume-sized buffers at the
backward's peak (the depthwise-separable candidates of ``python -m benchmarks.run mixed_edge`` end
in one).

Elsewhere (CUDA, meta and fake tensors (but see ``meta_as_cpu``), other dtypes, batches torch already
routes to oneDNN, strided or padded 1x1x1 kernels, groups or dilation) it is ``F.conv3d``. Results
equal ``F.conv3d`` to float32 rounding.

Under ``torch.compile`` the oneDNN route is the custom op ``nas3d::onednn_conv3d`` (with a fake kernel
and its backward ``nas3d::onednn_conv3d_backward``), which the compiler keeps as one opaque call
(``aten.mkldnn_convolution`` itself has no kernel for fake tensors); the matrix-product route is
``torch.matmul`` on the same views, which inductor lowers to its own GEMM. Eager calls keep the
autograd Functions (no custom-op dispatch on the hot path).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F
from torch import nn

_PLAIN = (torch.Tensor, nn.Parameter)  # not fake, functional or other subclass tensors
_SLOW_CONV_LIMIT = 20480  # ATen's N * C * D * H bound below which batch-1 convolutions skip oneDNN
# Below 8^3 oneDNN gains nothing: it ran at 0.84x of torch's kernel at (1, 256, 4^3) before this bound
# (the c256_s4 case of benchmarks/conv_route.py, which now runs torch's kernel on both sides).
_MIN_VOXELS = 512
# read once: torch.compile does not trace into torch.backends.mkldnn.is_available (a graph break per call)
_ONEDNN_BUILT = torch.backends.mkldnn.is_available()


_META_AS_CPU = contextvars.ContextVar("nas3d_meta_as_cpu", default=False)


@contextlib.contextmanager
def meta_as_cpu():
    """Within it, meta tensors take the route CPU tensors of their shape would take: a CPU-target
    memory prediction (``nas3d_fast.profile``) traces on meta tensors and must see the ops the CPU runs."""
    token = _META_AS_CPU.set(True)
    try:
        yield
    finally:
        _META_AS_CPU.reset(token)


def runs_as_cpu(t: torch.Tensor) -> bool:
    """Whether t takes the CPU routes: a CPU tensor, or a meta one within ``meta_as_cpu``."""
    return t.device.type == "cpu" or (t.device.type == "meta" and _META_AS_CPU.get())


def _triple(v) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(int(n) for n in v)


def takes_slow_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether torch would run this (groups 1, dilation 1) convolution in ``slow_conv3d`` on CPU while
    oneDNN is usable: a batch-1 float32 volume of at least 8^3 voxels with N * C * X * Y <= 20480 and a
    kernel larger than 1 (on smaller volumes the route gains nothing)."""
    return (
        runs_as_cpu(x)
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 5
        and type(x) in _PLAIN
        and type(weight) in _PLAIN
        and weight.device == x.device
        and _ONEDNN_BUILT
        and torch.backends.mkldnn.enabled
        and x.shape[0] == 1
        and x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] <= _SLOW_CONV_LIMIT
        and any(k > 1 for k in weight.shape[2:])
        and x.shape[2] * x.shape[3] * x.shape[4] >= _MIN_VOXELS
        and x.shape[1] == weight.shape[1]
    )


def is_pointwise(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> bool:
    """Whether ``conv3d`` runs this convolution as matrix products: a 1x1x1 kernel, stride 1, no
    padding, plain float32 or float64 CPU tensors of one dtype (meta ones within ``meta_as_cpu``),
    outside CPU autocast (which would run F.conv3d in lower precision)."""
    return (
        runs_as_cpu(x)
        and weight.device == x.device
        and x.dim() == 5
        and weight.dim() == 5
        and tuple(weight.shape[2:]) == (1, 1, 1)
        and x.shape[1] == weight.shape[1]
        and _triple(stride) == (1, 1, 1)
        and _triple(padding) == (0, 0, 0)
        and type(x) in _PLAIN
        and type(weight) in _PLAIN
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and not torch.is_autocast_enabled("cpu")
    )


def conv3d(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0) -> torch.Tensor:
    """``F.conv3d(x, weight, None, stride, padding)`` (groups 1, dilation 1, no bias).

    x (N, C_in, X, Y, Z), weight (C_out, C_in, kx, ky, kz); returns (N, C_out, X', Y', Z').
    """
    stride, padding = _triple(stride), _triple(padding)
    compiling = torch.compiler.is_compiling()
    if is_pointwise(x, weight, stride, padding):
        if compiling:
            w = weight.reshape(weight.shape[0], weight.shape[1])
            return torch.matmul(w, x.reshape(x.shape[0], x.shape[1], -1)).view(x.shape[0], w.shape[0], *x.shape[2:])
        return _PointwiseConv3d.apply(x, weight)
    if takes_slow_path(x, weight):
        if compiling:
            return onednn_conv3d(x, weight, list(stride), list(padding))
        return _OneDnnConv3d.apply(x, weight, stride, padding)
    return F.conv3d(x, weight, stride=stride, padding=padding)


@torch.library.custom_op("nas3d::onednn_conv3d", mutates_args=())
def onednn_conv3d(x: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int]) -> torch.Tensor:
    """The oneDNN route of ``conv3d`` as one op for the compiler (module docstring)."""
    return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight, None, padding, stride, [1, 1, 1], 1)


@onednn_conv3d.register_fake
def _(x, weight, stride, padding):
    size = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip(x.shape[2:], padding, weight.shape[2:], stride)]
    return x.new_empty(x.shape[0], weight.shape[0], *size)


@torch.library.custom_op("nas3d::onednn_conv3d_backward", mutates_args=())
def onednn_conv3d_backward(
    x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, stride: list[int], padding: list[int],
    need_x: bool, need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input gradient, weight gradient) of ``onednn_conv3d`` (``conv3d_grads``); an empty tensor for a
    gradient not needed (a custom op returns tensors only)."""
    gx, gw = conv3d_grads(x, weight, grad, stride, padding, need_x, need_weight)
    return (gx if gx is not None else x.new_empty(0)), (gw if gw is not None else weight.new_empty(0))


@onednn_conv3d_backward.register_fake
def _(x, weight, grad, stride, padding, need_x, need_weight):
    return (x.new_empty(x.shape) if need_x else x.new_empty(0)), (
        weight.new_empty(weight.shape) if need_weight else weight.new_empty(0)
    )


def _onednn_setup(ctx, inputs, output):
    x, weight, stride, padding = inputs
    ctx.save_for_backward(x, weight)
    ctx.stride, ctx.padding = stride, padding


def _onednn_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx, gw = onednn_conv3d_backward(x, weight, grad, ctx.stride, ctx.padding, need_x, need_w)
    return (gx if need_x else None), (gw if need_w else None), None, None


onednn_conv3d.register_autograd(_onednn_backward, setup_context=_onednn_setup)


def conv3d_grads(
    x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, stride, padding, need_x: bool, need_weight: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(input gradient, weight gradient) of ``conv3d(x, weight, stride, padding)`` for the output
    gradient ``grad``, each None when not needed; oneDNN where ``takes_slow_path``."""
    stride, padding = _triple(stride), _triple(padding)
    fast = takes_slow_path(x, weight)
    if fast and torch.compiler.is_compiling():  # one op for the compiler, this function at run time
        gx, gw = onednn_conv3d_backward(x, weight, grad, list(stride), list(padding), need_x, need_weight)
        return (gx if need_x else None), (gw if need_weight else None)
    grad_x = grad_w = None
    if need_x and fast and stride == (1, 1, 1) and all(p <= k - 1 for p, k in zip(padding, weight.shape[2:])):
        flipped = weight.transpose(0, 1).flip(2, 3, 4)
        back = [k - 1 - p for p, k in zip(padding, weight.shape[2:])]
        grad_x = torch.ops.aten.mkldnn_convolution(grad.contiguous(), flipped, None, back, [1, 1, 1], [1, 1, 1], 1)
        need_x = False
    if (
        need_weight
        and fast
        and stride[0] == 1
        and halves_pay(x, weight)
        and x.shape[2] % 2 == 0
        and grad.shape[2] == x.shape[2]
    ):
        grad_w = _weight_grad_as_batch_of_two(x, weight, grad, stride, padding)
        need_weight = False
    if need_x or need_weight:
        gx, gw, _ = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            None,
            list(stride),
            list(padding),
            [1, 1, 1],
            False,
            [0, 0, 0],
            1,
            [need_x, need_weight, False],
        )
        grad_x = gx if need_x else grad_x
        grad_w = gw if need_weight else grad_w
    return grad_x, grad_w


def halves_pay(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the weight gradient through the two X-halves beats torch's: from X = 16, and at X = 8
    for kernels of 9 or more taps. With AVX-512, X = 8 in halves took the c128_s8 case of
    ``python -m benchmarks.run conv_route`` (3x3x3, forward and backward) from 1.45x to 1.78x of
    F.conv3d; at 8^3 kernels of 3 taps were slower in halves, and so was every 4^3 volume. With AVX2
    the halves were even at 8^3."""
    taps = weight.shape[2] * weight.shape[3] * weight.shape[4]
    return x.shape[2] >= 16 or (x.shape[2] >= 8 and taps >= 9)


def _weight_grad_as_batch_of_two(x, weight, grad, stride, padding) -> torch.Tensor:
    """The weight gradient from the two X-halves of the volume as one batch of 2 (stride 1 along X,
    "same" output size along X): torch sends a batch of 2 to oneDNN."""
    half, pad_x, k = x.shape[2] // 2, padding[0], weight.shape[2]
    padded = F.pad(x, (0, 0, 0, 0, pad_x, pad_x))
    span = half + k - 1  # the input rows the output rows [start, start + half) read
    halves_x = torch.cat([padded[:, :, :span], padded[:, :, half : half + span]])
    halves_g = torch.cat([grad[:, :, :half], grad[:, :, half:]])
    return torch.ops.aten.convolution_backward(
        halves_g,
        halves_x,
        weight,
        None,
        list(stride),
        [0, padding[1], padding[2]],
        [1, 1, 1],
        False,
        [0, 0, 0],
        1,
        [False, True, False],
    )[1]


class _OneDnnConv3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight, None, padding, stride, [1, 1, 1], 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x, grad_w = conv3d_grads(
            x, weight, grad, ctx.stride, ctx.padding, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        return grad_x, grad_w, None, None


def _per_sample_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[n] = a @ b[n] for (M, K) a, (N, K, V) b and an (N, M, ...) out holding M x V values per
    sample; returns out itself (not a view: a custom Function's output must not be one)."""
    flat = out.view(out.shape[0], out.shape[1], -1)
    for n in range(b.shape[0]):
        torch.mm(a, b[n], out=flat[n])
    return out


class _PointwiseConv3d(torch.autograd.Function):
    """y[n] = W @ x[n] on (C, voxels) views; backward dx[n] = W^T @ dy[n], dW = sum_n dy[n] @ x[n]^T."""

    @staticmethod
    def forward(ctx, x, weight):
        n, c_in, *size = x.shape
        w = weight.reshape(weight.shape[0], c_in)
        flat = x.contiguous().view(n, c_in, -1)
        ctx.save_for_backward(flat, weight)
        return _per_sample_mm(w, flat, x.new_empty(n, w.shape[0], *size))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        flat, weight = ctx.saved_tensors
        n, c_in, _ = flat.shape
        w = weight.reshape(weight.shape[0], c_in)
        g = grad.contiguous().view(n, w.shape[0], -1)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _per_sample_mm(w.t(), g, flat.new_empty(n, c_in, *grad.shape[2:]))
        if ctx.needs_input_grad[1]:
            grad_w = flat.new_zeros(w.shape)
            for i in range(n):
                grad_w.addmm_(g[i], flat[i].t())
            grad_w = grad_w.view(weight.shape)
        return grad_x, grad_w


class Conv3d(nn.Conv3d):
    """``torch.nn.Conv3d`` (same parameters and state dict) whose forward is ``conv3d`` when it has no
    bias, groups or dilation; otherwise torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = self.bias is None and self.groups == 1 and self.dilation == (1, 1, 1)
        if plain and self.padding_mode == "zeros" and not isinstance(self.padding, str):
            return conv3d(x, self.weight, self.stride, self.padding)
        return super().forward(x)
