"""Triton kernels of the sliding-window ops: one program per tile of BLOCK_R window rows x BLOCK_X voxels
along the last axis.

Same arithmetic as csrc/window/window.h: stitching visits the windows one launch after the other (launches
on one stream run in order), the voxels of one window in parallel, so every voxel's sum is formed in window
order without atomics. float32 arithmetic for float16/bfloat16, float64 for float64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton


@triton.jit
def _gather_kernel(
    vol_ptr, starts_ptr, out_ptr, rows, C, rd, rh, rw, vs0, vs1, vs2, vs3, vs4,
    BLOCK_R: tl.constexpr, BLOCK_X: tl.constexpr,
):
    # rows r = ((n * C + c) * rd + z) * rh + y, BLOCK_R of them by BLOCK_X voxels along the last axis
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    xs = tl.program_id(1).to(tl.int64) * BLOCK_X + tl.arange(0, BLOCK_X).to(tl.int64)
    row_ok = r < rows
    r = tl.where(row_ok, r, 0)
    y = r % rh
    z = (r // rh) % rd
    c = (r // (rh * rd)) % C
    n = r // (rh * rd * C)
    b = tl.load(starts_ptr + n * 4)
    z0 = tl.load(starts_ptr + n * 4 + 1)
    y0 = tl.load(starts_ptr + n * 4 + 2)
    x0 = tl.load(starts_ptr + n * 4 + 3)
    mask = row_ok[:, None] & (xs < rw)[None, :]
    src = (b * vs0 + c * vs1 + (z0 + z) * vs2 + (y0 + y) * vs3 + x0 * vs4)[:, None] + (xs * vs4)[None, :]
    tl.store(out_ptr + (r * rw)[:, None] + xs[None, :], tl.load(vol_ptr + src, mask=mask), mask=mask)


@triton.jit
def _stitch_kernel(
    out_ptr,
    pred_ptr,
    weight_ptr,
    starts_ptr,
    n,
    rows,
    rd,
    rh,
    rw,
    os0,
    os1,
    os2,
    os3,
    ps0,
    ps1,
    ps2,
    ps3,
    ps4,
    FP64: tl.constexpr,
    BF16: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_X: tl.constexpr,
):
    # rows r = (c * rd + z) * rh + y of window n, BLOCK_R of them by BLOCK_X voxels along the last axis
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    xs = tl.program_id(1).to(tl.int64) * BLOCK_X + tl.arange(0, BLOCK_X).to(tl.int64)
    row_ok = r < rows
    r = tl.where(row_ok, r, 0)
    y = r % rh
    z = (r // rh) % rd
    c = r // (rh * rd)
    n64 = n.to(tl.int64)
    b = tl.load(starts_ptr + n64 * 4)
    z0 = tl.load(starts_ptr + n64 * 4 + 1)
    y0 = tl.load(starts_ptr + n64 * 4 + 2)
    x0 = tl.load(starts_ptr + n64 * 4 + 3)
    mask = row_ok[:, None] & (xs < rw)[None, :]
    o_ptrs = out_ptr + (b * os0 + c * os1 + (z0 + z) * os2 + (y0 + y) * os3 + x0)[:, None] + xs[None, :]
    p_off = (n64 * ps0 + c * ps1 + z * ps2 + y * ps3)[:, None] + (xs * ps4)[None, :]
    p = tl.load(pred_ptr + p_off, mask=mask, other=0.0)
    w = tl.load(weight_ptr + ((z * rh + y) * rw)[:, None] + xs[None, :], mask=mask, other=0.0)
    o = tl.load(o_ptrs, mask=mask, other=0.0)
    if FP64:
        acc = o.to(tl.float64) + w.to(tl.float64) * p.to(tl.float64)
    else:
        acc = o.to(tl.float32) + w.to(tl.float32) * p.to(tl.float32)
    if BF16:  # round to nearest even by hand: the Triton interpreter truncates float32 -> bfloat16
        bits = acc.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        acc = tl.where(acc == acc, bits.to(tl.float32, bitcast=True), acc)
    tl.store(o_ptrs, acc.to(o.dtype), mask=mask)


def _blocks(rw: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_X): a whole window row (up to 1024 voxels) by enough rows for ~4096 voxels."""
    block_x = min(1024, triton.next_power_of_2(max(int(rw), 16)))
    return max(1, 4096 // block_x), block_x


@triton_op("nas3d::window_gather_triton", mutates_args=())
def window_gather_triton(volume: torch.Tensor, starts: torch.Tensor, roi: list[int]) -> torch.Tensor:
    N, C = starts.shape[0], volume.shape[1]
    rd, rh, rw = roi
    out = torch.empty((N, C, rd, rh, rw), dtype=volume.dtype, device=volume.device)
    rows = N * C * rd * rh
    if rows == 0 or rw == 0:
        return out
    block_r, block_x = _blocks(rw)
    wrap_triton(_gather_kernel)[(triton.cdiv(rows, block_r), triton.cdiv(rw, block_x))](
        volume, starts, out, rows, C, rd, rh, rw, *volume.stride(), BLOCK_R=block_r, BLOCK_X=block_x
    )
    return out


@triton_op("nas3d::window_stitch_triton", mutates_args={"out"})
def window_stitch_triton(out: torch.Tensor, pred: torch.Tensor, weight: torch.Tensor, starts: torch.Tensor) -> None:
    N, C, rd, rh, rw = pred.shape
    rows = C * rd * rh
    if rows == 0 or rw == 0:
        return
    block_r, block_x = _blocks(rw)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(rw, block_x))
    for n in range(N):  # in order: one launch per window
        wrap_triton(_stitch_kernel)[grid](
            out,
            pred,
            weight,
            starts,
            n,
            rows,
            rd,
            rh,
            rw,
            *out.stride()[:4],
            *pred.stride(),
            FP64=out.dtype == torch.float64,
            BF16=out.dtype == torch.bfloat16,
            BLOCK_R=block_r,
            BLOCK_X=block_x,
        )


@triton.jit
def _round_bf16(x):
    """float32 -> the nearest bfloat16 (ties to even), kept in float32: the interpreter truncates."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return tl.where(x == x, bits.to(tl.float32, bitcast=True), x)


@triton.jit
def _argmax_kernel(
    acc_ptr, w_ptr, lab_ptr, total, C, H, W,
    as0, as1, as2, as3, ws0, ws1, ws2, ls0, ls1, ls2,
    NORMALISE: tl.constexpr, FP64: tl.constexpr, BF16: tl.constexpr, BLOCK: tl.constexpr,
):
    # BLOCK voxels (z, y, x) of the slab; the classes in order, the tie rule of csrc/window/window.h
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = i < total
    i = tl.where(mask, i, 0)
    x = i % W
    y = (i // W) % H
    z = i // (W * H)
    a_ptrs = acc_ptr + z * as1 + y * as2 + x * as3
    if NORMALISE:
        w = tl.load(w_ptr + z * ws0 + y * ws1 + x * ws2, mask=mask, other=1.0)
        w = w.to(tl.float64) if FP64 else w.to(tl.float32)
    a = tl.load(a_ptrs, mask=mask, other=0.0)
    best = a.to(tl.float64) if FP64 else a.to(tl.float32)
    if NORMALISE:  # the quotient rounded to the accumulator's dtype, as torch's division
        best = best / w
        best = _round_bf16(best) if BF16 else best.to(a.dtype).to(best.dtype)
    label = tl.zeros((BLOCK,), dtype=tl.int64)
    for c in range(1, C):
        v = tl.load(a_ptrs + c * as0, mask=mask, other=0.0)
        score = v.to(tl.float64) if FP64 else v.to(tl.float32)
        if NORMALISE:
            score = score / w
            score = _round_bf16(score) if BF16 else score.to(v.dtype).to(score.dtype)
        better = (score > best) | ((score != score) & (best == best))
        best = tl.where(better, score, best)
        label = tl.where(better, c, label)
    tl.store(lab_ptr + z * ls0 + y * ls1 + x * ls2, label.to(lab_ptr.dtype.element_ty), mask=mask)


@triton_op("nas3d::window_argmax_triton", mutates_args={"labels"})
def window_argmax_triton(acc: torch.Tensor, weight_sum: torch.Tensor | None, labels: torch.Tensor) -> None:
    C, D, H, W = acc.shape
    total = D * H * W
    if total == 0:
        return
    normalise = weight_sum is not None
    w = weight_sum if normalise else acc
    ws = w.stride()[-3:]
    block = 1024
    wrap_triton(_argmax_kernel)[(triton.cdiv(total, block),)](
        acc,
        w,
        labels,
        total,
        C,
        H,
        W,
        *acc.stride(),
        *ws,
        *labels.stride(),
        NORMALISE=normalise,
        FP64=acc.dtype == torch.float64,
        BF16=acc.dtype == torch.bfloat16,
        BLOCK=block,
    )
