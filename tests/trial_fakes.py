"""Evaluators for trial-search tests and the overhead benchmark: picklable, no training."""

from __future__ import annotations

import json
import os
import time


class KnownScore:
    """Score = a known function of the encoding (the fraction of positions equal to ``target``'s, or the
    mean position value); memory = the encoding's sum in MiB. ``sleep`` seconds per trial."""

    def __init__(self, sleep: float = 0.0, pid_dir: str | None = None, fail_ids: tuple[int, ...] = ()):
        self.sleep, self.pid_dir, self.fail_ids = float(sleep), pid_dir, tuple(fail_ids)

    def __call__(self, job) -> dict:
        if self.pid_dir:
            os.makedirs(self.pid_dir, exist_ok=True)
            with open(os.path.join(self.pid_dir, f"{job.trial_id}.{job.attempt}.{os.getpid()}"), "w") as f:
                f.write(str(os.getpid()))
        if job.trial_id in self.fail_ids:
            raise RuntimeError(f"trial {job.trial_id} diverged")
        if self.sleep:
            time.sleep(self.sleep)
        arch = json.loads(job.arch_json)
        values = [v for v in _numbers(arch)]
        score = (sum(values) % 97) / 97.0 if values else 0.0
        return {"score": score, "metrics": {"mean_dice": score, "best_step": job.budget},
                "predicted_memory": int((1 + sum(values) % 31) * 2**20), "seconds": self.sleep}


class Trivial:
    """Returns at once (the overhead benchmark's evaluator)."""

    def __call__(self, job) -> dict:
        return {"score": (job.trial_id * 7919 % 1000) / 1000.0, "metrics": {}, "seconds": 0.0}


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _numbers(v)
