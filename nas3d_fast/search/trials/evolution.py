"""C2FNAS's topology-similarity evolution (Algorithm 1, §3.3 and §4.1 of the paper), as an ask/tell searcher.

The idea (§3.3): networks with similar topology codes perform similarly, so the candidates are clustered
by K-means on their codes (Euclidean distance) and the search moves towards the clusters whose trained
members scored best. Every architecture of the space goes in, but only its topology counts for the
clustering: the encoding's ``space.topology_positions()`` (C2FNAS: the 12 cell levels), each scaled to
[0, 1] by value / (choices - 1) (0 for a position with one choice).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from ...spaces.base import Arch, SearchSpace
from .searcher import TrialSearcher

#: kinds of proposal counted in ``EvolutionSearch.counts``.
PROPOSAL_KINDS = ("initial", "explore", "guided")


def _int_option(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


class EvolutionSearch(TrialSearcher):
    """C2FNAS Algorithm 1, asynchronous: K-means clusters of topology codes, ranked by their trials' scores.

    Args:
        space, seed, sampler: as :class:`TrialSearcher` (all randomness comes from ``self.rng``).
        clusters: K of K-means (8 in the paper, §4.1).
        explore: probability that a proposal after the start is a uniformly random candidate rather than a
            cluster-guided one (0.2 in the paper, §4.1).
        initial: random proposals before the clusters guide anything (default ``2 * clusters``: the paper's
            "two networks randomly sampled from each cluster"). Guidance also waits for ``clusters`` scored
            (rung-0) results, so until then, for instance while every worker is still busy, it stays random.
        pool: unseen candidates (whole architectures, from the sampler) that stand in for the paper's
            population of all topologies; must be >= ``clusters``.

    Algorithm as implemented (our reading of Algorithm 1 and §4.1):

    1. Start: ``initial`` proposals drawn from the sampler (the paper draws 2 per cluster of the whole
       population; uniform draws cover the clusters about evenly without clustering first).
    2. Fit, in :meth:`propose` and only when scored results arrived since the last fit: the pool drops its
       seen members and is topped up to ``pool`` fresh samples; ``sklearn.cluster.KMeans`` (``n_init``
       fixed, ``random_state`` drawn from ``self.rng``) is fitted on the features of the pool plus those of
       the scored trials. Pool members and trials then belong to their nearest centre.
    3. Ranking (:meth:`cluster_ranking`): each cluster's score is the best score of the scored trials in
       it; clusters best first, clusters without a scored trial last (by id). The paper compares one trial
       drawn at random from each cluster; the best member is the deterministic form of that comparison and
       makes the cluster of the best trial found the one sampled (as §4.1 says: "the cluster which the best
       network belongs to is picked").
    4. Each proposal: with probability ``explore`` a uniformly random candidate from the sampler (the
       paper's "random samples a cluster with probability 0.2"; a uniform candidate picks each cluster in
       proportion to its size); otherwise SampleUntrained(p_rank1): an unseen pool member of the top
       cluster, uniformly at random. When the top cluster's unseen members are used up (several suggestions
       before any new result, which is what the asynchronous version does with idle workers), the next
       cluster of the ranking gives it, and so on; a pool used up entirely is topped up (members labelled
       by the current centres) before falling back to a random candidate (the space is then nearly
       exhausted). The non-topology positions (C2FNAS: the cell operations) are the pool member's own.

    Every proposal is a sampled architecture or ``space.decode`` of a sampled one's encoding, so it is valid.
    ``counts`` holds how many proposals were "initial", "explore" and "guided"; it is in the state.
    """

    name = "evolution"
    #: K-means restarts per fit (fixed, so that a fit costs the same whatever the options).
    n_init = 4

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        sampler: Callable[[np.random.Generator], Arch] | None = None,
        *,
        clusters: int = 8,
        explore: float = 0.2,
        initial: int | None = None,
        pool: int = 200,
    ):
        super().__init__(space, seed=seed, sampler=sampler)
        self.clusters = _int_option("clusters", clusters, 1)
        if isinstance(explore, bool) or not isinstance(explore, (int, float, np.floating, np.integer)):
            raise ValueError(f"explore must be a probability in [0, 1], got {explore!r}")
        if not (math.isfinite(explore) and 0.0 <= explore <= 1.0):
            raise ValueError(f"explore must be a probability in [0, 1], got {explore!r}")
        self.explore = float(explore)
        self.initial = 2 * self.clusters if initial is None else _int_option("initial", initial, 0)
        self.pool = _int_option("pool", pool, 1)
        if self.pool < self.clusters:
            raise ValueError(f"pool must be >= clusters ({self.clusters}), got {pool!r}")
        choices = space.vector_choices()
        self._positions = [int(p) for p in space.topology_positions()]
        self._scale = np.array([1.0 / (choices[p] - 1) if choices[p] > 1 else 0.0 for p in self._positions])
        self.counts = dict.fromkeys(PROPOSAL_KINDS, 0)
        self._pool: list[tuple[int, ...]] = []  #: unseen candidates' encodings
        self._centers: np.ndarray | None = None  #: (K, len(topology_positions)) K-means centres
        self._fitted_on = 0  #: scored results at the last fit

    def options(self) -> dict:
        return {"clusters": self.clusters, "explore": self.explore, "initial": self.initial, "pool": self.pool}

    # -- features and clusters -----------------------------------------------------------------------

    def features(self, encodings: Sequence[Sequence[int]]) -> np.ndarray:
        """(N, P) float64: the topology positions of N encodings, each scaled to [0, 1]."""
        codes = np.asarray([[int(e[p]) for p in self._positions] for e in encodings], dtype=np.float64)
        return codes.reshape(len(encodings), len(self._positions)) * self._scale

    def cluster_of(self, encodings: Sequence[Sequence[int]]) -> list[int]:
        """The cluster (nearest K-means centre) of each encoding; needs a fit (RuntimeError before)."""
        if self._centers is None:
            raise RuntimeError("evolution: no clustering yet (it is fitted once the random start is over)")
        if not len(encodings):
            return []
        x = self.features(encodings)
        d = ((x[:, None, :] - self._centers[None, :, :]) ** 2).sum(axis=2)
        return [int(k) for k in d.argmin(axis=1)]

    def cluster_ranking(self) -> list[tuple[int, float | None]]:
        """(cluster id, best score of its scored rung-0 trials or None), best first; [] before the first fit.
        Uses the current centres (it never refits, so inspecting changes nothing)."""
        if self._centers is None:
            return []
        best: dict[int, float] = {}
        scored = self.scored()
        for k, (_, score) in zip(self.cluster_of([e for e, _ in scored]), scored):
            best[k] = max(best.get(k, -math.inf), score)
        ranked = sorted(best, key=lambda k: (-best[k], k))
        rest = [k for k in range(len(self._centers)) if k not in best]
        return [(k, best[k]) for k in ranked] + [(k, None) for k in rest]

    def _top_up(self) -> None:
        """Drop seen pool members; draw fresh unseen candidates until the pool holds ``pool`` (at most
        2 * ``pool`` draws, for small spaces)."""
        self._pool = [c for c in self._pool if c not in self.seen]
        have = set(self._pool)
        for _ in range(2 * self.pool):
            if len(self._pool) >= self.pool:
                break
            code = tuple(int(v) for v in self.space.encode(self.sample()))
            if code not in self.seen and code not in have:
                have.add(code)
                self._pool.append(code)

    def _fit(self) -> None:
        try:
            from sklearn.cluster import KMeans
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("EvolutionSearch needs scikit-learn (pip install scikit-learn)") from exc
        scored = self.scored()
        self._top_up()
        x = self.features(self._pool + [e for e, _ in scored])
        k = min(self.clusters, len(np.unique(x, axis=0)))
        seed = int(self.rng.integers(2**31 - 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate codes: "fewer distinct clusters than n_clusters"
            km = KMeans(n_clusters=k, n_init=self.n_init, random_state=seed).fit(x)
        self._centers = np.asarray(km.cluster_centers_, dtype=np.float64)
        self._fitted_on = len(scored)

    # -- proposals -----------------------------------------------------------------------------------

    def _random(self) -> Arch:
        """A sampled candidate, redrawn (up to ``max_draws`` times) while it was seen."""
        for _ in range(self.max_draws):
            arch = self.sample()
            if tuple(self.space.encode(arch)) not in self.seen:
                break
        return arch

    def _guided(self) -> Arch:
        for attempt in range(2):
            unseen = [c for c in self._pool if c not in self.seen]
            labels = self.cluster_of(unseen)
            for k, _ in self.cluster_ranking():
                members = [c for c, label in zip(unseen, labels) if label == k]
                if members:
                    code = members[int(self.rng.integers(len(members)))]
                    self._pool.remove(code)
                    return self.space.decode(code)
            if attempt == 0:
                self._top_up()
        return self.sample()

    def propose(self) -> Arch:
        n_scored = len(self.scored())
        if self.counts["initial"] < self.initial or n_scored < self.clusters:
            self.counts["initial"] += 1
            return self._random()
        if self._centers is None or n_scored > self._fitted_on:
            self._fit()
        if self.rng.random() < self.explore:
            self.counts["explore"] += 1
            return self._random()
        self.counts["guided"] += 1
        return self._guided()

    # -- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["evolution"] = {
            "options": self.options(),
            "counts": dict(self.counts),
            "pool": [list(c) for c in self._pool],
            "centers": None if self._centers is None else self._centers.tolist(),
            "fitted_on": self._fitted_on,
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        own = state["evolution"]
        if own["options"] != self.options():
            raise ValueError(f"evolution: the state's options {own['options']} differ from {self.options()}")
        self.counts = {k: int(own["counts"][k]) for k in PROPOSAL_KINDS}
        self._pool = [tuple(int(v) for v in c) for c in own["pool"]]
        self._centers = None if own["centers"] is None else np.asarray(own["centers"], dtype=np.float64)
        self._fitted_on = int(own["fitted_on"])
