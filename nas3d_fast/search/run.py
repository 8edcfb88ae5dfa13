"""A supernet search on an MSD-layout dataset: the data of ``nas3d search`` (the two case streams) and
the searcher it names."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from ..train.batches import StepBatches
from ..train.run import DataSettings, PatchSample
from .base import SearchConfig, SupernetSearch
from .distributed import ProcessGroup, RankSamples
from .dints import DiNTSSearch
from .enas import ENASSearch
from .gumbel import GumbelSearch
from .hypernet import HyperNetSearch
from .oneshot import OneShotSearch

#: searcher name (``nas3d search --searcher``) -> its class.
SEARCHERS: dict[str, type[SupernetSearch]] = {"gumbel": GumbelSearch, "dints": DiNTSSearch,
                                              "oneshot": OneShotSearch, "hypernet": HyperNetSearch,
                                              "enas": ENASSearch}


def split_weight_arch(ids: list[str], seed: int, arch_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """(weight cases, architecture cases): a seeded shuffle of ``ids`` cut 4:1 (SCNAS §3), at least one
    case on each side."""
    if len(ids) < 2:
        raise ValueError(
            f"a supernet search needs at least 2 training cases (weights and architecture are trained on "
            f"disjoint cases, 4:1), got {len(ids)}"
        )
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_arch = min(len(ids) - 1, max(1, round(arch_fraction * len(ids))))
    return sorted(order[n_arch:]), sorted(order[:n_arch])


def search(
    space_name: str,
    searcher: str,
    data_dir: str,
    out_dir: str,
    config: SearchConfig,
    data: DataSettings | None = None,
    space_options: dict | None = None,
    searcher_options: dict | None = None,
    supernet_options: dict | None = None,
    resume: bool = True,
    on_step=None,
) -> dict:
    """Search space ``space_name`` with ``searcher`` (:data:`SEARCHERS`) on the dataset in ``data_dir``;
    writes the run folder ``out_dir`` (``nas3d_fast.search.base``). Returns the summary.

    Under ``torchrun`` the processes search together (``nas3d_fast.search.distributed``): each takes
    ``data.batch_size`` samples of every step, on ``cuda:LOCAL_RANK`` when the device is CUDA."""
    from .. import data as nd
    from ..spaces import base

    if searcher not in SEARCHERS:
        raise ValueError(f"searcher must be one of {sorted(SEARCHERS)}, got {searcher!r}")
    data = data or DataSettings()
    space = base.get(space_name, **(space_options or {}))
    space.check_patch(data.patch)
    index = nd.MSDIndex(data_dir)
    num_classes = len(index.labels)
    in_channels = max(1, len(index.modality))
    if num_classes < 2:
        raise ValueError(f"dataset {data_dir}: dataset.json must list at least two labels, got {index.labels}")
    train_ids, _ = nd.split(index, fold=data.fold)
    weight_ids, arch_ids = split_weight_arch(list(train_ids), config.seed)
    pre = nd.Preprocessing(spacing=data.spacing, intensity=dict(data.intensity), crop_nonzero=data.crop_nonzero)
    augment = nd.Augmentations(p=data.augment) if data.augment > 0 else None
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    group = ProcessGroup.from_environment(torch.device(device).type)
    if group.active and torch.device(device).type == "cuda" and torch.device(device).index is None:
        config = dataclasses.replace(config, device=f"cuda:{group.local_rank}")

    def stream(ids: list[str], seed: int) -> StepBatches:
        patches = nd.PatchDataset(
            nd.VolumeDataset(data_dir, ids, pre),
            data.patch,
            config.steps_per_epoch * data.batch_size,
            ratio=data.ratio,
            seed=seed,
            augment=augment,
        )
        sample = PatchSample(patches)
        if group.active:
            sample = RankSamples(sample, data.batch_size, group, seed)
        return StepBatches(sample, data.batch_size, config.total_steps, seed, data.workers)

    meta = {
        "in_channels": in_channels,
        "num_classes": num_classes,
        "labels": {str(k): v for k, v in index.labels.items()},
        "preprocessing": pre.to_dict(),
        "data": {
            "root": os.path.abspath(data_dir),
            "weight_cases": weight_ids,
            "arch_cases": arch_ids,
            "patch": list(data.patch),
            "batch_size": data.batch_size,
            "augment": data.augment,
            "ratio": list(data.ratio),
            "processes": group.world,  # the batch of a step is processes * batch_size samples
        },
    }
    runner = SEARCHERS[searcher](
        space,
        config,
        out_dir,
        stream(weight_ids, config.seed),
        stream(arch_ids, config.seed + 1),
        meta,
        supernet_options=supernet_options,
        on_step=on_step,
        group=group,
        **(searcher_options or {}),
    )
    return runner.fit(resume=resume)
