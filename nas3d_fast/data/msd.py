"""The Medical Segmentation Decathlon layout: an index of cases, validated before anything is trained.

A dataset folder holds::

    dataset.json    {"name", "modality": {"0": "T1", ...}, "labels": {"0": "background", ...},
                     "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}, ...],
                     "test": ["./imagesTs/b.nii.gz", ...],
                     "validation": ["a", ...]   (optional, nas3d_fast's extension: case ids of a fixed split)}
    imagesTr/       images: 3D NIfTI, or 4D with channels (modalities) on the 4th axis
    labelsTr/       label maps: 3D integer NIfTI on the image's grid (same shape, same affine)
    imagesTs/       test images (no labels)

Without a ``dataset.json`` the index pairs ``imagesTr/NAME`` with ``labelsTr/NAME``. A case id is the
file name without ``.nii``/``.nii.gz``.

The dataset is validated once, here, when it is indexed (:meth:`MSDIndex.check`); every problem is a
ValueError naming the file and what was expected:

- every listed file exists and is NIfTI; images are 3D or 4D (channels last), labels 3D;
- a label has its image's spatial shape and affine: the world positions of the grid's corner voxels
  under the two affines differ by at most ``affine_tolerance`` (default :data:`AFFINE_TOLERANCE`, a
  hundredth) of the image's smallest voxel side, so a label mirrored or shifted against its image is
  refused while float rounding in the headers is not;
- every image (training and test) has the channels that ``modality`` declares;
- the classes: ``labels`` must number them 0, 1, ..., K-1 without gaps, K >= 2 (output channel k of a
  network is class k, so ``num_classes`` = K = ``len(labels)``); every label map holds only values
  below K (read from the voxels, once per file and process).

What ``dataset.json`` does not declare is inferred from the files, so a dataset without one (or without
``modality``/``labels``) trains too: the channels from the images (which must all agree; ``modality``
becomes ``{c: "channel<c>"}``), and the classes as 0 .. the largest label value (every value in between
must occur in some label map, else the numbering has a gap and the error asks for a ``labels`` entry;
``labels`` becomes ``{0: "background", k: "class<k>"}``).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass

import numpy as np

from .nifti import is_nifti_name, read_label, spacing_of

#: Largest distance, as a fraction of the image's smallest voxel side, between the world positions that
#: an image's and its label's affines give the same corner voxel.
AFFINE_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Case:
    """One training case: its id and file paths (label None for test images)."""

    id: str
    image: str
    label: str | None = None


def case_id(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _header(path: str, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, affine) from a NIfTI header (the voxels are not read)."""
    import nibabel as nib

    if not is_nifti_name(path):
        raise ValueError(f"{what} {path} is not a NIfTI file (expected a name ending in .nii or .nii.gz)")
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path} does not exist")
    try:
        img = nib.load(path)
    except Exception as exc:
        raise ValueError(f"{what} {path} is not a readable NIfTI file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{what} {path} is a {type(img).__name__}, not NIfTI")
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)


def image_channels(path: str, shape: tuple[int, ...], what: str = "image") -> int:
    """Channels of an image of NIfTI ``shape`` (3D: 1; 4D: the 4th axis). ValueError naming ``path``
    for another number of axes or an empty grid."""
    if len(shape) not in (3, 4):
        raise ValueError(f"{what} {path} must be 3D or 4D (channels last), got shape {shape}")
    if min(shape) < 1:
        raise ValueError(f"{what} {path} has an empty axis: shape {shape}")
    return 1 if len(shape) == 3 else shape[3]


def check_affine(path: str, affine: np.ndarray, what: str = "image") -> None:
    """ValueError naming ``path`` unless the affine is finite with three non-zero, independent axes."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{what} {path} has a non-finite affine {affine.tolist()}")
    spacing = spacing_of(affine)
    if min(spacing) <= 0 or abs(np.linalg.det(affine[:3, :3])) <= 1e-12 * max(spacing) ** 3:
        raise ValueError(
            f"{what} {path} has a degenerate affine (voxel sides {spacing} mm, axes not independent): "
            f"{affine.tolist()}"
        )


def affine_distance(a: np.ndarray, b: np.ndarray, shape) -> float:
    """Largest distance in mm between the world positions that affines ``a`` and ``b`` give the eight
    corner voxels of a grid of spatial ``shape``."""
    corners = np.array(list(itertools.product(*[(0, int(n) - 1) for n in shape[:3]])), dtype=np.float64).T
    wa = np.asarray(a)[:3, :3] @ corners + np.asarray(a)[:3, 3:4]
    wb = np.asarray(b)[:3, :3] @ corners + np.asarray(b)[:3, 3:4]
    return float(np.sqrt(((wa - wb) ** 2).sum(0)).max())


def check_same_grid(
    image_path: str,
    image_shape,
    image_affine: np.ndarray,
    label_path: str,
    label_shape,
    label_affine: np.ndarray,
    tolerance: float = AFFINE_TOLERANCE,
) -> None:
    """ValueError naming both files unless the label lies on the image's grid: the same spatial shape
    (``image_shape``/``label_shape``: the NIfTI shapes, a label may carry a 4th axis of 1) and affines
    within ``tolerance`` voxel (:func:`affine_distance` over the image's smallest voxel side)."""
    image_shape, label_shape = tuple(image_shape), tuple(label_shape)
    if len(label_shape) == 4 and label_shape[3] == 1:
        label_shape = label_shape[:3]
    if len(label_shape) != 3 or label_shape != image_shape[:3]:
        raise ValueError(
            f"label {label_path} has shape {label_shape}, image {image_path} has shape {image_shape}: "
            "they must share the spatial grid"
        )
    check_affine(label_path, label_affine, "label")
    voxel = min(spacing_of(image_affine))
    distance = affine_distance(image_affine, label_affine, image_shape)
    if distance > tolerance * voxel:
        raise ValueError(
            f"label {label_path} is not on the grid of image {image_path}: their affines place the same "
            f"voxel up to {distance:.4g} mm ({distance / voxel:.3g} voxels) apart, more than the tolerance of "
            f"{tolerance:g} voxel (a label mirrored, shifted or resampled against its image would teach wrong "
            f"targets). Image affine {np.round(image_affine, 6).tolist()}, label affine "
            f"{np.round(label_affine, 6).tolist()}"
        )


_VALUES: dict[tuple, tuple[int, ...]] = {}


def label_values(path: str) -> tuple[int, ...]:
    """The sorted values present in the label map ``path`` (read once per file version and process).
    ValueError naming the file for a bad file or values that are not non-negative integers."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _VALUES:
        label, _ = read_label(path)
        counts = np.bincount(label.ravel().astype(np.int64)) if label.size else np.zeros(0, np.int64)
        _VALUES[key] = tuple(int(v) for v in np.flatnonzero(counts))
    return _VALUES[key]


def check_label_values(path: str, values, num_classes: int, declared: str) -> None:
    """ValueError naming the label file when it holds a value outside 0 .. ``num_classes`` - 1
    (``declared``: where the classes come from, for the message)."""
    outside = sorted(int(v) for v in values if not 0 <= int(v) < num_classes)
    if outside:
        raise ValueError(
            f"label {path} holds value(s) {outside}, outside the classes 0..{num_classes - 1} of {declared}"
        )


def _numbered(entries, meta_path: str, key: str) -> dict[int, str]:
    if not isinstance(entries, dict):
        raise ValueError(f"{meta_path}: '{key}' must be an object {{\"0\": name, ...}}, got {entries!r}")
    out = {}
    for k, v in entries.items():
        try:
            i = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"{meta_path}: '{key}' keys must be integers, got {k!r}") from None
        if i in out:
            raise ValueError(f"{meta_path}: '{key}' lists {i} twice")
        out[i] = str(v)
    return dict(sorted(out.items()))


class MSDIndex:
    """The cases of an MSD-layout folder ``root``, validated on construction (module docstring).

    Attributes: ``root``, ``name``, ``labels`` ({class index: name}, 0 .. num_classes - 1), ``modality``
    ({channel: name}), ``training`` (list of Case with labels), ``test`` (list of Case without),
    ``validation_ids`` (the fixed split from dataset.json, or None), ``num_classes`` and ``in_channels``
    (= ``len(labels)`` and ``len(modality)``), ``declared`` (which of "modality" and "labels" come from
    dataset.json rather than the files).

    ``check=False`` skips reading the files (only dataset.json's structure is checked); what dataset.json
    does not declare is then unknown (``in_channels``/``num_classes`` None). ``affine_tolerance``: see
    :data:`AFFINE_TOLERANCE`.
    """

    def __init__(self, root: str, check: bool = True, affine_tolerance: float = AFFINE_TOLERANCE):
        if not os.path.isdir(root):
            raise ValueError(f"dataset folder {root} does not exist")
        if not (np.isfinite(affine_tolerance) and affine_tolerance >= 0):
            raise ValueError(f"affine_tolerance must be a number of voxels >= 0, got {affine_tolerance}")
        self.root = os.path.abspath(root)
        self.affine_tolerance = float(affine_tolerance)
        self.meta_path = os.path.join(self.root, "dataset.json")
        self.modality: dict[int, str] = {}
        self.labels: dict[int, str] = {}
        if os.path.exists(self.meta_path):
            self._from_json(self.meta_path)
        else:
            self._from_folders()
        self.declared = tuple(k for k, v in (("modality", self.modality), ("labels", self.labels)) if v)
        ids = [c.id for c in self.training]
        if len(set(ids)) != len(ids):
            raise ValueError(f"dataset {self.root} lists a training case id twice")
        if self.validation_ids is not None:
            unknown = sorted(set(self.validation_ids) - set(ids))
            if unknown:
                raise ValueError(
                    f"{self.meta_path}: 'validation' names cases that are not in 'training': {unknown}"
                )
        self._check_declarations()
        self.in_channels = len(self.modality) or None
        self.num_classes = len(self.labels) or None
        if check:
            self.check()

    def _resolve(self, rel: str, meta_path: str, what: str) -> str:
        if not isinstance(rel, str):
            raise ValueError(f"{meta_path}: {what} entry {rel!r} must be a path string")
        path = os.path.normpath(os.path.join(self.root, rel))
        if not is_nifti_name(path):
            raise ValueError(f"{meta_path} lists {what} {path}, which is not a NIfTI file (.nii or .nii.gz)")
        if not os.path.isfile(path):
            raise ValueError(f"{meta_path} lists {what} {path}, which does not exist")
        return path

    def _from_json(self, meta_path: str) -> None:
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{meta_path} is not readable JSON: {exc}") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
            raise ValueError(f"{meta_path} must hold an object with a 'training' list")
        self.name = str(meta.get("name", os.path.basename(self.root)))
        self.labels = _numbered(meta.get("labels", {}), meta_path, "labels")
        self.modality = _numbered(meta.get("modality", {}), meta_path, "modality")
        self.training = []
        for entry in meta["training"]:
            if not isinstance(entry, dict) or "image" not in entry:
                raise ValueError(f"{meta_path}: training entry {entry!r} needs an 'image'")
            image = self._resolve(entry["image"], meta_path, "image")
            if not entry.get("label"):
                raise ValueError(f"{meta_path}: training image {image} has no 'label'")
            label = os.path.normpath(os.path.join(self.root, entry["label"]))
            if not os.path.isfile(label):
                raise ValueError(f"label {label} for image {image} does not exist (listed in {meta_path})")
            label = self._resolve(entry["label"], meta_path, "label")
            self.training.append(Case(case_id(image), image, label))
        self.test = [
            Case(case_id(p), p) for p in (self._resolve(t, meta_path, "test image") for t in meta.get("test", []))
        ]
        val = meta.get("validation")
        self.validation_ids = [case_id(v) for v in val] if val is not None else None

    def _from_folders(self) -> None:
        images_dir = os.path.join(self.root, "imagesTr")
        if not os.path.isdir(images_dir):
            raise ValueError(f"dataset folder {self.root} has neither dataset.json nor imagesTr/")
        self.name = os.path.basename(self.root)
        self.training = []
        for name in sorted(os.listdir(images_dir)):
            if name.startswith("."):
                continue
            image = os.path.join(images_dir, name)
            if not is_nifti_name(name):
                raise ValueError(f"image {image} is not a NIfTI file (expected a name ending in .nii or .nii.gz)")
            label = os.path.join(self.root, "labelsTr", name)
            if not os.path.isfile(label):
                raise ValueError(f"image {image} has no label: {label} does not exist")
            self.training.append(Case(case_id(name), image, label))
        if not self.training:
            raise ValueError(f"dataset folder {self.root} has no dataset.json and no images in {images_dir}")
        test_dir = os.path.join(self.root, "imagesTs")
        names = sorted(n for n in os.listdir(test_dir) if not n.startswith(".")) if os.path.isdir(test_dir) else []
        self.test = [Case(case_id(n), os.path.join(test_dir, n)) for n in names]
        self.validation_ids = None

    def _check_declarations(self) -> None:
        """dataset.json's 'modality' and 'labels', before any file is read."""
        if self.modality and sorted(self.modality) != list(range(len(self.modality))):
            raise ValueError(
                f"{self.meta_path}: 'modality' must number the channels 0, 1, ..., C-1, got {sorted(self.modality)}"
            )
        if self.labels:
            keys = sorted(self.labels)
            if keys != list(range(len(keys))):
                gaps = sorted(set(range(max(keys) + 1)) - set(keys))
                raise ValueError(
                    f"{self.meta_path}: 'labels' must number the classes 0, 1, ..., K-1 without gaps (output "
                    f"channel k of the network is class k), got {keys}"
                    + (f" (missing {gaps})" if gaps else "")
                    + ": renumber the label maps and 'labels' to consecutive values"
                )
            if len(keys) < 2:
                raise ValueError(
                    f"{self.meta_path}: 'labels' must declare at least two classes (background 0 and one "
                    f"more), got {self.labels}"
                )

    def _declared(self, what: str) -> str:
        return f"{self.meta_path} '{what}'" if what in self.declared else f"the files of {self.root} (no '{what}' declared)"

    def check(self) -> None:
        """Validate every file (module docstring): headers (shapes, affines, channels) and label values.
        Fills ``modality``/``labels``, ``in_channels``/``num_classes`` from the files where dataset.json
        does not declare them."""
        first_image = None
        channels = len(self.modality) or None

        def check_channels(path: str, shape, what: str) -> None:
            nonlocal channels, first_image
            n = image_channels(path, shape, what)
            if channels is None:
                channels, first_image = n, path
            elif n != channels:
                if "modality" in self.declared:
                    expected = f"{self.meta_path} 'modality' declares {channels}: {self.modality}"
                else:
                    expected = (
                        f"the first image {first_image} has {channels}, and without a 'modality' in "
                        "dataset.json all images must have the same channels"
                    )
                raise ValueError(f"{what} {path} has {n} channel(s) (shape {tuple(shape)}), {expected}")

        for case in self.training:
            shape, affine = _header(case.image, "image")
            check_channels(case.image, shape, "image")
            check_affine(case.image, affine)
            lshape, laffine = _header(case.label, "label")
            check_same_grid(case.image, shape, affine, case.label, lshape, laffine, self.affine_tolerance)
        for case in self.test:
            shape, affine = _header(case.image, "test image")
            check_channels(case.image, shape, "test image")
            check_affine(case.image, affine, "test image")
        if not self.modality:
            self.modality = {c: f"channel{c}" for c in range(channels or 1)}
        self.in_channels = len(self.modality)

        values = {case.label: label_values(case.label) for case in self.training}
        if self.labels:
            for path, vals in values.items():
                check_label_values(path, vals, len(self.labels), self._declared("labels"))
        else:
            present = sorted(set().union(*values.values())) if values else [0]
            top = max(present)
            if top < 1:
                raise ValueError(
                    f"dataset {self.root}: every label map holds only background (0) and no dataset.json "
                    "'labels' declares the classes; declare them in dataset.json (at least two)"
                )
            gaps = sorted(set(range(top + 1)) - set(present))
            if gaps:
                holder = next(p for p, v in values.items() if top in v)
                raise ValueError(
                    f"dataset {self.root}: the label maps hold the values {present} (the largest, {top}, in "
                    f"{holder}), but {gaps} occur in none; with no 'labels' in dataset.json the classes are "
                    f"0..{top} without gaps: declare 'labels' in dataset.json or renumber the label maps"
                )
            self.labels = {0: "background", **{k: f"class{k}" for k in range(1, top + 1)}}
        self.num_classes = len(self.labels)

    def case(self, case_id_: str) -> Case:
        for c in self.training + self.test:
            if c.id == case_id_:
                return c
        raise ValueError(f"dataset {self.root} has no case {case_id_!r}")

    def __repr__(self) -> str:
        return f"MSDIndex({self.root!r}, training={len(self.training)}, test={len(self.test)})"
