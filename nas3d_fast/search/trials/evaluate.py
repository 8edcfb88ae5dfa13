"""Trial evaluation: one candidate trained on its own for a fixed budget, then validated.

A :class:`TrialJob` is what an executor ships to a worker (plain data, picklable); a
:class:`TrainEvaluator` trains the job's architecture with the package's trainer
(``nas3d_fast.train.run.train``) in the trial's own run folder, ``RUN/trials/<id>``, with checkpoints:
a trial re-queued after its worker or the driver died continues from its checkpoint instead of
restarting, and a trial whose training had finished only reads its summary back.

The result (the store's ``nas3d_fast.search.trials.store.RESULT_FIELDS``): the best validation's mean
Dice (``score``) with its per-class Dice and step, parameters and FLOPs of one patch, the predicted
training-step peak (bytes; measured too with ``measure_memory``), and the training's seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class TrialJob:
    """One trial to run: ``arch_json`` (``Arch.to_json()``) trained for ``budget`` steps in ``run_dir``."""

    trial_id: int
    arch_json: str
    budget: int
    run_dir: str
    attempt: int = 1


def worker_name() -> str:
    """host:pid of this process (the store's ``worker`` column)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def best_validation(run_dir: str, step: int | None) -> dict:
    """The per-class Dice and NSD of the validation at ``step`` in ``run_dir/val.csv`` (the trainer's log)."""
    path = os.path.join(run_dir, "val.csv")
    if step is None or not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if int(row["step"]) == int(step):
                out = {}
                for key, prefix in (("dice_per_class", "dice_"), ("nsd_per_class", "nsd_")):
                    values = [float(row[k]) for k in row if k.startswith(prefix)]
                    out[key] = [None if math.isnan(v) else v for v in values]
                if row.get("mean_nsd") not in (None, ""):
                    out["mean_nsd"] = None if math.isnan(float(row["mean_nsd"])) else float(row["mean_nsd"])
                return out
    return {}


class TrainEvaluator:
    """``evaluator(job) -> result``: trains on an MSD-layout dataset (picklable: plain settings only).

    Args:
        space_name, space_options: the search space.
        data_dir: the dataset folder. data: ``nas3d_fast.train.run.DataSettings`` (as a dict or the object).
        train: ``nas3d_fast.train.trainer.TrainConfig`` fields shared by every trial (optimizer, lr, loss,
            seed...); ``epochs`` is the number of validations of a trial (default 1: at its end), and each
            trial's steps per epoch are its budget divided by it (rounded up).
        measure_memory: also measure the training-step peak (``nas3d_fast.profile.measure_training_memory``).
        arch_training: train with the architecture's own recipe where the space gives one (tautoml).
    """

    def __init__(
        self,
        space_name: str,
        space_options: dict,
        data_dir: str,
        data,
        train: dict,
        measure_memory: bool = False,
        arch_training: bool = True,
    ):
        from ...train.run import DataSettings
        from ...train.trainer import TrainConfig

        self.space_name, self.space_options = space_name, dict(space_options)
        self.data_dir = os.path.abspath(data_dir)
        self.data = data if isinstance(data, DataSettings) else DataSettings(**data)
        self.train = dict(train)
        TrainConfig(**{k: v for k, v in self.train.items()})  # bad settings fail here, before any trial
        self.measure_memory, self.arch_training = bool(measure_memory), bool(arch_training)

    def config(self, budget: int):
        from ...train.trainer import TrainConfig

        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"a trial's budget must be an int >= 1 (training steps), got {budget!r}")
        validations = min(budget, int(self.train.get("epochs", 1)))
        fields = {**self.train, "epochs": validations, "steps_per_epoch": math.ceil(budget / validations)}
        if not fields.get("checkpoint_every"):  # a re-queued trial continues from at most a tenth back
            fields["checkpoint_every"] = max(1, fields["steps_per_epoch"] // 10)
        fields.setdefault("roi_size", tuple(self.data.patch))
        return TrainConfig(**fields)

    def __call__(self, job: TrialJob) -> dict:
        import torch

        from ...spaces import base
        from ...train.run import train

        space = base.get(self.space_name, **self.space_options)
        arch = space.arch_from_json(job.arch_json)
        os.makedirs(job.run_dir, exist_ok=True)
        arch_path = os.path.join(job.run_dir, "arch.json")
        if not os.path.exists(arch_path):
            from ..._atomic import atomic_write

            atomic_write(arch_path, lambda f: f.write(arch.to_json(indent=2) + "\n"), mode="w")
        config = self.config(job.budget)
        summary = train(self.space_name, arch_path, self.data_dir, job.run_dir, config, self.data,
                        self.space_options, resume=True, arch_training=self.arch_training)
        best = summary.get("best") or {}
        score = best.get("metric")
        score = None if score is None or not math.isfinite(score) else float(score)
        metrics = {"mean_dice": score, "best_step": best.get("step"), "steps": summary["steps"],
                   "stopped_by_time_budget": summary["stopped_by_time_budget"],
                   **best_validation(job.run_dir, best.get("step"))}
        if "arch_training" in summary:
            metrics["recipe"] = summary["arch_training"]
        result = {"score": score, "metrics": metrics, "seconds": summary["train_seconds"], "worker": worker_name()}
        result.update(self.cost(space, arch, config, torch.device(config.device or "cpu")))
        return result

    def _shape(self) -> tuple[int, ...]:
        from ... import data as nd

        index = nd.MSDIndex(self.data_dir)
        return max(1, len(index.modality)), len(index.labels)

    def cost(self, space, arch, config, device) -> dict:
        """Parameters, FLOPs (one patch) and the training-step peak (predicted; measured on request)."""
        import torch

        from ...profile import measure_training_memory, predict_training_memory
        from ...profile.loss import LOSSES as PROFILED_LOSSES

        in_channels, num_classes = self._shape()
        shape = (in_channels, *self.data.patch)
        cost = space.cost(arch, shape, num_classes)
        # The profiler models dice_ce, ce, adam and sgd; every other Dice variant holds what dice_ce holds,
        # and the other optimisers are modelled as Adam (two state tensors per parameter: an upper bound).
        step = {"batch_size": self.data.batch_size, "num_classes": num_classes,
                "loss": config.loss if config.loss in PROFILED_LOSSES else "dice_ce",
                "optimizer": {"adam": "adam", "sgd": "sgd"}.get(config.optimizer, "adam")}
        with torch.device("meta"):
            model = space.build(arch, in_channels, num_classes)
        where = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        target = "cuda" if str(where).startswith("cuda") else "cpu"
        out = {"params": cost.params, "flops": cost.flops,
               "predicted_memory": predict_training_memory(model, shape, target=target, **step).peak_bytes}
        if self.measure_memory:
            model = space.build(arch, in_channels, num_classes)
            out["measured_memory"] = measure_training_memory(model, shape, device=where, **step).peak_bytes
        return out

    def settings(self) -> dict:
        """What decides a trial's result (compared when a search resumes)."""
        return {"space": self.space_name, "space_options": self.space_options, "data_dir": self.data_dir,
                "data": dataclasses.asdict(self.data), "train": {k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in self.train.items()
                                                                if k not in ("device", "progress")},
                "measure_memory": self.measure_memory, "arch_training": self.arch_training}
