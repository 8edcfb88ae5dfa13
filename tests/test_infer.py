"""`nas3d infer`: NIfTI in, label map out with the input's affine; clear errors and no partial files."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from nas3d_fast import cli
from nas3d_fast.inference import sliding_window_inference

AFFINE = np.array([[0.8, 0.0, 0.1, -90.0], [0.0, 1.2, 0.0, 12.5], [0.05, 0.0, 2.5, 30.0], [0.0, 0.0, 0.0, 1.0]])


def _checkpoint(tmp_path, model=None, **settings):
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
    assert cli.main(["infer", "--model", model_path, "--input", str(tmp_path / "case.nii.gz"), "--output", str(out), "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    seg = nib.load(str(out))
    np.testing.assert_array_equal(seg.affine, nib.load(str(tmp_path / "case.nii.gz")).affine)
    assert seg.shape == data.shape and seg.get_data_dtype() == np.uint8
    assert seg.header.get_xyzt_units() == ("mm", "sec")
    x = torch.from_numpy(data)[None, None]
    x = (x - x.mean()) / x.std()
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
    code = cli.main(["infer", "--model", model_path, "--input", str(tmp_path / "images"), "--output",
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
    _run_fails(capsys, ["--model", model_path, "--input", str(fake), "--output", str(tmp_path / "out" / "s.nii.gz")],
               "is not a readable NIfTI file")
    text = tmp_path / "scan.txt"
    text.write_text("hello")
    _run_fails(capsys, ["--model", model_path, "--input", str(text), "--output", str(tmp_path / "out" / "s.nii.gz")],
               "is not a NIfTI file")
    assert _files(tmp_path / "out") == []


def test_wrong_spatial_size_from_the_model_leaves_no_output(tmp_path, capsys):
    model_path, _ = _checkpoint(tmp_path, model=torch.nn.Conv3d(1, 3, 3))  # no padding: 8^3 -> 6^3
    _image(tmp_path / "case.nii.gz")
    (tmp_path / "out").mkdir()
    _run_fails(capsys, ["--model", model_path, "--input", str(tmp_path / "case.nii.gz"), "--output",
                        str(tmp_path / "out" / "seg.nii.gz")], "predictor must return shape")
    assert _files(tmp_path / "out") == []


def test_mismatched_settings_are_clear_errors(tmp_path, capsys):
    model_path, _ = _checkpoint(tmp_path, in_channels=2)
    _image(tmp_path / "case.nii.gz")
    out = str(tmp_path / "seg.nii.gz")
    _run_fails(capsys, ["--model", model_path, "--input", str(tmp_path / "case.nii.gz"), "--output", out],
               "expects in_channels=2")
    model_path, _ = _checkpoint(tmp_path, roi_size=[8, 8])
    _run_fails(capsys, ["--model", model_path, "--input", str(tmp_path / "case.nii.gz"), "--output", out],
               "roi_size must have one entry per spatial axis")
    _run_fails(capsys, ["--model", str(tmp_path / "missing.pt"), "--input", str(tmp_path / "case.nii.gz"), "--output", out],
               "is not a file")
    _run_fails(capsys, ["--model", model_path, "--input", str(tmp_path / "case.nii.gz"), "--output", str(tmp_path / "seg.png")],
               "must be a folder or a name ending in")
    assert not os.path.exists(out)
