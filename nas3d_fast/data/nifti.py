"""NIfTI volumes as numpy arrays: read (channels first, with the affine) and write atomically.

Images are returned as (C, X, Y, Z) float32 (a 4D NIfTI keeps its channels on the 4th axis; a 3D one
gets C = 1); label maps as (X, Y, Z) integers. The affine is the 4x4 voxel-to-world (mm) matrix from
the file (nibabel's ``img.affine``); spacing is the length of its first three columns, in mm.
"""

from __future__ import annotations

import os

import numpy as np

from .. import _atomic
from .._atomic import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti_name(path: str) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes (column norms of the affine's 3x3 part)."""
    affine = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def _load(path: str, what: str):
    import nibabel as nib

    if not is_nifti_name(path):
        raise ValueError(f"{what} {path} is not a NIfTI file (expected a name ending in .nii or .nii.gz)")
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path} does not exist")
    try:
        img = nib.load(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ValueError(f"nibabel read a {type(img).__name__}, not NIfTI")
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise ValueError(f"{what} {path} is not a readable NIfTI file: {type(exc).__name__}: {exc}") from exc
    return data, np.asarray(img.affine, dtype=np.float64)


def read_image(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(image (C, X, Y, Z) float32, affine (4, 4) float64). Raises ValueError naming ``path`` for a
    missing, non-NIfTI or unreadable file, or one that is not 3D (or 3D + channels)."""
    data, affine = _load(path, "image")
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise ValueError(
            f"image {path} must be a 3D volume (or 3D with channels on a 4th axis), got shape {data.shape}"
        )
    return np.ascontiguousarray(np.moveaxis(data.astype(np.float32, copy=False), -1, 0)), affine


def read_label(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(label map (X, Y, Z) int16, affine). Raises ValueError naming ``path`` for a bad file, a non-3D
    volume, or values that are not non-negative integers."""
    data, affine = _load(path, "label")
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"label {path} must be a 3D volume, got shape {data.shape}")
    rounded = np.rint(data)
    if not np.array_equal(rounded, data) or (data.size and rounded.min() < 0):
        raise ValueError(f"label {path} must hold non-negative integer class indices")
    if data.size and rounded.max() > np.iinfo(np.int16).max:
        raise ValueError(f"label {path} has class index {int(rounded.max())}, more than int16 holds")
    return rounded.astype(np.int16), affine


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str, dtype=None) -> None:
    """Write ``array`` ((X, Y, Z), or (C, X, Y, Z) stored with channels on the 4th axis) with ``affine``
    to a temporary name beside ``path``, then rename it (a reader never sees a partial file)."""
    import nibabel as nib

    if not is_nifti_name(path):
        raise ValueError(f"output {path} must end in .nii or .nii.gz")
    array = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    if array.ndim == 4:
        array = np.moveaxis(array, 0, -1)
    img = nib.Nifti1Image(np.ascontiguousarray(array), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.header.set_sform(img.affine, code=1)
    img.header.set_qform(img.affine, code=1)
    suffix = next(s for s in NIFTI_SUFFIXES if path.lower().endswith(s))
    with atomic_path(path, suffix) as tmp:
        nib.save(img, tmp)


def write_json(obj, path: str) -> None:
    """JSON to a temporary name beside ``path``, then renamed."""
    _atomic.write_json(obj, path)
