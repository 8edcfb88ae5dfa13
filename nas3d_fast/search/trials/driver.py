"""The driver of a trial search: asks the searcher for candidates, runs them on an executor, records every
change in the trial store, and writes the run folder.

Files in ``out_dir``:

- ``trials.db``: the trial store (``store``); the searcher's state lives there too.
- ``trials/<id>/``: each trial's own training run (checkpoints, logs, ``best.pt``), resumable.
- ``arch.json``: the best trial's architecture (``nas3d train --arch RUN/arch.json`` trains it);
  ``summary.json``; ``trials.csv`` (the store as a table); ``report.png`` (``report``).

Rerunning the same search resumes it: trials that were running are queued again and continue from their
checkpoints, done trials are kept, and the searcher continues from its stored state.

Successive halving (``halving_eta`` >= 2, asynchronous as in ASHA): whenever a worker is free, a done trial
in the top ``1 / eta`` of its rung that has not been promoted is trained again, afresh, with ``eta`` times
the budget, up to ``halving_rungs`` rungs; otherwise the searcher's next candidate runs. The searcher
compares rung-0 results only (equal budgets); the result is the best trial of the highest rung reached.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..._atomic import atomic_write, write_json
from ...spaces.base import SearchSpace
from .evaluate import TrialJob, worker_name
from .executors import EXECUTORS, Outcome, make_executor
from .searcher import Trial, TrialSearcher
from .store import TrialStore


@dataclass
class TrialSearchConfig:
    """How a trial search runs. ``trials``: rung-0 trials in all (a rerun with more extends the search);
    ``trial_steps``: training steps of a rung-0 trial; ``time_budget``: minutes after which no new trial
    starts (running ones finish). Executor settings as in ``executors.make_executor``."""

    trials: int = 20
    trial_steps: int = 100
    halving_eta: int = 0
    halving_rungs: int = 3
    executor: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_retries: int = 2
    time_budget: float | None = None
    progress: bool = True

    def __post_init__(self):
        for name, low in (("trials", 1), ("trial_steps", 1), ("halving_rungs", 1), ("max_retries", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if isinstance(self.halving_eta, bool) or not isinstance(self.halving_eta, int) or self.halving_eta in (1,) \
                or self.halving_eta < 0:
            raise ValueError(f"halving_eta must be 0 (no successive halving) or an int >= 2, got {self.halving_eta!r}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise ValueError(f"time_budget must be a positive number of minutes, got {self.time_budget}")

    def budget(self, rung: int) -> int:
        """Training steps of a trial at ``rung``."""
        return self.trial_steps * max(1, self.halving_eta) ** rung

    def trajectory(self) -> dict:
        """The settings that decide the trials (compared on resume); the rest may change between reruns."""
        return {"trial_steps": self.trial_steps, "halving_eta": self.halving_eta,
                "halving_rungs": self.halving_rungs if self.halving_eta else 1}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (score, memory) no other point beats: higher-or-equal score at lower-or-equal
    memory, better in one. In order of memory."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front, best = [], -math.inf
    for i in order:
        if points[i][0] > best:
            front.append(i)
            best = points[i][0]
    return front


def best_trial(trials: list[Trial]) -> Trial | None:
    """The result: among done trials with a score, the highest rung's best (ties: the earlier trial)."""
    scored = [t for t in trials if t.status == "done" and t.score is not None]
    return max(scored, key=lambda t: (t.rung, t.score, -t.id)) if scored else None


def front_trials(trials: list[Trial]) -> list[Trial]:
    """The Pareto front of Dice against predicted memory, over each architecture's highest-rung result."""
    latest: dict[tuple, Trial] = {}
    for t in trials:
        if t.status == "done" and t.score is not None and t.predicted_memory is not None:
            if t.encoding not in latest or t.rung >= latest[t.encoding].rung:
                latest[t.encoding] = t
    pool = list(latest.values())
    return [pool[i] for i in pareto_front([(t.score, float(t.predicted_memory)) for t in pool])]


class TrialSearch:
    """One trial search (module docstring).

    Args:
        space: the search space. searcher: a :class:`TrialSearcher` on it.
        evaluator: ``evaluator(TrialJob) -> result dict`` (``evaluate.TrainEvaluator``, or any picklable
            callable for tests and benchmarks); its ``settings()``, when it has one, is compared on resume.
        out_dir: the run folder. config: :class:`TrialSearchConfig`.
        settings: further settings to record and compare on resume (the data, the CLI's options).
        on_trial: called with each trial after its end is stored (tests kill the process there).
    """

    def __init__(
        self,
        space: SearchSpace,
        searcher: TrialSearcher,
        evaluator: Callable[[TrialJob], dict],
        out_dir: str,
        config: TrialSearchConfig,
        settings: dict | None = None,
        on_trial: Callable[[Trial], None] | None = None,
    ):
        self.space, self.searcher, self.evaluator = space, searcher, evaluator
        self.out_dir, self.config, self.on_trial = out_dir, config, on_trial
        self.settings = {
            "space": space.name,
            "space_options": dict(space.options),
            "searcher": searcher.name,
            "searcher_options": searcher.options(),
            "seed": searcher.seed,
            **config.trajectory(),
            "evaluator": evaluator.settings() if hasattr(evaluator, "settings") else type(evaluator).__name__,
            **(settings or {}),
        }
        self.store: TrialStore | None = None
        self.exhausted = self.stopped_by_time = False

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> dict:
        """Search until ``trials`` rung-0 trials ended (and every due promotion ran) or the time budget;
        returns the summary (also in ``summary.json``)."""
        cfg = self.config
        os.makedirs(self.out_dir, exist_ok=True)
        self.store = store = TrialStore(os.path.join(self.out_dir, "trials.db"), self.space, self.settings)
        try:
            state = store.searcher_state()
            if state is not None:
                self.searcher.load_state_dict(state)
            self.searcher.mark_seen(store.encodings(0))
            store.requeue_running()
            self.t0, self.elapsed0 = time.monotonic(), float(store.meta("elapsed") or 0.0)
            bar = None
            if cfg.progress:
                from tqdm import tqdm

                bar = tqdm(total=cfg.trials, initial=self._ended(), unit="trial", desc=f"search ({self.searcher.name})")
            executor = make_executor(cfg.executor, self.evaluator, cfg.workers, cfg.ray_address, cfg.cpus_per_trial,
                                     cfg.gpus_per_trial, cfg.max_retries)
            try:
                while True:
                    while executor.free() > 0:
                        job = self._next_job()
                        if job is None:
                            break
                        executor.submit(job)
                    if executor.busy() == 0:
                        break
                    for outcome in executor.wait():
                        trial = self._record(outcome)
                        if bar:
                            bar.n = self._ended()
                            best = store.best()  # best_trial(store.trials()), one trial decoded
                            bar.set_postfix(best="-" if best is None else f"{best.score:.3f}", refresh=True)
                        if self.on_trial:
                            self.on_trial(trial)
            finally:
                executor.close()
                with store.transaction():
                    store._set_meta("elapsed", self._elapsed())
                if bar:
                    bar.close()
            return self._finish()
        finally:
            store.close()

    def _elapsed(self) -> float:
        return self.elapsed0 + time.monotonic() - self.t0

    def _ended(self) -> int:
        return self.store.count(("done", "failed"), rung=0)

    def _job(self, trial_id: int) -> TrialJob:
        trial = self.store.start(trial_id, worker=self.config.executor)
        run_dir = os.path.join(self.out_dir, "trials", f"{trial.id:05d}")
        return TrialJob(trial.id, trial.arch.to_json(), trial.budget, run_dir, trial.attempts)

    def _next_job(self) -> TrialJob | None:
        store, cfg = self.store, self.config
        queued = store.ids("queued", limit=1)
        if queued:
            return self._job(queued[0])
        if cfg.halving_eta:
            for rung in range(cfg.halving_rungs - 2, -1, -1):  # the highest rung first
                parent_id = self._promotable(rung)
                if parent_id is not None:
                    parent = store.get(parent_id)
                    trial_id = store.add(parent.arch, cfg.budget(rung + 1), rung + 1, parent=parent.id)
                    return self._job(trial_id)
        if cfg.time_budget and self._elapsed() >= 60.0 * cfg.time_budget:
            self.stopped_by_time = True
            return None
        while not self.exhausted and store.count(rung=0) < cfg.trials:
            archs = self.searcher.suggest(1)
            if not archs:
                self.exhausted = True
                break
            trial_id = store.add(archs[0], cfg.budget(0), 0, searcher_state=self.searcher.state_dict())
            if trial_id is not None:
                return self._job(trial_id)
        return None

    def _promotable(self, rung: int) -> int | None:
        """The id of the best done trial of ``rung`` in its top ``1 / eta`` not yet promoted, if any."""
        done = [(trial_id, score) for trial_id, _, _, score in self.store.scored(rung)]
        top = sorted(done, key=lambda d: (-d[1], d[0]))[: len(done) // self.config.halving_eta]
        promoted = self.store.parents(rung + 1)
        return next((trial_id for trial_id, _ in top if trial_id not in promoted), None)

    def _record(self, outcome: Outcome) -> Trial:
        store, cfg = self.store, self.config
        trial = store.get(outcome.job.trial_id)
        if outcome.result is not None:
            result = dict(outcome.result)
            worker = result.pop("worker", None)
            for key, value in result.items():
                setattr(trial, key, value)
            if trial.rung == 0:
                self.searcher.observe(trial)
            return store.finish(trial.id, result, self.searcher.state_dict() if trial.rung == 0 else None,
                                worker=worker)
        retry = outcome.lost_worker and trial.attempts <= cfg.max_retries
        if not retry and trial.rung == 0:
            trial.score = None
            self.searcher.observe(trial)
        return store.fail(trial.id, outcome.error or "unknown error", retry,
                          self.searcher.state_dict() if not retry and trial.rung == 0 else None)

    # -- the run folder ------------------------------------------------------------------------------

    def _finish(self) -> dict:
        store = self.store
        trials = store.trials()
        best = best_trial(trials)
        front = front_trials(trials)
        summary = {
            "searcher": self.searcher.name,
            "space": self.space.name,
            "space_options": dict(self.space.options),
            "trials": store.counts(),
            "rung0_trials": store.count(rung=0),
            "requested_trials": self.config.trials,
            "space_exhausted": self.exhausted,
            "stopped_by_time_budget": self.stopped_by_time,
            "search_seconds": round(self._elapsed(), 3),
            "trial_seconds": round(sum(t.seconds or 0.0 for t in trials), 3),
            "best": None if best is None else _trial_dict(best),
            "pareto_front": [t.id for t in front],
            "arch_path": None,
            "config": asdict(self.config),
        }
        if hasattr(self.searcher, "report"):
            summary["searcher_report"] = self.searcher.report()
        if best is not None:
            path = os.path.join(self.out_dir, "arch.json")
            atomic_write(path, lambda f: f.write(best.arch.to_json(indent=2) + "\n"), mode="w")
            summary["arch_path"] = path
        write_trials_csv(trials, os.path.join(self.out_dir, "trials.csv"))
        write_json(summary, os.path.join(self.out_dir, "summary.json"))
        from ..report import write_trial_report

        write_trial_report(self.out_dir, trials, best, front)
        return summary


def _trial_dict(t: Trial) -> dict:
    return {"id": t.id, "score": t.score, "rung": t.rung, "budget": t.budget, "encoding": list(t.encoding),
            "arch": json.loads(t.arch.to_json()), "metrics": t.metrics, "params": t.params, "flops": t.flops,
            "predicted_memory": t.predicted_memory, "measured_memory": t.measured_memory, "seconds": t.seconds}


TRIAL_COLUMNS = ("id", "status", "rung", "budget", "parent", "attempts", "score", "params", "flops",
                 "predicted_memory", "measured_memory", "seconds", "worker", "encoding")


def write_trials_csv(trials: list[Trial], path: str) -> None:
    def write(f):
        w = csv.writer(f)
        w.writerow(TRIAL_COLUMNS)
        for t in trials:
            w.writerow([" ".join(map(str, t.encoding)) if c == "encoding" else ("" if getattr(t, c) is None else
                                                                                 getattr(t, c)) for c in TRIAL_COLUMNS])

    atomic_write(path, write, mode="w")


def status(run_dir: str) -> dict:
    """What ``nas3d search status RUN`` prints: trials by state, the best so far, the Pareto front of Dice
    against predicted memory. Reads the store while a search may be writing it (WAL: never blocks it)."""
    from ...spaces import base

    try:
        store = TrialStore.read_only(os.path.join(run_dir, "trials.db"))
    except FileNotFoundError:
        raise ValueError(f"{run_dir} holds no trial search (no trials.db)") from None
    with store:
        settings = store.meta("settings")
        store.space = base.get(settings["space"], **settings["space_options"])
        trials = store.trials()
        counts = store.counts()
    best = best_trial(trials)
    return {
        "run": run_dir,
        "space": settings["space"],
        "searcher": settings["searcher"],
        "trials": counts,
        "best": None if best is None else _trial_dict(best),
        "pareto_front": [_trial_dict(t) for t in front_trials(trials)],
        "running": [{"id": t.id, "worker": t.worker, "started": t.started, "attempts": t.attempts}
                    for t in trials if t.status == "running"],
    }


__all__ = ["TrialSearch", "TrialSearchConfig", "best_trial", "front_trials", "pareto_front", "status", "worker_name"]
