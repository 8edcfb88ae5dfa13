"""RUN/report.png: a search at a glance (loss and entropy curves, op probabilities over the epochs, and
the architecture found)."""

from __future__ import annotations

import csv
import os

import numpy as np

from .._atomic import atomic_write
from ..spaces.base import Arch


def _column(rows: list[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(float(r["step"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = np.asarray(pairs).T
    return steps, values


def _matrix(value) -> np.ndarray | None:
    """A field that is a rectangular table of numbers (e.g. dints' layers x edges), else None."""
    try:
        table = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    return table if table.ndim == 2 and table.size > 1 else None


def _draw_arch(ax, arch: Arch) -> None:
    """The architecture: its first table-shaped field as a grid of values (rows x columns), the other
    fields as text."""
    fields = arch.to_dict()
    tables = {k: m for k, v in fields.items() if (m := _matrix(v)) is not None}
    lines = [f"{k}: {v}" for k, v in fields.items() if k not in tables]
    text = "\n".join(line if len(line) < 90 else line[:87] + "..." for line in lines)
    if tables:
        name, table = next(iter(tables.items()))
        ax.imshow(table, aspect="auto", interpolation="nearest", cmap="tab10", vmin=0, vmax=9)
        if table.size <= 400:
            for (i, j), v in np.ndenumerate(table):
                ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=7)
        ax.set(title=f"architecture found ({arch.space}): {name}", xlabel="column", ylabel="row")
        ax.set_xticks(range(table.shape[1]))
        ax.set_yticks(range(table.shape[0]))
        if text:
            ax.set_xlabel(text, family="monospace", fontsize=7)
        return
    ax.axis("off")
    ax.text(0, 1, f"architecture found ({arch.space})\n\n{text}", va="top", family="monospace", fontsize=8,
            wrap=True)


def write_report(out_dir: str, csv_path: str, history: list[dict], arch: Arch) -> str:
    """Write ``out_dir/report.png`` from search.csv, the history entries and the final ``arch``; returns
    its path. Panels: weight/architecture loss per step; entropy (and the temperature when logged); the
    probability of each edge's most probable op after each epoch (a heatmap, edges as rows); the
    architecture as its JSON fields."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    if os.path.exists(csv_path):
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    for name in ("weight_loss", "arch_loss"):
        steps, values = _column(rows, name)
        if len(steps):
            ax.plot(steps, values, label=name.replace("_", " "), lw=1)
    ax.set(title="losses", xlabel="step")
    ax.legend(loc="upper right")
    ax = axes[0, 1]
    steps, values = _column(rows, "entropy")
    ax.plot(steps, values, color="tab:green", lw=1, label="entropy (nats)")
    steps, tau = _column(rows, "tau")
    if len(steps):
        ax.plot(steps, tau, color="tab:orange", lw=1, label="temperature")
    ax.set(title="architecture entropy", xlabel="step")
    ax.legend(loc="upper right")
    ax = axes[1, 0]
    if history:
        groups = list(history[-1]["probs"])
        columns = [np.concatenate([np.max(np.asarray(h["probs"][g]), axis=1) for g in groups]) for h in history]
        image = ax.imshow(np.stack(columns, axis=1), aspect="auto", interpolation="nearest", vmin=0, vmax=1)
        fig.colorbar(image, ax=ax, label="probability of the top op")
        ax.set(title=f"edges ({' | '.join(groups)}) over epochs", xlabel="epoch", ylabel="edge")
        ax.set_xticks(range(len(history)), [str(h["epoch"]) for h in history])
    else:
        ax.text(0.5, 0.5, "no epoch finished", ha="center", va="center")
    _draw_arch(axes[1, 1], arch)
    fig.tight_layout()
    path = os.path.join(out_dir, "report.png")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
    return path


def write_trial_report(out_dir: str, trials: list, best, front: list) -> str:
    """Write ``out_dir/report.png`` of a trial search; returns its path. Panels: the best mean Dice so far
    against trials ended (rung 0, in the order they ended; promotions marked); mean Dice against predicted
    training-step peak memory (MiB) with the Pareto front drawn and the result ringed; the result's
    architecture. ``trials``: the store's ``Trial`` records; ``best``: the result (or None); ``front``: the
    front's trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ended = sorted((t for t in trials if t.status in ("done", "failed") and t.finished), key=lambda t: t.finished)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    ax = axes[0]
    best_so_far, xs, score = [], [], -np.inf
    for i, t in enumerate(t for t in ended if t.rung == 0):
        if t.score is not None:
            score = max(score, t.score)
        xs.append(i + 1)
        best_so_far.append(score if np.isfinite(score) else np.nan)
    ax.step(xs, best_so_far, where="post", color="tab:blue", label="best so far (rung 0)")
    scores0 = [(i + 1, t.score) for i, t in enumerate(t for t in ended if t.rung == 0) if t.score is not None]
    if scores0:
        ax.scatter(*zip(*scores0), s=12, color="tab:gray", label="trial")
    ax.set(title="search progress", xlabel="trials ended", ylabel="mean validation Dice")
    ax.legend(loc="lower right")
    ax = axes[1]
    points = [t for t in trials if t.status == "done" and t.score is not None and t.predicted_memory is not None]
    if points:
        for rung in sorted({t.rung for t in points}):
            sel = [t for t in points if t.rung == rung]
            ax.scatter([t.predicted_memory / 2**20 for t in sel], [t.score for t in sel], s=14,
                       label=f"rung {rung}" if rung else "trials")
        if front:
            ax.step([t.predicted_memory / 2**20 for t in front], [t.score for t in front], where="post",
                    color="tab:red", lw=1.2, label="Pareto front")
        if best is not None and best.predicted_memory is not None:
            ax.scatter([best.predicted_memory / 2**20], [best.score], s=120, facecolors="none", edgecolors="k",
                       label=f"result (trial {best.id})")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no trial done", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="Dice against memory", xlabel="predicted training peak (MiB)", ylabel="mean validation Dice")
    if best is not None:
        _draw_arch(axes[2], best.arch)
    else:
        axes[2].axis("off")
    fig.tight_layout()
    path = os.path.join(out_dir, "report.png")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
    return path
