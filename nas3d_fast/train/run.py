"""``nas3d train``: one network of a search space trained on an MSD-layout dataset (the glue between the
data side, ``nas3d_fast.data``, the spaces and the :class:`~nas3d_fast.train.trainer.Trainer`)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch

from ..inference.checkpoint import InferSettings
from ..spaces.cli import read_arch
from .batches import StepBatches
from .trainer import TrainConfig, Trainer, ValCase


@dataclass
class DataSettings:
    """What the data side is asked for. ``intensity``/``spacing``/``crop_nonzero`` are
    ``nas3d_fast.data.Preprocessing``'s; ``augment`` is the probability of each T-AutoML augmentation
    (0 turns them off); ``ratio`` the foreground:background patch ratio; ``fold`` picks a 5-fold CV fold
    instead of dataset.json's validation list."""

    patch: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 2
    spacing: tuple[float, float, float] | None = None
    intensity: dict = field(default_factory=lambda: {"kind": "zscore", "nonzero": False})
    crop_nonzero: bool = False
    augment: float = 0.15
    ratio: tuple[int, int] = (1, 1)
    fold: int | None = None
    workers: int = 0
    max_val_cases: int | None = None  #: validate on the first this many validation cases (0: no validation)

    def __post_init__(self):
        if len(self.patch) != 3 or min(int(p) for p in self.patch) < 1:
            raise ValueError(f"patch must be three sizes >= 1, got {self.patch}")
        for name, low in (("batch_size", 1), ("workers", 0), ("max_val_cases", 0)):
            value = getattr(self, name)
            if value is not None and int(value) < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if not 0 <= float(self.augment) <= 1:
            raise ValueError(f"augment must be a probability in [0, 1], got {self.augment}")
        if len(self.ratio) != 2 or min(self.ratio) < 0 or sum(self.ratio) == 0:
            raise ValueError(f"ratio must be two counts >= 0, not both 0 (foreground, background), got {self.ratio}")


class PatchSample:
    """``sample(i, rng)`` for :class:`StepBatches` over a ``nas3d_fast.data.PatchDataset``: global sample
    ``i`` is item ``i % samples_per_epoch`` of epoch ``i // samples_per_epoch`` (the dataset seeds each item
    from (seed, epoch, item), so ``rng`` is not needed). Picklable, for DataLoader workers."""

    def __init__(self, patches):
        self.patches = patches

    def __call__(self, i: int, rng=None):
        per_epoch = self.patches.samples_per_epoch
        self.patches.set_epoch(i // per_epoch)
        item = self.patches[i % per_epoch]
        return item["image"], item["label"]


def train(
    space_name: str,
    arch: str,
    data_dir: str,
    out_dir: str,
    config: TrainConfig,
    data: DataSettings | None = None,
    space_options: dict | None = None,
    resume: bool = True,
    arch_training: bool = False,
) -> dict:
    """Train ``arch`` (a JSON file or ``random:SEED``) of space ``space_name`` on the MSD dataset in
    ``data_dir``; writes everything the Trainer writes to ``out_dir`` (plus ``arch.json``). Returns the
    summary.

    ``arch_training``: for spaces whose architectures carry their training recipe (tautoml's
    ``training_config``: learning rate, schedule, loss, optimiser, augmentations), train with that recipe
    instead of ``config``'s and ``data.augment``'s (trial searches do; the summary's ``arch_training``
    says what was used)."""
    from .. import data as nd
    from ..spaces import base

    data = data or DataSettings()
    space = base.get(space_name, **(space_options or {}))
    the_arch = read_arch(space, arch)
    recipe = None
    if arch_training and hasattr(space, "training_config"):
        recipe = space.training_config(the_arch)
        config = dataclasses.replace(
            config, lr=recipe["learning_rate"], schedule=recipe["scheduler"], loss=recipe["loss"],
            optimizer=recipe["optimizer"],
        )
    space.check_patch(data.patch)
    index = nd.MSDIndex(data_dir)
    num_classes = len(index.labels)
    in_channels = max(1, len(index.modality))
    if num_classes < 2:
        raise ValueError(f"dataset {data_dir}: dataset.json must list at least two labels, got {index.labels}")
    train_ids, val_ids = nd.split(index, fold=data.fold)
    if data.max_val_cases is not None:
        val_ids = val_ids[: data.max_val_cases]
    pre = nd.Preprocessing(spacing=data.spacing, intensity=dict(data.intensity), crop_nonzero=data.crop_nonzero)
    train_volumes = nd.VolumeDataset(data_dir, train_ids, pre)
    if recipe is not None:
        ops = tuple(dict.fromkeys(recipe["augmentations"]))  # the order of the slots, each op once
        augment = nd.Augmentations(p=recipe["augmentation_prob"], ops=ops) if ops else None
    else:
        augment = nd.Augmentations(p=data.augment) if data.augment > 0 else None
    patches = nd.PatchDataset(
        train_volumes,
        data.patch,
        config.steps_per_epoch * data.batch_size,
        ratio=data.ratio,
        seed=config.seed,
        augment=augment,
    )
    batches = StepBatches(PatchSample(patches), data.batch_size, config.total_steps, config.seed, data.workers)
    val_volumes = nd.VolumeDataset(data_dir, val_ids, pre)
    val_cases = []
    for i in range(len(val_volumes)):
        item = val_volumes[i]
        val_cases.append(
            ValCase(item["id"], item["image"][None], item["label"][0].numpy(), tuple(float(s) for s in item["spacing"]))
        )
    torch.manual_seed(config.seed)
    model = space.build(the_arch, in_channels, num_classes)
    meta = {
        "space": space.name,
        "space_options": dict(space.options),
        "arch": json.loads(the_arch.to_json()),
        "in_channels": in_channels,
        "num_classes": num_classes,
        "labels": {str(k): v for k, v in index.labels.items()},
        "preprocessing": pre.to_dict(),
        "data": {
            "root": os.path.abspath(data_dir),
            "train": list(train_ids),
            "val": list(val_ids),
            "patch": list(data.patch),
            "batch_size": data.batch_size,
            "augment": data.augment,
            "ratio": list(data.ratio),
        },
    }
    settings = InferSettings(
        in_channels=in_channels,
        roi_size=tuple(config.roi_size),
        overlap=config.overlap,
        mode="gaussian",
        sw_batch_size=config.sw_batch_size,
        intensity=dict(data.intensity),
        preprocessing=pre.to_dict(),  # nas3d infer crops, resamples and normalises as this training does
    )
    os.makedirs(out_dir, exist_ok=True)
    from .checkpoint import atomic_write

    atomic_write(os.path.join(out_dir, "arch.json"), lambda f: f.write(the_arch.to_json(indent=2) + "\n"), mode="w")
    if recipe is not None:
        meta["arch_training"] = recipe
    trainer = Trainer(model, config, out_dir, batches, val_cases, meta, infer_settings=settings)
    summary = trainer.fit(resume=resume)
    if recipe is not None:
        summary["arch_training"] = recipe
    return summary
