"""The trainer: a run killed mid-epoch (an exception after N steps, or SIGKILL of a subprocess) resumes from its
last checkpoint, ends with the same number of steps (and, on the CPU, the same weights as an uninterrupted
run); checkpoints are never half-written; logs, best model and summary are written."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from nas3d_fast.inference.checkpoint import load_model, load_settings
from nas3d_fast.train.batches import StepBatches
from nas3d_fast.train.checkpoint import atomic_save, load_training_checkpoint
from nas3d_fast.train.trainer import TrainConfig, Trainer, ValCase

PATCH = 12


def blob_sample(i, rng):
    """A bright ball (label 1) at a random place in noise: image (1, P, P, P), label (1, P, P, P)."""
    g = np.indices((PATCH,) * 3).astype(np.float32)
    c = rng.uniform(3, PATCH - 3, 3)
    label = (((g - c[:, None, None, None]) ** 2).sum(0) <= 9).astype(np.int64)
    image = label + 0.3 * rng.standard_normal(label.shape)
    return image[None].astype(np.float32), label[None]


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1))


META = {"space": "test", "space_options": {}, "arch": {"layers": 2}, "in_channels": 1, "num_classes": 2}


def val_cases():
    rng = np.random.default_rng(123)
    image, label = blob_sample(0, rng)
    return [ValCase("blob", torch.from_numpy(image)[None], label[0], (1.0, 1.0, 1.0))]


def make_trainer(out, on_step=None, **kw):
    settings = {
        "epochs": 3,
        "steps_per_epoch": 4,
        "lr": 0.01,
        "roi_size": (8, 8, 8),
        "checkpoint_every": 5,
        "progress": False,
    }
    cfg = TrainConfig(device="cpu", **{**settings, **kw})
    batches = StepBatches(blob_sample, batch_size=2, total_steps=cfg.total_steps, seed=7)
    return Trainer(tiny_model(), cfg, str(out), batches, val_cases(), META, on_step=on_step)


class Boom(Exception):
    pass


def _steps(path):
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_resume_after_exception_matches_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full")
    summary = full.fit()
    assert summary["steps"] == 12 and summary["epochs"] == 3

    def fail_at_7(step):
        if step == 7:
            raise Boom

    with pytest.raises(Boom):
        make_trainer(tmp_path / "cut", on_step=fail_at_7).fit()
    ckpt = load_training_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))
    assert ckpt["step"] == 5  # checkpoints at 4 (epoch end) and 5 (every 5): step 7 died mid-epoch 2
    assert _steps(tmp_path / "cut" / "train.csv") == list(range(1, 8))

    resumed = make_trainer(tmp_path / "cut")
    summary2 = resumed.fit()
    assert summary2["steps"] == 12
    assert _steps(tmp_path / "cut" / "train.csv") == list(range(1, 13))
    assert _steps(tmp_path / "cut" / "val.csv") == [4, 8, 12]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # Nothing temporary left behind.
    assert not [n for n in os.listdir(tmp_path / "cut") if n.endswith(".tmp")]


def test_outputs_and_inference_checkpoint(tmp_path):
    tr = make_trainer(tmp_path, loss="dice_ce", optimizer="adam")
    summary = tr.fit()
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["steps"] == 12
    assert summary["best"]["step"] in (4, 8, 12)
    assert 0.0 <= summary["last_validation"]["mean_dice"] <= 1.0
    ckpt = load_training_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert ckpt["meta"]["arch"] == META["arch"] and ckpt["meta"]["infer"]["roi_size"] == [8, 8, 8]
    assert set(ckpt["rng"]) == {"python", "numpy", "torch", "cuda"}
    model = load_model(str(tmp_path / "best.pt"), torch.device("cpu"))
    assert model(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
    assert load_settings(str(tmp_path / "best.pt")).roi_size == (8, 8, 8)
    assert os.listdir(tmp_path / "tb")
    # A finished run resumed does nothing more.
    assert make_trainer(tmp_path).fit()["steps"] == 12


def test_time_budget_stops_and_validates(tmp_path):
    tr = make_trainer(tmp_path, time_budget=1e-6)
    summary = tr.fit()
    assert summary["stopped_by_time_budget"] and summary["steps"] < 12
    assert "last_validation" in summary


def test_training_reduces_the_loss(tmp_path):
    cfg = TrainConfig(epochs=1, steps_per_epoch=30, lr=0.02, roi_size=(8, 8, 8), progress=False, device="cpu")
    batches = StepBatches(blob_sample, 2, cfg.total_steps, seed=1)
    Trainer(tiny_model(), cfg, str(tmp_path), batches, val_cases(), META).fit()
    with open(tmp_path / "train.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_bad_config():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainConfig(loss="l2")
    with pytest.raises(ValueError, match="meta must hold 'arch'"):
        Trainer(tiny_model(), TrainConfig(), "x", None, [], {"space": "s", "in_channels": 1, "num_classes": 2})


def test_atomic_save_failure_keeps_previous_file(tmp_path):
    path = str(tmp_path / "c.pt")
    atomic_save({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        atomic_save({"v": 2, "bad": Unpicklable()}, path)
    assert torch.load(path)["v"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


_KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_train_trainer import make_trainer
    # checkpoint every step; slow steps so that the parent kills us mid-run
    make_trainer({out!r}, on_step=lambda s: time.sleep(0.15), checkpoint_every=1).fit()
    """
)


def test_sigkill_mid_epoch_then_resume(tmp_path):
    out = tmp_path / "run"
    code = _KILLED_RUN.format(tests=os.path.dirname(__file__), out=str(out))
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    ckpt_path = out / "checkpoint.pt"
    deadline = time.monotonic() + 120
    seen = -1
    try:
        # Kill once a checkpoint past step 5 exists (mid-epoch 2 or 3); read it repeatedly meanwhile: every
        # read sees a complete file.
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt_path.exists():
                seen = load_training_checkpoint(str(ckpt_path))["step"]
                if seen >= 5 and seen % 4:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    step = load_training_checkpoint(str(ckpt_path))["step"]
    assert 5 <= step < 12
    summary = make_trainer(out, checkpoint_every=1).fit()
    assert summary["steps"] == 12
    assert _steps(out / "train.csv") == list(range(1, 13))
