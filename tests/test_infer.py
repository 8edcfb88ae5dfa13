"""`nas3d infer`: NIfTI in, label map out with the input's affine; clear errors and no partial files."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from test_train_trainer import META as RONASMIS_META  # a tiny ronasmis network that checkpoints rebuild

from nas3d_fast import cli
from nas3d_fast.inference import sliding_window_inference

AFFINE = np.array([[0.8, 0.0, 0.1, -90.0], [0.0, 1.2, 0.0, 12.5], [0.05, 0.0, 2.5, 30.0], [0.0, 0.0, 0.0, 1.0]])


def _checkpoint(tmp_path, model=None, **settings):
    """A network from outside the package: a whole pickled module (read with --trust-pickle)."""
    torch.manual_seed(0)
    model = model if model is not None else torch.nn.Conv3d(1, 3, 3, padding=1)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    doc = {"format": "nas3d-infer-1", "in_channels": 1, "roi_size": [8, 8, 8], "overlap": 0.5, "mode": "gaussian",
           "sw_batch_size": 3, "tta_flips": [0, 1, 2], "intensity": {"kind": "zscore"}}
    doc.update(settings)
    (tmp_path / "model.json").write_text(json.dumps(doc))
    return str(path), model


def _image(path, shape=(13, 11, 9), seed=0):
    data = np.random.default_rng(seed).normal(100.0, 20.0, size=shape).astype(np.float32)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return data


def _files(folder):
    return sorted(os.listdir(folder))


def test_infer_writes_labels_with_the_input_affine(tmp_path, capsys):
    model_path, model = _checkpoint(tmp_path)
    data = _image(tmp_path / "case.nii.gz")
    out = tmp_path / "out" / "case_seg.nii.gz"
    assert cli.main(["infer", "--model", model_path, "--trust-pickle", "--input", str(tmp_path / "case.nii.gz"), "--output", str(out), "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    seg = nib.load(str(out))
    np.testing.assert_array_equal(seg.affine, nib.load(str(tmp_path / "case.nii.gz")).affine)
    assert seg.shape == data.shape and seg.get_data_dtype() == np.uint8
    assert seg.header.get_xyzt_units() == ("mm", "sec")
    x = torch.from_numpy(data)[None, None]
    x = (x - x.mean()) / x.std(correction=0)  # training's z-score: population statistics
    with torch.no_grad():
        want = sliding_window_inference(x, (8, 8, 8), 3, model, overlap=0.5, mode="gaussian").argmax(1)[0]
    np.testing.assert_array_equal(np.asarray(seg.dataobj), want.numpy())
    assert _files(tmp_path / "out") == ["case_seg.nii.gz"]  # no temporary left behind


def test_infer_folder_with_tta_and_overrides(tmp_path):
    model_path, _ = _checkpoint(tmp_path)
    (tmp_path / "images").mkdir()
    _image(tmp_path / "images" / "a.nii.gz", seed=1)
    _image(tmp_path / "images" / "b.nii", shape=(7, 12, 10), seed=2)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    code = cli.main(["infer", "--model", model_path, "--trust-pickle", "--input", str(tmp_path / "images"), "--output",
                     str(tmp_path / "seg"), "--roi", "6", "6", "6", "--overlap", "0.25", "--tta", "--quiet"])
    assert code == 0
    assert _files(tmp_path / "seg") == ["a.nii.gz", "b.nii"]
    for name in ("a.nii.gz", "b.nii"):
        src = nib.load(str(tmp_path / "images" / name))  # the stored (float32) affine of the input
        np.testing.assert_array_equal(nib.load(str(tmp_path / "seg" / name)).affine, src.affine)
        np.testing.assert_allclose(src.affine, AFFINE, atol=1e-6)


def _run_fails(capsys, args, match):
    assert cli.main(["infer", *args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nas3d infer: error:" in err and match in err, err


def test_non_nifti_input_is_refused_without_output(tmp_path, capsys):
    model_path, _ = _checkpoint(tmp_path)
    fake = tmp_path / "scan.nii.gz"
    fake.write_bytes(b"this is not a nifti file at all")
    (tmp_path / "out").mkdir()
    _run_fails(capsys, ["--model", model_path, "--trust-pickle", "--input", str(fake), "--output", str(tmp_path / "out" / "s.nii.gz")],
               "is not a readable NIfTI file")
    text = tmp_path / "scan.txt"
    text.write_text("hello")
    _run_fails(capsys, ["--model", model_path, "--trust-pickle", "--input", str(text), "--output", str(tmp_path / "out" / "s.nii.gz")],
               "is not a NIfTI file")
    assert _files(tmp_path / "out") == []


def test_wrong_spatial_size_from_the_model_leaves_no_output(tmp_path, capsys):
    model_path, _ = _checkpoint(tmp_path, model=torch.nn.Conv3d(1, 3, 3))  # no padding: 8^3 -> 6^3
    _image(tmp_path / "case.nii.gz")
    (tmp_path / "out").mkdir()
    _run_fails(capsys, ["--model", model_path, "--trust-pickle", "--input", str(tmp_path / "case.nii.gz"), "--output",
                        str(tmp_path / "out" / "seg.nii.gz")], "predictor must return shape")
    assert _files(tmp_path / "out") == []


def test_mismatched_settings_are_clear_errors(tmp_path, capsys):
    model_path, _ = _checkpoint(tmp_path, in_channels=2)
    _image(tmp_path / "case.nii.gz")
    out = str(tmp_path / "seg.nii.gz")
    _run_fails(capsys, ["--model", model_path, "--trust-pickle", "--input", str(tmp_path / "case.nii.gz"), "--output", out],
               "expects in_channels=2")
    model_path, _ = _checkpoint(tmp_path, roi_size=[8, 8])
    _run_fails(capsys, ["--model", model_path, "--trust-pickle", "--input", str(tmp_path / "case.nii.gz"), "--output", out],
               "roi_size must have one entry per spatial axis")
    _run_fails(capsys, ["--model", str(tmp_path / "missing.pt"), "--input", str(tmp_path / "case.nii.gz"), "--output", out],
               "is not a file")
    _run_fails(capsys, ["--model", model_path, "--trust-pickle", "--input", str(tmp_path / "case.nii.gz"), "--output", str(tmp_path / "seg.png")],
               "must be a folder or a name ending in")
    assert not os.path.exists(out)


# --- regressions of issue 26 ------------------------------------------------------------------------------


def _digest(path):
    return open(path, "rb").read()


def test_output_that_resolves_to_an_input_is_refused_and_the_input_kept(tmp_path, capsys):
    """Defect 2: --output equal to the input file or folder replaced the images by their label maps."""
    model_path, _ = _checkpoint(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "a.nii.gz", seed=1)
    _image(images / "b.nii.gz", seed=2)
    before = {n: _digest(images / n) for n in _files(images)}
    (tmp_path / "link").symlink_to(images)
    same_file = str(images / "a.nii.gz")
    cases = [
        (same_file, same_file),  # the very file
        (str(images), str(images)),  # folder onto itself
        (str(images), str(tmp_path / "link")),  # through a symbolic link
        (str(images), str(images / ".." / "images")),  # through ..
        (same_file, str(tmp_path / "link" / "a.nii.gz")),
        (same_file, str(images)),  # a file into its own folder under its own name
    ]
    for src, dst in cases:
        _run_fails(capsys, ["--model", model_path, "--trust-pickle", "--input", src, "--output", dst], "never writes over its inputs")
    assert {n: _digest(images / n) for n in _files(images)} == before
    # another folder is fine; a hard link to an input is the input
    assert cli.main(["infer", "--model", model_path, "--trust-pickle", "--input", str(images), "--output", str(tmp_path / "other"),
                     "--quiet"]) == 0
    assert _files(tmp_path / "other") == ["a.nii.gz", "b.nii.gz"]
    hard = tmp_path / "hard.nii.gz"
    os.link(images / "b.nii.gz", hard)
    _run_fails(capsys, ["--model", model_path, "--trust-pickle", "--input", str(images / "b.nii.gz"), "--output", str(hard)],
               "never writes over its inputs")
    assert {n: _digest(images / n) for n in _files(images)} == before


def test_multichannel_zscore_at_inference_equals_training():
    """Defect 3: inference normalised all channels together and ignored nonzero; two channels with means 100
    and 1000 came out (-0.96, 0.02) and (0.96, 0.40) instead of (0, 1) each."""
    from nas3d_fast.data.preprocess import normalise_intensity
    from nas3d_fast.inference.checkpoint import preprocess

    rng = np.random.default_rng(0)
    image = np.stack([rng.normal(100, 5, (9, 8, 7)), rng.normal(1000, 50, (9, 8, 7))]).astype(np.float32)
    image[:, :2] = 0  # background outside the body
    for intensity in ({"kind": "zscore"}, {"kind": "zscore", "nonzero": False}):
        got = preprocess(torch.from_numpy(image)[None], intensity)[0].numpy()
        np.testing.assert_allclose(got, normalise_intensity(image, intensity), rtol=1e-6, atol=1e-6)
    got = preprocess(torch.from_numpy(image)[None], {"kind": "zscore"})[0].numpy()
    body = got[:, 2:]
    np.testing.assert_allclose(body.mean(axis=(1, 2, 3)), [0, 0], atol=1e-5)
    np.testing.assert_allclose(body.std(axis=(1, 2, 3)), [1, 1], atol=1e-4)
    assert (got[:, :2] == 0).all()  # nonzero (the default): the background stays 0


def test_label_map_header_has_no_display_window_of_the_image(tmp_path):
    """Defect 12: write_labels copied the image's cal_min/cal_max (0..1200 for an MRI), so viewers showed
    the labels nearly black."""
    from nas3d_fast.inference.nifti import write_labels

    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), AFFINE)
    img.header["cal_min"], img.header["cal_max"] = 0, 1200
    write_labels(np.ones((4, 4, 4), np.uint8), img, str(tmp_path / "seg.nii.gz"))
    seg = nib.load(str(tmp_path / "seg.nii.gz"))
    assert seg.header["cal_min"] == 0 and seg.header["cal_max"] == 0
    np.testing.assert_array_equal(np.asarray(seg.dataobj), 1)


# --- safe checkpoints (issue 24 item 4) ------------------------------------------------------------------


class _Payload:
    """Unpickling it would create the marker file: a stand-in for code hidden in a checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _trained_checkpoint(tmp_path):
    from nas3d_fast.inference.checkpoint import InferSettings, build_network
    from nas3d_fast.train.checkpoint import write_inference_checkpoint

    meta = {**RONASMIS_META, "num_classes": 2}
    torch.manual_seed(0)
    model = build_network(meta).eval()
    path = str(tmp_path / "best.pt")
    write_inference_checkpoint(model, InferSettings(roi_size=(8, 8, 8), sw_batch_size=2), path, meta)
    return path, model, meta


def test_a_plain_data_checkpoint_loads_with_weights_only_and_rebuilds_the_network(tmp_path):
    from nas3d_fast.inference.checkpoint import load_model

    path, model, _ = _trained_checkpoint(tmp_path)
    torch.load(path, weights_only=True)  # plain data: torch's safe loader reads it
    loaded = load_model(path, torch.device("cpu"))
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_a_checkpoint_carrying_a_pickle_payload_is_refused_and_the_payload_never_runs(tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "best.pt"
    torch.save({"format": "nas3d-model-1", "state_dict": {}, "x": _Payload(str(marker))}, path)
    (tmp_path / "best.json").write_text(json.dumps({"format": "nas3d-infer-1", "roi_size": [8, 8, 8]}))
    _image(tmp_path / "case.nii.gz")
    _run_fails(capsys, ["--model", str(path), "--input", str(tmp_path / "case.nii.gz"), "--output",
                        str(tmp_path / "seg.nii.gz")], "--trust-pickle")
    assert not marker.exists() and not (tmp_path / "seg.nii.gz").exists()
    # a whole pickled module is refused the same way without --trust-pickle
    torch.save(torch.nn.Conv3d(1, 2, 3, padding=1), path)
    _run_fails(capsys, ["--model", str(path), "--input", str(tmp_path / "case.nii.gz"), "--output",
                        str(tmp_path / "seg.nii.gz")], "--trust-pickle")


def test_truncated_newer_or_mismatched_checkpoints_are_clear_errors(tmp_path):
    from nas3d_fast.inference.checkpoint import load_model

    path, _, meta = _trained_checkpoint(tmp_path)
    record = torch.load(path, weights_only=True)
    cpu = torch.device("cpu")
    with open(path, "rb") as f:
        head = f.read()[:200]
    (tmp_path / "cut.pt").write_bytes(head)
    with pytest.raises(ValueError, match=r"cut.pt is not readable \(truncated"):
        load_model(str(tmp_path / "cut.pt"), cpu)
    torch.save({**record, "format": "nas3d-model-2"}, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="a newer format needs a newer nas3d_fast"):
        load_model(str(tmp_path / "newer.pt"), cpu)
    other = {**record, "space_options": {**meta["space_options"], "base_channels": 4}}
    torch.save(other, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="the weights do not match its architecture"):
        load_model(str(tmp_path / "mismatch.pt"), cpu)
    torch.save({k: v for k, v in record.items() if k != "arch"}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"lacks \['arch'\]"):
        load_model(str(tmp_path / "partial.pt"), cpu)


# --- the training preprocessing at inference (issue 24 item 3) ----------------------------------------


@pytest.mark.parametrize("resample_probabilities", [False, True])
def test_infer_applies_the_training_crop_spacing_and_intensity_and_writes_on_the_input_grid(tmp_path, resample_probabilities):
    """0.8 x 0.8 x 3 mm input, trained at 1.5 mm isotropic with a non-zero crop and z-score of the non-zero
    voxels: nas3d infer equals the pipeline done by hand (crop, resample, normalise, predict, back)."""
    from scipy import ndimage

    from nas3d_fast.data.preprocess import nonzero_box
    from nas3d_fast.inference.checkpoint import InferSettings, build_network
    from nas3d_fast.train.checkpoint import write_inference_checkpoint

    meta = {**RONASMIS_META, "num_classes": 3}
    torch.manual_seed(0)
    model = build_network(meta).eval()
    pre = {"spacing": [1.5, 1.5, 1.5], "intensity": {"kind": "zscore", "nonzero": True}, "crop_nonzero": True}
    settings = InferSettings(roi_size=(8, 8, 8), sw_batch_size=2, overlap=0.5, tta_flips=(), preprocessing=pre)
    write_inference_checkpoint(model, settings, str(tmp_path / "best.pt"), meta)

    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 7.0)
    rng = np.random.default_rng(0)
    data = np.zeros((30, 26, 9), np.float32)
    data[4:27, 3:22, 1:8] = rng.normal(300.0, 50.0, size=(23, 19, 7))  # a body in air
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "case.nii.gz"))
    out = tmp_path / "seg.nii.gz"
    args = ["infer", "--model", str(tmp_path / "best.pt"), "--input", str(tmp_path / "case.nii.gz"), "--output",
            str(out), "--quiet"] + (["--resample-probabilities"] if resample_probabilities else [])
    assert cli.main(args) == 0
    seg = nib.load(str(out))
    assert seg.shape == data.shape and np.array_equal(seg.affine, nib.load(str(tmp_path / "case.nii.gz")).affine)

    # by hand: crop to the body, resample to 1.5 mm (cubic; the grid covering the same field of view),
    # z-score of the non-zero voxels, predict, resample back, un-crop
    box = nonzero_box(data[None])
    crop = data[tuple(slice(a, b) for a, b in box)]
    shape_in = np.array(crop.shape)
    shape_out = np.maximum(1, np.round(shape_in * np.array([0.8, 0.8, 3.0]) / 1.5)).astype(int)
    ratio = shape_in / shape_out
    img = ndimage.affine_transform(crop, ratio, offset=(ratio - 1) / 2, output_shape=tuple(shape_out), order=3,
                                   mode="nearest")
    mask = ndimage.affine_transform((crop != 0).astype(np.uint8), ratio, offset=(ratio - 1) / 2,
                                    output_shape=tuple(shape_out), order=0, mode="nearest").astype(bool)
    img = np.where(mask, (img - img[mask].mean()) / img[mask].std(), 0).astype(np.float32)
    with torch.no_grad():
        probs = sliding_window_inference(torch.from_numpy(img)[None, None], (8, 8, 8), 2, model, overlap=0.5,
                                         mode="gaussian").softmax(1)[0].numpy()
    back = 1 / ratio  # preprocessed voxels per cropped voxel
    if resample_probabilities:
        up = np.stack([ndimage.affine_transform(p, back, offset=(back - 1) / 2, output_shape=tuple(shape_in),
                                                order=1, mode="nearest") for p in probs])
        labels = up.argmax(0)
    else:
        labels = ndimage.affine_transform(probs.argmax(0), back, offset=(back - 1) / 2,
                                          output_shape=tuple(shape_in), order=0, mode="nearest")
    want = np.zeros(data.shape, np.int64)
    want[tuple(slice(a, b) for a, b in box)] = labels
    got = np.asarray(seg.dataobj)
    assert len(np.unique(labels)) > 1  # the untrained network does not predict one class everywhere
    assert np.array_equal(got, want), (got != want).sum()
    assert got[0].max() == 0  # outside the body's box: background
    # the same from Python: nas3d_fast.inference.predict_volume
    from nas3d_fast.inference import load_model, load_settings, predict_volume

    path = str(tmp_path / "best.pt")
    again = predict_volume(data[None], affine, load_model(path, torch.device("cpu")), load_settings(path),
                           resample_probabilities=resample_probabilities, device="cpu")
    assert np.array_equal(again, got)
