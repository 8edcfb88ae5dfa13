"""NIfTI in and out for `nas3d infer`: read an image (channels on a 4th axis), write a label map with the
input's affine and header to a temporary name beside the target, then rename (never a partial file)."""

from __future__ import annotations

import numpy as np
import torch

from .._atomic import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti_name(path: str) -> bool:
    return path.lower().endswith(NIFTI_SUFFIXES)


def _suffix(path: str) -> str:
    return next(s for s in NIFTI_SUFFIXES if path.lower().endswith(s))


def read_image(path: str):
    """(image (1, C, X, Y, Z) float32 tensor, nibabel image). Raises ValueError for anything that is not a
    readable 3D/4D NIfTI volume."""
    import nibabel as nib

    if not is_nifti_name(path):
        raise ValueError(f"input {path} is not a NIfTI file (expected a name ending in .nii or .nii.gz)")
    try:
        img = nib.load(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ValueError(f"nibabel read a {type(img).__name__}, not NIfTI")
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise ValueError(f"input {path} is not a readable NIfTI file: {type(exc).__name__}: {exc}") from exc
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise ValueError(
            f"input {path} must be a 3D volume (or 3D with channels on a 4th axis), got shape {data.shape}"
        )
    image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, -1, 0)))[None]
    return image, img


def write_labels(labels: np.ndarray, like, path: str) -> None:
    """Write an (X, Y, Z) integer label map with the affine and header of nibabel image ``like`` (less its
    intensity scaling and display window, which belong to the image)."""
    import nibabel as nib

    if not is_nifti_name(path):
        raise ValueError(f"output {path} must end in .nii or .nii.gz")
    header = like.header.copy()
    header.set_data_shape(labels.shape)
    header.set_data_dtype(labels.dtype)
    out = nib.Nifti1Image(labels, like.affine, header=header)
    out.set_data_dtype(labels.dtype)
    out.header.set_slope_inter(1.0, 0.0)
    # The image's display window (e.g. 0..1200 for an MRI) would show classes 1, 2, ... nearly black.
    out.header["cal_min"], out.header["cal_max"] = 0, 0
    with atomic_path(path, _suffix(path)) as tmp:
        nib.save(out, tmp)
