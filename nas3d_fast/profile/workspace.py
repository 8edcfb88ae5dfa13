"""Memory that CPU kernels allocate inside themselves (invisible to a trace of op outputs).

Only the convolutions hold enough to matter: the slow (im2col) paths build column buffers of
C_in/groups x kernel volume x output voxels, and oneDNN reorders its output or gradient into a buffer
of the same size. The sizes below were read off the CPU allocator's events (torch.profiler memory
events) of torch 2.x's kernels, per backend that ``torch._C._select_conv_backend`` picks:

==================  ===========================================  =========================================
backend             forward (live with the output)               backward
==================  ===========================================  =========================================
Slow3d              columns, N x (C_in k^3) x out voxels         columns, live with the input gradient
                    (none for a 1x1x1, stride 1 convolution)
SlowDilated3d       columns of one sample                        columns of one sample
Mkldnn              max(output, weight)                          2 x grad_output + weight before the
                                                                 gradients, then grad_output beside them
==================  ===========================================  =========================================

Each model returns ``(before, during)``: bytes held briefly before the op's outputs exist, and bytes
held beside them until the op returns. Other ops are modelled as allocating only their outputs.
"""

from __future__ import annotations

import math

import torch

aten = torch.ops.aten


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _proxy(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor of t's shape and dtype holding one element (torch picks a convolution's backend
    from shapes, dtypes and devices; a meta tensor would pick none)."""
    return torch.empty((1,) * t.dim(), dtype=t.dtype).expand(t.shape)


def _conv_backend(x, weight, stride, padding, dilation, transposed, output_padding, groups) -> str:
    if x.device.type == "meta":
        x, weight = _proxy(x), _proxy(weight)
    try:
        backend = torch._C._select_conv_backend(
            x, weight, None, stride, padding, dilation, transposed, output_padding, groups, None
        )
    except (RuntimeError, TypeError):
        return "unknown"
    return str(backend).rsplit(".", 1)[-1]


def _columns(x, weight, out_voxels: int, per_sample: bool) -> int:
    rows = x.shape[1] * math.prod(weight.shape[2:])
    return (1 if per_sample else x.shape[0]) * rows * out_voxels * x.element_size()


def _conv_forward(args, out) -> tuple[int, int]:
    x, weight, _bias, stride, padding, dilation, transposed, output_padding, groups = args[:9]
    if x.dim() != 5:
        return 0, 0
    backend = _conv_backend(x, weight, stride, padding, dilation, transposed, output_padding, groups)
    out_voxels = math.prod(out.shape[2:])
    if backend == "Slow3d":
        pointwise = all(k == 1 for k in weight.shape[2:]) and all(s == 1 for s in stride) and not any(padding)
        return 0, 0 if pointwise else _columns(x, weight, out_voxels, per_sample=False)
    if backend == "SlowDilated3d":
        return 0, _columns(x, weight, out_voxels, per_sample=True)
    if backend == "Mkldnn":
        return 0, max(_nbytes(out), _nbytes(weight))
    return 0, 0


def _conv_backward(args, out) -> tuple[int, int]:
    grad_out, x, weight, _bias_sizes, stride, padding, dilation, transposed, output_padding, groups = args[:10]
    if x.dim() != 5:
        return 0, 0
    backend = _conv_backend(x, weight, stride, padding, dilation, transposed, output_padding, groups)
    out_voxels = math.prod(grad_out.shape[2:])
    if backend == "Slow3d":
        return 0, _columns(x, weight, out_voxels, per_sample=False)
    if backend == "SlowDilated3d":
        return 0, _columns(x, weight, out_voxels, per_sample=True)
    if backend == "Mkldnn":
        return 2 * _nbytes(grad_out) + _nbytes(weight), _nbytes(grad_out)
    return 0, 0


CPU_MODELS = {
    aten.convolution.default: _conv_forward,
    aten.convolution_backward.default: _conv_backward,
}


def cpu_workspace(func, args, out) -> tuple[int, int]:
    """(before, during) workspace bytes of one op on the CPU; (0, 0) for ops without a model."""
    model = CPU_MODELS.get(func)
    if model is None:
        return 0, 0
    first = out[0] if isinstance(out, (tuple, list)) else out
    return model(args, first)
