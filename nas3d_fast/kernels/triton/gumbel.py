"""Triton kernels of Gumbel top-k sampling: a tile of BLOCK_E rows x BLOCK_K logits per program.

Same arithmetic as csrc/gumbel/gumbel.h (float32 accumulation, float64 for float64 inputs); the first
maximum wins ties, as there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton


@triton.jit
def _scalar(value, FP64: tl.constexpr):
    # Triton passes Python floats as float32: float64 runs pass a one-element float64 tensor instead.
    if FP64:
        return tl.load(value)
    else:
        return value


@triton.jit
def _perturbed_logits(logits_ptr, noise_ptr, rows, cols, mask, K, ls0, ls1, us0, us1, inv_tau, FP64: tl.constexpr):
    logit = tl.load(logits_ptr + rows[:, None] * ls0 + cols[None, :] * ls1, mask=mask, other=0.0)
    u = tl.load(noise_ptr + rows[:, None] * us0 + cols[None, :] * us1, mask=mask, other=0.5)
    if FP64:
        logit = logit.to(tl.float64)
        u = u.to(tl.float64)
    else:
        logit = logit.to(tl.float32)
        u = u.to(tl.float32)
    z = (logit - tl.log(-tl.log(u))) * _scalar(inv_tau, FP64)
    # Padding columns never win; padding rows stay finite (no -inf - -inf) and are never stored.
    return tl.where((cols < K)[None, :], z, float("-inf"))


@triton.jit
def _first_argmax(z, cols, BLOCK_K: tl.constexpr):
    m = tl.max(z, axis=1)
    i = tl.min(tl.where(z == m[:, None], cols[None, :], BLOCK_K), axis=1)
    return m, i


@triton.jit
def _forward_kernel(
    logits_ptr,
    noise_ptr,
    weights_ptr,
    indices_ptr,
    E,
    K,
    ls0,
    ls1,
    us0,
    us1,
    inv_tau,
    k: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < E
    mask = row_ok[:, None] & (cols[None, :] < K)
    z = _perturbed_logits(logits_ptr, noise_ptr, rows, cols, mask, K, ls0, ls1, us0, us1, inv_tau, FP64)
    z1, i1 = _first_argmax(z, cols, BLOCK_K)
    is1 = cols[None, :] == i1[:, None]
    if k == 1:
        w = tl.where(is1, 1.0, 0.0)
        tl.store(indices_ptr + rows, i1.to(tl.int64), mask=row_ok)
    else:
        z2, i2 = _first_argmax(tl.where(is1, float("-inf"), z), cols, BLOCK_K)
        e = tl.exp(z2 - z1)
        w1 = 1.0 / (1.0 + e)
        w2 = e / (1.0 + e)
        w = tl.where(is1, w1[:, None], tl.where(cols[None, :] == i2[:, None], w2[:, None], 0.0))
        tl.store(indices_ptr + rows * 2, i1.to(tl.int64), mask=row_ok)
        tl.store(indices_ptr + rows * 2 + 1, i2.to(tl.int64), mask=row_ok)
    tl.store(weights_ptr + rows[:, None] * K + cols[None, :], w.to(weights_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    grad_ptr,
    gs0,
    gs1,
    logits_ptr,
    ls0,
    ls1,
    noise_ptr,
    us0,
    us1,
    weights_ptr,
    ws0,
    ws1,
    out_ptr,
    E,
    K,
    inv_tau,
    HARD: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    mask = (rows < E)[:, None] & (cols[None, :] < K)
    g = tl.load(grad_ptr + rows[:, None] * gs0 + cols[None, :] * gs1, mask=mask, other=0.0)
    g = g.to(tl.float64) if FP64 else g.to(tl.float32)
    if HARD:  # straight-through: the gradient of y = softmax(z), y recomputed from logits and noise
        z = _perturbed_logits(logits_ptr, noise_ptr, rows, cols, mask, K, ls0, ls1, us0, us1, inv_tau, FP64)
        e = tl.exp(z - tl.max(z, axis=1)[:, None])
        p = e / tl.sum(e, axis=1)[:, None]
    else:
        p = tl.load(weights_ptr + rows[:, None] * ws0 + cols[None, :] * ws1, mask=mask, other=0.0)
        p = p.to(tl.float64) if FP64 else p.to(tl.float32)
    dot = tl.sum(p * g, axis=1)
    out = p * (g - dot[:, None]) * _scalar(inv_tau, FP64)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def _inv_tau(tau: float, like: torch.Tensor):
    if like.dtype == torch.float64:
        return torch.full((1,), 1.0 / tau, dtype=torch.float64, device=like.device)
    return 1.0 / tau


def _blocks(E: int, K: int) -> tuple[int, int]:
    block_k = triton.next_power_of_2(max(K, 1))
    block_e = max(1, min(128, 4096 // block_k))
    return block_e, block_k


@triton_op("nas3d::gumbel_topk_triton", mutates_args=())
def gumbel_topk_triton(
    logits: torch.Tensor, noise: torch.Tensor, tau: float, k: int, hard: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of torch.ops.nas3d.gumbel_topk (same arguments and results)."""
    E, K = logits.shape
    weights = torch.empty((E, K), dtype=logits.dtype, device=logits.device)
    indices = torch.empty((E, k), dtype=torch.int64, device=logits.device)
    if E > 0:
        block_e, block_k = _blocks(E, K)
        wrap_triton(_forward_kernel)[(triton.cdiv(E, block_e),)](
            logits,
            noise,
            weights,
            indices,
            E,
            K,
            logits.stride(0),
            logits.stride(1),
            noise.stride(0),
            noise.stride(1),
            _inv_tau(tau, logits),
            k=k,
            FP64=logits.dtype == torch.float64,
            BLOCK_E=block_e,
            BLOCK_K=block_k,
        )
    return weights, indices


@triton_op("nas3d::gumbel_topk_backward_triton", mutates_args=())
def gumbel_topk_backward_triton(
    grad_weights: torch.Tensor, logits: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor, tau: float, hard: bool
) -> torch.Tensor:
    """Triton twin of torch.ops.nas3d.gumbel_topk_backward."""
    E, K = logits.shape
    out = torch.empty((E, K), dtype=logits.dtype, device=logits.device)
    if E > 0:
        block_e, block_k = _blocks(E, K)
        wrap_triton(_backward_kernel)[(triton.cdiv(E, block_e),)](
            grad_weights,
            grad_weights.stride(0),
            grad_weights.stride(1),
            logits,
            logits.stride(0),
            logits.stride(1),
            noise,
            noise.stride(0),
            noise.stride(1),
            weights,
            weights.stride(0),
            weights.stride(1),
            out,
            E,
            K,
            _inv_tau(tau, logits),
            HARD=hard,
            FP64=logits.dtype == torch.float64,
            BLOCK_E=block_e,
            BLOCK_K=block_k,
        )
    return out


def _setup_context(ctx, inputs, output):
    logits, noise, tau, k, hard = inputs
    weights, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(logits, noise, weights)
    ctx.tau, ctx.hard = tau, hard


def _backward(ctx, grad_weights, grad_indices):
    """The twin of csrc/gumbel/gumbel_autograd.cpp."""
    logits, noise, weights = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = gumbel_topk_backward_triton(grad_weights, logits, noise, weights, ctx.tau, ctx.hard)
    return grad_logits, None, None, None, None


gumbel_topk_triton.register_autograd(_backward, setup_context=_setup_context)
