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
    with pytest.raises(ValueError, match=r"4 training case\(s\) cannot be split into 5 .*'validation' list"):
        data.split(index, fold=0)


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


def test_unwritable_cache_falls_back_to_memory(blobs, tmp_path, monkeypatch):
    from nas3d_fast.data import cache

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache, "_save_npy", refuse)  # as in a read-only dataset folder
    ds = data.VolumeDataset(blobs, ["blob_000"], data.Preprocessing(), cache_dir=str(tmp_path / "c"))
    with pytest.warns(UserWarning, match="cannot write the preprocessing cache"):
        item = ds[0]
    assert item["image"].shape[0] == 1 and item["label"].any()
    assert os.listdir(str(tmp_path / "c" / data.Preprocessing().key())) == []  # nothing half-written


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
    ids = [i for b in serial for i in b["id"]]
    assert ids[0::2] == ids[1::2]  # a foreground and a background patch from each volume
    assert len(set(ids)) == 4  # 8 samples, 4 pairs: 4 different cases of the 5 in this epoch
    patches.set_epoch(1)
    other = run(0)
    assert not torch.equal(other[0]["image"], serial[0]["image"])


# --- issue 26: one validation of the dataset when it is indexed (defects 5, 6, 7, 12f) -------------------

TINY = dict(base_channels=2, depth=2, layers_per_stage=1)


def _tiny_train(root, out, steps=1):
    """train/run.py's train() for one or two steps of a tiny ronasmis on the CPU."""
    import warnings

    from nas3d_fast.train.run import DataSettings, train
    from nas3d_fast.train.trainer import TrainConfig

    config = TrainConfig(
        epochs=1, steps_per_epoch=steps, roi_size=(8, 8, 8), sw_batch_size=1, progress=False, device="cpu"
    )
    settings = DataSettings(patch=(8, 8, 8), batch_size=1, augment=0.0, max_val_cases=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train("ronasmis", "default", root, str(out), config, settings, TINY)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return data.make_synthetic(str(tmp_path_factory.mktemp("small")), train=3, test=1, shape=(12, 10, 9), seed=1)


def _rewrite_label(root, name, fn=None, affine=None):
    path = os.path.join(root, "labelsTr", name)
    lab, aff = data.read_label(path)
    lab = fn(lab) if fn is not None else lab
    write_nifti(lab.astype(np.uint8), aff if affine is None else affine, path)
    return path


def test_label_with_another_affine_is_refused_naming_both_files(small, tmp_path):
    """Defect 5: a label mirrored along x (same shape, flipped affine) was accepted and trained on."""
    root = _copy(small, tmp_path)
    _, aff = data.read_label(os.path.join(root, "labelsTr", "blob_001.nii.gz"))
    mirrored = aff @ np.array([[-1, 0, 0, 11], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    _rewrite_label(root, "blob_001.nii.gz", lambda lab: lab[::-1], affine=mirrored)
    pattern = r"label .*labelsTr/blob_001\.nii\.gz is not on the grid of image .*imagesTr/blob_001\.nii\.gz"
    with pytest.raises(ValueError, match=pattern):
        data.MSDIndex(root)
    # the cache reads both files and applies the same check, also for an index built without checking
    case = data.MSDIndex(root, check=False).case("blob_001")
    with pytest.raises(ValueError, match=pattern):
        data.cache.load_and_preprocess(case, data.Preprocessing())
    with pytest.raises(ValueError, match=pattern):
        data.cache.PreprocessedCache(str(tmp_path / "c"), data.Preprocessing()).get(case)
    # a shift by one voxel is refused too; float rounding of the header is not
    shifted = aff.copy()
    shifted[0, 3] += 1.5
    _rewrite_label(root, "blob_001.nii.gz", lambda lab: lab[::-1], affine=shifted)
    with pytest.raises(ValueError, match=r"1 voxels\) apart"):
        data.MSDIndex(root)
    rounded = aff + 1e-5
    _rewrite_label(root, "blob_001.nii.gz", affine=rounded)
    assert data.MSDIndex(root).num_classes == 2
    with pytest.raises(ValueError, match="tolerance of 0 voxel"):  # the tolerance is an argument
        data.MSDIndex(root, affine_tolerance=0)
    with pytest.raises(ValueError, match="affine_tolerance"):
        data.MSDIndex(root, affine_tolerance=-1)


def test_image_channels_are_checked_against_modality(small, tmp_path):
    """Defect 6: a 1-channel dataset declaring two modalities failed later in a convolution."""
    root = _copy(small, tmp_path)
    _edit_json(root, lambda m: m.update(modality={"0": "T1", "1": "T2"}))
    with pytest.raises(ValueError, match=r"image .*imagesTr/blob_000\.nii\.gz has 1 channel\(s\).*'modality' declares 2"):
        data.MSDIndex(root)
    with pytest.raises(ValueError, match=r"imagesTr/blob_000\.nii\.gz has 1 channel"):
        _tiny_train(root, tmp_path / "run")
    # a test image with other channels than the training images is named as well
    _edit_json(root, lambda m: m.update(modality={"0": "T1"}))
    image, affine = data.read_image(os.path.join(root, "imagesTs", "blob_003.nii.gz"))
    write_nifti(np.concatenate([image, image]), affine, os.path.join(root, "imagesTs", "blob_003.nii.gz"))
    with pytest.raises(ValueError, match=r"test image .*imagesTs/blob_003\.nii\.gz has 2 channel"):
        data.MSDIndex(root)
    _edit_json(root, lambda m: m.update(modality={"0": "T1", "2": "T2"}))
    with pytest.raises(ValueError, match=r"dataset\.json: 'modality' must number the channels 0, 1"):
        data.MSDIndex(root)


def test_label_values_are_checked_against_the_declared_classes(small, tmp_path):
    """Defect 7: class 3 in a 2-class dataset passed indexing and caching, then crashed in the loss."""
    root = _copy(small, tmp_path)

    def add_class_3(lab):
        lab[0, 0, 0] = 3
        return lab

    _rewrite_label(root, "blob_002.nii.gz", add_class_3)
    pattern = r"label .*labelsTr/blob_002\.nii\.gz holds value\(s\) \[3\], outside the classes 0\.\.1 of .*dataset\.json"
    with pytest.raises(ValueError, match=pattern):
        data.MSDIndex(root)
    with pytest.raises(ValueError, match=pattern):
        _tiny_train(root, tmp_path / "run")
    case = data.MSDIndex(root, check=False).case("blob_002")
    with pytest.raises(ValueError, match=r"labelsTr/blob_002\.nii\.gz holds value\(s\) \[3\]"):
        data.cache.load_and_preprocess(case, data.Preprocessing(), num_classes=2)


def test_non_consecutive_declared_labels_are_refused(small, tmp_path):
    """Defect 7: labels {0, 1, 2, 4} gave len(labels) = 4 classes in train/run.py but max + 1 = 5 in the index."""
    root = _copy(small, tmp_path)
    _edit_json(root, lambda m: m.update(labels={"0": "bg", "1": "a", "2": "b", "4": "c"}))
    with pytest.raises(ValueError, match=r"dataset\.json: 'labels' must number the classes 0, 1, \.\.\., K-1.*missing \[3\]"):
        data.MSDIndex(root)
    with pytest.raises(ValueError, match=r"'labels' must number the classes"):
        _tiny_train(root, tmp_path / "run")
    _edit_json(root, lambda m: m.update(labels={"0": "bg"}))
    with pytest.raises(ValueError, match=r"at least two classes"):
        data.MSDIndex(root)
    _edit_json(root, lambda m: m.update(labels={"0": "bg", "x": "a"}))
    with pytest.raises(ValueError, match=r"'labels' keys must be integers, got 'x'"):
        data.MSDIndex(root)
    # declared classes that no case holds are fine: num_classes counts the declaration
    _edit_json(root, lambda m: m.update(labels={"0": "bg", "1": "a", "2": "b"}))
    index = data.MSDIndex(root)
    assert index.num_classes == len(index.labels) == 3


def test_dataset_without_dataset_json_infers_channels_and_classes_and_trains(tmp_path):
    """Defect 12f: a dataset without dataset.json was indexed, then training blamed dataset.json."""
    root = data.make_synthetic(
        str(tmp_path / "nojson"), train=5, test=1, shape=(12, 10, 9), channels=2, num_classes=3, seed=2
    )
    os.remove(os.path.join(root, "dataset.json"))
    index = data.MSDIndex(root)
    assert index.in_channels == len(index.modality) == 2 and index.declared == ()
    assert index.num_classes == 3 and index.labels == {0: "background", 1: "class1", 2: "class2"}
    summary = _tiny_train(root, tmp_path / "run")
    assert summary["steps"] == 1
    from nas3d_fast.train.checkpoint import load_training_checkpoint

    ckpt = load_training_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))
    assert ckpt["meta"]["in_channels"] == 2 and ckpt["meta"]["num_classes"] == 3
    # what cannot be inferred is refused at index time, naming the files
    image, affine = data.read_image(os.path.join(root, "imagesTr", "blob_001.nii.gz"))
    write_nifti(image[0], affine, os.path.join(root, "imagesTr", "blob_001.nii.gz"))
    with pytest.raises(ValueError, match=r"image .*blob_001\.nii\.gz has 1 channel.*first image .*blob_000\.nii\.gz has 2"):
        data.MSDIndex(root)
    write_nifti(image, affine, os.path.join(root, "imagesTr", "blob_001.nii.gz"))
    for name in [f"blob_{i:03d}" for i in range(5)]:
        _rewrite_label(root, f"{name}.nii.gz", lambda lab: np.where(lab == 2, 4, lab))
    with pytest.raises(ValueError, match=r"hold the values \[0, 1, 4\].*\[2, 3\] occur in none.*declare 'labels'"):
        data.MSDIndex(root)
    for name in [f"blob_{i:03d}" for i in range(5)]:
        _rewrite_label(root, f"{name}.nii.gz", lambda lab: lab * 0)
    with pytest.raises(ValueError, match=r"only background"):
        data.MSDIndex(root)
