"""Triton kernels of the sliding-window ops: one program per (window row, BLOCK voxels along the last axis).

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
    vol_ptr, starts_ptr, out_ptr, C, rd, rh, rw, vs0, vs1, vs2, vs3, vs4, BLOCK: tl.constexpr
):
    r = tl.program_id(0).to(tl.int64)  # row ((n * C + c) * rd + z) * rh + y
    xs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    y = r % rh
    z = (r // rh) % rd
    c = (r // (rh * rd)) % C
    n = r // (rh * rd * C)
    b = tl.load(starts_ptr + n * 4)
    z0 = tl.load(starts_ptr + n * 4 + 1)
    y0 = tl.load(starts_ptr + n * 4 + 2)
    x0 = tl.load(starts_ptr + n * 4 + 3)
    mask = xs < rw
    src = vol_ptr + b * vs0 + c * vs1 + (z0 + z) * vs2 + (y0 + y) * vs3 + (x0 + xs) * vs4
    tl.store(out_ptr + r * rw + xs, tl.load(src, mask=mask), mask=mask)


@triton.jit
def _stitch_kernel(
    out_ptr,
    pred_ptr,
    weight_ptr,
    starts_ptr,
    n,
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
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)  # row (c * rd + z) * rh + y of window n
    xs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    y = r % rh
    z = (r // rh) % rd
    c = r // (rh * rd)
    n64 = n.to(tl.int64)
    b = tl.load(starts_ptr + n64 * 4)
    z0 = tl.load(starts_ptr + n64 * 4 + 1)
    y0 = tl.load(starts_ptr + n64 * 4 + 2)
    x0 = tl.load(starts_ptr + n64 * 4 + 3)
    mask = xs < rw
    o_ptrs = out_ptr + b * os0 + c * os1 + (z0 + z) * os2 + (y0 + y) * os3 + (x0 + xs)
    p = tl.load(pred_ptr + n64 * ps0 + c * ps1 + z * ps2 + y * ps3 + xs * ps4, mask=mask, other=0.0)
    w = tl.load(weight_ptr + (z * rh + y) * rw + xs, mask=mask, other=0.0)
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


def _block(rw: int) -> int:
    return min(1024, triton.next_power_of_2(max(int(rw), 16)))


@triton_op("nas3d::window_gather_triton", mutates_args=())
def window_gather_triton(volume: torch.Tensor, starts: torch.Tensor, roi: list[int]) -> torch.Tensor:
    N, C = starts.shape[0], volume.shape[1]
    rd, rh, rw = roi
    out = torch.empty((N, C, rd, rh, rw), dtype=volume.dtype, device=volume.device)
    rows = N * C * rd * rh
    if rows == 0 or rw == 0:
        return out
    block = _block(rw)
    wrap_triton(_gather_kernel)[(rows, triton.cdiv(rw, block))](
        volume, starts, out, C, rd, rh, rw, *volume.stride(), BLOCK=block
    )
    return out


@triton_op("nas3d::window_stitch_triton", mutates_args={"out"})
def window_stitch_triton(out: torch.Tensor, pred: torch.Tensor, weight: torch.Tensor, starts: torch.Tensor) -> None:
    N, C, rd, rh, rw = pred.shape
    rows = C * rd * rh
    if rows == 0 or rw == 0:
        return
    block = _block(rw)
    grid = (rows, triton.cdiv(rw, block))
    for n in range(N):  # in order: one launch per window
        wrap_triton(_stitch_kernel)[grid](
            out,
            pred,
            weight,
            starts,
            n,
            rd,
            rh,
            rw,
            *out.stride()[:4],
            *pred.stride(),
            FP64=out.dtype == torch.float64,
            BF16=out.dtype == torch.bfloat16,
            BLOCK=block,
        )
