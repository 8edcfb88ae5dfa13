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

from nas3d_fast.inference.checkpoint import build_network, load_model, load_settings
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


META = {
    "space": "ronasmis",
    "space_options": {"base_channels": 2, "depth": 2, "layers_per_stage": 1},
    "arch": {"format": "nas3d-arch-1", "space": "ronasmis",
             "arch": {"ops": ["conv3x3x3", "conv3x3x3", "conv3x3x3"], "skips": [0, 0, 0]}},
    "in_channels": 1,
    "num_classes": 2,
}


def tiny_model():
    torch.manual_seed(0)
    return build_network(META)


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
    cfg = TrainConfig(**{"device": "cpu", **settings, **kw})
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


# -- issue 26: regression tests of the data -> train -> infer reliability review ----------------------------


def test_resume_onto_a_non_cpu_device_restores_the_rng_state(tmp_path):
    """Defect 1: resuming on CUDA loaded the checkpoint with map_location=device, which moved the saved CPU RNG
    state off the CPU, and torch.set_rng_state refused it. The meta device stands in for the GPU here: the
    trainer must read the checkpoint onto the CPU whatever its own device, and load the state dicts across."""
    make_trainer(tmp_path, epochs=1).fit()
    saved = load_training_checkpoint(str(tmp_path / "checkpoint.pt"))["rng"]["torch"]
    torch.manual_seed(12345)
    resumed = make_trainer(tmp_path, epochs=1, device="meta")
    resumed.load(resumed.checkpoint_path)
    assert resumed.step == 4
    assert torch.equal(torch.get_rng_state(), saved)
    assert next(resumed.model.parameters()).device.type == "meta"


def test_set_rng_state_accepts_states_loaded_onto_another_device():
    from nas3d_fast.train.checkpoint import rng_state, set_rng_state

    state = rng_state()
    moved = dict(state, torch=state["torch"].to(torch.int64))  # what a map_location or a cast may leave
    torch.manual_seed(1)
    set_rng_state(moved)
    assert torch.equal(torch.get_rng_state(), state["torch"])


class _Background(torch.nn.Module):
    """Predicts background everywhere (so the Dice of an all-background case is undefined), with a parameter
    so that the optimiser has something to step."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        logits = torch.tensor([10.0, -10.0]).view(1, 2, 1, 1, 1).to(x)
        return logits * self.scale.clamp(min=1.0) + 0 * x


def test_all_background_validation_does_not_freeze_best(tmp_path):
    """Defect 4: mean Dice NaN at every validation, NaN > NaN is false, so best.pt stayed the first model and
    nothing said so. Now it follows the latest validation, with a warning."""
    cfg = TrainConfig(epochs=3, steps_per_epoch=2, roi_size=(8, 8, 8), progress=False, device="cpu")
    batches = StepBatches(blob_sample, 2, cfg.total_steps, seed=7)
    empty = [ValCase("empty", torch.randn(1, 1, 12, 12, 12), np.zeros((12, 12, 12), np.int64), (1.0, 1.0, 1.0))]
    with pytest.warns(UserWarning, match="mean Dice is undefined"):
        summary = Trainer(_Background(), cfg, str(tmp_path), batches, empty, META).fit()
    assert summary["best"]["step"] == 6


def test_a_defined_dice_beats_an_undefined_one():
    from nas3d_fast.train.trainer import _better

    nan = float("nan")
    assert _better(nan, {"metric": -float("inf"), "step": None})
    assert _better(0.1, {"metric": nan, "step": 2})
    assert not _better(nan, {"metric": 0.1, "step": 2})
    assert _better(nan, {"metric": nan, "step": 2})
    assert not _better(0.1, {"metric": 0.2, "step": 2}) and _better(0.3, {"metric": 0.2, "step": 2})


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": [0.5, 0.5]}, "overlap"),
        ({"nsd_tolerance": -1}, "nsd_tolerance"),
        ({"roi_size": (8, 0, 8)}, "roi_size"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"gamma": 0}, "gamma"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"checkpoint_every": -2}, "checkpoint_every"),
    ],
)
def test_bad_validation_settings_fail_before_training(setting, message):
    """Defect 8: overlap=1.0 or nsd_tolerance=-1 failed only in the first validation, after a whole epoch."""
    with pytest.raises(ValueError, match=message):
        TrainConfig(**setting)


def test_an_error_in_validation_keeps_the_epoch_and_the_rerun_validates_it(tmp_path, monkeypatch):
    """Defect 8, second half: validation ran before the epoch-end save, so its error lost the epoch."""
    tr = make_trainer(tmp_path, checkpoint_every=0)

    def broken():
        raise RuntimeError("validation failed")

    monkeypatch.setattr(tr, "validate", broken)
    with pytest.raises(RuntimeError, match="validation failed"):
        tr.fit()
    assert load_training_checkpoint(str(tmp_path / "checkpoint.pt"))["step"] == 4
    summary = make_trainer(tmp_path, checkpoint_every=0).fit()
    assert summary["steps"] == 12
    assert _steps(tmp_path / "val.csv") == [4, 8, 12]  # epoch 1's validation ran on the rerun
    assert _steps(tmp_path / "train.csv") == list(range(1, 13))


def _slow_sample(i, rng):
    time.sleep(0.1)
    return blob_sample(i, rng)


def test_a_run_stopped_by_its_time_budget_stays_stopped(tmp_path):
    """Defect 9: the step-time estimate behind the stop was not saved, so each rerun of a finished run trained
    a few more steps (1 -> 4 -> 5)."""

    def run():
        cfg = TrainConfig(
            epochs=3, steps_per_epoch=4, time_budget=0.5 / 60, roi_size=(8, 8, 8), progress=False, device="cpu"
        )
        batches = StepBatches(_slow_sample, 2, cfg.total_steps, seed=7)
        return Trainer(tiny_model(), cfg, str(tmp_path), batches, val_cases(), META).fit()

    first = run()
    assert first["stopped_by_time_budget"] and 1 <= first["steps"] < 12
    for _ in range(2):
        again = run()
        assert again["steps"] == first["steps"] and again["stopped_by_time_budget"]
    assert _steps(tmp_path / "train.csv") == list(range(1, first["steps"] + 1))


def test_resume_with_other_settings_names_each_of_them(tmp_path):
    """Defect 11: resume compared only the space and the architecture; another learning rate, loss, seed, steps
    per epoch or preprocessing resumed silently, and other space options failed inside load_state_dict."""
    make_trainer(tmp_path, epochs=1).fit()
    with pytest.raises(ValueError) as err:
        make_trainer(tmp_path, epochs=1, lr=0.02, seed=3, loss="dice").fit()
    text = str(err.value)
    assert "lr: checkpoint 0.01, now 0.02" in text and "seed: checkpoint 0, now 3" in text and "loss:" in text
    assert "epochs" not in text and "--no-resume" in text

    def with_meta(**changes):
        cfg = TrainConfig(device="cpu", epochs=1, steps_per_epoch=4, lr=0.01, roi_size=(8, 8, 8), progress=False)
        meta = {**META, **changes}
        batches = StepBatches(blob_sample, 2, cfg.total_steps, seed=7)
        return Trainer(tiny_model(), cfg, str(tmp_path), batches, val_cases(), meta)

    with pytest.raises(ValueError, match=r"meta\.space_options\.width: checkpoint not set|meta\.space_options"):
        with_meta(space_options={"width": 8}).fit()
    with pytest.raises(ValueError, match=r"meta\.preprocessing"):
        with_meta(preprocessing={"spacing": [1, 1, 1]}).fit()
    # Settings that do not change the weights may change between reruns.
    assert make_trainer(tmp_path, epochs=1, overlap=0.5, val_every=2, checkpoint_every=0).fit()["steps"] == 4
