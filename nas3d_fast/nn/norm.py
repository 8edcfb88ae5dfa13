"""A memory-lean InstanceNorm3d: the same function as ``torch.nn.InstanceNorm3d(C, affine=True)``
(biased variance, eps 1e-5, no running statistics), whose backward keeps only its input and
per-channel statistics. torch's CPU instance norm goes through batch norm on a reshaped view and
holds an extra input-sized buffer from forward to backward, which on a supernet edge is one
activation too many.

The backward of CPU inputs under ``NATIVE_BACKWARD_MAX_NUMEL`` values is torch's batch-norm backward
kernel on the (1, N * C, voxels) view with the saved statistics: two fused passes, and an
input-sized temporary that lives only inside the call (the dints supernet steps' peaks did not
change). It took half the formula's time at (1, 64, 16^3) and (1, 128, 8^3): 201 against 382 us and
109 against 221 us, best of 7 of ``python -m timeit -n 50 -r 7 -s "import torch; import
nas3d_fast.nn.norm as m; m.NATIVE_BACKWARD_MAX_NUMEL = 1 << 19; n = m.InstanceNorm3d(64); x =
torch.randn(1, 64, 16, 16, 16, requires_grad=True); y = n(x); g = torch.randn_like(y)"
"torch.autograd.grad(y, x, g, retain_graph=True)"`` and of the same with the bound set to 0. At
(1, 32, 32^3) the kernel was faster on that warm input but 2x slower when each call read other
tensors, as in a training step, so larger inputs (and CUDA) keep the formula in torch ops."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

from .conv import _PLAIN, runs_as_cpu

_STATS: contextvars.ContextVar[tuple[str, object] | None] = contextvars.ContextVar("nas3d_norm_stats", default=None)


@contextlib.contextmanager
def record_statistics(log: list) -> Iterator[None]:
    """Within it, every InstanceNorm3d forward appends its statistics (mean, rstd) to ``log``."""
    token = _STATS.set(("record", log))
    try:
        yield
    finally:
        _STATS.reset(token)


@contextlib.contextmanager
def replay_statistics(log: list) -> Iterator[None]:
    """Within it, InstanceNorm3d forwards take their statistics from ``log`` in order (as
    ``record_statistics`` filled it) instead of reducing their input. A forward recomputed in backward
    on the same input and parameters (``MixedEdge3d``'s per_op edges) thereby skips the statistics
    pass, a full read of each candidate's output. ``log`` is not consumed (a retained graph may run
    its backward again); entries whose shape does not fit the input are not used."""
    token = _STATS.set(("replay", iter(log)))
    try:
        yield
    finally:
        _STATS.reset(token)


# The CPU backward runs torch's batch-norm kernel below this many elements, the formula from there on
# (where the kernel was slower: module docstring).
NATIVE_BACKWARD_MAX_NUMEL = 1 << 19
# Below this many elements torch.var_mean is as fast (the two-pass loop's per-chunk calls dominate).
_TWO_PASS_MIN_NUMEL = 16384
_TWO_PASS_CHUNK = 1 << 18  # elements of x - mean alive at once (1 MiB in float32)


def _var_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Biased variance and mean of x (N, C, X, Y, Z) over (X, Y, Z), each (N, C, 1, 1, 1).

    On contiguous float32 CPU tensors: the mean, then the sums of x - mean and of its squares a few
    rows at a time. torch's CPU var_mean is a scalar Welford loop, ~6x slower at (1, 32, 48^3) (11.5
    against 1.9 ms), and an InstanceNorm runs it on every edge output. The variance stays within
    twice torch's float32 error (``tests/test_nn_norm.py``)."""
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or type(x) not in _PLAIN
        or x.numel() < _TWO_PASS_MIN_NUMEL
        or not x.is_contiguous()
    ):
        return torch.var_mean(x, dim=(2, 3, 4), unbiased=False, keepdim=True)
    rows = x.view(x.shape[0] * x.shape[1], -1)
    count = rows.shape[1]
    mean = rows.mean(1)
    squares, shift = torch.empty_like(mean), torch.empty_like(mean)
    step = max(1, _TWO_PASS_CHUNK // count)
    for i in range(0, rows.shape[0], step):
        d = rows[i : i + step] - mean[i : i + step, None]
        torch.sum(d, dim=1, out=shift[i : i + step])
        torch.sum(d.square_(), dim=1, out=squares[i : i + step])  # cascade sums: ~1e-7 relative
    # The first mean is off by the float32 rounding of its sum; the deviations' own mean corrects it
    # (E[(x - m)^2] - E[x - m]^2 is the variance for any m).
    shift.div_(count)
    var = squares.div_(count).sub_(shift.square()).clamp_min_(0)  # a constant row may round below 0
    mean += shift
    return var.view(*x.shape[:2], 1, 1, 1), mean.view(*x.shape[:2], 1, 1, 1)


def _stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mode = _STATS.get()
    if mode is not None and mode[0] == "replay":
        logged = next(mode[1], None)
        if logged is not None and logged[0].shape == (*x.shape[:2], 1, 1, 1) and logged[0].dtype == x.dtype:
            return logged
    var, mean = _var_mean(x)
    stats = mean, torch.rsqrt(var + eps)
    if mode is not None and mode[0] == "record":
        mode[1].append(stats)
    return stats


class _InstanceNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean, rstd = _stats(x, eps)
        scale = rstd * weight.view(1, -1, 1, 1, 1)
        out = torch.addcmul(bias.view(1, -1, 1, 1, 1) - mean * scale, x, scale)  # one pass over x
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        if runs_as_cpu(x) and x.numel() < NATIVE_BACKWARD_MAX_NUMEL:
            return _batch_norm_backward(ctx, grad, x, weight, mean, rstd)
        return _formula_backward(ctx, grad, x, weight, mean, rstd)


def _formula_backward(ctx, grad, x, weight, mean, rstd):
    """_InstanceNorm's backward in torch ops: allocates nothing input-sized but the input gradient."""
    c = x.shape[1]
    count = x[0, 0].numel()
    sum_g = grad.sum(dim=(2, 3, 4), keepdim=True)
    # sum of grad * x per (n, c), a few channels at a time: the product buffer stays small
    # (a batched bmm dot needs none but runs ~5x slower on CPU). Chunks by split and sums written
    # in place: two ops a chunk (six with slicing and assignment), which the memory profiler's
    # tracer pays for per op.
    sum_gx = torch.empty_like(sum_g)
    step = max(1, c // 8)
    for g_c, x_c, out_c in zip(grad.split(step, 1), x.split(step, 1), sum_gx.split(step, 1)):
        torch.sum(g_c * x_c, dim=(2, 3, 4), keepdim=True, out=out_c)
    sum_g_xhat = (sum_gx - mean * sum_g) * rstd  # sum of grad * normalised x, per (n, c)
    grad_weight = sum_g_xhat.sum(0).view(-1) if ctx.needs_input_grad[1] else None
    grad_bias = sum_g.sum(0).view(-1) if ctx.needs_input_grad[2] else None
    grad_x = None
    if ctx.needs_input_grad[0]:
        # d/dx = gamma rstd (g - mean(g) - xhat mean(g xhat)) = a g + b x + c0 per (n, c)
        a = weight.view(1, -1, 1, 1, 1) * rstd
        b = -a * rstd * sum_g_xhat / count
        c0 = -a * sum_g / count - b * mean
        grad_x = torch.addcmul(c0, grad, a).addcmul_(x, b)
    return grad_x, grad_weight, grad_bias, None


def _batch_norm_backward(ctx, grad, x, weight, mean, rstd):
    """_InstanceNorm's backward through ``aten.native_batch_norm_backward`` on the (1, N * C, voxels)
    views (training mode: it reads the saved mean and rstd, no running statistics)."""
    n, c = x.shape[:2]
    need = list(ctx.needs_input_grad[:3])
    grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
        grad.reshape(1, n * c, -1),
        x.reshape(1, n * c, -1),
        weight.repeat(n),
        None,
        None,
        mean.reshape(-1),
        rstd.reshape(-1),
        True,
        ctx.eps,
        need,
    )
    return (
        grad_x.view(x.shape) if need[0] else None,
        grad_w.view(n, c).sum(0) if need[1] else None,
        grad_b.view(n, c).sum(0) if need[2] else None,
        None,
    )


class InstanceNorm3d(nn.Module):
    """InstanceNorm over (X, Y, Z) per sample and channel with a learned scale and shift.

    Input (N, C, X, Y, Z) floating; output the same shape. Parameters ``weight`` and ``bias`` (C,),
    named as in torch.nn.InstanceNorm3d so that state dicts carry over.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``scale``: an optional scalar tensor multiplying the output, folded into the affine parameters
        (no extra activation-sized tensor; differentiable in scale)."""
        if x.dim() != 5 or x.shape[1] != self.num_features:
            raise ValueError(f"x must have shape (N, {self.num_features}, X, Y, Z), got {tuple(x.shape)}")
        weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
        if scale is not None:
            scale = scale.to(x.dtype)
            weight, bias = weight * scale, bias * scale
        return _InstanceNorm.apply(x, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
