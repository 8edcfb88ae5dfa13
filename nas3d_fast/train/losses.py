"""Segmentation losses of the papers (T-AutoML §3.2 candidates, C2FNAS §4.1 Dice + CE).

Every loss takes ``logits`` (B, C, X, Y, Z) (any number of spatial axes) and ``target`` integer labels
(B, X, Y, Z) or (B, 1, X, Y, Z) with values in 0..C-1, and returns a scalar. Probabilities are the
softmax of the logits over C. The soft Dice follows MONAI's ``DiceLoss(softmax=True, to_onehot_y=True)``::

    dice_c = (2 sum(p_c g_c) + smooth_nr) / (sum(p_c^q) + sum(g_c^q) + smooth_dr)     q = 2 if squared else 1
    loss   = mean over batch items (or the whole batch with batch=True) and classes of 1 - dice_c

Jaccard (IoU) is ``(2 I + smooth_nr) / (2 (D - I) + smooth_dr)`` with I the intersection and D the
denominator above (MONAI's ``jaccard=True``; equal to I / (D - I) without smoothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _labels(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(B, *spatial) int64 labels from (B, *spatial) or (B, 1, *spatial)."""
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target must have shape {tuple(logits.shape[:1] + logits.shape[2:])} or with a channel axis of 1 "
            f"to match logits {tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.is_floating_point():
        target = target.round()
    return target.long()


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) in float32; float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, *spatial) labels -> (B, C, *spatial) one-hot."""
    return F.one_hot(labels, num_classes).movedim(-1, 1).to(dtype)


def soft_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    squared: bool = False,
    jaccard: bool = False,
    include_background: bool = True,
    batch: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
) -> torch.Tensor:
    """Soft Dice (or Jaccard) per class: (B, C') or, with ``batch=True``, (C',) values in [0, 1]; C' drops
    the background class 0 when ``include_background`` is False."""
    if logits.dim() < 3:
        raise ValueError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}")
    labels = _labels(target, logits)
    probs = torch.softmax(_wide(logits), dim=1)
    truth = _one_hot(labels, logits.shape[1], probs.dtype)
    if not include_background:
        probs, truth = probs[:, 1:], truth[:, 1:]
    axes = list(range(2, logits.dim()))
    if batch:
        axes = [0] + axes
    inter = (probs * truth).sum(axes)
    if squared:
        denom = (probs * probs).sum(axes) + (truth * truth).sum(axes)
    else:
        denom = probs.sum(axes) + truth.sum(axes)
    if jaccard:
        return (2.0 * inter + smooth_nr) / (2.0 * (denom - inter) + smooth_dr)
    return (2.0 * inter + smooth_nr) / (denom + smooth_dr)


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Softmax focal loss (Lin et al.): mean over voxels of -(1 - p_t)^gamma log p_t, p_t the probability of
    the true class."""
    labels = _labels(target, logits)
    logp = torch.log_softmax(_wide(logits), dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    return (-((1.0 - logp.exp()) ** gamma) * logp).mean()


class DiceLoss(nn.Module):
    """1 - soft Dice, averaged over classes (and batch items); ``squared=True`` squares the prediction
    (and truth) in the denominator; ``jaccard=True`` gives the soft Jaccard (IoU) loss."""

    def __init__(
        self,
        squared: bool = False,
        jaccard: bool = False,
        include_background: bool = True,
        batch: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ):
        super().__init__()
        self.kw = {
            "squared": squared,
            "jaccard": jaccard,
            "include_background": include_background,
            "batch": batch,
            "smooth_nr": smooth_nr,
            "smooth_dr": smooth_dr,
        }

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1.0 - soft_dice(logits, target, **self.kw)).mean()


class CELoss(nn.Module):
    """Cross-entropy over classes, mean over voxels."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(_wide(logits), _labels(target, logits))


class DiceCELoss(nn.Module):
    """``lambda_dice`` * Dice loss + ``lambda_ce`` * cross-entropy (C2FNAS §4.1 sums the two)."""

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, **dice_kw):
        super().__init__()
        self.dice, self.ce = DiceLoss(**dice_kw), CELoss()
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_dice * self.dice(logits, target) + self.lambda_ce * self.ce(logits, target)


class DiceFocalLoss(nn.Module):
    """``lambda_dice`` * Dice loss + ``lambda_focal`` * softmax focal loss (``gamma``)."""

    def __init__(self, gamma: float = 2.0, lambda_dice: float = 1.0, lambda_focal: float = 1.0, **dice_kw):
        super().__init__()
        self.dice, self.gamma = DiceLoss(**dice_kw), gamma
        self.lambda_dice, self.lambda_focal = lambda_dice, lambda_focal

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_dice * self.dice(logits, target) + self.lambda_focal * focal(logits, target, self.gamma)


#: the loss names ``nas3d train --loss`` accepts (T-AutoML §3.2's candidates).
LOSSES = {
    "dice": lambda: DiceLoss(),
    "dice_squared": lambda: DiceLoss(squared=True),
    "ce": lambda: CELoss(),
    "dice_ce": lambda: DiceCELoss(),
    "dice_focal": lambda: DiceFocalLoss(),
    "jaccard": lambda: DiceLoss(jaccard=True),
}


def make_loss(name: str) -> nn.Module:
    """The loss called ``name`` (one of ``LOSSES``)."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")
    return LOSSES[name]()
