"""NIfTI segmentation data for nas3d_fast: MSD-layout datasets, preprocessing, patches, augmentation,
and two dataset builders (real MRI from the MNI152 template, synthetic blobs).

Public API (arrays: images (C, X, Y, Z) float32, labels (X, Y, Z) integers, affines 4x4 voxel-to-mm)::

    MSDIndex(root)                          # dataset.json / imagesTr / labelsTr / imagesTs, checked (msd.py)
    kfold(ids, k=5, seed=0), split(index, fold=None)   # deterministic CV folds; dataset.json's split (folds.py)
    Preprocessing(spacing=None, intensity={"kind": "zscore", "nonzero": True}, crop_nonzero=True)
    preprocess_case(image, affine, label, settings) -> PreprocessedCase   # crop, resample, normalise
    restore_labels(pred, meta)              # prediction on the preprocessed grid -> original grid
    resample, normalise_intensity, nonzero_box, crop, uncrop    # the single steps (preprocess.py)
    VolumeDataset(root, ids, preprocessing, cache_dir)  # whole cases, dicts with image/label/affine/spacing/meta
    PatchDataset(volumes, patch_size, samples_per_epoch, ratio=(1, 1), seed, augment)  # random patches
    sample_patch(image, label, size, foreground, rng)    # one patch (sampler.py)
    Augmentations(p=0.15, ...)              # T-AutoML §3.2 augmentations on CPU/GPU tensors (augment.py)
    build_mni152(out, subjects=8, val=2, spacing=2.0, seed=0)  # `nas3d data mni152` (mni152.py)
    make_synthetic(out, train=4, test=1, shape=(32, 32, 32))   # `nas3d data synthetic` (synthetic.py)
    read_image, read_label, write_nifti     # NIfTI I/O with affines; writes are atomic (nifti.py)

Typical training input::

    from nas3d_fast import data
    index = data.MSDIndex("mni")
    train_ids, val_ids = data.split(index)              # dataset.json's 'validation', else fold 0 of 5
    pre = data.Preprocessing(spacing=None, intensity={"kind": "zscore", "nonzero": True})
    train = data.VolumeDataset("mni", train_ids, pre)
    patches = data.PatchDataset(train, (64, 64, 64), samples_per_epoch=32, seed=0,
                                augment=data.Augmentations())
    loader = torch.utils.data.DataLoader(patches, batch_size=2, num_workers=2)
    # each epoch: patches.set_epoch(epoch); batches are dicts: image (N, C, *patch), label (N, 1, *patch)
"""

from .augment import Augmentations
from .dataset import PatchDataset, VolumeDataset
from .folds import kfold, split
from .mni152 import build_mni152
from .msd import Case, MSDIndex
from .nifti import read_image, read_label, spacing_of, write_nifti
from .preprocess import (
    PreprocessedCase,
    Preprocessing,
    crop,
    nonzero_box,
    normalise_intensity,
    preprocess_case,
    resample,
    restore_labels,
    uncrop,
)
from .sampler import sample_patch
from .synthetic import make_synthetic

__all__ = [
    "Augmentations",
    "Case",
    "MSDIndex",
    "PatchDataset",
    "PreprocessedCase",
    "Preprocessing",
    "VolumeDataset",
    "build_mni152",
    "crop",
    "kfold",
    "make_synthetic",
    "nonzero_box",
    "normalise_intensity",
    "preprocess_case",
    "read_image",
    "read_label",
    "resample",
    "restore_labels",
    "sample_patch",
    "spacing_of",
    "split",
    "uncrop",
    "write_nifti",
]
