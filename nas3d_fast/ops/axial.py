"""3D axial attention: multi-head self-attention along one spatial axis of a (B, C, X, Y, Z) volume, with
the optional position-sensitive terms of Axial-DeepLab (T-AutoML §3.1's axial-attention block)."""

from __future__ import annotations

import math

import torch

from .. import _extension, dispatch
from ..reference import axial as reference
from ._checks import check_tensor

# sm_80+ GPUs: the Triton kernel (tl.dot tiles); older GPUs (V100) the CUDA kernel.
CUDA_ORDER = ("triton", "cuda")


def axial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    axis: int,
    num_heads: int,
    *,
    scale: float | None = None,
    rel_q: torch.Tensor | None = None,
    rel_k: torch.Tensor | None = None,
    rel_v: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention along ``axis`` of (B, C, X, Y, Z) volumes, independently for every line and head.

    For each batch entry, head h and position on the two other axes, with i, j the positions along
    ``axis`` (length L), head_dim D = C / num_heads and r = j - i:

        s_ij  = scale * (q_i . k_j + q_i . rel_q[r] + k_j . rel_k[r])
        out_i = sum_j softmax_j(s_ij) * (v_j + rel_v[r])

    where head h owns channels h*D .. (h+1)*D - 1 and the relative embeddings are indexed by the offset
    r from -(L-1) (row 0) to L-1 (row 2L-2); absent embeddings drop their term. The compiled kernels read
    q, k, v in place whatever their strides (e.g. three channel slices of one qkv convolution's output,
    or channels-last tensors), keep an online softmax in float32 (float64 for float64 inputs) without an
    L x L matrix, and recompute the probabilities in the backward from the saved log-sum-exp.

    Args:
        q, k, v: (B, C, X, Y, Z) float16/bfloat16/float32/float64 tensors of one shape, dtype and device,
            not empty. X-Y is the axial plane (the order nibabel and MONAI load volumes in).
        axis: 2, 3 or 4 (X, Y or Z; -3, -2, -1 are accepted too).
        num_heads: number of heads, dividing C.
        scale: logit scale, default 1 / sqrt(head_dim).
        rel_q, rel_k, rel_v: optional (2L-1, head_dim) learned relative embeddings, shared by all heads
            and lines, dtype and device of q.

    Returns:
        out: (B, C, X, Y, Z) contiguous, dtype of q; differentiable with respect to q, k, v and the
        relative embeddings.

    Range: results are specified while 64 * max(1, |scale|) * D * L * M^2 * max(1, G) <=
    finfo(acc).max, with M the largest magnitude among q, k, v and the embeddings, G that of grad_out
    (for the backward) and acc float32 (float64 for float64 inputs): about M <= 2e17 in float32 for
    D * L = 20; float16/bfloat16 inputs, accumulated in float32, always are. Beyond it products overflow
    partial sums, in an order that differs between backends (and the reference): a logit may come out
    inf or NaN (a NaN row), or -inf, when a partial sum overflowed first, and its key then gets
    probability 0, a finite result off the exact one.

    Precision of the gradients (every compiled backend; the reference is plain autograd): the
    backward forms delta_i = g_i . out_i from the output as stored (FlashAttention's choice), where
    autograd through a softmax forms sum_j p_ij dp_ij. The two differ by e_i: the rounding of the
    output to q's dtype, |e_i| <= u sum_d |g_id out_id| (u = 2^-11 float16, 2^-8 bfloat16; none for
    float32/float64, stored as accumulated), plus that of the float32 (float64) sums, at most about
    (D + L) u_acc sum_d |g_id| (|out_id| + sum_j p_ij |v_jd + rel_v[r]_d|). Then ds_ij = p_ij (dp_ij -
    delta_i) is off by p_ij e_i, so dq_i by up to scale * sum_j p_ij |e_i| (|k_j| + |rel_q[r]|), dk_j by
    scale * sum_i p_ij |e_i| (|q_i| + |rel_k[r]|), drel_q[r] and drel_k[r] by the same sums over the
    pairs at offset r times |q_i| and |k_j|; dv, drel_v and the output are unaffected. Relative to a
    gradient's size, scale |g| |out| |q|, that is u; it dominates only where the exact gradient cancels,
    a saturated softmax (p_ij nearly one-hot, ds ~ 0) with a large |q| or |k|: in float16 a q element
    of 1e4 makes dk err by 0.95 on entries of ~1.9 (torch's autograd: 0.001), in float32 by 3e-4
    (Triton; torch: 3e-7). delta = sum_j p_ij dp_ij would remove it, at the cost of a second pass over
    the keys in the GPU kernels' backward.
    """
    check_tensor(q, "q", dim=5)
    for name, t in (("k", k), ("v", v)):
        _check_like(t, q, name)
    if q.numel() == 0:
        raise ValueError(f"q must not be empty, got shape {tuple(q.shape)}")
    if isinstance(axis, bool) or not isinstance(axis, int) or axis not in (2, 3, 4, -3, -2, -1):
        raise ValueError(f"axis must be 2, 3 or 4 (a spatial axis of (B, C, X, Y, Z)), got {axis!r}")
    axis = axis % 5
    C = q.shape[1]
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or C % num_heads:
        raise ValueError(f"num_heads must be a positive integer dividing the channels C = {C}, got {num_heads!r}")
    head_dim = C // num_heads
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    if isinstance(scale, torch.Tensor):
        scale = float(scale)
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    L = q.shape[axis]
    for name, rel in (("rel_q", rel_q), ("rel_k", rel_k), ("rel_v", rel_v)):
        if rel is not None:
            _check_rel(rel, q, name, L, head_dim)
    backend = dispatch.choose("axial_attention", q.device, CUDA_ORDER)
    return _IMPLS[backend](q, k, v, axis, num_heads, float(scale), rel_q, rel_k, rel_v)


def _check_like(t, q, name):
    check_tensor(t, name, dim=5)
    if t.shape != q.shape:
        raise ValueError(f"{name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
    if t.dtype != q.dtype:
        raise ValueError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
    if t.device != q.device:
        raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")


def _check_rel(rel, q, name, L, head_dim):
    check_tensor(rel, name, dtypes=None)
    if tuple(rel.shape) != (2 * L - 1, head_dim):
        raise ValueError(
            f"{name} must have shape (2L-1, head_dim) = ({2 * L - 1}, {head_dim}) for axis length L = {L}, "
            f"got {tuple(rel.shape)}"
        )
    if rel.dtype != q.dtype:
        raise ValueError(f"{name} must have the dtype of q ({q.dtype}), got {rel.dtype}")
    if rel.device != q.device:
        raise ValueError(f"{name} must be on the device of q ({q.device}), got {rel.device}")


def _compiled(q, k, v, axis, num_heads, scale, rel_q, rel_k, rel_v):
    return _FORWARD(q, k, v, axis, num_heads, scale, rel_q, rel_k, rel_v)[0]


def _triton(q, k, v, axis, num_heads, scale, rel_q, rel_k, rel_v):
    from ..kernels.triton import axial as triton_axial

    return triton_axial.axial_attention_triton(q, k, v, axis, num_heads, scale, rel_q, rel_k, rel_v)


_IMPLS = {"reference": reference.axial_attention, "cpu": _compiled, "cuda": _compiled, "triton": _triton}


def lse_shape(q: torch.Tensor, axis: int, num_heads: int) -> tuple[int, ...]:
    """Shape of the saved log-sum-exp: (B, heads, S1, S2, L), S1, S2 the other spatial axes in order."""
    others = [q.shape[d] for d in (2, 3, 4) if d != axis]
    return (q.shape[0], num_heads, *others, q.shape[axis])


def lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _fake_forward(q, k, v, axis, num_heads, scale, rel_q=None, rel_k=None, rel_v=None):
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(lse_shape(q, axis, num_heads), dtype=lse_dtype(q), device=q.device)
    return out, lse


def _rel_grad_like(rel, q):
    if rel is None:
        return q.new_empty((0,))
    return torch.empty(rel.shape, dtype=q.dtype, device=q.device)


def _fake_backward(grad_out, q, k, v, out, lse, axis, num_heads, scale, rel_q=None, rel_k=None, rel_v=None):
    grads = tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    return (*grads, _rel_grad_like(rel_q, q), _rel_grad_like(rel_k, q), _rel_grad_like(rel_v, q))


def _setup_context(ctx, inputs, output):
    q, k, v, axis, num_heads, scale, rel_q, rel_k, rel_v = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, rel_q, rel_k, rel_v)
    ctx.axis, ctx.num_heads, ctx.scale = axis, num_heads, scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, rel_q, rel_k, rel_v = ctx.saved_tensors
    dq, dk, dv, drq, drk, drv = torch.ops.nas3d.axial_attention_backward(
        grad_out, q, k, v, out, lse, ctx.axis, ctx.num_heads, ctx.scale, rel_q, rel_k, rel_v
    )
    rel_grads = [g if rel is not None else None for g, rel in ((drq, rel_q), (drk, rel_k), (drv, rel_v))]
    return (dq, dk, dv, None, None, None, *rel_grads)


if _extension.available():
    _FORWARD = torch.ops.nas3d.axial_attention.default
    torch.library.register_fake("nas3d::axial_attention")(_fake_forward)
    torch.library.register_fake("nas3d::axial_attention_backward")(_fake_backward)
    torch.library.register_autograd("nas3d::axial_attention", _backward, setup_context=_setup_context)


def flop_count(q_shape, k_shape, v_shape, axis, num_heads, scale, rel_q=None, rel_k=None, rel_v=None, **_) -> int:
    """Forward FLOPs of ``axial_attention`` for ``torch.utils.flop_counter`` (2 per multiply-add, as for
    convolutions and SDPA; the softmax is not counted): per line of length L, head and term, an L x L x D
    product, for the terms q.k and p.v and each relative embedding given; summed over lines and heads
    that is B * C * X * Y * Z * L multiply-adds per term."""
    batch, channels = q_shape[0], q_shape[1]
    volume = q_shape[2] * q_shape[3] * q_shape[4]
    terms = 2 + sum(rel is not None for rel in (rel_q, rel_k, rel_v))
    return 2 * batch * channels * volume * q_shape[axis % 5] * terms


if _extension.available():
    from torch.utils.flop_counter import register_flop_formula

    register_flop_formula(torch.ops.nas3d.axial_attention)(flop_count)
