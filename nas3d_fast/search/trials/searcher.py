"""The ask/tell interface every trial searcher implements, the record of a trial, and random search.

A trial searcher proposes architectures (:meth:`TrialSearcher.suggest`), is told each finished trial
(:meth:`TrialSearcher.observe`) and can be saved and restored (:meth:`TrialSearcher.state_dict`, JSON only, so
the trial store keeps it beside the trials). It talks to its space only through the space interface
(``sample``, ``encode``, ``decode``, ``vector_choices``), so every searcher works on every space.

Scores are higher-is-better (the mean validation Dice of the trial); a failed trial has no score.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...spaces.base import Arch, SearchSpace

#: a trial's states, in the order a trial passes them (a failed trial may be queued again).
TRIAL_STATES = ("queued", "running", "done", "failed")


@dataclass
class Trial:
    """One candidate trained on its own.

    ``encoding``: ``space.encode(arch)``. ``rung``: 0 for a searcher's suggestion, r > 0 for its promotion
    to the r-th longer budget by successive halving (``parent`` is the promoted trial's id). ``budget``:
    training steps. ``score``: mean validation Dice at the best validation (higher is better), None unless
    done. ``metrics``: ``dice_per_class``, ``mean_dice``, ``best_step``. Memory in bytes
    (``predicted_memory``: the package's prediction of the training step's peak; ``measured_memory``: only
    when measuring was asked for). ``seconds``: wall-clock time of the training.
    """

    id: int
    arch: Arch
    encoding: tuple[int, ...]
    status: str = "queued"
    rung: int = 0
    budget: int = 0
    parent: int | None = None
    score: float | None = None
    metrics: dict = field(default_factory=dict)
    params: int | None = None
    flops: int | None = None
    predicted_memory: int | None = None
    measured_memory: int | None = None
    seconds: float | None = None
    attempts: int = 0
    worker: str | None = None
    error: str | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None


def rng_state(rng: np.random.Generator) -> dict:
    """A numpy Generator's state as JSON-able data (PCG64's integers are Python ints)."""
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


class TrialSearcher(ABC):
    """Base of the trial searchers (module docstring).

    Args:
        space: the search space.
        seed: seeds the searcher's own generator (its whole randomness).
        sampler: ``sampler(rng) -> Arch``, how fresh candidates are drawn (default ``space.sample``; a
            :class:`MemoryBudgetSampler` keeps them inside a memory budget).

    Subclasses implement :meth:`propose` (one new candidate) and may extend :meth:`observe`,
    :meth:`state_dict`/:meth:`load_state_dict` (call the base's) and :meth:`options`.
    """

    name: ClassVar[str] = "trial"
    #: draws of an unseen encoding before :meth:`suggest` gives up (the space may be exhausted).
    max_draws: ClassVar[int] = 1000

    def __init__(self, space: SearchSpace, seed: int = 0, sampler: Callable[[np.random.Generator], Arch] | None = None):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.space = space
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.sampler = sampler or space.sample
        self.seen: set[tuple[int, ...]] = set()  #: encodings suggested (or known from the store)
        #: finished trials as the searcher uses them: {"encoding", "score", "memory", "budget", "rung"}
        self.results: list[dict] = []

    # -- what subclasses define ----------------------------------------------------------------------

    @abstractmethod
    def propose(self) -> Arch:
        """One candidate (it may have been seen: :meth:`suggest` then asks again)."""

    def options(self) -> dict:
        """The searcher's settings, recorded in the store and compared on resume."""
        return {}

    # -- ask / tell ----------------------------------------------------------------------------------

    def sample(self) -> Arch:
        """A fresh candidate from the sampler, drawn with the searcher's generator."""
        return self.sampler(self.rng)

    def suggest(self, n: int = 1) -> list[Arch]:
        """Up to ``n`` architectures whose encodings were never suggested before (fewer only when
        ``max_draws`` proposals in a row were all seen: the space is exhausted)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        out: list[Arch] = []
        misses = 0
        while len(out) < n and misses < self.max_draws:
            arch = self.propose()
            code = tuple(self.space.encode(arch))
            if code in self.seen:
                misses += 1
                continue
            misses = 0
            self.seen.add(code)
            out.append(arch)
        return out

    def mark_seen(self, encodings: Sequence[Sequence[int]]) -> None:
        """Encodings the store already holds (they are never suggested again)."""
        self.seen.update(tuple(int(v) for v in e) for e in encodings)

    def observe(self, trial: Trial) -> None:
        """Tell the searcher a finished trial (done, with a score, or failed: score None). Only rung-0 trials
        are compared by the searchers (their budgets are equal); promotions are successive halving's."""
        self.seen.add(tuple(trial.encoding))
        self.results.append(
            {
                "encoding": [int(v) for v in trial.encoding],
                "score": None if trial.score is None or not math.isfinite(trial.score) else float(trial.score),
                "memory": trial.predicted_memory,
                "budget": int(trial.budget),
                "rung": int(trial.rung),
            }
        )

    def scored(self, rung: int = 0) -> list[tuple[tuple[int, ...], float]]:
        """(encoding, score) of every observed trial of ``rung`` that has a score."""
        return [(tuple(r["encoding"]), r["score"]) for r in self.results if r["rung"] == rung and r["score"] is not None]

    # -- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (JSON-able)."""
        return {
            "searcher": self.name,
            "seed": self.seed,
            "rng": rng_state(self.rng),
            "seen": sorted(list(code) for code in self.seen),
            "results": [dict(r) for r in self.results],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("searcher") != self.name:
            raise ValueError(f"searcher state is {state.get('searcher')!r}'s, not {self.name!r}'s")
        set_rng_state(self.rng, state["rng"])
        self.seen = {tuple(int(v) for v in code) for code in state["seen"]}
        self.results = [dict(r) for r in state["results"]]


class RandomSearch(TrialSearcher):
    """Uniform random candidates (or, with a :class:`MemoryBudgetSampler`, random inside a memory budget):
    the baseline every searcher is compared with."""

    name = "random"

    def propose(self) -> Arch:
        return self.sample()


class MemoryBudgetSampler:
    """``sampler(rng) -> Arch`` drawing only candidates whose predicted training-step peak is at most
    ``budget_bytes`` (``space.sample_within`` with the whole range below the budget accepted).

    Args:
        space: the search space. budget_bytes: the budget (bytes).
        input_shape: (C, X, Y, Z) of one training patch. batch_size: the trial training's batch.
        num_classes: the network's outputs. target: "cuda" or "cpu" (whose allocator is modelled).
        max_tries: draws per call before :class:`nas3d_fast.profile.BudgetError`.

    The budget is checked once, at construction, against ``probe`` draws: a budget below every drawn
    candidate raises ``BudgetError`` naming the smallest peak seen.
    """

    def __init__(
        self,
        space: SearchSpace,
        budget_bytes: int,
        input_shape: Sequence[int],
        batch_size: int,
        num_classes: int = 2,
        target: str = "cuda",
        max_tries: int = 100,
        probe: bool = True,
    ):
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, np.integer)) or budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be a positive int (bytes), got {budget_bytes!r}")
        self.space, self.budget = space, int(budget_bytes)
        self.input_shape, self.batch_size = tuple(int(s) for s in input_shape), int(batch_size)
        self.num_classes, self.target, self.max_tries = int(num_classes), target, int(max_tries)
        if probe:
            self(np.random.default_rng(0))

    def __call__(self, rng: np.random.Generator) -> Arch:
        return self.space.sample_within(
            self.budget,
            self.input_shape,
            self.batch_size,
            rng,
            tolerance=self.budget,
            max_tries=self.max_tries,
            num_classes=self.num_classes,
            target=self.target,
        )

    def options(self) -> dict[str, Any]:
        return {"memory_budget": self.budget, "memory_target": self.target}
