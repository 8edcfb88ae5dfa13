"""Executors: where trials run, behind one interface.

An executor takes :class:`~nas3d_fast.search.trials.evaluate.TrialJob` s (:meth:`Executor.submit`, while
:meth:`Executor.free` says a worker is free) and hands back :class:`Outcome` s as trials end
(:meth:`Executor.wait`, at least one per call, in the order they finish: results arrive asynchronously).

- ``local`` (:class:`InProcessExecutor`): the trial runs in the driver's process, one at a time; nothing
  to install. :class:`ProcessExecutor` (``local`` with ``workers`` > 1): that many worker processes; a
  worker that dies (killed, out of memory) loses its trial, which the driver retries.
- ``ray`` (:class:`RayExecutor`): Ray core tasks, on a local Ray or an existing cluster (``address``), with
  fractional CPUs and GPUs per trial (small candidates share a GPU) and Ray's own retry of tasks whose
  worker died (``max_retries``). Ray is an optional extra, imported only here and only when asked for.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from .evaluate import TrialJob

#: executor names (``nas3d search --executor``).
EXECUTORS = ("local", "ray")


@dataclass
class Outcome:
    """A trial's end: ``result`` (the evaluator's dict), or ``error`` (its text) with ``lost_worker`` True
    when the worker died rather than the trial failing (the trial is then worth retrying)."""

    job: TrialJob
    result: dict | None = None
    error: str | None = None
    lost_worker: bool = False


def _run(evaluator: Callable[[TrialJob], dict], job: TrialJob) -> Outcome:
    try:
        return Outcome(job, result=evaluator(job))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - a trial's failure is recorded, never the driver's end
        return Outcome(job, error=traceback.format_exc())


class Executor(ABC):
    """See the module docstring. ``slots``: trials that may run at once."""

    slots: int = 1

    def __init__(self, evaluator: Callable[[TrialJob], dict]):
        self.evaluator = evaluator
        self.pending: dict = {}

    def free(self) -> int:
        return self.slots - len(self.pending)

    def busy(self) -> int:
        return len(self.pending)

    @abstractmethod
    def submit(self, job: TrialJob) -> None: ...

    @abstractmethod
    def wait(self) -> list[Outcome]:
        """Block until at least one submitted trial ends; its outcomes (nothing pending: [])."""

    def close(self) -> None:
        """Stop the workers (trials still running are abandoned: the store re-queues them on resume)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InProcessExecutor(Executor):
    """Runs each trial in this process when :meth:`wait` is called."""

    def submit(self, job: TrialJob) -> None:
        if self.free() < 1:
            raise RuntimeError("no free worker")
        self.pending[job.trial_id] = job

    def wait(self) -> list[Outcome]:
        if not self.pending:
            return []
        trial_id = next(iter(self.pending))
        job = self.pending[trial_id]
        try:
            return [_run(self.evaluator, job)]
        finally:
            del self.pending[trial_id]


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class ProcessExecutor(Executor):
    """``workers`` processes (spawned: no state is shared with the driver, CUDA-safe); a worker's death
    ends its trial with ``lost_worker`` and the pool is started anew for the next trials."""

    def __init__(self, evaluator: Callable[[TrialJob], dict], workers: int):
        super().__init__(evaluator)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        self.slots = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            self.slots, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
            initargs=(self.threads,),
        )

    def submit(self, job: TrialJob) -> None:
        if self.free() < 1:
            raise RuntimeError("no free worker")
        try:
            future = self.pool.submit(_run, self.evaluator, job)
        except cf.process.BrokenProcessPool:
            self.pool = self._new_pool()
            future = self.pool.submit(_run, self.evaluator, job)
        self.pending[future] = job

    def wait(self) -> list[Outcome]:
        if not self.pending:
            return []
        done, _ = cf.wait(list(self.pending), return_when=cf.FIRST_COMPLETED)
        out, broken = [], False
        for future in done:
            job = self.pending.pop(future)
            try:
                out.append(future.result())
            except cf.process.BrokenProcessPool as exc:
                broken = True
                out.append(Outcome(job, error=f"worker process died: {exc}", lost_worker=True))
        if broken:
            # Every trial still pending on the broken pool is lost with it.
            for future, job in list(self.pending.items()):
                out.append(Outcome(job, error="worker pool broken by another worker's death", lost_worker=True))
                del self.pending[future]
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise ValueError(
            "--executor ray needs Ray, an optional extra: pip install 'nas3d_fast[ray]' (or pip install ray)"
        ) from exc
    return ray


def _ray_task(evaluator, job):
    return _run(evaluator, job)


class RayExecutor(Executor):
    """Ray core tasks (module docstring). ``address``: an existing cluster (``ray://host:10001`` or
    ``auto``), else a local Ray is started; ``slots``: trials in flight at once (default: as many as the
    cluster's CPUs or GPUs hold); ``max_retries``: Ray's retries of a task whose worker died."""

    def __init__(
        self,
        evaluator: Callable[[TrialJob], dict],
        address: str | None = None,
        cpus_per_trial: float = 1.0,
        gpus_per_trial: float = 0.0,
        max_retries: int = 2,
        slots: int | None = None,
        init_options: dict | None = None,
    ):
        super().__init__(evaluator)
        for name, value in (("cpus_per_trial", cpus_per_trial), ("gpus_per_trial", gpus_per_trial)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0 (fractions share a device), got {value!r}")
        if cpus_per_trial == 0 and gpus_per_trial == 0:
            raise ValueError("cpus_per_trial and gpus_per_trial cannot both be 0")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        ray = _ray()
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, **(init_options or {}))
        self.owns_ray = address is None
        resources = ray.cluster_resources()
        if slots is None:
            fits = [resources.get("CPU", 0) / cpus_per_trial if cpus_per_trial else float("inf"),
                    resources.get("GPU", 0) / gpus_per_trial if gpus_per_trial else float("inf")]
            slots = int(min(fits))
        if slots < 1:
            raise ValueError(
                f"the Ray cluster ({resources.get('CPU', 0)} CPUs, {resources.get('GPU', 0)} GPUs) cannot hold a "
                f"trial of {cpus_per_trial} CPUs and {gpus_per_trial} GPUs"
            )
        self.slots = int(slots)
        self.task = ray.remote(_ray_task).options(
            num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=max_retries, retry_exceptions=False
        )
        self.evaluator_ref = ray.put(evaluator)

    def submit(self, job: TrialJob) -> None:
        if self.free() < 1:
            raise RuntimeError("no free worker")
        self.pending[self.task.remote(self.evaluator_ref, job)] = job

    def wait(self) -> list[Outcome]:
        if not self.pending:
            return []
        done, _ = self.ray.wait(list(self.pending), num_returns=1)
        out = []
        for ref in done:
            job = self.pending.pop(ref)
            try:
                out.append(self.ray.get(ref))
            except self.ray.exceptions.RayError as exc:  # the worker died (after Ray's own retries)
                out.append(Outcome(job, error=f"{type(exc).__name__}: {exc}", lost_worker=True))
        return out

    def close(self) -> None:
        for ref in list(self.pending):
            self.ray.cancel(ref, force=True)
        self.pending.clear()
        if self.owns_ray:
            self.ray.shutdown()


def make_executor(
    name: str,
    evaluator: Callable[[TrialJob], dict],
    workers: int | None = None,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_retries: int = 2,
) -> Executor:
    """The executor called ``name`` (:data:`EXECUTORS`). ``workers``: trials at once (local: default 1, in
    this process; ray: default as many as the cluster holds)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if name == "local":
        return InProcessExecutor(evaluator) if workers in (None, 1) else ProcessExecutor(evaluator, workers)
    if name == "ray":
        return RayExecutor(evaluator, address, cpus_per_trial, gpus_per_trial, max_retries, slots=workers)
    raise ValueError(f"executor must be one of {EXECUTORS}, got {name!r}")
