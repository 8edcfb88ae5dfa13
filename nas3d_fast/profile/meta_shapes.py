"""The outputs of a training step's frequent ops on meta tensors, made directly from a shape rule.

Most of torch's meta kernels for these ops are Python decompositions or reference implementations
that cost 0.05-10 ms a call (a 3x3x3 convolution's meta kernel alone ~0.3 ms, the Dice+CE loss's ~20
ms), which made them most of a traced step's time. :func:`fast_output` answers them with
``torch.empty`` of the shape, dtype and strides that the meta kernel returns, and returns None
whenever a case is not certain to match (the tracer then runs the meta kernel):

- elementwise ops (out of place: a new contiguous tensor of the broadcast shape; in place: the first
  argument) when every tensor argument is contiguous and, apart from 0-dimensional CPU tensors
  (wrapped Python numbers), a floating meta tensor of the first one's dtype (no type promotion);
- activation backwards written into ``grad_input`` (``.grad_input`` overloads) of the right shape;
- sum/mean over dimensions (sum also into an ``out`` of the right shape), var_mean, ``*_like``
  factories, trilinear upsampling;
- convolution and its backward (the meta kernels' shape formula and memory format);
- softmax/log-softmax and their backward, nll_loss2d and its backward (what cross-entropy runs).

Every rule is exercised by tests/test_profile_meta_shapes.py against the meta kernel itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._prims_common import suggest_memory_format

aten = torch.ops.aten
META = torch.device("meta")
_SCALARS = (int, float, bool)
_ALLOWED_KWARGS = frozenset({"alpha", "value", "negative_slope", "non_blocking"})


def broadcast_shape(a: tuple, b: tuple) -> tuple | None:
    """numpy-style broadcast of two shapes, or None when they do not broadcast."""
    if a == b:
        return tuple(a)
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(out)


def _plain_meta(t) -> bool:
    """A contiguous floating meta tensor."""
    return isinstance(t, torch.Tensor) and t.device.type == "meta" and t.dtype.is_floating_point and t.is_contiguous()


def _operands_shape(args, kwargs) -> tuple | None:
    """The broadcast shape of an elementwise op's operands, or None when the fast rule does not hold."""
    if kwargs and kwargs.keys() - _ALLOWED_KWARGS:
        return None
    first = args[0]
    if not _plain_meta(first):
        return None
    shape, dtype = first.shape, first.dtype
    for a in args[1:]:
        if isinstance(a, torch.Tensor):
            if a.device.type == "meta":
                if a.dtype != dtype or not a.is_contiguous():
                    return None
            elif a.dim() != 0 or a.dtype.is_complex:  # a 0-d CPU tensor acts as a scalar of its category
                return None
            if a.shape != shape:
                shape = broadcast_shape(shape, a.shape)
                if shape is None:
                    return None
        elif a is not None and not isinstance(a, _SCALARS):
            return None
    return shape


def _out_of_place(args, kwargs):
    shape = _operands_shape(args, kwargs)
    return None if shape is None else torch.empty(shape, dtype=args[0].dtype, device=META)


def _in_place(args, kwargs):
    shape = _operands_shape(args, kwargs)
    return args[0] if shape is not None and shape == args[0].shape else None


def _into_grad_input(args, kwargs):
    """An activation backward's ``.grad_input`` overload (``nas3d_fast.nn.mixed_edge`` writes the
    gradient in place this way): ``grad_input`` itself when it has the operands' shape and dtype."""
    out = kwargs.get("grad_input")
    if kwargs.keys() != {"grad_input"} or not _plain_meta(out) or out.dtype != args[0].dtype:
        return None
    shape = _operands_shape(args, {})
    return out if shape is not None and shape == out.shape else None


def _copy(args, kwargs):
    dst, src = args[0], args[1]
    if kwargs.keys() - _ALLOWED_KWARGS or not _plain_meta(dst) or not isinstance(src, torch.Tensor):
        return None
    if src.device.type != "meta" or src.dtype != dst.dtype or broadcast_shape(dst.shape, src.shape) != dst.shape:
        return None
    return dst


def _reduction(args, kwargs):
    x = args[0]
    if not _plain_meta(x) or kwargs.get("dtype") is not None or kwargs.keys() - {"keepdim", "dtype"} or len(args) > 3:
        return None
    dims = args[1] if len(args) > 1 else None
    keepdim = bool(args[2]) if len(args) > 2 else bool(kwargs.get("keepdim", False))
    if not dims:
        return None
    reduced = {d % x.dim() for d in dims}
    shape = [1 if i in reduced else n for i, n in enumerate(x.shape) if keepdim or i not in reduced]
    return torch.empty(shape, dtype=x.dtype, device=META)


def _reduction_out(args, kwargs):
    """sum(..., out=out) when ``out`` already has the reduced shape and dtype (no resize): out itself."""
    out = kwargs.get("out")
    rest = {k: v for k, v in kwargs.items() if k != "out"}
    if not isinstance(out, torch.Tensor) or out.device.type != "meta" or out.dtype != args[0].dtype:
        return None
    expected = _reduction(args, rest)
    return out if expected is not None and expected.shape == out.shape else None


def _var_mean(args, kwargs):
    if kwargs.keys() - {"correction", "keepdim"} or len(args) != 2:
        return None
    out = _reduction(args[:2], {"keepdim": kwargs.get("keepdim", False)})
    return None if out is None else (out, torch.empty_like(out))


def _like(args, kwargs):
    x = args[0]
    if len(args) != 1 or not _plain_meta(x):
        return None
    if kwargs.get("dtype") not in (None, x.dtype) or kwargs.get("device") not in (None, x.device):
        return None
    if kwargs.get("layout") not in (None, torch.strided) or kwargs.get("memory_format") not in (
        None,
        torch.preserve_format,
        torch.contiguous_format,
    ):
        return None
    return torch.empty(x.shape, dtype=x.dtype, device=META)


def _upsample_trilinear(args, kwargs):
    x, size = args[0], args[1]
    if not _plain_meta(x) or size is None or x.dim() != 5:
        return None
    return torch.empty((*x.shape[:2], *size), dtype=x.dtype, device=META)


def _conv_shape(x, weight, stride, padding, dilation, transposed, output_padding, groups) -> list[int]:
    """torch's convolution output shape (``calc_conv_nd_return_shape``)."""
    shape = [x.shape[0], groups * weight.shape[1] if transposed else weight.shape[0]]
    for i, n in enumerate(x.shape[2:]):
        k, s, p, d = weight.shape[2 + i], stride[i], padding[i], dilation[i]
        if transposed:
            shape.append((n - 1) * s - 2 * p + d * (k - 1) + output_padding[i] + 1)
        else:
            shape.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
    return shape


def _conv_args_ok(x, weight, stride, padding, dilation, transposed, output_padding, groups) -> bool:
    if not (_plain_meta(x) and isinstance(weight, torch.Tensor) and weight.device.type == "meta"):
        return False
    if weight.dtype != x.dtype or x.dim() != weight.dim() or x.dim() < 3 or x.shape[1] == 0:
        return False
    n = x.dim() - 2
    if any(len(v) != n for v in (stride, padding, dilation)) or (transposed and len(output_padding) != n):
        return False
    return transposed or weight.shape[1] * groups == x.shape[1]


def _convolution(args, kwargs):
    if kwargs or len(args) != 9:
        return None
    x, weight, _bias, stride, padding, dilation, transposed, output_padding, groups = args
    if not _conv_args_ok(x, weight, stride, padding, dilation, transposed, output_padding, groups):
        return None
    shape = _conv_shape(x, weight, stride, padding, dilation, transposed, output_padding, groups)
    if min(shape) < 1:
        return None
    return torch.empty(shape, dtype=x.dtype, device=META)  # the meta kernel's output is always contiguous


def _empty_in_format(shape, dtype, memory_format):
    """``new_empty(shape).to(memory_format=...)`` as the meta kernel does it: the contiguous tensor when
    it already suggests that format, else one laid out in it."""
    out = torch.empty(shape, dtype=dtype, device=META)
    if memory_format is torch.contiguous_format or suggest_memory_format(out) == memory_format:
        return out
    return torch.empty(shape, dtype=dtype, device=META, memory_format=memory_format)


def _convolution_backward(args, kwargs):
    if kwargs or len(args) != 11:
        return None
    grad, x, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups, mask = args
    if not _conv_args_ok(x, weight, stride, padding, dilation, transposed, output_padding, groups):
        return None
    if not (isinstance(grad, torch.Tensor) and grad.device.type == "meta" and grad.dtype == x.dtype):
        return None
    formats = (suggest_memory_format(x), suggest_memory_format(weight))
    fmt = torch.contiguous_format
    for candidate in (torch.channels_last, torch.channels_last_3d):
        if candidate in formats:
            fmt = candidate
            break
    grad_x = _empty_in_format(x.shape, grad.dtype, fmt) if mask[0] else None
    grad_w = _empty_in_format(weight.shape, grad.dtype, fmt) if mask[1] else None
    grad_b = torch.empty(bias_sizes, dtype=grad.dtype, device=META) if mask[2] else None
    return grad_x, grad_w, grad_b


def _softmax(args, kwargs):
    x, _dim, half_to_float = args
    if kwargs or half_to_float or not _plain_meta(x):
        return None
    return torch.empty(x.shape, dtype=x.dtype, device=META)


def _softmax_backward(args, kwargs):
    grad, output, _dim, input_dtype = args
    if kwargs or not (_plain_meta(grad) and _plain_meta(output)):
        return None
    if grad.shape != output.shape or grad.dtype != output.dtype or input_dtype != grad.dtype:
        return None
    return torch.empty(grad.shape, dtype=grad.dtype, device=META)


def _nll_loss2d(args, kwargs):
    x, target, weight, reduction, _ignore = args
    if kwargs or weight is not None or reduction not in (1, 2) or not _plain_meta(x) or x.dim() != 4:
        return None
    if not (isinstance(target, torch.Tensor) and target.device.type == "meta" and target.dim() == 3):
        return None
    return torch.empty((), dtype=x.dtype, device=META), torch.empty((), dtype=x.dtype, device=META)


def _nll_loss2d_backward(args, kwargs):
    grad, x, _target, weight, reduction, _ignore, _total = args
    if kwargs or weight is not None or reduction not in (1, 2) or not _plain_meta(x) or x.dim() != 4:
        return None
    if not (isinstance(grad, torch.Tensor) and grad.device.type == "meta" and grad.dtype == x.dtype):
        return None
    return torch.empty(x.shape, dtype=x.dtype, device=META)


def _overloads(table: dict[str, tuple[str, ...]]) -> list:
    return [getattr(getattr(aten, name), overload) for name, overloads in table.items() for overload in overloads]


_OUT_OF_PLACE = _overloads(
    {
        "add": ("Tensor", "Scalar"),
        "sub": ("Tensor", "Scalar"),
        "rsub": ("Scalar",),
        "mul": ("Tensor", "Scalar"),
        "div": ("Tensor", "Scalar"),
        "addcmul": ("default",),
        "addcdiv": ("default",),
        "neg": ("default",),
        "sqrt": ("default",),
        "rsqrt": ("default",),
        "exp": ("default",),
        "sigmoid": ("default",),
        "tanh": ("default",),
        "relu": ("default",),
        "leaky_relu": ("default",),
        "threshold_backward": ("default",),
        "leaky_relu_backward": ("default",),
        "sigmoid_backward": ("default",),
        "tanh_backward": ("default",),
        "lerp": ("Scalar",),
    }
)
_IN_PLACE = _overloads(
    {
        "add_": ("Tensor", "Scalar"),
        "sub_": ("Tensor", "Scalar"),
        "mul_": ("Tensor", "Scalar"),
        "div_": ("Tensor", "Scalar"),
        "addcmul_": ("default",),
        "addcdiv_": ("default",),
        "lerp_": ("Scalar",),
        "sqrt_": ("default",),
        "neg_": ("default",),
        "relu_": ("default",),
    }
)

RULES: dict[object, Callable] = {
    **dict.fromkeys(_OUT_OF_PLACE, _out_of_place),
    **dict.fromkeys(_IN_PLACE, _in_place),
    **dict.fromkeys((aten.threshold_backward.grad_input, aten.leaky_relu_backward.grad_input), _into_grad_input),
    aten.copy_.default: _copy,
    aten.sum.dim_IntList: _reduction,
    aten.mean.dim: _reduction,
    aten.sum.IntList_out: _reduction_out,
    aten.var_mean.correction: _var_mean,
    **dict.fromkeys((aten.empty_like.default, aten.zeros_like.default, aten.ones_like.default), _like),
    aten.upsample_trilinear3d.default: _upsample_trilinear,
    aten.convolution.default: _convolution,
    aten.convolution_backward.default: _convolution_backward,
    aten._softmax.default: _softmax,
    aten._log_softmax.default: _softmax,
    aten._softmax_backward_data.default: _softmax_backward,
    aten._log_softmax_backward_data.default: _softmax_backward,
    aten.nll_loss2d_forward.default: _nll_loss2d,
    aten.nll_loss2d_backward.default: _nll_loss2d_backward,
}


def fast_output(func, args, kwargs):
    """The output ``func(*args, **kwargs)`` would give on meta tensors, or None when no rule applies."""
    rule = RULES.get(func)
    return None if rule is None else rule(args, kwargs)
