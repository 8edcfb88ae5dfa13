"""MSD layout: the index, bad-data errors naming the file, folds, datasets with affines, cache, workers."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from nas3d_fast import data
from nas3d_fast.data.nifti import write_nifti


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return data.make_synthetic(str(tmp_path_factory.mktemp("blobs")), train=5, test=1, shape=(20, 18, 16), seed=3)


def _copy(src, tmp_path):
    dst = str(tmp_path / "ds")
    shutil.copytree(src, dst)
    return dst


def _edit_json(root, fn):
    path = os.path.join(root, "dataset.json")
    with open(path) as f:
        meta = json.load(f)
    fn(meta)
    with open(path, "w") as f:
        json.dump(meta, f)


def test_index_reads_dataset_json(blobs):
    index = data.MSDIndex(blobs)
    assert [c.id for c in index.training] == [f"blob_{i:03d}" for i in range(5)]
    assert [c.id for c in index.test] == ["blob_005"]
    assert index.labels == {0: "background", 1: "blob1"} and index.num_classes == 2 and index.in_channels == 1
    assert all(os.path.isfile(c.image) and os.path.isfile(c.label) for c in index.training)


def test_index_without_json_pairs_folders(blobs, tmp_path):
    root = _copy(blobs, tmp_path)
    os.remove(os.path.join(root, "dataset.json"))
    index = data.MSDIndex(root)
    assert len(index.training) == 5 and len(index.test) == 1


def test_missing_label_names_the_image(blobs, tmp_path):
    root = _copy(blobs, tmp_path)
    os.remove(os.path.join(root, "labelsTr", "blob_002.nii.gz"))
    with pytest.raises(ValueError, match=r"labelsTr/blob_002\.nii\.gz.*imagesTr/blob_002\.nii\.gz"):
        data.MSDIndex(root)
    os.remove(os.path.join(root, "dataset.json"))
    with pytest.raises(ValueError, match=r"imagesTr/blob_002\.nii\.gz has no label"):
        data.MSDIndex(root)


def test_json_listing_a_missing_file_names_it(blobs, tmp_path):
    root = _copy(blobs, tmp_path)
    _edit_json(
        root, lambda m: m["training"].append({"image": "./imagesTr/ghost.nii.gz", "label": "./labelsTr/ghost.nii.gz"})
    )
    with pytest.raises(ValueError, match=r"imagesTr/ghost\.nii\.gz, which does not exist"):
        data.MSDIndex(root)


def test_non_nifti_file_is_named(blobs, tmp_path):
    root = _copy(blobs, tmp_path)
    with open(os.path.join(root, "imagesTr", "notes.txt"), "w") as f:
        f.write("x")
    _edit_json(
        root, lambda m: m["training"].append({"image": "./imagesTr/notes.txt", "label": "./labelsTr/blob_000.nii.gz"})
    )
    with pytest.raises(ValueError, match=r"imagesTr/notes\.txt, which is not a NIfTI file"):
        data.MSDIndex(root)
    # a file with a NIfTI name but other content
    with open(os.path.join(root, "labelsTr", "blob_001.nii.gz"), "wb") as f:
        f.write(b"not a nifti at all")
    _edit_json(root, lambda m: m["training"].pop())
    with pytest.raises(ValueError, match=r"label .*labelsTr/blob_001\.nii\.gz is not a readable NIfTI"):
        data.MSDIndex(root)


def test_shape_mismatch_names_both_files(blobs, tmp_path):
    root = _copy(blobs, tmp_path)
    write_nifti(np.zeros((20, 18, 15), np.uint8), np.eye(4), os.path.join(root, "labelsTr", "blob_004.nii.gz"))
    with pytest.raises(
        ValueError, match=r"label .*labelsTr/blob_004\.nii\.gz has shape \(20, 18, 15\).*imagesTr/blob_004"
    ):
        data.MSDIndex(root)


def test_kfold_is_deterministic_disjoint_and_covers():
    ids = [f"c{i}" for i in range(13)]
    folds = data.kfold(ids, k=5, seed=7)
    assert folds == data.kfold(list(reversed(ids)), k=5, seed=7)  # order of listing does not matter
    assert folds != data.kfold(ids, k=5, seed=8)
    vals = [v for _, v in folds]
    assert sorted(i for v in vals for i in v) == sorted(ids)  # every case validated exactly once
    assert sorted(len(v) for v in vals) == [2, 2, 3, 3, 3]
    for train, val in folds:
        assert not set(train) & set(val) and sorted(train + val) == sorted(ids)
    with pytest.raises(ValueError, match="k=5"):
        data.kfold(ids[:3], k=5)


def test_split_prefers_the_json_validation(tmp_path):
    root = data.make_synthetic(str(tmp_path / "s"), train=4, test=0, shape=(8, 8, 8), validation=1)
    index = data.MSDIndex(root)
    assert data.split(index) == (["blob_000", "blob_001", "blob_002"], ["blob_003"])
    train, val = data.split(index, fold=1, k=2, seed=0)
    assert len(val) == 2 and not set(train) & set(val)


def test_volume_dataset_keeps_affine_and_spacing(blobs):
    ds = data.VolumeDataset(blobs, ["blob_001"], data.Preprocessing(crop_nonzero=False), cache_dir=None)
    item = ds[0]
    img = __import__("nibabel").load(os.path.join(blobs, "imagesTr", "blob_001.nii.gz"))
    assert torch.allclose(item["affine"], torch.as_tensor(img.affine))
    assert item["spacing"].tolist() == pytest.approx([1.5, 1.5, 2.0])
    assert item["image"].shape == (1, 20, 18, 16) and item["label"].shape == (1, 20, 18, 16)
    assert item["label"].dtype == torch.int64 and set(item["label"].unique().tolist()) <= {0, 1}


def test_multichannel_4d_images(tmp_path):
    root = data.make_synthetic(str(tmp_path / "mc"), train=2, test=0, shape=(10, 12, 8), channels=3, num_classes=3)
    index = data.MSDIndex(root)
    assert index.in_channels == 3 and index.num_classes == 3
    item = data.VolumeDataset(root, cache_dir=None)[1]
    assert item["image"].shape == (3, 10, 12, 8)
    image, _ = data.read_image(index.training[1].image)
    # channel c of the generator is label * (1 + c) * contrast + noise: channels differ in class contrast
    lab = item["label"][0].numpy()
    means = [image[c][lab == 2].mean() - image[c][lab == 0].mean() for c in range(3)]
    assert means[0] < means[1] < means[2]


def test_cache_is_written_reused_and_rebuilt_when_stale(blobs, tmp_path):
    root = _copy(blobs, tmp_path)
    pre = data.Preprocessing(spacing=(3.0, 3.0, 3.0))
    ds = data.VolumeDataset(root, ["blob_000"], pre)
    first = ds[0]
    cache_dir = os.path.join(root, ".nas3d_cache", pre.key())
    names = sorted(os.listdir(cache_dir))
    assert names == ["blob_000.image.npy", "blob_000.json", "blob_000.label.npy"]
    again = data.VolumeDataset(root, ["blob_000"], pre)[0]  # from the cache (memory-mapped)
    assert torch.equal(first["image"], again["image"]) and torch.allclose(first["affine"], again["affine"])
    assert isinstance(data.VolumeDataset(root, ["blob_000"], pre).case(0).image, np.memmap)
    # other settings, other folder
    data.VolumeDataset(root, ["blob_000"], data.Preprocessing())[0]
    assert len(os.listdir(os.path.join(root, ".nas3d_cache"))) == 2
    # a changed source file makes the entry stale
    image, affine = data.read_image(os.path.join(root, "imagesTr", "blob_000.nii.gz"))
    write_nifti(image[0] * 0 + 5.0, affine, os.path.join(root, "imagesTr", "blob_000.nii.gz"))
    rebuilt = data.VolumeDataset(
        root, ["blob_000"], data.Preprocessing(spacing=(3.0, 3.0, 3.0), intensity={"kind": "none"})
    )
    assert torch.allclose(rebuilt[0]["image"], torch.tensor(5.0))
    assert not [n for n in os.listdir(cache_dir) if n.startswith(".tmp-")]


def test_patch_dataset_with_workers_is_deterministic_and_balanced(blobs):
    vols = data.VolumeDataset(blobs, preprocessing=data.Preprocessing(), cache_dir=None)
    patches = data.PatchDataset(vols, (8, 8, 8), samples_per_epoch=8, seed=5, augment=data.Augmentations(p=0.5))
    pickle.loads(pickle.dumps(patches))  # workers under spawn need this

    def run(workers):
        loader = torch.utils.data.DataLoader(patches, batch_size=4, num_workers=workers)
        return [b for b in loader]

    serial, parallel = run(0), run(2)
    for a, b in zip(serial, parallel):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    fg = torch.cat([(b["label"].flatten(1) > 0).any(1) for b in serial])
    assert fg[0::2].all()  # even samples are foreground draws (1:1), they always contain foreground
    patches.set_epoch(1)
    other = run(0)
    assert not torch.equal(other[0]["image"], serial[0]["image"])
