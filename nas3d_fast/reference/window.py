"""Plain-PyTorch references of the sliding-window ops: one slice per window, windows in order."""

from __future__ import annotations

import torch


def window_gather(volume: torch.Tensor, starts: torch.Tensor, roi: list[int]) -> torch.Tensor:
    """(N, C, *roi) windows of a (B, C, D, H, W) volume; starts (N, 4) int64 rows (b, z, y, x)."""
    rd, rh, rw = roi
    rows = [volume[b, :, z : z + rd, y : y + rh, x : x + rw] for b, z, y, x in starts.tolist()]
    if not rows:
        return volume.new_empty((0, volume.shape[1], rd, rh, rw))
    return torch.stack(rows)


def window_stitch(out: torch.Tensor, pred: torch.Tensor, weight: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """out[b, :, z:z+rd, y:y+rh, x:x+rw] += weight * pred[n] for n = 0, 1, ... in order; returns out."""
    rd, rh, rw = pred.shape[2:]
    for n, (b, z, y, x) in enumerate(starts.tolist()):
        out[b, :, z : z + rd, y : y + rh, x : x + rw] += weight * pred[n]
    return out


def window_argmax(acc: torch.Tensor, weight_sum: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out = argmax over dim 0 of acc (C, D, H, W) / weight_sum (D, H, W) (of acc when None); returns out."""
    scores = acc if weight_sum is None else acc / weight_sum
    out.copy_(scores.argmax(dim=0))
    return out
