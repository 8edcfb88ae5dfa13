"""Window geometry of sliding-window inference, the importance map and the normaliser, as MONAI defines
them (monai.inferers.sliding_window_inference 1.6): same roi fall-back, padding, scan intervals, window
starts and order, Gaussian map and clamp, so that results agree with MONAI's.

Also the normalisation of MONAI's arguments (scalars, lists, tuples, numpy arrays and numpy/0-d torch
numbers such as np.int64), shared by the fast and the general path. The fast path's grid is 3D: 1D/2D
volumes are handled as 3D with unit leading axes (see `make_grid`); `scan_starts` and `pad_amounts`
work for any number of axes (the general path, `sw_general`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..ops import window_stitch

BLEND_MODES = ("constant", "gaussian")
PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _is_number(v, kind) -> bool:
    """A Python, numpy or 0-d torch number of ``kind`` ((int,) or (int, float)); bools are not numbers."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, torch.Tensor):
        return v.dim() == 0 and v.dtype != torch.bool and (float in kind or not v.is_floating_point())
    if int in kind and isinstance(v, (int, np.integer)):
        return True
    return float in kind and isinstance(v, (float, np.floating))


def _plain(v):
    """The Python int (or, where floats are allowed, float) of a number accepted by `_is_number`."""
    v = v.item() if isinstance(v, torch.Tensor) else v
    return int(v) if isinstance(v, (int, np.integer)) else float(v)


def _entries(value):
    """The entries of a list, tuple, torch.Size, 1-d numpy array or 1-d tensor, else None."""
    if isinstance(value, np.ndarray) or (isinstance(value, torch.Tensor) and value.dim() > 0):
        return list(value.tolist()) if value.ndim == 1 else None
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return None


def as_index(value, name: str, minimum: int) -> int:
    """An int >= minimum from a Python, numpy or 0-d torch integer (np.int64 etc.), else a ValueError."""
    if not _is_number(value, (int,)) or _plain(value) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return _plain(value)


def _per_dim(value, n: int, name: str, kind=(int, float)) -> tuple:
    """A scalar repeated n times, or exactly n entries (list, tuple, numpy array, tensor), as Python
    numbers (MONAI's ensure_tuple_rep)."""
    if _is_number(value, kind):
        return (_plain(value),) * n
    values = _entries(value)
    if values is None or len(values) != n or not all(_is_number(v, kind) for v in values):
        raise ValueError(f"{name} must be a number or {n} numbers (one per spatial axis), got {value!r}")
    return tuple(_plain(v) for v in values)


def resolve_sigma(sigma_scale, n: int) -> tuple[float, ...]:
    """sigma_scale as n floats > 0 (a scalar, list, tuple or numpy array)."""
    sigma = tuple(float(s) for s in _per_dim(sigma_scale, n, "sigma_scale"))
    if any(s <= 0 for s in sigma):
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale!r}")
    return sigma


def resolve_roi(roi_size, image_size: Sequence[int]) -> tuple[int, ...]:
    """MONAI's fall_back_tuple: one int per spatial axis (or one int for all; list, tuple, numpy array,
    numpy integers); entries None or <= 0 (e.g. -1) take the image's size on that axis."""
    n = len(image_size)
    if roi_size is None:
        return tuple(int(s) for s in image_size)
    if _is_number(roi_size, (int,)):
        roi = [_plain(roi_size)] * n
    else:
        roi = _entries(roi_size)
        if roi is None:
            raise ValueError(f"roi_size must be an int or a sequence of {n} ints, got {roi_size!r}")
        if len(roi) != n:
            raise ValueError(
                f"roi_size must have one entry per spatial axis of inputs ({n}: {tuple(image_size)}), got {roi_size!r}"
            )
    out = []
    for r, s in zip(roi, image_size):
        if r is None or (_is_number(r, (int, float)) and _plain(r) <= 0):
            out.append(int(s))
        elif _is_number(r, (int,)):
            out.append(_plain(r))
        else:
            raise ValueError(f"roi_size entries must be ints, got {roi_size!r}")
    return tuple(out)


def resolve_overlap(overlap, n: int) -> tuple[float, ...]:
    values = _per_dim(overlap, n, "overlap")
    for o in values:
        if not 0 <= o < 1:
            raise ValueError(f"overlap must be in [0, 1) on every axis, got {overlap!r}")
    return tuple(float(o) for o in values)


def pad_amounts(image_size: Sequence[int], roi: Sequence[int]) -> tuple[int, ...]:
    """F.pad's list (last axis first, (before, after) each) that grows every axis to at least the roi,
    half before (rounded down) and the rest after, as MONAI pads."""
    pad: list[int] = []
    for k in range(len(image_size) - 1, -1, -1):
        diff = max(int(roi[k]) - int(image_size[k]), 0)
        pad.extend([diff // 2, diff - diff // 2])
    return tuple(pad)


def scan_starts(image: int, roi: int, overlap: float) -> list[int]:
    """First voxels of the windows along one axis (MONAI's _get_scan_interval + dense_patch_slices)."""
    if roi == image:
        interval = roi
    else:
        interval = max(int(roi * (1 - overlap)), 1)
    num = int(math.ceil(float(image) / interval))
    count = next((d + 1 for d in range(num) if d * interval + roi >= image), 1)
    return [i * interval - max(i * interval + roi - image, 0) for i in range(count)]


@dataclass(frozen=True)
class WindowGrid:
    """The windows over one (padded) 3D volume.

    shape: (D, H, W) after padding; roi: (rd, rh, rw); starts: per axis, the window starts (tuples);
    pad: F.pad's list for the original (unpadded, n-D) input, last axis first; crop: per axis of the
    padded volume, the (begin, end) of the original image.
    """

    shape: tuple[int, int, int]
    roi: tuple[int, int, int]
    starts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    pad: tuple[int, ...]
    crop: tuple[tuple[int, int], ...]

    @property
    def num_windows(self) -> int:
        return len(self.starts[0]) * len(self.starts[1]) * len(self.starts[2])

    def window_starts(self) -> torch.Tensor:
        """(num_windows, 3) int64 (z, y, x) in MONAI's order (the last axis fastest)."""
        z, y, x = (torch.tensor(s, dtype=torch.int64) for s in self.starts)
        return torch.stack(torch.meshgrid(z, y, x, indexing="ij"), dim=-1).reshape(-1, 3)


def make_grid(image_size: Sequence[int], roi_size, overlap) -> WindowGrid:
    """The MONAI window grid of an n-D image (n = 1, 2, 3), returned as 3D (unit leading axes)."""
    n = len(image_size)
    roi = resolve_roi(roi_size, image_size)
    ov = resolve_overlap(overlap, n)
    padded = tuple(max(s, r) for s, r in zip(image_size, roi))
    pad = list(pad_amounts(image_size, roi))
    starts = [tuple(scan_starts(padded[d], roi[d], ov[d])) for d in range(n)]
    crop = []
    for d in range(n):
        begin = pad[2 * (n - 1 - d)]
        crop.append((begin, begin + int(image_size[d])))
    lead = 3 - n
    return WindowGrid(
        shape=(1,) * lead + padded,
        roi=(1,) * lead + roi,
        starts=((0,),) * lead + tuple(starts),
        pad=tuple(pad),
        crop=((0, 1),) * lead + tuple(crop),
    )


def importance_map(roi: Sequence[int], mode: str, sigma_scale, dtype: torch.dtype, device) -> torch.Tensor:
    """MONAI's compute_importance_map for an n-D roi (float32 math, min clamped to max(min, 1e-3)), in dtype."""
    if mode == "constant":
        imp = torch.ones(tuple(roi), dtype=torch.float32, device=device)
    elif mode == "gaussian":
        sigmas = [r * s for r, s in zip(roi, resolve_sigma(sigma_scale, len(roi)))]
        imp = None
        for i, r in enumerate(roi):
            x = torch.arange(start=-(r - 1) / 2.0, end=(r - 1) / 2.0 + 1, dtype=torch.float, device=device)
            x = torch.exp(x**2 / (-2 * sigmas[i] ** 2))
            imp = imp.unsqueeze(-1) * x[(None,) * i] if i > 0 else x
    else:
        raise ValueError(f"mode must be one of {BLEND_MODES}, got {mode!r}")
    min_non_zero = max(torch.min(imp).item(), 1e-3)
    return torch.clamp_(imp.to(torch.float32), min=min_non_zero).to(dtype)


class _Cache:
    """A small LRU cache of tensors (importance maps and normalisers), keyed by their defining arguments."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict = OrderedDict()

    def get(self, key, make):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value

    def clear(self) -> None:
        self.items.clear()


_WEIGHTS = _Cache(8)
_NORMALISERS = _Cache(2)


def clear_cache() -> None:
    """Drop the cached importance maps and normalisers (they are rebuilt on the next call)."""
    _WEIGHTS.clear()
    _NORMALISERS.clear()


def _key(dtype, device, *parts):
    return (str(dtype), str(torch.device(device)), *parts)


def cached_weight(grid: WindowGrid, n_spatial: int, mode: str, sigma_scale, dtype, device) -> torch.Tensor:
    """The (rd, rh, rw) importance map of one window, computed once per (roi, mode, sigma, dtype, device).
    The Gaussian is computed over the n-D roi (unit leading axes dropped), as MONAI does."""
    sigma = resolve_sigma(sigma_scale, n_spatial) if mode == "gaussian" else None
    roi_nd = grid.roi[3 - n_spatial :]
    key = _key(dtype, device, grid.roi, mode, sigma)
    return _WEIGHTS.get(key, lambda: importance_map(roi_nd, mode, sigma, dtype, device).reshape(grid.roi))


def cached_normaliser(grid: WindowGrid, weight: torch.Tensor, mode: str, sigma_scale) -> torch.Tensor:
    """(1, 1, D, H, W): the sum of the importance maps of every window covering each voxel (MONAI's
    count map, accumulated in the same window order), computed once per (shape, roi, overlap, mode, sigma);
    ``sigma_scale`` is `resolve_sigma`'s tuple (None for mode "constant")."""
    sigma = tuple(sigma_scale) if mode == "gaussian" else None  # resolved by the caller: hashable
    key = _key(weight.dtype, weight.device, grid.shape, grid.roi, grid.starts, mode, sigma)
    return _NORMALISERS.get(key, lambda: normaliser(grid, weight))


def normaliser(grid: WindowGrid, weight: torch.Tensor) -> torch.Tensor:
    """(1, 1, D, H, W): the sum of the (rd, rh, rw) importance map ``weight`` over every window covering
    each voxel, accumulated in MONAI's window order (uncached: for a caller's own roi_weight_map)."""
    count = torch.zeros((1, 1, *grid.shape), dtype=weight.dtype, device=weight.device)
    starts = torch.nn.functional.pad(grid.window_starts(), (1, 0)).to(weight.device)
    ones = torch.ones((), dtype=weight.dtype, device=weight.device).expand(grid.roi)
    # count += 1 * weight for every window: the stitch kernel with the weight as the prediction.
    window_stitch(count, weight.expand(starts.shape[0], 1, *grid.roi), ones, starts)
    return count
