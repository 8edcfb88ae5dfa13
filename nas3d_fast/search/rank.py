"""Rank correlation of two scorings of the same architectures, with confidence intervals.

What a search needs from a cheap score (a shared-weight estimate, a short trial, a predictor) is the
order of the architectures, not the values: the rank correlation of the cheap scores with the stand-alone
ones says how far a search can trust them. HyperSegNAS (``../shared/papers/hypersegnas.md``, Fig. 4)
reports Kendall's tau 0.55 (Spearman's rho 0.7) between estimates from fine-tuned super-net weights and
fully trained performances, and tau 0.22 (rho 0.4) without the fine-tuning. Such numbers from a few dozen
architectures are uncertain, so each comes here with a confidence interval and a p-value.

- :func:`rank_correlation`: two equally long 1-D sequences of finite numbers (n scores each, any unit;
  only their order counts) -> :class:`RankCorrelation` (Kendall's tau-b and Spearman's rho, both in
  [-1, 1], with CIs and two-sided p-values of "no correlation").
- :func:`compare_runs`: two trial-search run folders (``RUN/trials.db``) -> the architectures both scored
  (score: the validation mean Dice, higher is better) and the correlation of their scores.
- :func:`rank_main`: ``nas3d search rank RUN --against RUN2 [--json] [--plot PNG]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

METHODS = ("fisher", "bootstrap")

#: Fisher-z standard errors (Fieller, Hartley & Pearson 1957, Biometrika 44:470-481): var(atanh(tau)) ~
#: 0.437 / (n - 4) for Kendall's tau, var(atanh(rho)) ~ 1.06 / (n - 3) for Spearman's rho.
_FISHER = {"kendall": (0.437, 4), "spearman": (1.06, 3)}


@dataclass(frozen=True)
class RankCorrelation:
    """Kendall's tau-b and Spearman's rho of n pairs, each with a ``confidence`` CI (low, high) and a
    two-sided p-value; ``method``: how the CIs were made ("fisher" or "bootstrap")."""

    n: int
    kendall_tau: float
    kendall_ci: tuple[float, float]
    kendall_p: float
    spearman_rho: float
    spearman_ci: tuple[float, float]
    spearman_p: float
    confidence: float
    method: str

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict: CIs as [low, high] lists, NaN as None."""
        def clean(v):
            if isinstance(v, tuple):
                return [clean(x) for x in v]
            return None if isinstance(v, float) and math.isnan(v) else v

        return {k: clean(v) for k, v in asdict(self).items()}


def _scores(values, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} must hold finite numbers only; position {bad[0]} is {arr[bad[0]]}")
    return arr


def _both(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """(tau, p, rho, p); NaN for a constant input (scipy's behaviour, its warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        tau, tau_p = stats.kendalltau(a, b)
        rho, rho_p = stats.spearmanr(a, b)
    return float(tau), float(tau_p), float(rho), float(rho_p)


def _fisher_ci(r: float, n: int, kind: str, confidence: float) -> tuple[float, float]:
    var, dof = _FISHER[kind]
    if n <= dof or math.isnan(r):
        return (math.nan, math.nan)
    half = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(var / (n - dof))
    with np.errstate(divide="ignore"):
        z = float(np.arctanh(r))  # +-inf at r = +-1: the interval is then (r, r)
    return (math.tanh(z - half), math.tanh(z + half))


def rank_correlation(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    confidence: float = 0.95,
    method: str = "fisher",
    n_boot: int = 2000,
    seed: int = 0,
) -> RankCorrelation:
    """Kendall's tau-b and Spearman's rho of the pairs ``(scores_a[i], scores_b[i])`` (scipy.stats
    kendalltau, spearmanr; their two-sided p-values), each with a ``confidence`` interval.

    ``method="fisher"`` (default): the interval of atanh(r) +- z * se mapped back by tanh, with the
    standard errors of Fieller, Hartley & Pearson (1957): se = sqrt(0.437 / (n - 4)) for Kendall's tau,
    sqrt(1.06 / (n - 3)) for Spearman's rho. It needs n >= 5 for tau, n >= 4 for rho: below that its bounds
    are NaN (the estimates and p-values are still given). A perfect order (r = +-1) gives the interval (r, r).
    ``method="bootstrap"``: the percentile interval of ``n_boot`` resamples of the pairs with replacement
    (``numpy.random.default_rng(seed)``: the same seed, the same interval); resamples whose correlation is
    undefined (all one value) are left out.

    At least 3 pairs. A constant ``scores_a`` or ``scores_b`` has no rank correlation: tau, rho, their
    p-values and intervals are NaN (as scipy gives them).
    """
    a, b = _scores(scores_a, "scores_a"), _scores(scores_b, "scores_b")
    if len(a) != len(b):
        raise ValueError(f"scores_a and scores_b must be equally long, got {len(a)} and {len(b)}")
    if len(a) < 3:
        raise ValueError(f"scores_a and scores_b must hold at least 3 pairs, got {len(a)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "bootstrap" and not (isinstance(n_boot, int) and n_boot >= 1):
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    n = len(a)
    tau, tau_p, rho, rho_p = _both(a, b)
    if method == "fisher":
        tau_ci = _fisher_ci(tau, n, "kendall", confidence)
        rho_ci = _fisher_ci(rho, n, "spearman", confidence)
    else:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        boot = np.array([_both(a[i], b[i])[::2] for i in idx])  # (n_boot, 2): tau, rho
        q = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # every resample undefined: NaN bounds
            lo_hi = np.nanpercentile(boot, q, axis=0)
        tau_ci, rho_ci = (float(lo_hi[0, 0]), float(lo_hi[1, 0])), (float(lo_hi[0, 1]), float(lo_hi[1, 1]))
    return RankCorrelation(n, tau, tau_ci, tau_p, rho, rho_ci, rho_p, float(confidence), method)


# -- trial-search runs ---------------------------------------------------------------------------------


def _read_run(run: str, rung: int | None) -> tuple[dict, dict[tuple[int, ...], float]]:
    """(settings, {encoding: score}) of a run's done, scored trials; per encoding its highest rung, or
    ``rung`` only."""
    from .trials.store import TrialStore

    path = os.path.join(run, "trials.db")
    try:
        store = TrialStore.read_only(path)
    except FileNotFoundError:
        raise ValueError(f"{run} holds no trial search (no trials.db)") from None
    with store:
        settings = store.meta("settings")
        if settings is None:
            raise ValueError(f"{path} records no settings")
        best: dict[tuple[int, ...], tuple[int, float]] = {}
        for _, key, r, score in store.scored(rung):
            if math.isfinite(score) and (key not in best or r > best[key][0]):
                best[key] = (r, float(score))
    return settings, {k: s for k, (_, s) in best.items()}


def compare_runs(
    run_a: str,
    run_b: str,
    rung: int | None = None,
    *,
    confidence: float = 0.95,
    method: str = "fisher",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """The rank correlation of the scores two trial searches of one space gave the same architectures.

    Architectures are matched by encoding among each run's done trials with a score; one trained at several
    rungs (successive halving) counts with its highest rung's score, or only at ``rung`` when given.
    Returns ``{"space", "pairs": n, "matched": [(encoding, score_a, score_b), ...] (best of run A first),
    "only_in_a": count, "only_in_b": count, "correlation": RankCorrelation.to_dict()}``. ValueError when
    the runs searched different spaces or space options, or fewer than 3 architectures match.
    """
    from ..spaces import base

    (settings_a, scores_a), (settings_b, scores_b) = _read_run(run_a, rung), _read_run(run_b, rung)
    name_a, name_b = settings_a.get("space"), settings_b.get("space")
    if name_a != name_b:
        raise ValueError(f"{run_a} searched space {name_a!r} but {run_b} searched {name_b!r}")
    # through the space's constructor, so that options left at their defaults compare equal to them set
    opts_a = base.get(name_a, **settings_a.get("space_options", {})).options
    opts_b = base.get(name_b, **settings_b.get("space_options", {})).options
    if opts_a != opts_b:
        raise ValueError(f"{run_a} and {run_b} searched {name_a} with different space options: {opts_a} vs {opts_b}")
    common = set(scores_a) & set(scores_b)
    if len(common) < 3:
        at = "" if rung is None else f" at rung {rung}"
        raise ValueError(f"only {len(common)} architecture(s) scored in both {run_a} and {run_b}{at}; "
                         "a rank correlation needs at least 3")
    matched = sorted(((e, scores_a[e], scores_b[e]) for e in common), key=lambda m: (-m[1], m[0]))
    corr = rank_correlation([m[1] for m in matched], [m[2] for m in matched], confidence, method, n_boot, seed)
    return {
        "space": name_a,
        "pairs": len(matched),
        "matched": matched,
        "only_in_a": len(scores_a) - len(common),
        "only_in_b": len(scores_b) - len(common),
        "correlation": corr.to_dict(),
    }


def _plot(result: dict, run_a: str, run_b: str, path: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: Agg rendering, no global backend state

    from .._atomic import atomic_write

    c = result["correlation"]
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.subplots()
    ax.scatter([m[1] for m in result["matched"]], [m[2] for m in result["matched"]], s=16)
    ax.set_xlabel(f"score in {run_a}")
    ax.set_ylabel(f"score in {run_b}")
    tau = "n/a" if c["kendall_tau"] is None else f"{c['kendall_tau']:.3f}"
    ax.set_title(f"{result['space']}: Kendall tau {tau} (n = {result['pairs']})")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"), suffix=".png")


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def rank_main(argv: list[str]) -> int:
    """``nas3d search rank RUN --against RUN2 [--rung R] [--json] [--plot PNG] [--confidence C] [--bootstrap]``."""
    p = argparse.ArgumentParser(prog="nas3d search rank", description="the rank correlation (Kendall's tau, "
                                "Spearman's rho, with confidence intervals) of the scores two trial searches of one "
                                "space gave the same architectures")
    p.add_argument("run", metavar="RUN", help="a trial search's run folder")
    p.add_argument("--against", required=True, metavar="RUN2", help="the other run folder")
    p.add_argument("--rung", type=int, help="compare this rung only (default: each architecture's highest)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the intervals (default 0.95)")
    p.add_argument("--bootstrap", action="store_true", help="bootstrap intervals instead of Fisher z ones")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.add_argument("--plot", metavar="PNG", help="also write a scatter plot of the matched scores")
    args = p.parse_args(argv)
    try:
        result = compare_runs(args.run, args.against, args.rung, confidence=args.confidence,
                              method="bootstrap" if args.bootstrap else "fisher", seed=args.seed)
        if args.plot:
            _plot(result, args.run, args.against, args.plot)
    except (ValueError, OSError, sqlite3.Error) as exc:
        print(f"nas3d search rank: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    c = result["correlation"]
    level = f"{100 * c['confidence']:g}% CI ({'bootstrap' if c['method'] == 'bootstrap' else 'Fisher z'})"
    print(f"{args.run} vs {args.against}: {result['space']}, {result['pairs']} architectures scored in both")
    for label, r, name in (("Kendall tau ", "kendall_tau", "kendall"), ("Spearman rho", "spearman_rho", "spearman")):
        lo, hi = c[f"{name}_ci"]
        print(f"  {label} {_fmt(c[r]):>6}  {level} [{_fmt(lo)}, {_fmt(hi)}]  p = {_fmt(c[f'{name}_p'], '.3g')}")
    if c["method"] == "fisher" and result["pairs"] < 5:
        print("  (Fisher z intervals need at least 5 pairs for tau and 4 for rho: n/a below that)")
    print(f"only in {args.run}: {result['only_in_a']}; only in {args.against}: {result['only_in_b']}")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


__all__ = ["METHODS", "RankCorrelation", "compare_runs", "rank_correlation", "rank_main"]
