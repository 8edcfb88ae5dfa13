"""Rank correlation of two scorings of the same architectures (issue 22, item 5): ``rank_correlation``
against scipy, its confidence intervals and bad-input errors; ``compare_runs`` and ``nas3d search rank`` on
real trial stores."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from nas3d_fast.search.rank import RankCorrelation, compare_runs, rank_correlation, rank_main
from nas3d_fast.search.trials import TrialStore
from nas3d_fast.spaces import base

SETTINGS = {"space": "c2fnas", "space_options": {}}


def _noisy(n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return a, a + noise * rng.normal(size=n)


# -- rank_correlation ------------------------------------------------------------------------------------


def test_known_values_match_scipy():
    a, b = _noisy(30, 1.0)
    r = rank_correlation(a, b)
    tau, tau_p = stats.kendalltau(a, b)
    rho, rho_p = stats.spearmanr(a, b)
    assert isinstance(r, RankCorrelation) and r.n == 30 and r.method == "fisher" and r.confidence == 0.95
    assert r.kendall_tau == pytest.approx(tau) and r.kendall_p == pytest.approx(tau_p)
    assert r.spearman_rho == pytest.approx(rho) and r.spearman_p == pytest.approx(rho_p)
    z = stats.norm.ppf(0.975)
    assert r.kendall_ci == pytest.approx((math.tanh(math.atanh(tau) - z * math.sqrt(0.437 / 26)),
                                          math.tanh(math.atanh(tau) + z * math.sqrt(0.437 / 26))))
    assert r.spearman_ci == pytest.approx((math.tanh(math.atanh(rho) - z * math.sqrt(1.06 / 27)),
                                           math.tanh(math.atanh(rho) + z * math.sqrt(1.06 / 27))))
    d = r.to_dict()
    assert d["kendall_ci"] == list(r.kendall_ci) and json.loads(json.dumps(d)) == d


def test_perfect_and_reversed_orders():
    a = [0.1, 0.5, 0.2, 0.9, 0.7, 0.3]
    same = rank_correlation(a, [10 * x + 3 for x in a])
    assert same.kendall_tau == pytest.approx(1) and same.spearman_rho == pytest.approx(1)
    assert same.kendall_ci == pytest.approx((1, 1))
    rev = rank_correlation(a, [-x for x in a], method="bootstrap", n_boot=200)
    assert rev.kendall_tau == pytest.approx(-1) and rev.spearman_rho == pytest.approx(-1)
    assert rev.kendall_ci == pytest.approx((-1, -1)) and rev.spearman_ci == pytest.approx((-1, -1))


@pytest.mark.parametrize("method", ["fisher", "bootstrap"])
def test_ci_contains_estimate_and_narrows_with_n(method):
    widths = []
    for n in (12, 200):
        r = rank_correlation(*_noisy(n, 1.0), method=method, n_boot=500)
        for est, (lo, hi) in ((r.kendall_tau, r.kendall_ci), (r.spearman_rho, r.spearman_ci)):
            assert -1 <= lo < est < hi <= 1
        widths.append((r.kendall_ci[1] - r.kendall_ci[0], r.spearman_ci[1] - r.spearman_ci[0]))
    assert widths[1][0] < widths[0][0] / 2 and widths[1][1] < widths[0][1] / 2
    wide = rank_correlation(*_noisy(200, 1.0), confidence=0.99, method=method, n_boot=500)
    assert wide.kendall_ci[1] - wide.kendall_ci[0] > widths[1][0]


def test_bootstrap_is_deterministic_with_a_seed():
    a, b = _noisy(25, 0.8)
    one = rank_correlation(a, b, method="bootstrap", n_boot=300, seed=7)
    assert one == rank_correlation(a, b, method="bootstrap", n_boot=300, seed=7)
    other = rank_correlation(a, b, method="bootstrap", n_boot=300, seed=8)
    assert other.kendall_ci != one.kendall_ci and other.kendall_tau == one.kendall_tau


def test_small_n_and_constant_inputs_give_nan():
    r = rank_correlation([1, 2, 3, 4], [1, 3, 2, 4])  # n = 4: Fisher's interval of tau needs n >= 5
    assert not math.isnan(r.kendall_tau) and all(math.isnan(x) for x in r.kendall_ci)
    assert all(not math.isnan(x) for x in r.spearman_ci)
    assert r.to_dict()["kendall_ci"] == [None, None]
    const = rank_correlation([1, 2, 3, 4, 5], [2, 2, 2, 2, 2])
    assert math.isnan(const.kendall_tau) and math.isnan(const.spearman_rho) and math.isnan(const.kendall_ci[0])
    boot = rank_correlation([1, 2, 3, 4, 5], [2, 2, 2, 2, 2], method="bootstrap", n_boot=50)
    assert math.isnan(boot.spearman_ci[0])


@pytest.mark.parametrize("args, kwargs, match", [
    (([1, 2, 3], [1, 2]), {}, "equally long"),
    (([1, 2], [1, 2]), {}, "at least 3 pairs"),
    (([1, float("nan"), 3], [1, 2, 3]), {}, "scores_a must hold finite"),
    (([1, 2, 3], [1, 2, float("inf")]), {}, "scores_b must hold finite"),
    (([1, "x", 3], [1, 2, 3]), {}, "scores_a must be a sequence of numbers"),
    (([[1, 2], [3, 4]], [1, 2]), {}, "scores_a must be one-dimensional"),
    (([1, 2, 3], [1, 2, 3]), {"confidence": 1.0}, "confidence must be in"),
    (([1, 2, 3], [1, 2, 3]), {"confidence": 0}, "confidence must be in"),
    (([1, 2, 3], [1, 2, 3]), {"method": "jackknife"}, "method must be one of"),
    (([1, 2, 3], [1, 2, 3]), {"method": "bootstrap", "n_boot": 0}, "n_boot must be"),
])
def test_bad_input_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        rank_correlation(*args, **kwargs)


# -- runs ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def space():
    return base.get("c2fnas")


def _run(path, space, scores: dict, settings=SETTINGS, extra=()) -> str:
    """A run folder whose store holds architecture ``space.sample(i)`` done with score ``scores[i]``
    (None: done without a score) at rung 0, plus ``extra``: (i, rung, status, score) rows."""
    with TrialStore(os.path.join(path, "trials.db"), space, settings) as store:
        rows = [(i, 0, "done", s) for i, s in scores.items()] + list(extra)
        for i, rung, status, score in rows:
            tid = store.add(space.sample(i), budget=10 * (rung + 1), rung=rung)
            if status == "queued":
                continue
            store.start(tid, "w")
            if status == "done":
                store.finish(tid, {"score": score})
            else:
                store.fail(tid, "boom", retry=False)
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, space):
    rng = np.random.default_rng(1)
    a = {i: 0.5 + 0.03 * i for i in range(12)}  # architectures 0..11
    b = {i: 0.2 + 0.02 * i + 0.03 * rng.normal() for i in range(2, 15)}  # 2..14: 10 in common
    # in A, architecture 0 was promoted to rung 1 and its higher score counts; 20 failed, 21 is queued
    extra_a = [(0, 1, "done", 0.95), (20, 0, "failed", None), (21, 0, "queued", None)]
    run_a = _run(tmp_path_factory.mktemp("a"), space, a, extra=extra_a)
    run_b = _run(tmp_path_factory.mktemp("b"), space, {**b, 16: None})  # 16: done without a score
    return run_a, run_b, a, b


def test_compare_runs_matches_by_encoding(runs, space):
    run_a, run_b, a, b = runs
    out = compare_runs(run_a, run_b)
    common = sorted(set(a) & set(b))
    assert out["space"] == "c2fnas" and out["pairs"] == len(common) == 10
    assert out["only_in_a"] == 2 and out["only_in_b"] == 3  # A: 0, 1; B: 12, 13, 14
    by_enc = {tuple(space.encode(space.sample(i))): i for i in common}
    assert [m[1] for m in out["matched"]] == sorted((a[i] for i in common), reverse=True)
    for enc, sa, sb in out["matched"]:
        assert sa == pytest.approx(a[by_enc[enc]]) and sb == pytest.approx(b[by_enc[enc]])
    expect = rank_correlation([a[i] for i in common], [b[i] for i in common]).to_dict()
    for key in ("kendall_tau", "kendall_p", "spearman_rho", "spearman_p"):
        assert out["correlation"][key] == pytest.approx(expect[key])
    assert out["correlation"]["kendall_ci"] == pytest.approx(expect["kendall_ci"])
    assert 0.5 < out["correlation"]["kendall_tau"] <= 1
    # rung 0 only: architecture 0 at its rung-0 score; rung 1 only: one architecture, too few
    assert compare_runs(run_a, run_b, rung=0)["only_in_a"] == 2
    with pytest.raises(ValueError, match="only 0 architecture"):
        compare_runs(run_a, run_b, rung=1)


def test_compare_runs_highest_rung(tmp_path, space):
    a = _run(tmp_path / "a", space, {0: 0.1, 1: 0.2, 2: 0.3}, extra=[(0, 1, "done", 0.9)])
    b = _run(tmp_path / "b", space, {0: 0.9, 1: 0.2, 2: 0.3})
    assert compare_runs(a, b)["correlation"]["kendall_tau"] == pytest.approx(1)
    assert compare_runs(a, b, rung=0)["correlation"]["kendall_tau"] < 1


def test_compare_runs_refusals(tmp_path, space, runs):
    run_a = runs[0]
    other_opts = _run(tmp_path / "opts", base.get("c2fnas", channels=16), {i: i for i in range(4)},
                      settings={"space": "c2fnas", "space_options": {"channels": 16}})
    with pytest.raises(ValueError, match="different space options"):
        compare_runs(run_a, other_opts)
    ron = base.get("ronasmis", base_channels=2, depth=2, layers_per_stage=1)
    other_space = _run(tmp_path / "ron", ron, {i: i for i in range(4)},
                       settings={"space": "ronasmis", "space_options": dict(ron.options)})
    with pytest.raises(ValueError, match="searched space 'c2fnas' but .* searched 'ronasmis'"):
        compare_runs(run_a, other_space)
    # options stored in full (as the driver stores them) equal the defaults left out
    full = _run(tmp_path / "full", space, {i: -i for i in range(1, 6)},  # (A: 0 at rung 1 scores best)
                settings={"space": "c2fnas", "space_options": dict(space.options)})
    assert compare_runs(run_a, full)["correlation"]["kendall_tau"] == pytest.approx(-1)
    few = _run(tmp_path / "few", space, {0: 1.0, 1: 2.0, 30: 3.0})
    with pytest.raises(ValueError, match="only 2 architecture"):
        compare_runs(run_a, few)
    with pytest.raises(ValueError, match="no trial search"):
        compare_runs(run_a, str(tmp_path / "nothing"))


def test_rank_main_text_json_plot(runs, tmp_path, capsys):
    run_a, run_b = runs[:2]
    assert rank_main([run_a, "--against", run_b]) == 0
    text = capsys.readouterr().out
    tau = compare_runs(run_a, run_b)["correlation"]["kendall_tau"]
    assert "10 architectures scored in both" in text and f"Kendall tau   {tau:.3f}" in text
    assert "Spearman rho" in text and "95% CI (Fisher z)" in text and "p = " in text
    assert f"only in {run_a}: 2; only in {run_b}: 3" in text

    png = tmp_path / "plots" / "rank.png"
    assert rank_main([run_a, "--against", run_b, "--json", "--bootstrap", "--confidence", "0.9",
                      "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 10 and len(out["matched"]) == 10 and len(out["matched"][0][0]) > 0
    assert out["correlation"]["method"] == "bootstrap" and out["correlation"]["confidence"] == 0.9
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["rank.png"]  # no temporary file left


def test_rank_main_errors(runs, tmp_path, capsys, space):
    other = _run(tmp_path / "opts", base.get("c2fnas", channels=16), {i: i for i in range(4)},
                 settings={"space": "c2fnas", "space_options": {"channels": 16}})
    assert rank_main([runs[0], "--against", other]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas3d search rank: error: ") and "different space options" in err
    assert rank_main([runs[0], "--against", runs[1], "--confidence", "2"]) == 2
    assert "confidence must be in (0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rank_main([runs[0]])  # --against is required
    assert "--against" in capsys.readouterr().err


def test_nas3d_search_rank_is_a_command():
    from nas3d_fast import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["search", "rank", "--help"])
    assert exc.value.code == 0
