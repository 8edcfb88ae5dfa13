"""`nas3d train` end to end on synthetic data (ronasmis, tiny), then `nas3d infer` with its best model; bad
arguments get errors naming them."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from nas3d_fast import cli
from nas3d_fast.data import make_synthetic
from nas3d_fast.spaces import base
from nas3d_fast.train.checkpoint import load_training_checkpoint, model_from_checkpoint

SPACE_OPTS = ["--space-option", "base_channels=2", "--space-option", "depth=2", "--space-option", "layers_per_stage=1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(str(root), train=4, test=1, shape=(24, 24, 24), validation=1, seed=0)
    return str(root)


def _train(dataset, out, *extra):
    return cli.main(
        [
            "train",
            "--space",
            "ronasmis",
            *SPACE_OPTS,
            "--arch",
            "default",
            "--data",
            dataset,
            "--out",
            str(out),
            "--epochs",
            "2",
            "--steps-per-epoch",
            "3",
            "--patch",
            "16",
            "16",
            "16",
            "--batch-size",
            "2",
            "--lr",
            "0.01",
            "--quiet",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_train_then_infer(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(dataset, out, "--optimizer", "novograd", "--loss", "dice_focal", "--checkpoint-every", "2") == 0
    printed = capsys.readouterr().out
    assert "steps 6/6" in printed and "mean Dice" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["best_model"].endswith("best.pt")
    ckpt = load_training_checkpoint(str(out / "checkpoint.pt"))
    meta = ckpt["meta"]
    space = base.get("ronasmis", **meta["space_options"])
    assert space.arch_from_json(meta["arch"]) == space.default_arch()
    assert meta["preprocessing"]["intensity"]["kind"] == "zscore" and meta["num_classes"] == 2
    assert (out / "arch.json").exists() and (out / "val.csv").exists()
    model = model_from_checkpoint(str(out / "checkpoint.pt"))
    assert sum(p.numel() for p in model.parameters()) > 0

    image = os.path.join(dataset, "imagesTs", min(os.listdir(os.path.join(dataset, "imagesTs"))))
    pred = tmp_path / "pred.nii.gz"
    assert cli.main(["infer", "--model", str(out / "best.pt"), "--input", image, "--output", str(pred), "--quiet"]) == 0
    src, lab = nib.load(image), nib.load(str(pred))
    assert lab.shape == src.shape[:3] and np.allclose(lab.affine, src.affine)
    assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1}

    # The same command again resumes at step 6 and stops: no step is repeated.
    assert _train(dataset, out, "--optimizer", "novograd", "--loss", "dice_focal") == 0
    rows = (out / "train.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_bad_arguments(dataset, tmp_path, capsys):
    assert _train(dataset, tmp_path / "a", "--arch", str(tmp_path / "missing.json")) == 2
    assert "--arch" in capsys.readouterr().err
    other = base.get("ronasmis", base_channels=2, depth=3, layers_per_stage=1).default_arch()
    wrong = tmp_path / "wrong.json"
    wrong.write_text(other.to_json())  # 10 layers where the space has 6
    assert _train(dataset, tmp_path / "b", "--arch", str(wrong)) == 2
    assert "wrong.json" in capsys.readouterr().err
    assert _train(dataset, tmp_path / "c", "--patch", "15", "16", "16") == 2  # depth 2: multiples of 2
    assert "patch size" in capsys.readouterr().err
    assert _train(str(tmp_path / "nowhere"), tmp_path / "d") == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, name",
    [
        (["--max-val-cases", "-1"], "max_val_cases"),  # issue 26 defect 12: dropped a case silently
        (["--workers", "-1"], "workers"),
        (["--overlap", "1.0"], "overlap"),  # defect 8: failed only after a whole epoch
    ],
)
def test_bad_data_and_validation_settings_fail_before_training(dataset, tmp_path, capsys, extra, name):
    assert _train(dataset, tmp_path / "run", *extra) == 2
    assert name in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run" / "last.pt")
