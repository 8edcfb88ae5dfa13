"""EvolutionSearch (C2FNAS Algorithm 1) on a fake evaluator: score = -distance of the topology code to a target."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nas3d_fast.search.trials.evolution import EvolutionSearch
from nas3d_fast.search.trials.searcher import RandomSearch, Trial
from nas3d_fast.spaces import base
from nas3d_fast.spaces.c2fnas import topologies

pytest.importorskip("sklearn")  # EvolutionSearch fits sklearn.cluster.KMeans

TARGET = np.array(topologies()[400], dtype=float)


@pytest.fixture(scope="module")
def space():
    return base.get("c2fnas")


def score_of(space, encoding) -> float:
    topo = np.array([encoding[p] for p in space.topology_positions()], dtype=float)
    return -float(np.linalg.norm(topo - TARGET))


class Loop:
    """Drives a searcher asynchronously: ``step(n)`` suggests n, then observes them all, scored."""

    def __init__(self, searcher):
        self.searcher, self.space, self.next_id = searcher, searcher.space, 0
        self.kinds: list[tuple[str, float]] = []  # (kind, score) of every suggestion, when known

    def suggest_one(self):
        before = dict(getattr(self.searcher, "counts", {}))
        (arch,) = self.searcher.suggest(1)
        after = getattr(self.searcher, "counts", {})
        kind = next((k for k in after if after[k] != before.get(k)), "random")
        return arch, kind

    def step(self, n: int, score=None):
        score = score or (lambda enc: score_of(self.space, enc))
        batch = [self.suggest_one() for _ in range(n)]
        for arch, kind in batch:
            enc = tuple(self.space.encode(arch))
            s = score(enc)
            self.kinds.append((kind, s))
            self.searcher.observe(Trial(id=self.next_id, arch=arch, encoding=enc, status="done", score=s, budget=10))
            self.next_id += 1


def test_cluster_ranking_top_cluster_holds_best_trial(space):
    s = EvolutionSearch(space, seed=1, clusters=4, pool=80)
    loop = Loop(s)
    assert s.cluster_ranking() == []
    for _ in range(6):
        loop.step(4)
    ranking = s.cluster_ranking()
    assert sorted(k for k, _ in ranking) == list(range(4))
    scores = [b for _, b in ranking if b is not None]
    assert scores == sorted(scores, reverse=True)
    assert all(b is None for _, b in ranking[len(scores):])
    best_enc, best = max(s.scored(), key=lambda t: t[1])
    assert ranking[0] == (s.cluster_of([best_enc])[0], best)
    for k, b in ranking:  # each cluster's score is the best of its trials
        members = [sc for e, sc in s.scored() if s.cluster_of([e])[0] == k]
        assert b == (max(members) if members else None)


@pytest.mark.parametrize("explore", [0.0, 0.2, 1.0])
def test_exploration_rate(space, explore):
    s = EvolutionSearch(space, seed=2, clusters=4, pool=60, explore=explore, initial=8)
    loop = Loop(s)
    for _ in range(5):
        loop.step(8)
    assert s.counts["initial"] == 8
    n = 400
    s.suggest(n)  # asynchronous: many suggestions while nothing new is observed
    done = s.counts["explore"] + s.counts["guided"]
    assert done == 40 - 8 + n
    rate = s.counts["explore"] / done
    if explore in (0.0, 1.0):
        assert rate == explore
    else:
        assert abs(rate - explore) < 4 * np.sqrt(explore * (1 - explore) / done)


def test_guided_proposals_beat_random_search(space):
    evo, rnd = Loop(EvolutionSearch(space, seed=3, explore=0.0)), Loop(RandomSearch(space, seed=3))
    for _ in range(15):
        evo.step(4)
        rnd.step(4)
    guided = [sc for kind, sc in evo.kinds if kind == "guided"]
    assert len(guided) >= 30
    random_mean = np.mean([sc for _, sc in rnd.kinds])
    assert np.mean(guided[-20:]) > random_mean + 0.5
    assert max(sc for _, sc in evo.kinds) >= max(sc for _, sc in rnd.kinds)


def test_suggest_never_repeats_and_is_asynchronous(space):
    s = EvolutionSearch(space, seed=4, clusters=3, pool=30, explore=0.3)
    loop = Loop(s)
    codes = []
    first = s.suggest(10)  # before anything is observed: the random start
    codes += [tuple(space.encode(a)) for a in first]
    for i, arch in enumerate(first):
        enc = tuple(space.encode(arch))
        s.observe(Trial(id=i, arch=arch, encoding=enc, status="done", score=score_of(space, enc)))
    loop.next_id = 10
    for _ in range(4):
        batch = s.suggest(25)  # more than the pool holds per cluster: moves down the ranking, tops up
        assert len(batch) == 25
        codes += [tuple(space.encode(a)) for a in batch]
        for arch in batch[:5]:  # only some finish before the next call
            enc = tuple(space.encode(arch))
            s.observe(Trial(id=loop.next_id, arch=arch, encoding=enc, status="done", score=score_of(space, enc)))
            loop.next_id += 1
    assert len(codes) == len(set(codes)) == 110
    for arch in s.suggest(5):
        space.check(arch)
    assert s.counts["guided"] > 0


def test_refits_only_after_new_results(space, monkeypatch):
    s = EvolutionSearch(space, seed=5, clusters=3, pool=30)
    loop = Loop(s)
    loop.step(8)
    fits = []
    original = s._fit
    monkeypatch.setattr(s, "_fit", lambda: (fits.append(1), original())[1])
    s.suggest(10)
    assert len(fits) == 1
    loop.step(1)
    s.suggest(3)
    assert len(fits) == 2


def test_state_dict_round_trip(space):
    s = EvolutionSearch(space, seed=6, clusters=4, pool=50, explore=0.3)
    loop = Loop(s)
    for _ in range(5):
        loop.step(4)
    s.suggest(3)  # pending suggestions, then a result arrives (the next call refits)
    loop.step(1)
    state = json.loads(json.dumps(s.state_dict()))
    fresh = EvolutionSearch(space, seed=99, clusters=4, pool=50, explore=0.3)
    fresh.load_state_dict(state)
    assert fresh.counts == s.counts and fresh.cluster_ranking() == s.cluster_ranking()
    ours = [space.encode(a) for a in s.suggest(12)]
    theirs = [space.encode(a) for a in fresh.suggest(12)]
    assert ours == theirs
    mine, restored = json.loads(json.dumps(s.state_dict())), fresh.state_dict()
    mine.pop("seed"), restored.pop("seed")  # the base keeps the constructor's seed; the generator is restored
    assert restored == mine
    with pytest.raises(ValueError, match="options"):
        EvolutionSearch(space, clusters=5, pool=50, explore=0.3).load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"clusters": 0}, "clusters"),
        ({"clusters": 2.5}, "clusters"),
        ({"clusters": True}, "clusters"),
        ({"explore": -0.1}, "explore"),
        ({"explore": 1.5}, "explore"),
        ({"explore": float("nan")}, "explore"),
        ({"explore": "0.2"}, "explore"),
        ({"initial": -1}, "initial"),
        ({"pool": 0}, "pool"),
        ({"clusters": 8, "pool": 7}, "pool"),
        ({"seed": "a"}, "seed"),
    ],
)
def test_bad_options(space, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        EvolutionSearch(space, **kwargs)


def test_options_and_name(space):
    s = EvolutionSearch(space, clusters=5, explore=0.1, pool=40)
    assert s.name == "evolution"
    assert s.options() == {"clusters": 5, "explore": 0.1, "initial": 10, "pool": 40}
    x = s.features([space.encode(space.sample(0))])
    assert x.shape == (1, 12) and x.min() >= 0 and x.max() <= 1


def test_other_space_through_the_interface():
    space = base.get("dints", num_blocks=3, num_depths=2)
    target = np.array(space.encode(space.sample(123)), dtype=float)
    choices = np.array(space.vector_choices(), dtype=float) - 1

    def score(enc):
        return -float(np.abs((np.array(enc) - target) / np.maximum(choices, 1)).sum())

    s = EvolutionSearch(space, seed=7, clusters=3, pool=40, explore=0.2)
    loop = Loop(s)
    for _ in range(8):
        loop.step(3, score=score)
    codes = [tuple(space.encode(a)) for a in s.suggest(10)]
    assert len(set(codes)) == 10 and not set(codes) & {tuple(e) for e, _ in s.scored()}
    assert s.counts["guided"] > 0 and s.cluster_ranking()
    assert s.features([space.encode(space.sample(0))]).shape == (1, len(space.vector_choices()))
