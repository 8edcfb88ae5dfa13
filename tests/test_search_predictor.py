"""T-AutoML's relation-predictor trial searcher (nas3d_fast.search.trials.predictor): the predictor learns a
known order, its ranking finds better candidates, suggestions never repeat (asynchronous use too), its
state resumes bit-identically through JSON, bad options are refused, and fixed-length spaces work."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from nas3d_fast.search.trials.predictor import RelationPredictorSearch
from nas3d_fast.search.trials.searcher import Trial
from nas3d_fast.spaces import base

sys.path.insert(0, os.path.dirname(__file__))
from search_fixtures import one_torch_thread  # noqa: E402

one_torch_thread = pytest.fixture(autouse=True)(one_torch_thread)  # one torch thread in this module's tests

#: small settings for the tests that exercise the protocol rather than the predictor's quality.
SMALL = {"initial": 4, "min_trials": 4, "pool": 16, "epochs": 3, "explore": 0.25}


def true_score(code) -> float:
    """The synthetic problem: more blocks is better (position 0: N - 5), then a smaller learning rate
    (position 54: index into LEARNING_RATES)."""
    return code[0] / 7 + 0.0625 * code[54]


def observe(searcher, space, arch, trial_id, score=true_score):
    code = tuple(space.encode(arch))
    value = score(code) if score is not None else None
    searcher.observe(Trial(trial_id, arch, code, status="done" if value is not None else "failed", score=value))


@pytest.fixture(scope="module")
def tautoml():
    return base.get("tautoml")


@pytest.fixture(scope="module")
def fitted(tautoml):
    """A searcher told 40 scored random trials, after its first suggestion (which fits the predictor)."""
    s = RelationPredictorSearch(tautoml, seed=0, explore=0.0, val_fraction=0.25)
    rng = np.random.default_rng(0)
    for i in range(40):
        observe(s, tautoml, tautoml.sample(rng), i)
    first = s.suggest(10)
    return s, first


def test_predictor_learns_known_order(fitted):
    s, _ = fitted
    report = s.report()
    assert report["fits"] == 1 and report["train"] == 30 and report["val"] == 10
    assert report["pairwise_accuracy"] == s.last_pairwise_accuracy
    assert s.last_pairwise_accuracy > 0.75, s.last_pairwise_accuracy  # chance is 0.5
    json.dumps(report)
    # T-AutoML's padding: block slots at and beyond N are unused (masked), the others are read.
    code = next(c for c, _ in s.scored() if c[0] == 0)  # N = 5
    mask = s.unused_mask(code)
    assert mask[1 + 4 * 5 : 49].all() and not mask[0] and not mask[49:].any()
    assert not mask[[1, 2, 5, 6, 9, 10, 12]].any()  # block types and levels, block 2's second predecessor


def test_win_count_ranking_beats_random(fitted, tautoml):
    s, first = fitted
    rng = np.random.default_rng(123)
    codes = [tuple(tautoml.encode(tautoml.sample(rng))) for _ in range(100)]
    wins = s.win_counts(codes)
    assert wins.shape == (100, 2) and wins[:, 0].max() <= 99
    scores = np.array([true_score(c) for c in codes])
    top = np.argsort(-wins[:, 0], kind="stable")[:10]
    assert scores[top].mean() > scores.mean() + 0.15
    # the suggestions after the fit are the pool's best unseen members
    suggested = np.mean([true_score(tautoml.encode(a)) for a in first])
    assert suggested > scores.mean() + 0.15


def test_suggest_never_repeats_and_works_asynchronously(tautoml):
    s = RelationPredictorSearch(tautoml, seed=3, **SMALL)
    rng = np.random.default_rng(1)
    pending = s.suggest(3)  # three workers start before anything is observed
    suggested = [tuple(tautoml.encode(a)) for a in pending]
    trial_id = 0
    while trial_id < 16:
        arch = pending.pop(int(rng.integers(len(pending))))  # results arrive out of order
        observe(s, tautoml, arch, trial_id, None if trial_id % 5 == 4 else true_score)  # some fail
        trial_id += 1
        fits = len(s.history)
        new = s.suggest(1 + trial_id % 2)  # sometimes two workers are free
        scored_now = trial_id % 5 != 0
        assert len(s.history) - fits == int(scored_now and len(s.scored()) >= SMALL["min_trials"])
        again = len(s.history)
        extra = s.suggest(1)  # nothing new observed: no refit
        assert len(s.history) == again
        pending += new + extra
        suggested += [tuple(tautoml.encode(a)) for a in new + extra]
    assert len(s.history) >= 8
    assert len(suggested) == len(set(suggested))
    for arch in pending:
        tautoml.check(arch)
    # encodings the store already holds are never suggested
    blocked = list(s.queue[:3])
    s.mark_seen(blocked)
    assert not {tuple(tautoml.encode(a)) for a in s.suggest(3)} & set(blocked)


def _drive(s, space, archs, first_id):
    for i, arch in enumerate(archs):
        observe(s, space, arch, first_id + i)


def test_state_round_trip_through_json_continues_identically(tautoml):
    s = RelationPredictorSearch(tautoml, seed=7, **SMALL)
    pending = s.suggest(2)
    for k in range(10):
        _drive(s, tautoml, [pending.pop(0)], k)
        pending += s.suggest(1)
    state = json.loads(json.dumps(s.state_dict()))
    assert "model" not in state and len(json.dumps(state)) < 100_000  # no weights, only seeds and results
    t = RelationPredictorSearch(tautoml, seed=7, **SMALL)
    t.load_state_dict(state)
    assert t.model is None and t.last_pairwise_accuracy == s.last_pairwise_accuracy

    torch_state = torch.get_rng_state()
    # more suggestions than the queue holds: the loaded one refits the same model to rank a fresh pool
    a = [tuple(tautoml.encode(x)) for x in s.suggest(20)]
    b = [tuple(tautoml.encode(x)) for x in t.suggest(20)]
    assert a == b
    assert t.model is not None
    # new results: both refit
    more = s.suggest(3)
    assert more == t.suggest(3)
    _drive(s, tautoml, more, 100)
    _drive(t, tautoml, more, 100)
    assert s.state_dict() == t.state_dict()
    assert [tuple(tautoml.encode(x)) for x in s.suggest(5)] == [tuple(tautoml.encode(x)) for x in t.suggest(5)]
    assert torch.equal(torch.get_rng_state(), torch_state)  # torch's global RNG is left alone


def test_state_round_trip_before_any_fit(tautoml):
    s = RelationPredictorSearch(tautoml, seed=2, **SMALL)
    s.suggest(2)
    t = RelationPredictorSearch(tautoml, seed=2, **SMALL)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert s.suggest(3) == t.suggest(3)
    with pytest.raises(RuntimeError, match="not fitted"):
        t.win_counts([tautoml.encode(tautoml.sample(0))] * 2)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"initial": -1}, "initial"),
        ({"min_trials": 1}, "min_trials"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"pool": 1}, "pool"),
        ({"opponents": 0}, "opponents"),
        ({"explore": 1.5}, "explore"),
        ({"explore": "0.1"}, "explore"),
        ({"d_model": 0}, "d_model"),
        ({"layers": 0}, "layers"),
        ({"heads": 3}, "heads"),
        ({"dropout": 1.0}, "dropout"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"probe": True}, "probe"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_options_raise_naming_the_argument(tautoml, kwargs, name):
    with pytest.raises(ValueError, match=name):
        RelationPredictorSearch(tautoml, **kwargs)


def test_options_and_name(tautoml):
    s = RelationPredictorSearch(tautoml, pool=50, opponents=10)
    assert s.name == "predictor"
    options = s.options()
    assert options["pool"] == 50 and options["opponents"] == 10 and options["d_model"] == 32
    assert options["layers"] == 2 and options["heads"] == 4 and options["val_fraction"] == 0.2
    json.dumps(options)


@pytest.mark.parametrize(
    "name, options",
    [
        ("c2fnas", {}),
        ("dints", {"num_blocks": 4, "num_depths": 3}),
        ("scnas", {}),
        ("ronasmis", {"base_channels": 2, "depth": 2, "layers_per_stage": 1}),
    ],
)
def test_fixed_length_spaces(name, options):
    space = base.get(name, **options)
    s = RelationPredictorSearch(space, seed=1, opponents=5, **SMALL)

    def score(code):  # a known order: the mean value of the encoding
        return float(np.mean(code))

    suggested = []
    for k in range(8):
        (arch,) = s.suggest(1)
        space.check(arch)
        suggested.append(tuple(space.encode(arch)))
        observe(s, space, arch, k, score)
    suggested += [tuple(space.encode(a)) for a in s.suggest(4)]
    assert len(suggested) == len(set(suggested))
    assert s.report()["fits"] == 5 and s.history[-1]["train"] + s.history[-1]["val"] == 8
    assert not s.unused_mask(suggested[0]).any()  # every position of a fixed-length encoding is read
