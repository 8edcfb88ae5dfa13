"""`nas3d data mni152`: a real T1 dataset from nilearn's packaged template, built offline and reproducibly."""

import json
import os
import socket

import nibabel as nib
import numpy as np
import pytest

from nas3d_fast import cli, data
from nas3d_fast.data import mni152


@pytest.fixture(scope="module")
def no_network():
    def refuse(*args, **kwargs):
        raise AssertionError("nas3d data mni152 tried to open a network connection")

    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def built(tmp_path_factory, no_network):
    out = str(tmp_path_factory.mktemp("mni") / "mni")
    # coarse grid to keep the test quick; the defaults (2 mm, 8 subjects) are exercised by `make demo`
    return data.build_mni152(out, subjects=3, val=1, spacing=4.0, seed=11, test=1, progress=False)


def test_layout_split_and_labels(built):
    index = data.MSDIndex(built)
    assert [c.id for c in index.training] == ["mni152_000", "mni152_001", "mni152_002"]
    assert index.validation_ids == ["mni152_002"] and [c.id for c in index.test] == ["mni152_003"]
    assert data.split(index) == (["mni152_000", "mni152_001"], ["mni152_002"])
    assert index.labels == {0: "background", 1: "grey matter", 2: "white matter"} and index.modality == {0: "T1"}
    with open(os.path.join(built, "dataset.json")) as f:
        meta = json.load(f)
    assert meta["generator"]["seed"] == 11 and "validation" in meta["split"]
    for case in index.training:
        image, affine = data.read_image(case.image)
        label, label_affine = data.read_label(case.label)
        assert np.array_equal(affine, label_affine) and data.spacing_of(affine) == pytest.approx((4, 4, 4))
        assert set(np.unique(label)) == {0, 1, 2}
        brain = image[0] > 0
        assert not label[~brain].any()  # tissue only inside the (skull-stripped) brain
        # real T1 contrast: white matter brighter than grey matter
        assert np.median(image[0][label == 2]) > 1.1 * np.median(image[0][label == 1])
        # MNI space: the grid covers the brain around the origin (AC) in mm
        lo = affine @ np.array([0, 0, 0, 1])
        hi = affine @ np.array([*label.shape, 1])
        assert (lo[:3] < -55).all() and (hi[:3] > 60).all()


def test_subjects_differ_and_builds_reproduce(built, tmp_path, no_network):
    labels = [np.asarray(nib.load(os.path.join(built, "labelsTr", f"mni152_00{k}.nii.gz")).dataobj) for k in range(3)]
    assert (labels[0] != labels[1]).mean() > 0.05  # different deformations
    again = data.build_mni152(str(tmp_path / "again"), subjects=2, val=1, spacing=4.0, seed=11, progress=False)
    for name in ("imagesTr/mni152_001.nii.gz", "labelsTr/mni152_001.nii.gz"):
        a = np.asarray(nib.load(os.path.join(built, name)).dataobj)
        b = np.asarray(nib.load(os.path.join(again, name)).dataobj)
        assert np.array_equal(a, b)  # subject k depends only on (seed, k)


def test_template_labels_rule():
    gm = np.array([0.6, 0.3, 0.1, 0.45, 0.2])
    wm = np.array([0.3, 0.3, 0.1, 0.45, 0.5])
    # background = 1 - gm - wm: 0.1, 0.4, 0.8, 0.1, 0.3; ties go to the lower index
    assert mni152.template_labels(gm, wm).tolist() == [1, 0, 0, 1, 2]


def test_templates_are_the_files_nilearn_loads(no_network):
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template

    t1, gm, _, affine = mni152.load_templates()
    ref = load_mni152_template(resolution=1)
    assert np.allclose(t1, ref.get_fdata()) and np.allclose(affine, ref.affine)
    assert np.allclose(gm, load_mni152_gm_template(resolution=1).get_fdata())
    import nilearn

    package = os.path.dirname(nilearn.__file__)
    assert all(p.startswith(package + os.sep) for p in mni152.template_paths().values())


def test_cli(tmp_path, capsys, no_network):
    out = str(tmp_path / "cli")
    code = cli.main(["data", "mni152", "--out", out, "--subjects", "2", "--val", "1", "--spacing", "6", "--quiet"])
    assert code == 0 and "2 training cases (1 for validation)" in capsys.readouterr().out
    assert cli.main(["data", "mni152", "--out", out, "--subjects", "2", "--val", "2"]) == 2
    assert "1 <= val < subjects" in capsys.readouterr().err
    code = cli.main(["data", "synthetic", "--out", str(tmp_path / "syn"), "--train", "3", "--shape", "8", "8", "8"])
    assert code == 0 and len(data.MSDIndex(str(tmp_path / "syn")).training) == 3
