"""Preprocessing: resampling keeps world positions, CT windowing, non-zero z-score, crop and put back."""

import os

import numpy as np
import pytest

from nas3d_fast import data
from nas3d_fast.data.nifti import write_nifti


def _affine(spacing, origin=(-20.0, 7.0, 3.5)):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def _centroid_mm(volume, affine):
    idx = np.indices(volume.shape).reshape(3, -1)
    w = volume.reshape(-1).astype(np.float64)
    centre = (idx * w).sum(1) / w.sum()
    return affine[:3, :3] @ centre + affine[:3, 3]


def test_resample_keeps_world_positions_and_updates_affine():
    affine = _affine((0.8, 0.8, 2.5))
    idx = np.indices((40, 36, 14)).astype(np.float64)
    centre = np.array([23.3, 11.7, 6.4])
    blob = np.exp(
        -(((idx - centre[:, None, None, None]) * np.array([0.8, 0.8, 2.5])[:, None, None, None]) ** 2).sum(0) / 20
    )
    label = (blob > 0.5).astype(np.int16)
    out, new_affine = data.resample(blob[None].astype(np.float32), affine, (1.5, 1.5, 1.5), order=3)
    lab, lab_affine = data.resample(label, affine, (1.5, 1.5, 1.5), order=0)
    assert np.allclose(new_affine, lab_affine)
    assert out.shape == (1, *data.preprocess.resampled_shape((40, 36, 14), (0.8, 0.8, 2.5), (1.5,) * 3))
    assert out.shape[1:] == (21, 19, 23)
    assert data.spacing_of(new_affine) == pytest.approx((1.5, 1.5, 1.5), rel=0.03)
    assert np.allclose(_centroid_mm(out[0], new_affine), _centroid_mm(blob, affine), atol=0.1)
    assert np.allclose(_centroid_mm(lab, lab_affine), _centroid_mm(label, affine), atol=0.8)
    assert set(np.unique(lab)) == {0, 1}  # nearest: no new label values
    # field of view kept: first and last voxel centres lie half a voxel inside the same box
    for a, n in ((affine, (40, 36, 14)), (new_affine, out.shape[1:])):
        lo = a[:3, :3] @ np.full(3, -0.5) + a[:3, 3]
        hi = a[:3, :3] @ (np.array(n) - 0.5) + a[:3, 3]
        assert np.allclose(lo, affine[:3, 3] - 0.5 * np.array([0.8, 0.8, 2.5]), atol=0.8)
        assert np.allclose(hi, affine[:3, 3] + (np.array([40, 36, 14]) - 0.5) * [0.8, 0.8, 2.5], atol=0.8)


def test_ct_windows():
    image = np.array([-3000, -1000, 0, 500, 1000, 4000], np.float32).reshape(1, 6, 1, 1)
    out = data.normalise_intensity(image, {"kind": "ct", "window": [-1000, 1000]})
    assert out.ravel().tolist() == pytest.approx([0, 0, 0.5, 0.75, 1, 1])
    out = data.normalise_intensity(image, {"kind": "ct", "window": [-125, 225], "mean": 50.0, "std": 100.0})
    assert out.ravel().tolist() == pytest.approx([-1.75, -1.75, -0.5, 1.75, 1.75, 1.75])
    with pytest.raises(ValueError, match="window"):
        data.normalise_intensity(image, {"kind": "ct", "window": [5, -5]})
    with pytest.raises(ValueError, match="kind"):
        data.normalise_intensity(image, {"kind": "minmax"})


def test_zscore_over_the_nonzero_region_per_channel():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 12, 12, 12), np.float32)
    image[0, 2:9, 3:10, 1:11] = rng.normal(300, 40, (7, 7, 10))
    image[1, 2:9, 3:10, 1:11] = rng.normal(-5, 2, (7, 7, 10))
    out = data.normalise_intensity(image, {"kind": "zscore", "nonzero": True})
    mask = np.any(image != 0, axis=0)
    for c in range(2):
        assert out[c][mask].mean() == pytest.approx(0, abs=1e-5)
        assert out[c][mask].std() == pytest.approx(1, abs=1e-4)
    assert not out[:, ~mask].any()
    whole = data.normalise_intensity(image, {"kind": "zscore", "nonzero": False})
    assert whole[0].mean() == pytest.approx(0, abs=1e-5) and whole[0][~mask].min() < -0.5


def test_crop_box_and_uncrop():
    image = np.zeros((2, 10, 11, 12), np.float32)
    image[1, 3:6, 2:9, 4:5] = 1
    box = data.nonzero_box(image)
    assert box == ((3, 6), (2, 9), (4, 5))
    assert data.nonzero_box(image, margin=3) == ((0, 9), (0, 11), (1, 8))
    assert data.nonzero_box(np.zeros((1, 4, 5, 6))) == ((0, 4), (0, 5), (0, 6))
    assert np.array_equal(data.uncrop(data.crop(image, box), box, (10, 11, 12)), image)


def test_preprocess_and_restore_labels_round_trip():
    rng = np.random.default_rng(1)
    affine = _affine((1.0, 1.0, 3.0))
    label = np.zeros((40, 44, 16), np.int16)
    label[10:30, 12:34, 4:12] = 1
    label[15:25, 18:28, 6:10] = 2
    image = np.zeros((1, 40, 44, 16), np.float32)
    image[0, 6:34, 8:38, 2:14] = 100 + 20 * label[6:34, 8:38, 2:14] + rng.normal(0, 1, (28, 30, 12))
    pre = data.preprocess_case(image, affine, label, data.Preprocessing(spacing=(2.0, 2.0, 2.0)))
    assert pre.meta["box"] == [[6, 34], [8, 38], [2, 14]]
    assert pre.image.shape == (1, 14, 15, 18) and pre.label.shape == (14, 15, 18)
    # the preprocessed grid's voxel 0 is near the crop's corner in world space
    corner = affine @ np.array([6 - 0.5, 8 - 0.5, 2 - 0.5, 1])
    assert np.allclose(pre.affine @ np.array([-0.5, -0.5, -0.5, 1]), corner, atol=1e-6)
    assert pre.spacing == pytest.approx((2.0, 2.0, 2.0))
    back = data.restore_labels(pre.label, pre.meta)
    assert back.shape == label.shape
    for k in (1, 2):
        dice = 2 * ((back == k) & (label == k)).sum() / ((back == k).sum() + (label == k).sum())
        assert dice > 0.85
    # without resampling the round trip is exact
    pre = data.preprocess_case(image, affine, label, data.Preprocessing(spacing=None))
    assert np.array_equal(data.restore_labels(pre.label, pre.meta), label)
    assert np.allclose(pre.affine[:3, 3], affine[:3, 3] + [6, 8, 6])


def test_write_prediction_uses_the_original_grid(tmp_path):
    import torch

    affine = _affine((1.0, 1.2, 3.0))
    image = np.zeros((1, 20, 22, 9), np.float32)
    image[0, 4:15, 5:18, 2:8] = 7.0
    label = (image[0] > 0).astype(np.int16)
    pre = data.preprocess_case(image, affine, label, data.Preprocessing(spacing=(2.0, 2.0, 2.0)))
    path = str(tmp_path / "pred.nii.gz")
    data.write_prediction(torch.from_numpy(pre.label.astype(np.int64)), pre.meta, path)
    written, written_affine = data.read_label(path)
    assert np.allclose(written_affine, affine) and written.shape == label.shape
    assert ((written == 1) & (label == 1)).sum() / (label == 1).sum() > 0.9


def test_preprocessing_settings_and_key():
    a = data.Preprocessing(spacing=(1, 1, 1))
    assert a.key() == data.Preprocessing(spacing=[1.0, 1.0, 1.0]).key() != data.Preprocessing().key()
    assert data.Preprocessing.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="spacing"):
        data.Preprocessing(spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="intensity"):
        data.Preprocessing(intensity={"kind": "ct-ish"})
    with pytest.raises(ValueError, match="unknown keys"):
        data.Preprocessing.from_dict({"spacing": None, "zoom": 2})


def test_read_label_rejects_non_integer_values(tmp_path):
    path = str(tmp_path / "lab.nii.gz")
    write_nifti(np.full((3, 3, 3), 0.5, np.float32), np.eye(4), path)
    with pytest.raises(ValueError, match=r"lab\.nii\.gz must hold non-negative integer"):
        data.read_label(path)
    with pytest.raises(ValueError, match=r"missing\.nii\.gz does not exist"):
        data.read_image(os.path.join(str(tmp_path), "missing.nii.gz"))


@pytest.mark.parametrize(
    "intensity, message",
    [
        ({"kind": "ct", "window": [0, 0]}, r"window.*--ct-window.*low < high.*\[0, 0\]"),  # was NaN
        ({"kind": "ct", "window": [1000, -1000]}, r"window.*low < high"),  # was a constant image
        ({"kind": "ct", "window": [float("-inf"), float("inf")]}, r"window.*finite"),  # was NaN
        ({"kind": "ct", "window": [-1000]}, r"window: \[low, high\]"),
        ({"kind": "ct", "window": [-125, 225], "mean": 50.0, "std": 0.0}, r"'std' > 0"),  # was inf
        ({"kind": "ct", "window": [-125, 225], "mean": 50.0}, r"'mean' and 'std' together"),
        ({"kind": "zscore", "non_zero": True}, r"unknown key\(s\) \['non_zero'\]"),  # was ignored
        ({"kind": "zscore", "nonzero": "no"}, r"nonzero must be true or false"),
    ],
)
def test_intensity_settings_are_validated_where_they_are_configured(intensity, message):
    """Issue 26 defect 12: the CT window was not validated ([0, 0] gave NaN, a reversed one a constant)."""
    with pytest.raises(ValueError, match=r"Preprocessing\.intensity: .*" + message):
        data.Preprocessing(intensity=intensity)
    image = np.linspace(-2000, 2000, 27, dtype=np.float32).reshape(1, 3, 3, 3)
    with pytest.raises(ValueError, match=message):  # the same check where it is applied (nas3d infer)
        data.normalise_intensity(image, intensity)


def test_train_cli_names_a_bad_ct_window_before_training(tmp_path, capsys):
    from nas3d_fast import cli

    root = data.make_synthetic(str(tmp_path / "d"), train=2, test=0, shape=(8, 8, 8), validation=1)
    args = ["train", "--space", "ronasmis", "--arch", "default", "--data", root, "--out", str(tmp_path / "run"),
            "--patch", "8", "8", "8", "--max-val-cases", "0", "--quiet", "--device", "cpu",
            "--space-option", "base_channels=2", "--space-option", "depth=2", "--space-option", "layers_per_stage=1",
            "--intensity", "ct", "--ct-window", "0", "0"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--ct-window" in err and "[0.0, 0.0]" in err
    assert not os.path.exists(tmp_path / "run" / "last.pt")
