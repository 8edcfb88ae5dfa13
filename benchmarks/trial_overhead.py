"""Suite ``trial_overhead``: what the trial search's machinery (the SQLite store, the driver, the executor)
costs per trial, with an evaluator that returns at once (issue 21). Target: under 1% of a 60-second trial,
i.e. ``trial_overhead.<executor>.percent_of_60s`` <= 1 (%).

For each executor a search of ``N`` trivial trials runs in a fresh folder on ``c2fnas`` (random search):
``seconds_per_trial`` is the time between the first and the last trial's end divided by the trials between
them (the steady state: suggest, store, submit, wait, record); ``startup_s`` the time to the first end
(opening the store, starting the workers or Ray). Executors: ``local`` (in-process), ``local2`` (two worker
processes), ``ray`` (a local Ray, 2 slots; skipped without Ray).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from .core import Case, Suite

N_TRIALS = 60
QUICK_TRIALS = 20
EXECUTORS = {"local": ("local", None), "local2": ("local", 2), "ray": ("ray", 2)}


def _trivial():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from trial_fakes import Trivial

    return Trivial()


def run_search(executor: str, trials: int) -> dict:
    """One search of ``trials`` trivial trials with ``executor`` (a key of :data:`EXECUTORS`); its timings."""
    from nas3d_fast.search.trials import RandomSearch, TrialSearch, TrialSearchConfig, TrialStore
    from nas3d_fast.spaces import base

    name, workers = EXECUTORS[executor]
    space = base.get("c2fnas")
    with tempfile.TemporaryDirectory() as out:
        if name == "ray":  # Ray's workers import the evaluator from tests/
            tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
        cfg = TrialSearchConfig(trials=trials, trial_steps=1, executor=name, workers=workers, progress=False)
        start = time.time()
        TrialSearch(space, RandomSearch(space, seed=0), _trivial(), out, cfg).run()
        total = time.time() - start
        with TrialStore(os.path.join(out, "trials.db"), space) as store:
            ends = sorted(t.finished for t in store.trials("done"))
    steady = (ends[-1] - ends[0]) / max(1, len(ends) - 1)
    return {"trials": len(ends), "total_s": total, "startup_s": ends[0] - start, "seconds_per_trial": steady}


def _metrics(quick: bool) -> dict:
    trials = QUICK_TRIALS if quick else N_TRIALS
    ratios, units, details, missing = {}, {}, {}, {}
    for executor in EXECUTORS:
        if executor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                missing["trial_overhead.ray"] = "Ray is not installed (pip install 'nas3d_fast[ray]')"
                continue
        got = run_search(executor, trials)
        details[executor] = got
        ratios[f"trial_overhead.{executor}.seconds_per_trial"] = got["seconds_per_trial"]
        ratios[f"trial_overhead.{executor}.percent_of_60s"] = 100.0 * got["seconds_per_trial"] / 60.0
        units[f"trial_overhead.{executor}.seconds_per_trial"] = "s"
        units[f"trial_overhead.{executor}.percent_of_60s"] = "%"
    return {"ratios": ratios, "units": units, "details": details, "missing": missing}


def _case(executor: str):
    def make(device: str):
        return lambda: run_search(executor, QUICK_TRIALS)

    return make


SUITE = Suite(
    "trial_overhead",
    cases=tuple(Case(f"{e}_trivial_search", _case(e), "nas3d") for e in ("local", "local2")),
    ratios=(),
    description=f"trial store + driver + executor per trivial trial ({N_TRIALS} trials; target < 1% of 60 s)",
    metrics=_metrics,
)
