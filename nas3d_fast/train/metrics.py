"""Segmentation metrics on label maps: Dice per class and normalised surface distance (NSD).

Both take integer label maps of one volume, ``pred`` and ``truth`` of the same spatial shape (numpy
arrays or tensors; a leading axis of 1 is dropped), and return one float per foreground class 1..C-1
(background is not scored). A class absent from the truth scores NaN (MONAI's ``ignore_empty=True``):
average with ``np.nanmean``.

NSD (Nikolov et al., the MSD challenge's second metric): the surface of a mask is its voxels with a
6-neighbour outside it (the mask minus its erosion; voxels on the volume's border count as surface).
With ``d(s, T)`` the Euclidean distance in mm (using the voxel ``spacing``) from a surface voxel s to the
nearest surface voxel of the other mask::

    NSD = (#{s in S_pred : d(s, S_true) <= tau} + #{s in S_true : d(s, S_pred) <= tau}) / (|S_pred| + |S_true|)

which is MONAI's ``compute_surface_dice(use_subvoxels=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage


def _as_labels(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    while x.ndim > 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"{name} must be a 3D label map (X, Y, Z), got shape {x.shape}")
    return x


def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_labels(pred, "pred"), _as_labels(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and truth {t.shape} must have the same shape")
    return p, t


def dice_per_class(pred, truth, num_classes: int) -> np.ndarray:
    """Dice 2|P n T| / (|P| + |T|) of classes 1..num_classes-1: (num_classes - 1,) float64, NaN where the
    class is absent from the truth."""
    p, t = _pair(pred, truth)
    out = np.full(num_classes - 1, np.nan)
    for c in range(1, num_classes):
        pc, tc = p == c, t == c
        nt = int(tc.sum())
        if nt == 0:
            continue
        out[c - 1] = 2.0 * np.logical_and(pc, tc).sum() / (pc.sum() + nt)
    return out


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a boolean mask: those with a 6-neighbour outside it or outside the volume."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _crop_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of a | b, one voxel larger on each side, within the volume."""
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, a.shape)
    return tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))


def surface_dice(pred_mask: np.ndarray, true_mask: np.ndarray, spacing: Sequence[float], tolerance: float) -> float:
    """NSD of two boolean masks (see the module docstring); NaN if both are empty, 0 if one is."""
    if not pred_mask.any() and not true_mask.any():
        return float("nan")
    if not pred_mask.any() or not true_mask.any():
        return 0.0
    # The crop keeps every surface voxel and its neighbours (erosion treats the volume's border as outside).
    box = _crop_box(pred_mask, true_mask)
    sp, st = surface(pred_mask[box]), surface(true_mask[box])
    d_to_true = ndimage.distance_transform_edt(~st, sampling=spacing)
    d_to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    good = (d_to_true[sp] <= tolerance).sum() + (d_to_pred[st] <= tolerance).sum()
    return float(good / (sp.sum() + st.sum()))


def nsd_per_class(
    pred, truth, num_classes: int, spacing: Sequence[float], tolerance: float | Sequence[float]
) -> np.ndarray:
    """NSD of classes 1..num_classes-1 with ``tolerance`` in mm (one value, or one per foreground class) and
    voxel ``spacing`` (mm per axis): (num_classes - 1,) float64, NaN where the class is absent from the truth
    (0 where it is absent from the prediction only)."""
    p, t = _pair(pred, truth)
    spacing = [float(s) for s in spacing]
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive voxel sizes in mm, got {spacing}")
    tol = [float(tolerance)] * (num_classes - 1) if np.isscalar(tolerance) else [float(x) for x in tolerance]
    if len(tol) != num_classes - 1 or min(tol) < 0:
        raise ValueError(
            f"tolerance must be one value >= 0 or one per foreground class ({num_classes - 1}), got {tolerance}"
        )
    out = np.full(num_classes - 1, np.nan)
    for c in range(1, num_classes):
        tc = t == c
        if tc.any():
            out[c - 1] = surface_dice(p == c, tc, spacing, tol[c - 1])
    return out
