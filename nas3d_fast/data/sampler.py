"""Patch sampling with a foreground:background ratio (T-AutoML §4.1 trains on 1:1).

A foreground patch is centred on a voxel drawn uniformly from the voxels with label > 0 (a volume with
no foreground gives a background patch instead); a background patch is placed uniformly at random over
the whole volume (it may still contain foreground, as in MONAI's RandCropByPosNegLabel). Centres are
clipped so the patch lies inside the volume; volumes smaller than the patch are zero-padded
symmetrically first (image 0, label 0).

:func:`is_foreground_draw` decides from the sample index which draws are foreground, so a ratio
pos:neg holds exactly over every pos + neg consecutive samples, whatever the number of workers.
"""

from __future__ import annotations

import numpy as np


def is_foreground_draw(index: int, pos: int = 1, neg: int = 1) -> bool:
    if pos < 0 or neg < 0 or pos + neg == 0:
        raise ValueError(f"foreground:background ratio must be non-negative and not 0:0, got {pos}:{neg}")
    return index % (pos + neg) < pos


def pad_to(array: np.ndarray, size, value=0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Pad the last three axes of ``array`` to at least ``size``; returns (array, padding before each axis)."""
    before, pads = [], [(0, 0)] * (array.ndim - 3)
    for n, s in zip(array.shape[-3:], size):
        total = max(s - n, 0)
        pads.append((total // 2, total - total // 2))
        before.append(total // 2)
    if any(p != (0, 0) for p in pads):
        array = np.pad(array, pads, constant_values=value)
    return array, tuple(before)


def patch_start(shape, size, centre) -> tuple[int, int, int]:
    """Start corner of a patch of ``size`` centred on ``centre``, clipped to lie inside ``shape``."""
    return tuple(int(min(max(c - s // 2, 0), n - s)) for n, s, c in zip(shape, size, centre))


def sample_patch(
    image: np.ndarray,
    label: np.ndarray,
    size,
    foreground: bool,
    rng: np.random.Generator,
    foreground_voxels: np.ndarray | None = None,
):
    """One (image (C, *size), label (*size), start) patch from an image (C, X, Y, Z) and label (X, Y, Z).

    ``foreground_voxels``: flat indices of label > 0 (computed when None; pass them to save the scan).
    ``start`` is the patch corner in the (padded) volume's voxels."""
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"patch size must be three positive integers, got {size}")
    if label.shape != image.shape[1:]:
        raise ValueError(f"label shape {label.shape} differs from the image's grid {image.shape[1:]}")
    padded = any(n < s for n, s in zip(label.shape, size))
    if padded:
        image, _ = pad_to(image, size)
        label, _ = pad_to(label, size)
        foreground_voxels = None
    shape = label.shape
    if foreground:
        if foreground_voxels is None:
            foreground_voxels = np.flatnonzero(label > 0)
        foreground = foreground_voxels.size > 0
    if foreground:
        centre = np.unravel_index(int(foreground_voxels[rng.integers(foreground_voxels.size)]), shape)
        start = patch_start(shape, size, centre)
    else:
        start = tuple(int(rng.integers(0, n - s + 1)) for n, s in zip(shape, size))
    sl = tuple(slice(a, a + s) for a, s in zip(start, size))
    return np.ascontiguousarray(image[(slice(None),) + sl]), np.ascontiguousarray(label[sl]), start
