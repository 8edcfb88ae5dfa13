"""The profiler's own training loss (independent of ``nas3d_fast.train``): Dice + cross-entropy.

``dice_ce(logits, target)``: logits (N, K, X, Y, Z) floating, target (N, X, Y, Z) int64 labels in
[0, K). Returns the scalar mean soft Dice loss (softmax probabilities against the one-hot target, per
sample and class, smoothing 1e-5 in numerator and denominator, as MONAI's ``DiceCELoss(to_onehot_y=True,
softmax=True)``) plus the mean cross-entropy. Its memory is what matters here: a softmax, a one-hot
target of the logits' size and dtype, and their products, as a usual segmentation loss holds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

SMOOTH = 1e-5
LOSSES = ("dice_ce", "ce")


def dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean soft Dice loss plus mean cross-entropy of ``logits`` (N, K, X, Y, Z) against the int64 labels
    ``target`` (N, X, Y, Z); the profiler's default loss (see the module docstring)."""
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)
    onehot = torch.zeros_like(probs).scatter_(1, target.unsqueeze(1), 1.0)
    dims = tuple(range(2, logits.dim()))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = 1.0 - (2.0 * inter + SMOOTH) / (denom + SMOOTH)
    return dice.mean() + ce


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target)


def make_loss(loss: str | Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A loss by name ("dice_ce", "ce") or the callable itself (``loss(logits, target) -> scalar``)."""
    if callable(loss):
        return loss
    if loss == "dice_ce":
        return dice_ce
    if loss == "ce":
        return cross_entropy
    raise ValueError(f"loss must be one of {LOSSES} or a callable loss(logits, target), got {loss!r}")
