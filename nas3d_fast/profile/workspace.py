"""Memory that CPU kernels allocate inside themselves (invisible to a trace of op outputs).

Only the convolutions hold enough to matter: the slow (im2col) paths build column buffers of
C_in/groups x kernel volume x output voxels, and oneDNN reorders its output or gradient into a buffer
of the same size (oneDNN pads channels to blocks of 8 with AVX2, 16 with AVX-512: ``_channel_block``;
its AVX-512 backward kernels need input channels in whole blocks of 16, else it runs the AVX2 ones:
``_backward_block``, read off ``ONEDNN_VERBOSE=1`` on an AVX-512 machine). The sizes below were read
off the CPU allocator's events (torch.profiler memory events) of torch 2.x's kernels, per backend that
``torch._C._select_conv_backend`` picks:

==================  ===========================================  =========================================
backend             forward (live with the output)               backward
==================  ===========================================  =========================================
Slow3d              columns, N x (C_in k^3) x out voxels         columns, live with the input gradient
                    (none for a 1x1x1, stride 1 convolution)
SlowDilated3d       columns of one sample                        columns of one sample
Mkldnn              blocked input copy (channels a multiple of    blocked grad_output, weight and input
                    8) + weight + blocked output, then the       gradient, then the blocked input gradient
                    blocked output beside the plain one          (or blocked grad_output + an input copy)
                                                                 beside the gradients
Mkldnn, strided     (as above)                                   channels-last grad_output, weight, input
                                                                 gradient and the strided kernel's
                                                                 scratchpad (``_strided_scratchpad``),
                                                                 then two input-sized copies beside the
                                                                 gradients
==================  ===========================================  =========================================

torch picks the backend from shapes, dtypes and the number of threads (oneDNN needs more than one
for some shapes), so a CPU prediction holds for runs with this process's ``torch.get_num_threads()``.

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


def _channel_block() -> int:
    """Channels per block of oneDNN's blocked layouts on this CPU: one vector register of float32,
    16 where the CPU has AVX-512 (as ATen's dispatch reports it), else 8 (AVX2)."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def _backward_block(x: torch.Tensor) -> int:
    """Channels per block of oneDNN's backward kernels: with AVX-512 they run their 16-channel
    kernels only when the input's channels are a multiple of 16, else the AVX2 ones (8)."""
    block = _channel_block()
    return block if x.shape[1] % block == 0 else 8


def _blocked(t: torch.Tensor, block: int | None = None) -> int:
    """Bytes of t in oneDNN's blocked layout: channels padded up to a multiple of the block
    (default: ``_channel_block()``)."""
    channels, block = t.shape[1], block or _channel_block()
    return _nbytes(t) // max(channels, 1) * (-(-channels // block) * block)


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
    return _conv_forward_on(backend, x, weight, stride, padding, out)


def _mkldnn_forward(args, out) -> tuple[int, int]:
    """aten.mkldnn_convolution, which ``nas3d_fast.nn.conv`` calls directly: oneDNN's forward."""
    x, weight, _bias, padding, stride = args[:5]
    return _conv_forward_on("Mkldnn", x, weight, stride, padding, out) if x.dim() == 5 else (0, 0)


def _conv_forward_on(backend: str, x, weight, stride, padding, out) -> tuple[int, int]:
    out_voxels = math.prod(out.shape[2:])
    if backend == "Slow3d":
        pointwise = all(k == 1 for k in weight.shape[2:]) and all(s == 1 for s in stride) and not any(padding)
        return 0, 0 if pointwise else _columns(x, weight, out_voxels, per_sample=False)
    if backend == "SlowDilated3d":
        return 0, _columns(x, weight, out_voxels, per_sample=True)
    if backend == "Mkldnn":
        # input reordered to oneDNN's blocked layout when its channels fill whole blocks; output
        # computed blocked (channels padded to the block), then copied to the plain one
        reordered = _nbytes(x) if x.shape[1] % _channel_block() == 0 else 0
        return reordered + _nbytes(weight) + _blocked(out), _blocked(out)
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
    if backend == "Mkldnn" and not transposed and any(s > 1 for s in stride) and all(d == 1 for d in dilation):
        # oneDNN's strided brgemm kernel computes the input gradient channels-last: a channels-last
        # grad_output copy, the weight, the input gradient and the kernel's scratchpad; then two
        # input-sized copies beside the plain input gradient; the weight gradient (gemm) of a
        # pointwise convolution reads a grad_output copy and an input-sized buffer
        scratchpad = _strided_scratchpad(grad_out, x, weight, stride, padding)
        before = _nbytes(grad_out) + _nbytes(weight) + _nbytes(x) + scratchpad
        pointwise = all(k == 1 for k in weight.shape[2:])
        return before, max(2 * _nbytes(x), (_nbytes(grad_out) + _nbytes(x)) if pointwise else 0)
    if backend == "Mkldnn":
        # blocked grad_output + weight + blocked input gradient; then the blocked input gradient is
        # copied to the plain one; the weight gradient reads a blocked grad_output (and, for outputs
        # whose channels do not fill blocks, a blocked copy of the input)
        block = _backward_block(x)
        grad_in = _blocked(x, block)
        before = _blocked(grad_out, block) + _nbytes(weight) + grad_in
        weight_pass = _blocked(grad_out, block) + (_nbytes(x) if grad_out.shape[1] % block else 0)
        return before, max(grad_in, weight_pass)
    return 0, 0


def _strided_scratchpad(grad_out, x, weight, stride, padding) -> int:
    """Bytes of the scratchpad of oneDNN's strided backward-data kernel (brgconv_strided): per
    thread, grad_output copied into a buffer padded where the kernel overhangs the input (C_out x
    odp x ohp x owp elements, rounded up to 4096), plus a few KiB of per-thread and shared
    bookkeeping. Read off the allocator's events: exact for 1 and 2 threads."""
    elements = grad_out.shape[1]
    for o, i, k, s, p in zip(grad_out.shape[2:], x.shape[2:], weight.shape[2:], stride, padding):
        far_pad = (o - 1) * s + k - i - p  # padding past the input's far edge
        elements *= o + max(0, k - 1 - p) // s + max(0, k - 1 - far_pad) // s
    per_thread = -(-elements // 4096) * 4096 * grad_out.element_size()
    return torch.get_num_threads() * (per_thread + 8216) + 12288


def _batch_norm_backward(args, out) -> tuple[int, int]:
    return 0, _nbytes(args[1])  # a temporary of the input's size beside the input gradient


CPU_MODELS = {
    aten.native_batch_norm_backward.default: _batch_norm_backward,
    aten.convolution.default: _conv_forward,
    aten.mkldnn_convolution.default: _mkldnn_forward,
    aten.convolution_backward.default: _conv_backward,
}


def cpu_workspace(func, args, out) -> tuple[int, int]:
    """(before, during) workspace bytes of one op on the CPU; (0, 0) for ops without a model."""
    model = CPU_MODELS.get(func)
    if model is None:
        return 0, 0
    first = out[0] if isinstance(out, (tuple, list)) else out
    return model(args, first)
