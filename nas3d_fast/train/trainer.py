"""The trainer: patches in, a trained network, validation by sliding-window inference, resumable checkpoints.

The trainer knows nothing about files or datasets. It takes

- ``batches(first_step)``: an iterator of (image (B, C, *patch) float, label (B, 1, *patch) int) training
  batches for steps first_step, first_step + 1, ... (the batch of a step should depend only on the step and
  a seed, so that a resumed run sees the batches it would have seen);
- ``val_cases``: whole preprocessed volumes (:class:`ValCase`), predicted by sliding-window inference;
- ``meta``: what rebuilds the model (space, options, architecture, channels) and its inputs
  (preprocessing, inference settings): stored in every checkpoint (see checkpoint.py).

Files in ``out_dir``: ``checkpoint.pt`` (resumable, atomically replaced every ``checkpoint_every`` steps and
at every epoch's end), ``best.pt`` + ``best.json`` (the best validated model for ``nas3d infer``),
``train.csv`` (one row per step; ``seconds`` of wall-clock since the start, ``cpu_seconds`` of this process's
CPU time since it (re)started: on a shared machine the second says more about the cost), ``val.csv`` (one row
per validation), ``tb/`` (TensorBoard), and ``summary.json``.

Resuming (rerunning with the same ``out_dir``) continues the run exactly where its checkpoint left it: a run
that stopped on its time budget stays stopped (the step-time estimate behind the stop is saved), an epoch
end whose validation did not finish is validated first, and the settings that decide the trajectory must
equal the checkpoint's (:data:`TRAJECTORY_SETTINGS`, ``meta``; see ``nas3d_fast._resume``).

``best.pt`` is the model of the validation with the highest mean foreground Dice. A validation whose mean
Dice is undefined (no foreground in any validation case, and none predicted) never replaces a defined one;
while every validation is undefined, ``best.pt`` follows the latest one, and a warning says so.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .._resume import check_resume
from ..inference import sliding_window_inference
from ..inference.checkpoint import InferSettings
from ..inference.grid import resolve_overlap
from . import checkpoint as ck
from .losses import make_loss
from .metrics import dice_per_class, nsd_per_class
from .optim import LRFactor, make_optimizer


@dataclass
class TrainConfig:
    """Training settings. Steps are optimiser steps; an epoch is ``steps_per_epoch`` of them."""

    epochs: int = 10
    steps_per_epoch: int = 100
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "poly"
    warmup_steps: int = 0
    warmup_start: float = 0.1  #: first warm-up learning rate as a fraction of ``lr``
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    power: float = 0.9
    loss: str = "dice_ce"
    val_every: int = 1  #: epochs between validations (the last epoch is always validated)
    roi_size: tuple[int, int, int] = (64, 64, 64)  #: sliding-window size for validation
    overlap: float = 0.25
    sw_batch_size: int = 2
    nsd_tolerance: float = 2.0  #: mm
    amp: bool = True  #: float16 autocast and gradient scaling on CUDA (ignored on the CPU)
    checkpoint_every: int = 0  #: steps between checkpoints besides epoch ends; 0: epoch ends only
    #: minutes: stop (then validate and save) when the next step would end past this much training time
    time_budget: float | None = None
    seed: int = 0
    device: str | None = None
    progress: bool = True

    def __post_init__(self):
        # Everything is checked here, before a step runs: a bad validation setting must not cost an epoch.
        for name in ("epochs", "steps_per_epoch", "val_every", "sw_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "gamma", "power"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not (math.isfinite(float(self.weight_decay)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 < float(self.warmup_start) <= 1:
            raise ValueError(f"warmup_start must be in (0, 1] (a fraction of lr), got {self.warmup_start}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise ValueError(f"time_budget must be a positive number of minutes, got {self.time_budget}")
        if len(self.roi_size) != 3 or min(int(r) for r in self.roi_size) < 1:
            raise ValueError(f"roi_size must be three sizes >= 1, got {self.roi_size}")
        self.roi_size = tuple(int(r) for r in self.roi_size)
        try:
            resolve_overlap(self.overlap, 3)
        except ValueError as exc:
            raise ValueError(f"overlap: {exc}") from exc
        if not (math.isfinite(float(self.nsd_tolerance)) and self.nsd_tolerance >= 0):
            raise ValueError(f"nsd_tolerance must be a distance in mm >= 0, got {self.nsd_tolerance}")
        self.milestones = tuple(int(m) for m in self.milestones)
        make_loss(self.loss)  # validates the name
        LRFactor(self.schedule, self.total_steps, self.warmup_steps, milestones=self.milestones)

    @property
    def total_steps(self) -> int:
        return int(self.epochs) * int(self.steps_per_epoch)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


#: TrainConfig fields that decide the weights a run ends with: resuming with any of them changed is refused.
#: The rest (validation windows, checkpoint frequency, device, progress bar) may change between reruns.
TRAJECTORY_SETTINGS = (
    "epochs",
    "steps_per_epoch",
    "optimizer",
    "lr",
    "weight_decay",
    "schedule",
    "warmup_steps",
    "warmup_start",
    "milestones",
    "gamma",
    "power",
    "loss",
    "amp",
    "time_budget",
    "seed",
)


def _trajectory(config_dict: dict, meta: dict) -> dict:
    """The settings :func:`~nas3d_fast._resume.check_resume` compares: the trajectory fields of the config and
    the meta (space, options, architecture, classes, preprocessing, training data), less where the data
    lives and which cases validate."""
    out = {k: config_dict[k] for k in TRAJECTORY_SETTINGS if k in config_dict}
    out["meta"] = {}
    for key, value in meta.items():
        if key == "infer":
            continue
        if key == "data" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ("root", "val")}
        out["meta"][key] = value
    return out


def _better(metric: float, best: dict) -> bool:
    """Whether a validation's mean Dice ``metric`` replaces ``best`` (module docstring: a defined Dice
    beats an undefined one, an undefined one only follows another undefined one)."""
    if best["step"] is None:
        return True
    old = best["metric"]
    if math.isnan(metric):
        return old is None or math.isnan(old)
    return old is None or math.isnan(old) or metric > old


@dataclass
class ValCase:
    """One validation volume: ``image`` (1, C, X, Y, Z) float (preprocessed as for training), ``label``
    (X, Y, Z) int, ``spacing`` (mm per axis, for NSD)."""

    name: str
    image: torch.Tensor
    label: np.ndarray
    spacing: tuple[float, float, float]


@dataclass
class ValResult:
    step: int
    dice: np.ndarray  #: (cases, classes - 1)
    nsd: np.ndarray
    names: list[str] = field(default_factory=list)

    @property
    def mean_dice(self) -> float:
        return float(np.nanmean(self.dice)) if np.isfinite(self.dice).any() else float("nan")

    @property
    def mean_nsd(self) -> float:
        return float(np.nanmean(self.nsd)) if np.isfinite(self.nsd).any() else float("nan")


class _CSV:
    """An append-only CSV whose rows after a given step can be dropped (on resume)."""

    def __init__(self, path: str, columns: list[str]):
        self.path, self.columns = path, columns

    def truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        ck.atomic_write(self.path, lambda f: self._write(f, rows), mode="w")

    def _write(self, f, rows) -> None:
        w = csv.DictWriter(f, self.columns)
        w.writeheader()
        w.writerows(rows)

    def append(self, row: dict) -> None:
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            if new:
                w.writeheader()
            w.writerow(row)


class Trainer:
    """See the module docstring. ``on_step(step)`` is called after every optimiser step (after that step's
    checkpoint, if any)."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        out_dir: str,
        batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
        val_cases: Sequence[ValCase],
        meta: dict,
        infer_settings: InferSettings | None = None,
        on_step: Callable[[int], None] | None = None,
    ):
        for key in ("space", "arch", "in_channels", "num_classes"):
            if key not in meta:
                raise ValueError(f"meta must hold {key!r} (space, space_options, arch, in_channels, num_classes)")
        self.config, self.out_dir, self.batches = config, out_dir, batches
        self.val_cases, self.meta, self.on_step = list(val_cases), dict(meta), on_step
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device)
        self.num_classes = int(meta["num_classes"])
        self.loss_fn = make_loss(config.loss)
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), config.lr, config.weight_decay)
        self.amp = bool(config.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.lr_factor = LRFactor(
            config.schedule,
            config.total_steps,
            config.warmup_steps,
            config.warmup_start,
            config.power,
            config.milestones,
            config.gamma,
        )
        self.infer_settings = infer_settings or InferSettings(
            in_channels=int(meta["in_channels"]),
            roi_size=config.roi_size,
            overlap=config.overlap,
            sw_batch_size=config.sw_batch_size,
        )
        self.meta["infer"] = ck.infer_settings_dict(self.infer_settings)
        self.step, self.elapsed = 0, 0.0
        self.best = {"metric": -math.inf, "step": None}
        self.last_val: ValResult | None = None
        self.validated_step: int | None = None  #: step of the last completed validation
        self.recent_step_seconds: list[float] = []  #: wall-clock seconds of the last steps (time-budget stop)
        self.stopped_by_time = False
        self._warned_undefined = False
        fg = [f"c{c}" for c in range(1, self.num_classes)]
        self.train_csv = _CSV(
            os.path.join(out_dir, "train.csv"), ["step", "epoch", "loss", "lr", "seconds", "cpu_seconds"]
        )
        self.val_csv = _CSV(
            os.path.join(out_dir, "val.csv"),
            [
                "step",
                "epoch",
                "mean_dice",
                "mean_nsd",
                *[f"dice_{c}" for c in fg],
                *[f"nsd_{c}" for c in fg],
                "seconds",
            ],
        )

    # -- paths and checkpoints ----------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.out_dir, "checkpoint.pt")

    @property
    def best_path(self) -> str:
        return os.path.join(self.out_dir, "best.pt")

    def save(self) -> None:
        ck.atomic_save(
            {
                "format": ck.TRAIN_FORMAT,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "step": self.step,
                "epoch": self.epoch,
                "elapsed": self.elapsed,
                "best": self.best,
                "validated_step": self.validated_step,
                "recent_step_seconds": self.recent_step_seconds,
                "stopped_by_time": self.stopped_by_time,
                "rng": ck.rng_state(),
                "meta": self.meta,
                "config": self.config.to_dict(),
            },
            self.checkpoint_path,
        )

    def load(self, path: str) -> None:
        """Continue from the checkpoint at ``path``. It is read onto the CPU whatever the device (the state
        dicts are copied to the model's device as they load; checkpoint.py). ValueError naming every
        setting that differs from the checkpoint's."""
        ckpt = ck.load_training_checkpoint(path, "cpu")
        check_resume(
            _trajectory(ckpt.get("config", {}), ckpt["meta"]),
            _trajectory(self.config.to_dict(), self.meta),
            path,
            "training",
        )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.elapsed, self.best = int(ckpt["step"]), float(ckpt["elapsed"]), dict(ckpt["best"])
        self.validated_step = ckpt.get("validated_step", self.best["step"])
        self.recent_step_seconds = [float(t) for t in ckpt.get("recent_step_seconds", [])]
        self.stopped_by_time = bool(ckpt.get("stopped_by_time", False))
        ck.set_rng_state(ckpt["rng"])

    @property
    def epoch(self) -> int:
        """Epochs started (1-based once training has begun)."""
        return self.step // self.config.steps_per_epoch + (1 if self.step % self.config.steps_per_epoch else 0)

    # -- training --------------------------------------------------------------------------------

    def _set_lr(self) -> float:
        cfg = self.config
        progress = self.step
        if cfg.time_budget:
            # Under a time budget the schedule follows whichever is further along: steps or time.
            progress = max(progress, int(cfg.total_steps * min(1.0, self.elapsed / (60.0 * cfg.time_budget))))
        lr = cfg.lr * self.lr_factor(min(progress, cfg.total_steps - 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.train()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            loss = self.loss_fn(self.model(x), y)
        if not torch.isfinite(loss):
            raise RuntimeError(f"training loss is {loss.item()} at step {self.step + 1}; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())

    def _out_of_time(self, step_seconds: float = 0.0) -> bool:
        """True once the budget is spent, or would be by one more step of ``step_seconds``."""
        return bool(self.config.time_budget) and self.elapsed + step_seconds >= 60.0 * self.config.time_budget

    def fit(self, resume: bool = True) -> dict:
        """Train to ``epochs * steps_per_epoch`` steps (or the time budget), validating and checkpointing;
        with ``resume``, continue from ``out_dir/checkpoint.pt`` when it exists. Returns the summary (also
        written to ``out_dir/summary.json``)."""
        cfg = self.config
        os.makedirs(self.out_dir, exist_ok=True)
        if resume and os.path.exists(self.checkpoint_path):
            self.load(self.checkpoint_path)
        else:
            torch.manual_seed(cfg.seed)
            np.random.seed(cfg.seed % 2**32)
        self.train_csv.truncate_after(self.step)
        self.val_csv.truncate_after(self.step)
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(os.path.join(self.out_dir, "tb"), purge_step=self.step + 1 if self.step else None)
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.total_steps, initial=self.step, unit="step", desc="train", dynamic_ncols=True)
        try:
            t0, e0, cpu0 = time.monotonic(), self.elapsed, time.process_time()
            if self.step and self._validation_due() and self.validated_step != self.step:
                self._validate(tb)  # the run stopped after this epoch's save and before its validation ended
                self.save()
            it = self.batches(self.step) if self.step < cfg.total_steps and not self.stopped_by_time else iter(())
            while self.step < cfg.total_steps and not self.stopped_by_time:
                self.elapsed = e0 + time.monotonic() - t0
                # median of the recent steps' wall-clock time, saved so that a rerun stops where this run did
                step_seconds = float(np.median(self.recent_step_seconds)) if self.recent_step_seconds else 0.0
                if self._out_of_time(step_seconds):
                    self.stopped_by_time = True
                    break
                lr = self._set_lr()
                started = self.elapsed
                x, y = next(it)
                loss = self._train_step(x, y)
                self.step += 1
                self.elapsed = e0 + time.monotonic() - t0
                self.recent_step_seconds = (self.recent_step_seconds + [self.elapsed - started])[-9:]
                self.train_csv.append(
                    {
                        "step": self.step,
                        "epoch": self.epoch,
                        "loss": f"{loss:.6g}",
                        "lr": f"{lr:.6g}",
                        "seconds": f"{self.elapsed:.2f}",
                        "cpu_seconds": f"{time.process_time() - cpu0:.2f}",
                    }
                )
                tb.add_scalar("train/loss", loss, self.step)
                tb.add_scalar("train/lr", lr, self.step)
                if bar:
                    bar.update(1)
                    bar.set_postfix(epoch=self.epoch, loss=f"{loss:.4f}", best=self._best_text())
                epoch_end = self.step % cfg.steps_per_epoch == 0
                if epoch_end or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                    self.save()  # before validating: an error there must not cost the epoch's training
                if self._validation_due():
                    self._validate(tb)
                    self.elapsed = e0 + time.monotonic() - t0
                    self.save()
                if self.on_step:
                    self.on_step(self.step)
            if self.validated_step != self.step:
                if self.val_cases and (self.stopped_by_time or self.best["step"] is None):
                    self._validate(tb)
                elif not self.val_cases and self.step:
                    ck.write_inference_checkpoint(self.model, self.infer_settings, self.best_path, self.meta)
            self.save()
        finally:
            if bar:
                bar.close()
            tb.close()
        return self._summary(self.stopped_by_time)

    def _validation_due(self) -> bool:
        """Whether the step just done ends an epoch that is validated."""
        cfg = self.config
        return bool(self.val_cases) and self.step % cfg.steps_per_epoch == 0 and (
            self.epoch % cfg.val_every == 0 or self.step == cfg.total_steps
        )

    # -- validation --------------------------------------------------------------------------------

    def _best_text(self) -> str:
        return "-" if self.best["step"] is None else f"{self.best['metric']:.3f}"

    @torch.no_grad()
    def validate(self) -> ValResult:
        """Dice and NSD per foreground class on every validation case (sliding-window, labels output)."""
        cfg = self.config
        self.model.eval()
        dice, nsd = [], []

        def predict(x):
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                return self.model(x).float()

        for case in self.val_cases:
            labels = (
                sliding_window_inference(
                    case.image.to(self.device),
                    cfg.roi_size,
                    cfg.sw_batch_size,
                    predict,
                    overlap=cfg.overlap,
                    mode="gaussian",
                    nas3d_output="labels",
                )[0, 0]
                .cpu()
                .numpy()
            )
            dice.append(dice_per_class(labels, case.label, self.num_classes))
            nsd.append(nsd_per_class(labels, case.label, self.num_classes, case.spacing, cfg.nsd_tolerance))
        return ValResult(self.step, np.array(dice), np.array(nsd), [c.name for c in self.val_cases])

    def _validate(self, tb) -> ValResult:
        res = self.validate()
        self.last_val = res
        fg = range(1, self.num_classes)
        row = {
            "step": self.step,
            "epoch": self.epoch,
            "mean_dice": f"{res.mean_dice:.6f}",
            "mean_nsd": f"{res.mean_nsd:.6f}",
            "seconds": f"{self.elapsed:.2f}",
        }
        with np.errstate(all="ignore"), _quiet_nan():
            per_dice, per_nsd = np.nanmean(res.dice, 0), np.nanmean(res.nsd, 0)
        for c, d, n in zip(fg, per_dice, per_nsd):
            row[f"dice_c{c}"], row[f"nsd_c{c}"] = f"{d:.6f}", f"{n:.6f}"
            tb.add_scalar(f"val/dice_c{c}", d, self.step)
            tb.add_scalar(f"val/nsd_c{c}", n, self.step)
        tb.add_scalar("val/mean_dice", res.mean_dice, self.step)
        self.val_csv.append(row)
        if math.isnan(res.mean_dice) and not self._warned_undefined:
            self._warned_undefined = True
            warnings.warn(
                f"validation at step {self.step}: the mean Dice is undefined (no validation case "
                f"{', '.join(res.names)} holds a foreground class, and none was predicted); until a validation "
                "has a defined Dice, best.pt follows the latest validated model",
                stacklevel=2,
            )
        if _better(res.mean_dice, self.best):
            self.best = {"metric": res.mean_dice, "step": self.step}
            ck.write_inference_checkpoint(self.model, self.infer_settings, self.best_path, self.meta)
        self.validated_step = self.step
        return res

    def _summary(self, stopped_by_time: bool) -> dict:
        summary = {
            "steps": self.step,
            "total_steps": self.config.total_steps,
            "epochs": self.epoch,
            "stopped_by_time_budget": stopped_by_time,
            "train_seconds": round(self.elapsed, 2),
            "best": self.best,
            "best_model": self.best_path if os.path.exists(self.best_path) else None,
            "checkpoint": self.checkpoint_path,
        }
        if self.last_val is not None:
            with _quiet_nan():
                summary["last_validation"] = {
                    "step": self.last_val.step,
                    "mean_dice": self.last_val.mean_dice,
                    "mean_nsd": self.last_val.mean_nsd,
                    "dice_per_class": np.nanmean(self.last_val.dice, 0).tolist(),
                    "nsd_per_class": np.nanmean(self.last_val.nsd, 0).tolist(),
                    "cases": self.last_val.names,
                }
        ck.atomic_json(_finite(summary), os.path.join(self.out_dir, "summary.json"))
        return summary


class _quiet_nan:
    """Silence numpy's 'mean of empty slice' for classes absent from every case (their mean is NaN)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _finite(obj):
    """NaN/inf to None so that the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
