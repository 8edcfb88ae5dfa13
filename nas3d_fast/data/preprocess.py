"""Preprocessing of T-AutoML §4.1 and SCNAS §3, on numpy arrays with their affine kept up to date.

Order of steps in :func:`preprocess_case` (as in nnU-Net, which SCNAS follows):

1. crop to the non-zero region (the bounding box of voxels where any channel is != 0; the box is
   recorded so predictions can be put back, :func:`restore_labels`);
2. resample to a target spacing in mm (scipy.ndimage, cubic spline ``order=3`` for images, nearest
   ``order=0`` for labels; voxel centres are placed so that the field of view is kept, and the affine is
   updated to the new grid);
3. intensity, a dict in the format of ``nas3d infer``'s checkpoints (nas3d_fast/inference/checkpoint.py):

   - ``{"kind": "none"}``: as stored;
   - ``{"kind": "ct", "window": [lo, hi]}``: clip to the window in HU and map it linearly to [0, 1]
     (T-AutoML: [-1000, 1000] for MSD lung); with ``"mean"`` and ``"std"`` also given, clip then
     standardise instead (T-AutoML's LiTS: [-125, 225] and "standard normalization");
   - ``{"kind": "zscore", "nonzero": true}``: per channel, subtract the mean and divide by the standard
     deviation (SCNAS §3). With ``nonzero`` true (the default here) the statistics come from the voxels
     inside the non-zero region only and voxels outside it are set to 0 (brain MRI: the skull-stripped
     background stays 0); with ``nonzero`` false, from the whole volume.

Arrays: images (C, X, Y, Z) float32, labels (X, Y, Z) int16, affines 4x4 float64 voxel-to-mm.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .nifti import spacing_of

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def nonzero_box(image: np.ndarray, margin: int = 0) -> Box:
    """[start, stop) per spatial axis of the voxels where any channel of a (C, X, Y, Z) image is != 0,
    widened by ``margin`` voxels (clipped to the volume). The whole volume when everything is zero."""
    mask = np.any(image != 0, axis=0)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        n = mask.shape[axis]
        if hit.size == 0:
            box.append((0, n))
        else:
            box.append((max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, n)))
    return tuple(box)


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """The box of an (..., X, Y, Z) array."""
    (x0, x1), (y0, y1), (z0, z1) = box
    return array[..., x0:x1, y0:y1, z0:z1]


def uncrop(array: np.ndarray, box: Box, shape: tuple[int, int, int], fill=0) -> np.ndarray:
    """Put an (..., x, y, z) array cropped with ``box`` back into a volume of spatial ``shape``."""
    out = np.full(array.shape[:-3] + tuple(shape), fill, dtype=array.dtype)
    (x0, x1), (y0, y1), (z0, z1) = box
    out[..., x0:x1, y0:y1, z0:z1] = array
    return out


def crop_affine(affine: np.ndarray, box: Box) -> np.ndarray:
    """Affine of the cropped grid: voxel 0 of the crop is voxel ``start`` of the original."""
    shift = np.eye(4)
    shift[:3, 3] = [b[0] for b in box]
    return np.asarray(affine, dtype=np.float64) @ shift


def resampled_shape(shape, spacing, target) -> tuple[int, int, int]:
    """Grid size that keeps the field of view: round(n * spacing / target), at least 1."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target))


def resample(array: np.ndarray, affine: np.ndarray, target_spacing, order: int, shape=None):
    """Resample an (X, Y, Z) or (C, X, Y, Z) array to ``target_spacing`` (mm, one per axis).

    Returns (array, new affine). Output voxel i sits at input voxel coordinate r*i + (r - 1)/2 with
    r = target/spacing, so both grids cover the same field of view. ``order`` 3 (cubic spline) for
    images, 0 (nearest) for labels. ``shape`` forces the output grid size (used to go back to an
    original grid, :func:`restore_labels`)."""
    try:
        from scipy import ndimage
    except ImportError as exc:
        raise RuntimeError("resampling to a target spacing needs scipy (pip install 'scipy>=1.10')") from exc

    spacing = np.array(spacing_of(affine))
    target = np.array([float(t) for t in target_spacing])
    if target.shape != (3,) or np.any(target <= 0):
        raise ValueError(f"target_spacing must be three positive numbers in mm, got {target_spacing}")
    if np.any(spacing <= 0):
        raise ValueError(f"the affine has a zero-length voxel axis (spacing {tuple(spacing)}): cannot resample")
    in_shape = array.shape[-3:]
    out_shape = tuple(shape) if shape is not None else resampled_shape(in_shape, spacing, target)
    ratio = np.array(in_shape) / np.array(out_shape)  # = target/spacing up to rounding of the grid size
    offset = (ratio - 1) / 2
    m = np.eye(4)
    m[:3, :3] = np.diag(ratio)
    m[:3, 3] = offset
    new_affine = np.asarray(affine, dtype=np.float64) @ m
    if tuple(in_shape) == tuple(out_shape):
        return array.copy(), new_affine

    def one(vol):
        return ndimage.affine_transform(
            vol, ratio, offset=offset, output_shape=out_shape, order=order, mode="nearest", prefilter=order > 1
        )

    if array.ndim == 3:
        return one(array), new_affine
    return np.stack([one(c) for c in array]), new_affine


_INTENSITY_KEYS = {"none": {"kind"}, "ct": {"kind", "window", "mean", "std"}, "zscore": {"kind", "nonzero"}}


def _finite(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def check_intensity(intensity) -> None:
    """ValueError naming the setting unless ``intensity`` is a valid intensity dict (module docstring):
    a known ``kind`` and only its keys; for "ct" a ``window`` of two finite numbers low < high (a window
    [a, a] would divide by zero, a reversed one map everything to one value) and, when given, a finite
    ``mean`` with a finite ``std`` > 0 (both or neither); for "zscore" a boolean ``nonzero``."""
    if not isinstance(intensity, dict):
        raise ValueError(f"intensity must be a dict with a 'kind', got {intensity!r}")
    kind = intensity.get("kind", "none")
    if kind not in _INTENSITY_KEYS:
        raise ValueError(f"intensity kind must be 'none', 'ct' or 'zscore', got {kind!r}")
    unknown = sorted(set(intensity) - _INTENSITY_KEYS[kind])
    if unknown:
        raise ValueError(
            f"intensity {kind!r} has unknown key(s) {unknown}; it takes {sorted(_INTENSITY_KEYS[kind])}"
        )
    if kind == "ct":
        window = intensity.get("window")
        bounds = [_finite(v) for v in window] if isinstance(window, (list, tuple)) and len(window) == 2 else None
        if bounds is None or None in bounds or not bounds[0] < bounds[1]:
            raise ValueError(
                "intensity 'ct' needs window: [low, high] (nas3d train: --ct-window LOW HIGH) with two finite "
                f"numbers, low < high, in HU; got {window!r}"
            )
        if ("mean" in intensity) != ("std" in intensity):
            raise ValueError(
                f"intensity 'ct' takes 'mean' and 'std' together (standardise after clipping) or neither, "
                f"got only {'mean' if 'mean' in intensity else 'std'}={intensity.get('mean', intensity.get('std'))!r}"
            )
        if "mean" in intensity:
            mean, std = _finite(intensity["mean"]), _finite(intensity["std"])
            if mean is None or std is None or std <= 0:
                raise ValueError(
                    "intensity 'ct' needs a finite 'mean' and a finite 'std' > 0, got "
                    f"mean={intensity['mean']!r}, std={intensity['std']!r}"
                )
    if kind == "zscore" and not isinstance(intensity.get("nonzero", True), bool):
        raise ValueError(f"intensity 'zscore': nonzero must be true or false, got {intensity['nonzero']!r}")


def normalise_intensity(image: np.ndarray, intensity: dict, mask: np.ndarray | None = None) -> np.ndarray:
    """Intensity step on a (C, X, Y, Z) float32 image (see the module docstring). ``mask`` (X, Y, Z) bool is
    the non-zero region for ``zscore`` with ``nonzero``; computed from the image when None. ValueError for
    settings that :func:`check_intensity` refuses."""
    check_intensity(intensity)
    kind = intensity.get("kind", "none")
    image = image.astype(np.float32, copy=True)
    if kind == "none":
        return image
    if kind == "ct":
        low, high = (float(v) for v in intensity["window"])
        np.clip(image, low, high, out=image)
        if "mean" in intensity and "std" in intensity:
            return (image - float(intensity["mean"])) / float(intensity["std"])
        return (image - low) / (high - low)
    if kind == "zscore":
        if intensity.get("nonzero", True):
            if mask is None:
                mask = np.any(image != 0, axis=0)
            for c in range(image.shape[0]):
                values = image[c][mask]
                if values.size:
                    std = values.std()
                    image[c] = (image[c] - values.mean()) / (std if std > 0 else 1.0)
                image[c][~mask] = 0
            return image
        for c in range(image.shape[0]):
            std = image[c].std()
            image[c] = (image[c] - image[c].mean()) / (std if std > 0 else 1.0)
        return image
    raise ValueError(f"intensity kind must be 'none', 'ct' or 'zscore', got {kind!r}")


@dataclass(frozen=True)
class Preprocessing:
    """Settings of :func:`preprocess_case`. ``spacing``: target voxel size in mm or None (keep the grid);
    ``intensity``: dict (module docstring); ``crop_nonzero``: crop to the non-zero region first."""

    spacing: tuple[float, float, float] | None = None
    intensity: dict = field(default_factory=lambda: {"kind": "zscore", "nonzero": True})
    crop_nonzero: bool = True

    def __post_init__(self):
        if self.spacing is not None:
            sp = tuple(float(s) for s in self.spacing)
            if len(sp) != 3 or min(sp) <= 0:
                raise ValueError(f"Preprocessing.spacing must be three positive numbers in mm, got {self.spacing}")
            object.__setattr__(self, "spacing", sp)
        if not isinstance(self.intensity, dict) or self.intensity.get("kind") not in ("none", "ct", "zscore"):
            raise ValueError(
                f"Preprocessing.intensity must be a dict with kind 'none', 'ct' or 'zscore', got {self.intensity!r}"
            )
        try:
            check_intensity(self.intensity)
        except ValueError as exc:
            raise ValueError(f"Preprocessing.intensity: {exc}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spacing"] = list(self.spacing) if self.spacing is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        known = {"spacing", "intensity", "crop_nonzero"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"preprocessing settings have unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def key(self) -> str:
        """A short hash of the settings (names the on-disk cache)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class PreprocessedCase:
    """A case after :func:`preprocess_case`. ``image`` (C, X, Y, Z) float32; ``label`` (X, Y, Z) int16 or
    None; ``affine`` of the preprocessed grid; ``meta``: what :func:`restore_labels` needs
    (``original_shape``, ``original_affine``, ``box`` of the crop, ``cropped_shape``)."""

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    meta: dict

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_of(self.affine)


def preprocess_case(image: np.ndarray, affine: np.ndarray, label: np.ndarray | None, settings: Preprocessing):
    """Crop, resample and normalise one case (module docstring). Returns a PreprocessedCase."""
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {image.shape}")
    if label is not None and label.shape != image.shape[1:]:
        raise ValueError(f"label shape {label.shape} differs from the image's grid {image.shape[1:]}")
    original_shape = tuple(int(s) for s in image.shape[1:])
    box = nonzero_box(image) if settings.crop_nonzero else tuple((0, n) for n in original_shape)
    image, cropped_affine = crop(image, box), crop_affine(affine, box)
    label = crop(label, box) if label is not None else None
    mask = np.any(image != 0, axis=0)
    new_affine = cropped_affine
    if settings.spacing is not None:
        image, new_affine = resample(image.astype(np.float32), cropped_affine, settings.spacing, order=3)
        mask, _ = resample(mask.astype(np.uint8), cropped_affine, settings.spacing, order=0)
        mask = mask.astype(bool)
        if label is not None:
            label, _ = resample(label, cropped_affine, settings.spacing, order=0)
    image = normalise_intensity(image, settings.intensity, mask)
    meta = {
        "original_shape": list(original_shape),
        "original_affine": np.asarray(affine, dtype=np.float64).tolist(),
        "box": [list(b) for b in box],
        "cropped_shape": [b[1] - b[0] for b in box],
    }
    return PreprocessedCase(np.ascontiguousarray(image, dtype=np.float32), label, new_affine, meta)


def restore_labels(labels: np.ndarray, meta: dict) -> np.ndarray:
    """Put an (X, Y, Z) label map predicted on the preprocessed grid back on the original image's grid
    (nearest resampling to the cropped grid, then un-crop with background 0). Its affine is then
    ``meta["original_affine"]``."""
    cropped_shape = tuple(meta["cropped_shape"])
    box = tuple(tuple(b) for b in meta["box"])
    if labels.shape != cropped_shape:
        original_affine = np.asarray(meta["original_affine"])
        # Any affine with the preprocessed spacing works here: only the grid-size ratio is used.
        labels, _ = resample(labels, original_affine, (1.0, 1.0, 1.0), order=0, shape=cropped_shape)
    return uncrop(labels, box, tuple(meta["original_shape"]))


def restore_probabilities(probs: np.ndarray, meta: dict) -> np.ndarray:
    """The (X, Y, Z) label map on the original image's grid of (K, X, Y, Z) class probabilities predicted on
    the preprocessed grid: each class resampled linearly to the cropped grid, then the argmax (nnU-Net's
    way: smoother boundaries than resampling the labels), un-cropped with background 0."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 4:
        raise ValueError(f"restore_probabilities: probs must be (K, X, Y, Z), got shape {probs.shape}")
    cropped_shape = tuple(meta["cropped_shape"])
    if probs.shape[1:] != cropped_shape:
        original_affine = np.asarray(meta["original_affine"])
        probs, _ = resample(probs, original_affine, (1.0, 1.0, 1.0), order=1, shape=cropped_shape)
    labels = probs.argmax(0).astype(np.int16)
    return uncrop(labels, tuple(tuple(b) for b in meta["box"]), tuple(meta["original_shape"]))


def write_prediction(labels, meta: dict, path: str) -> np.ndarray:
    """Write a label map predicted on the preprocessed grid ((X, Y, Z) numpy array or tensor) to ``path``
    on the original image's grid with its affine (:func:`restore_labels`; written atomically, uint8 when
    the classes fit, else int16). Returns the restored array."""
    from .nifti import write_nifti

    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"write_prediction: labels must be (X, Y, Z), got shape {labels.shape}")
    restored = restore_labels(labels, meta)
    dtype = np.uint8 if restored.size == 0 or (restored.min() >= 0 and restored.max() < 256) else np.int16
    write_nifti(restored.astype(dtype), np.asarray(meta["original_affine"]), path)
    return restored
