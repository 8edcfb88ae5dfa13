"""The Medical Segmentation Decathlon layout: an index of cases, checked before anything is trained.

A dataset folder holds::

    dataset.json    {"name", "modality": {"0": "T1", ...}, "labels": {"0": "background", ...},
                     "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}, ...],
                     "test": ["./imagesTs/b.nii.gz", ...],
                     "validation": ["a", ...]   (optional, nas3d_fast's extension: case ids of a fixed split)}
    imagesTr/       images: 3D NIfTI, or 4D with channels (modalities) on the 4th axis
    labelsTr/       label maps: 3D integer NIfTI on the image's grid
    imagesTs/       test images (no labels)

Without a ``dataset.json`` the index pairs ``imagesTr/NAME`` with ``labelsTr/NAME``. A case id is the
file name without ``.nii``/``.nii.gz``. Every problem is a ValueError naming the file: an entry whose
file is missing, a non-NIfTI file, an image without its label, image and label of different shapes (read
from the NIfTI headers, so checking is cheap).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .nifti import is_nifti_name


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


def _header_shape(path: str, what: str) -> tuple[int, ...]:
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
    return tuple(int(s) for s in img.shape)


class MSDIndex:
    """The cases of an MSD-layout folder ``root``, checked on construction.

    Attributes: ``root``, ``name``, ``labels`` ({class index: name}), ``modality`` ({channel: name}),
    ``training`` (list of Case with labels), ``test`` (list of Case without), ``validation_ids`` (the
    fixed split from dataset.json, or None), ``num_classes`` and ``in_channels``.
    """

    def __init__(self, root: str, check: bool = True):
        if not os.path.isdir(root):
            raise ValueError(f"dataset folder {root} does not exist")
        self.root = os.path.abspath(root)
        meta_path = os.path.join(self.root, "dataset.json")
        if os.path.exists(meta_path):
            self._from_json(meta_path)
        else:
            self._from_folders()
        ids = [c.id for c in self.training]
        if len(set(ids)) != len(ids):
            raise ValueError(f"dataset {self.root} lists a training case id twice")
        if self.validation_ids is not None:
            unknown = sorted(set(self.validation_ids) - set(ids))
            if unknown:
                raise ValueError(f"{meta_path}: 'validation' names cases that are not in 'training': {unknown}")
        self.in_channels = max(len(self.modality), 1)
        self.num_classes = max(int(k) for k in self.labels) + 1 if self.labels else 0
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
        self.labels = {int(k): str(v) for k, v in meta.get("labels", {}).items()}
        self.modality = {int(k): str(v) for k, v in meta.get("modality", {}).items()}
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
        self.modality, self.labels = {}, {}
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
        test_dir = os.path.join(self.root, "imagesTs")
        names = sorted(n for n in os.listdir(test_dir) if not n.startswith(".")) if os.path.isdir(test_dir) else []
        self.test = [Case(case_id(n), os.path.join(test_dir, n)) for n in names]
        self.validation_ids = None

    def check(self) -> None:
        """Header-only checks of every file: NIfTI, 3D/4D images, label shape equal to the image's grid."""
        for case in self.training:
            shape = _header_shape(case.image, "image")
            if len(shape) not in (3, 4):
                raise ValueError(f"image {case.image} must be 3D or 4D (channels last), got shape {shape}")
            lshape = _header_shape(case.label, "label")
            if lshape[:3] != shape[:3] or (len(lshape) == 4 and lshape[3] != 1) or len(lshape) > 4:
                raise ValueError(
                    f"label {case.label} has shape {lshape}, image {case.image} has shape {shape}: "
                    "they must share the spatial grid"
                )
        for case in self.test:
            _header_shape(case.image, "test image")

    def case(self, case_id_: str) -> Case:
        for c in self.training + self.test:
            if c.id == case_id_:
                return c
        raise ValueError(f"dataset {self.root} has no case {case_id_!r}")

    def __repr__(self) -> str:
        return f"MSDIndex({self.root!r}, training={len(self.training)}, test={len(self.test)})"
