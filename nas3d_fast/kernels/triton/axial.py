"""Triton kernels of 3D axial attention (flash-attention style, tl.dot tiles; sm_80+ GPUs, or CPU tensors
under TRITON_INTERPRET=1 for testing).

Same arithmetic as csrc/axial/axial.h, and its IEEE rule for infinite and NaN inputs. Forward: one program per (line, block of BLOCK_M queries), keys
in blocks of BLOCK_N with the online softmax; the log-sum-exp is saved. Backward: delta = g . out in
PyTorch, then one kernel for dq (and the relative-embedding gradients, by atomic adds) and one for dk, dv,
both recomputing p from the log-sum-exp. Tiles are float32 (float64 for float64 inputs) with IEEE dots.
The relative terms gather their (BLOCK_M, BLOCK_N, BLOCK_D) embedding rows r = j - i + L - 1 from
memory. Lines are read in place through the strides of q, k, v (any views).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton


@triton.jit
def _line_base(n, H, S1, S2, D, sb, sc, s1, s2):
    o2 = n % S2
    rest = n // S2
    o1 = rest % S1
    rest = rest // S1
    h = rest % H
    b = rest // H
    return b * sb + h * D * sc + o1 * s1 + o2 * s2


@triton.jit
def _tile(ptr, base, rows, cols, n_rows, D, s_row, s_col, FP64: tl.constexpr):
    mask = (rows < n_rows)[:, None] & (cols < D)[None, :]
    t = tl.load(ptr + base + rows[:, None] * s_row + cols[None, :] * s_col, mask=mask, other=0.0)
    return t.to(tl.float64) if FP64 else t.to(tl.float32)


@triton.jit
def _rel_rows(ptr, i, j, cols, L, D, FP64: tl.constexpr):
    """(BLOCK_M, BLOCK_N, BLOCK_D) rows rel[j - i + L - 1] of a contiguous (2L-1, D) table."""
    r = j[None, :] - i[:, None] + L - 1
    mask = ((i < L)[:, None] & (j < L)[None, :])[:, :, None] & (cols < D)[None, None, :]
    t = tl.load(ptr + r[:, :, None] * D + cols[None, None, :], mask=mask, other=0.0)
    return t.to(tl.float64) if FP64 else t.to(tl.float32)


@triton.jit
def _scalar(value, FP64: tl.constexpr):
    # Triton passes Python floats as float32: float64 runs pass a one-element float64 tensor instead.
    if FP64:
        return tl.load(value)
    else:
        return value


@triton.jit
def _logits(q, k, i, j, cols, rq_ptr, rk_ptr, L, D, scale, HAS_RQ: tl.constexpr, HAS_RK: tl.constexpr,
            FP64: tl.constexpr):
    s = tl.dot(q, tl.trans(k), input_precision="ieee")
    if HAS_RQ:
        s += tl.sum(q[:, None, :] * _rel_rows(rq_ptr, i, j, cols, L, D, FP64), axis=2)
    if HAS_RK:
        s += tl.sum(k[None, :, :] * _rel_rows(rk_ptr, i, j, cols, L, D, FP64), axis=2)
    return s * scale


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, rq_ptr, rk_ptr, rv_ptr, out_ptr, lse_ptr, scale_arg,
    sqb, sqc, sqa, sq1, sq2, skb, skc, ska, sk1, sk2, svb, svc, sva, sv1, sv2, sob, soc, soa, so1, so2,
    H, S1, S2, L, D,
    HAS_RQ: tl.constexpr, HAS_RK: tl.constexpr, HAS_RV: tl.constexpr, FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    scale = _scalar(scale_arg, FP64)
    qb = _line_base(n, H, S1, S2, D, sqb, sqc, sq1, sq2)
    kb = _line_base(n, H, S1, S2, D, skb, skc, sk1, sk2)
    vb = _line_base(n, H, S1, S2, D, svb, svc, sv1, sv2)
    q = _tile(q_ptr, qb, i, cols, L, D, sqa, sqc, FP64)
    acc_t = tl.float64 if FP64 else tl.float32
    m = tl.full((BLOCK_M,), float("-inf"), acc_t)
    l = tl.zeros((BLOCK_M,), acc_t)
    acc = tl.zeros((BLOCK_M, BLOCK_D), acc_t)
    for j0 in range(0, L, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        k = _tile(k_ptr, kb, j, cols, L, D, ska, skc, FP64)
        v = _tile(v_ptr, vb, j, cols, L, D, sva, svc, FP64)
        s = _logits(q, k, i, j, cols, rq_ptr, rk_ptr, L, D, scale, HAS_RQ, HAS_RK, FP64)
        s = tl.where((j < L)[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))  # -inf while every logit so far is -inf
        # online_rescale / rescale_factor of axial.h: exactly 0 while the old max is -inf (0 on the first
        # block), and block_prob: the logits less softmax_base(m_new), 0 for a max of -inf, so that a
        # block of -inf logits contributes exact zeros instead of exp(-inf - -inf) = NaN.
        alpha = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_new))
        base = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - base[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        if HAS_RV:
            acc += tl.sum(p[:, :, None] * _rel_rows(rv_ptr, i, j, cols, L, D, FP64), axis=1)
        m = m_new
    out = acc / l[:, None]
    ob = _line_base(n, H, S1, S2, D, sob, soc, so1, so2)
    mask = (i < L)[:, None] & (cols < D)[None, :]
    tl.store(out_ptr + ob + i[:, None] * soa + cols[None, :] * soc, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(lse_ptr + n * L + i, tl.where(m == float("-inf"), 0.0, m) + tl.log(l), mask=i < L)


@triton.jit
def _dq_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, rq_ptr, rk_ptr, rv_ptr, lse_ptr, delta_ptr, dq_ptr, drq_ptr, drk_ptr, drv_ptr,
    scale_arg,
    sqb, sqc, sqa, sq1, sq2, skb, skc, ska, sk1, sk2, svb, svc, sva, sv1, sv2, sgb, sgc, sga, sg1, sg2,
    H, S1, S2, L, D,
    HAS_RQ: tl.constexpr, HAS_RK: tl.constexpr, HAS_RV: tl.constexpr, FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    scale = _scalar(scale_arg, FP64)
    q = _tile(q_ptr, _line_base(n, H, S1, S2, D, sqb, sqc, sq1, sq2), i, cols, L, D, sqa, sqc, FP64)
    g = _tile(g_ptr, _line_base(n, H, S1, S2, D, sgb, sgc, sg1, sg2), i, cols, L, D, sga, sgc, FP64)
    kb = _line_base(n, H, S1, S2, D, skb, skc, sk1, sk2)
    vb = _line_base(n, H, S1, S2, D, svb, svc, sv1, sv2)
    lse = tl.load(lse_ptr + n * L + i, mask=i < L, other=0.0)
    delta = tl.load(delta_ptr + n * L + i, mask=i < L, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float64 if FP64 else tl.float32)
    for j0 in range(0, L, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        k = _tile(k_ptr, kb, j, cols, L, D, ska, skc, FP64)
        v = _tile(v_ptr, vb, j, cols, L, D, sva, svc, FP64)
        s = _logits(q, k, i, j, cols, rq_ptr, rk_ptr, L, D, scale, HAS_RQ, HAS_RK, FP64)
        valid = (i < L)[:, None] & (j < L)[None, :]
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)  # prob_from_lse of axial.h
        dp = tl.dot(g, tl.trans(v), input_precision="ieee")
        if HAS_RV:
            dp += tl.sum(g[:, None, :] * _rel_rows(rv_ptr, i, j, cols, L, D, FP64), axis=2)
        ds = p * (dp - delta[:, None])  # logit_grad of axial.h
        dq += tl.dot(ds, k, input_precision="ieee")
        if HAS_RQ or HAS_RK or HAS_RV:
            r = j[None, :] - i[:, None] + L - 1
            mask3 = valid[:, :, None] & (cols < D)[None, None, :]
            offs = r[:, :, None] * D + cols[None, None, :]
            if HAS_RQ:
                dq += tl.sum(ds[:, :, None] * _rel_rows(rq_ptr, i, j, cols, L, D, FP64), axis=1)
                tl.atomic_add(drq_ptr + offs, ds[:, :, None] * q[:, None, :] * scale, mask=mask3)
            if HAS_RK:
                tl.atomic_add(drk_ptr + offs, ds[:, :, None] * k[None, :, :] * scale, mask=mask3)
            if HAS_RV:
                tl.atomic_add(drv_ptr + offs, p[:, :, None] * g[:, None, :], mask=mask3)
    mask = (i < L)[:, None] & (cols < D)[None, :]
    tl.store(dq_ptr + _dq_offsets(n, i, cols, H, S1, S2, L, D), (dq * scale).to(dq_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dq_offsets(n, i, cols, H, S1, S2, L, D):
    """Offsets of (position i, channel d) of line n in a contiguous (B, heads, S1, S2, L, D) buffer: the
    wrapper allocates the gradients so and permutes them back to (B, C, X, Y, Z)."""
    return n * L * D + i[:, None] * D + cols[None, :]


@triton.jit
def _dkdv_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, rq_ptr, rk_ptr, rv_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, scale_arg,
    sqb, sqc, sqa, sq1, sq2, skb, skc, ska, sk1, sk2, svb, svc, sva, sv1, sv2, sgb, sgc, sga, sg1, sg2,
    H, S1, S2, L, D,
    HAS_RQ: tl.constexpr, HAS_RK: tl.constexpr, HAS_RV: tl.constexpr, FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    scale = _scalar(scale_arg, FP64)
    k = _tile(k_ptr, _line_base(n, H, S1, S2, D, skb, skc, sk1, sk2), j, cols, L, D, ska, skc, FP64)
    v = _tile(v_ptr, _line_base(n, H, S1, S2, D, svb, svc, sv1, sv2), j, cols, L, D, sva, svc, FP64)
    qb = _line_base(n, H, S1, S2, D, sqb, sqc, sq1, sq2)
    gb = _line_base(n, H, S1, S2, D, sgb, sgc, sg1, sg2)
    acc_t = tl.float64 if FP64 else tl.float32
    dk = tl.zeros((BLOCK_N, BLOCK_D), acc_t)
    dv = tl.zeros((BLOCK_N, BLOCK_D), acc_t)
    for i0 in range(0, L, BLOCK_M):
        i = i0 + tl.arange(0, BLOCK_M)
        q = _tile(q_ptr, qb, i, cols, L, D, sqa, sqc, FP64)
        g = _tile(g_ptr, gb, i, cols, L, D, sga, sgc, FP64)
        lse = tl.load(lse_ptr + n * L + i, mask=i < L, other=0.0)
        delta = tl.load(delta_ptr + n * L + i, mask=i < L, other=0.0)
        s = _logits(q, k, i, j, cols, rq_ptr, rk_ptr, L, D, scale, HAS_RQ, HAS_RK, FP64)
        valid = (i < L)[:, None] & (j < L)[None, :]
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p), g, input_precision="ieee")
        dp = tl.dot(g, tl.trans(v), input_precision="ieee")
        if HAS_RV:
            dp += tl.sum(g[:, None, :] * _rel_rows(rv_ptr, i, j, cols, L, D, FP64), axis=2)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds), q, input_precision="ieee")
        if HAS_RK:
            dk += tl.sum(ds[:, :, None] * _rel_rows(rk_ptr, i, j, cols, L, D, FP64), axis=0)
    mask = (j < L)[:, None] & (cols < D)[None, :]
    offs = _dq_offsets(n, j, cols, H, S1, S2, L, D)
    tl.store(dk_ptr + offs, (dk * scale).to(dk_ptr.dtype.element_ty), mask=mask)
    tl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty), mask=mask)


def _strides(t: torch.Tensor, axis: int) -> tuple[int, ...]:
    others = [d for d in (2, 3, 4) if d != axis]
    return (t.stride(0), t.stride(1), t.stride(axis), t.stride(others[0]), t.stride(others[1]))


def _geometry(q: torch.Tensor, axis: int, num_heads: int):
    others = [q.shape[d] for d in (2, 3, 4) if d != axis]
    B, C = q.shape[:2]
    return B, num_heads, others[0], others[1], q.shape[axis], C // num_heads


def _blocks(L: int, D: int) -> tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(D))
    block = 16 if L <= 16 else 32
    return block, block, block_d


def _acc_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _scale_arg(scale: float, q: torch.Tensor):
    if q.dtype == torch.float64:
        return torch.full((1,), scale, dtype=torch.float64, device=q.device)
    return scale


def _rel_table(rel: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    return q if rel is None else rel.to(_acc_dtype(q)).contiguous()


def _from_lines(t: torch.Tensor, axis: int, shape) -> torch.Tensor:
    """(B, heads, S1, S2, L, D) -> (B, C, X, Y, Z) contiguous."""
    others = [d for d in (2, 3, 4) if d != axis]
    perm = [0, 1, 5, 0, 0, 0]
    perm[others[0] + 1], perm[others[1] + 1], perm[axis + 1] = 2, 3, 4
    return t.permute(*perm).reshape(shape).contiguous()


@triton_op("nas3d::axial_attention_triton", mutates_args=())
def axial_attention_triton_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    axis: int,
    num_heads: int,
    scale: float,
    rel_q: torch.Tensor | None = None,
    rel_k: torch.Tensor | None = None,
    rel_v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of torch.ops.nas3d.axial_attention (same arguments and results)."""
    B, H, S1, S2, L, D = _geometry(q, axis, num_heads)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, S1, S2, L), dtype=_acc_dtype(q), device=q.device)
    bm, bn, bd = _blocks(L, D)
    wrap_triton(_forward_kernel)[(B * H * S1 * S2, triton.cdiv(L, bm))](
        q, k, v, _rel_table(rel_q, q), _rel_table(rel_k, q), _rel_table(rel_v, q), out, lse, _scale_arg(scale, q),
        *_strides(q, axis), *_strides(k, axis), *_strides(v, axis), *_strides(out, axis),
        H, S1, S2, L, D,
        HAS_RQ=rel_q is not None, HAS_RK=rel_k is not None, HAS_RV=rel_v is not None,
        FP64=q.dtype == torch.float64, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
    )
    return out, lse


@triton_op("nas3d::axial_attention_backward_triton", mutates_args=())
def axial_attention_backward_triton(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    axis: int,
    num_heads: int,
    scale: float,
    rel_q: torch.Tensor | None = None,
    rel_k: torch.Tensor | None = None,
    rel_v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton twin of torch.ops.nas3d.axial_attention_backward: (dq, dk, dv, drel_q, drel_k, drel_v), the
    relative gradients (0,)-shaped for absent embeddings."""
    B, H, S1, S2, L, D = _geometry(q, axis, num_heads)
    acc = _acc_dtype(q)
    others = [d for d in (2, 3, 4) if d != axis]
    # delta_i = g_i . out_i per line, laid out like lse.
    prod = (grad_out.to(acc) * out.to(acc)).reshape(B, H, D, *q.shape[2:]).sum(2)
    delta = prod.permute(0, 1, others[0], others[1], axis).contiguous()
    lines = (B, H, S1, S2, L, D)
    dq, dk, dv = (torch.empty(lines, dtype=q.dtype, device=q.device) for _ in range(3))
    R = 2 * L - 1
    drel = [torch.zeros((R, D), dtype=acc, device=q.device) for _ in range(3)]
    tables = (_rel_table(rel_q, q), _rel_table(rel_k, q), _rel_table(rel_v, q))
    flags = dict(HAS_RQ=rel_q is not None, HAS_RK=rel_k is not None, HAS_RV=rel_v is not None)
    bm, bn, bd = _blocks(L, D)
    common = (
        *_strides(q, axis), *_strides(k, axis), *_strides(v, axis), *_strides(grad_out, axis), H, S1, S2, L, D,
    )
    fp64 = q.dtype == torch.float64
    wrap_triton(_dq_kernel)[(B * H * S1 * S2, triton.cdiv(L, bm))](
        q, k, v, grad_out, *tables, lse, delta, dq, drel[0], drel[1], drel[2], _scale_arg(scale, q), *common,
        **flags, FP64=fp64, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
    )
    wrap_triton(_dkdv_kernel)[(B * H * S1 * S2, triton.cdiv(L, bn))](
        q, k, v, grad_out, *tables, lse, delta, dk, dv, _scale_arg(scale, q), *common,
        **flags, FP64=fp64, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
    )
    rel_grads = [
        drel[t].to(q.dtype) if rel is not None else q.new_empty((0,)) for t, rel in enumerate((rel_q, rel_k, rel_v))
    ]
    return (_from_lines(dq, axis, q.shape), _from_lines(dk, axis, q.shape), _from_lines(dv, axis, q.shape), *rel_grads)


def _setup_context(ctx, inputs, output):
    q, k, v, axis, num_heads, scale, rel_q, rel_k, rel_v = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, rel_q, rel_k, rel_v)
    ctx.axis, ctx.num_heads, ctx.scale = axis, num_heads, scale


def _backward(ctx, grad_out, grad_lse):
    """The twin of nas3d_fast/ops/axial.py's autograd of the compiled op."""
    q, k, v, out, lse, rel_q, rel_k, rel_v = ctx.saved_tensors
    dq, dk, dv, drq, drk, drv = axial_attention_backward_triton(
        grad_out, q, k, v, out, lse, ctx.axis, ctx.num_heads, ctx.scale, rel_q, rel_k, rel_v
    )
    rel_grads = [g if rel is not None else None for g, rel in ((drq, rel_q), (drk, rel_k), (drv, rel_v))]
    return (dq, dk, dv, None, None, None, *rel_grads)


axial_attention_triton_op.register_autograd(_backward, setup_context=_setup_context)


def axial_attention_triton(q, k, v, axis, num_heads, scale, rel_q=None, rel_k=None, rel_v=None) -> torch.Tensor:
    """The output of the triton op (the public function's triton backend)."""
    return axial_attention_triton_op(q, k, v, axis, num_heads, scale, rel_q, rel_k, rel_v)[0]
