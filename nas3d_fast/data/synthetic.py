"""Synthetic MSD-layout datasets for fast tests: ellipsoid blobs in noise.

Each case is a volume of ``shape`` voxels with ``spacing`` mm (a non-trivial affine: the spacing on the
diagonal and an origin that differs per case), holding ``blobs`` random ellipsoids per foreground
class. Label = class index of the blob (later blobs overwrite earlier ones), 0 elsewhere. Image channel
``c`` = per-class mean intensity (class k: ``k * (1 + c) * contrast``) + Gaussian noise of standard
deviation 1 over the whole volume, so classes are separable but not trivially. Deterministic from
``seed``.
"""

from __future__ import annotations

import os

import numpy as np

from .nifti import write_json, write_nifti


def blob_case(rng: np.random.Generator, shape, num_classes: int, channels: int, blobs: int, contrast: float):
    """(image (C, X, Y, Z) float32, label (X, Y, Z) uint8) of one synthetic case."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    label = np.zeros(shape, dtype=np.uint8)
    for k in range(1, num_classes):
        for _ in range(blobs):
            radii = rng.uniform(0.1, 0.22, size=3) * np.array(shape)
            centre = rng.uniform(0.25, 0.75, size=3) * np.array(shape)
            inside = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
            label[inside] = k
    image = np.stack(
        [
            label.astype(np.float32) * (1 + c) * contrast + rng.normal(0, 1, size=shape).astype(np.float32)
            for c in range(channels)
        ]
    )
    return image, label


def make_synthetic(
    out: str,
    train: int = 4,
    test: int = 1,
    shape=(32, 32, 32),
    num_classes: int = 2,
    channels: int = 1,
    spacing=(1.5, 1.5, 2.0),
    blobs: int = 2,
    contrast: float = 2.0,
    validation: int = 0,
    seed: int = 0,
) -> str:
    """Write an MSD-layout dataset to ``out`` (created; existing files of the same names are replaced).
    ``num_classes`` counts background; ``channels`` > 1 writes 4D images; ``validation`` > 0 records
    the last that many training cases as the fixed 'validation' split. Returns ``out``."""
    if train < 1 or num_classes < 2 or channels < 1 or len(shape) != 3 or not 0 <= validation < train:
        raise ValueError(
            f"make_synthetic: need train >= 1, num_classes >= 2, channels >= 1, a 3D shape and "
            f"0 <= validation < train; got train={train}, num_classes={num_classes}, channels={channels}, "
            f"shape={shape}, validation={validation}"
        )
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    training, tests = [], []
    for i in range(train + test):
        image, label = blob_case(rng, tuple(shape), num_classes, channels, blobs, contrast)
        affine = np.diag([*map(float, spacing), 1.0])
        affine[:3, 3] = [-10.0 * i, 5.0, 2.5 * i]
        name = f"blob_{i:03d}.nii.gz"
        if i < train:
            write_nifti(image if channels > 1 else image[0], affine, os.path.join(out, "imagesTr", name))
            write_nifti(label, affine, os.path.join(out, "labelsTr", name))
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            write_nifti(image if channels > 1 else image[0], affine, os.path.join(out, "imagesTs", name))
            tests.append(f"./imagesTs/{name}")
    meta = {
        "name": "synthetic-blobs",
        "description": "ellipsoid blobs in Gaussian noise (nas3d_fast.data.synthetic)",
        "tensorImageSize": "4D" if channels > 1 else "3D",
        "modality": {str(c): f"synthetic{c}" for c in range(channels)},
        "labels": {"0": "background", **{str(k): f"blob{k}" for k in range(1, num_classes)}},
        "numTraining": train,
        "numTest": test,
        "training": training,
        "test": tests,
        "generator": {"seed": seed, "shape": list(shape), "spacing": list(spacing), "blobs": blobs},
    }
    if validation:
        meta["validation"] = [e["image"].split("/")[-1].replace(".nii.gz", "") for e in training[-validation:]]
    write_json(meta, os.path.join(out, "dataset.json"))
    return out
