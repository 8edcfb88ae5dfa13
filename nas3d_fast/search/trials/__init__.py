"""Trial searches (SPEC §6): candidates proposed by an ask/tell searcher, each trained on its own (a trial),
results kept in a crash-safe SQLite store, trials run in-process, in worker processes or on Ray::

    from nas3d_fast.search.trials import trial_search, TrialSearchConfig
    summary = trial_search("c2fnas", "evolution", "mni", "run", TrialSearchConfig(trials=30, trial_steps=200))

Pieces: ``searcher`` (the interface, :class:`RandomSearch`), ``evolution`` (C2FNAS), ``predictor``
(T-AutoML), ``given`` (another run's ranked candidates, trained stand-alone), ``store``, ``evaluate`` (a
trial's training), ``executors`` (local, ray), ``driver`` (the loop, successive halving, the run folder).
"""

from __future__ import annotations

import importlib

from .driver import TrialSearch, TrialSearchConfig, status
from .evaluate import TrainEvaluator, TrialJob
from .executors import EXECUTORS, Executor, Outcome, make_executor
from .given import GivenSearch, ranked_archs
from .searcher import MemoryBudgetSampler, RandomSearch, Trial, TrialSearcher
from .store import TrialStore

#: ``nas3d search --searcher`` name -> (module, class) of the trial searchers.
TRIAL_SEARCHERS = {
    "random": ("nas3d_fast.search.trials.searcher", "RandomSearch"),
    "evolution": ("nas3d_fast.search.trials.evolution", "EvolutionSearch"),
    "predictor": ("nas3d_fast.search.trials.predictor", "RelationPredictorSearch"),
    "given": ("nas3d_fast.search.trials.given", "GivenSearch"),
}


def searcher_class(name: str) -> type[TrialSearcher]:
    """The trial searcher class called ``name`` (:data:`TRIAL_SEARCHERS`), imported on first use."""
    if name not in TRIAL_SEARCHERS:
        raise ValueError(f"trial searcher must be one of {sorted(TRIAL_SEARCHERS)}, got {name!r}")
    module, cls = TRIAL_SEARCHERS[name]
    return getattr(importlib.import_module(module), cls)


def trial_search(
    space_name: str,
    searcher: str,
    data_dir: str,
    out_dir: str,
    config: TrialSearchConfig,
    data=None,
    train: dict | None = None,
    space_options: dict | None = None,
    searcher_options: dict | None = None,
    seed: int = 0,
    memory_budget_mib: float | None = None,
    measure_memory: bool = False,
    on_trial=None,
) -> dict:
    """A trial search of space ``space_name`` with ``searcher`` (:data:`TRIAL_SEARCHERS`) on the MSD dataset
    in ``data_dir``, each trial trained by :class:`TrainEvaluator` (``data``: ``DataSettings``; ``train``:
    ``TrainConfig`` fields shared by the trials). ``memory_budget_mib``: only candidates whose predicted
    training-step peak fits (MiB). Writes the run folder ``out_dir`` (``driver``); returns the summary."""
    from ... import data as nd
    from ...spaces import base
    from ...train.run import DataSettings

    data = data or DataSettings()
    cls = searcher_class(searcher)  # an unknown name fails before any file is written
    space = base.get(space_name, **(space_options or {}))
    space.check_patch(data.patch)
    index = nd.MSDIndex(data_dir)
    if len(index.labels) < 2:
        raise ValueError(f"dataset {data_dir}: dataset.json must list at least two labels, got {index.labels}")
    sampler = None
    if memory_budget_mib is not None:
        if not memory_budget_mib > 0:
            raise ValueError(f"memory_budget_mib must be a positive number of MiB, got {memory_budget_mib}")
        import torch

        device = (train or {}).get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        target = "cuda" if str(device).startswith("cuda") else "cpu"
        sampler = MemoryBudgetSampler(space, int(memory_budget_mib * 2**20), (max(1, len(index.modality)),
                                      *data.patch), data.batch_size, len(index.labels), target=target)
    the_searcher = cls(space, seed=seed, sampler=sampler, **(searcher_options or {}))
    evaluator = TrainEvaluator(space_name, dict(space.options), data_dir, data, {"seed": seed, **(train or {})},
                               measure_memory=measure_memory)
    extra = {"memory_budget_mib": memory_budget_mib}
    return TrialSearch(space, the_searcher, evaluator, out_dir, config, extra, on_trial=on_trial).run()


__all__ = [
    "EXECUTORS",
    "TRIAL_SEARCHERS",
    "Executor",
    "GivenSearch",
    "Outcome",
    "MemoryBudgetSampler",
    "RandomSearch",
    "TrainEvaluator",
    "Trial",
    "TrialJob",
    "TrialSearch",
    "TrialSearchConfig",
    "TrialSearcher",
    "TrialStore",
    "make_executor",
    "ranked_archs",
    "searcher_class",
    "status",
    "trial_search",
]
