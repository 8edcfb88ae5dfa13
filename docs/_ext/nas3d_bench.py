"""Plots of the benchmark pages, drawn when the docs are built (issue 25).

``docs/benchmarks/figures.json`` holds the latest recorded figures of every suite (ratios, one value per
run, the machine, the command, the target where one was set; ``baseline`` marks a baseline's own figure,
``diagnostic`` a diagnostic ratio, both drawn in grey). When the build starts, one PNG per suite
is drawn to ``docs/benchmarks/_plots/SUITE.png`` (generated, not in git): bars per ratio, one per run,
on a log scale with parity (1x) and the targets marked. The suite pages include them. The runner's own
plot of a fresh run (median times per case) is ``python -m benchmarks.run SUITE --plot out.png``.

Every suite of ``benchmarks/run.py``'s ``SUITES`` must have figures and a page: a suite without them is a
build warning (so a ``-W`` build fails).
"""

from __future__ import annotations

import ast
import json
import os

from sphinx.util import logging

logger = logging.getLogger(__name__)


def suites(root: str) -> list[str]:
    """``SUITES`` of benchmarks/run.py, read from its source (the runner is not imported)."""
    with open(os.path.join(root, "benchmarks", "run.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUITES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise RuntimeError("benchmarks/run.py defines no SUITES")


def draw(suite: str, entry: dict, path: str) -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ratios = entry["ratios"]
    names = list(ratios)
    unit = entry.get("units", "x")
    runs = max(len(r["runs"]) for r in ratios.values())
    height = 0.8 / runs
    fig, ax = plt.subplots(figsize=(7.5, 1.1 + 0.3 * len(names) * max(1, runs * 0.7)))
    colours = ["tab:green", "tab:olive", "tab:cyan"]
    base = 1.0 if unit == "x" else 0.0  # ratios are drawn from parity: right is faster, left is leaner
    values_all = [v for r in ratios.values() for v in r["runs"]]
    for i, name in enumerate(names):
        values = ratios[name]["runs"]
        for j, value in enumerate(values):
            colour = ("lightgray" if ratios[name].get("diagnostic") else "tab:gray" if ratios[name].get("baseline")
                      else colours[j % len(colours)])
            y = i + (j - (len(values) - 1) / 2) * height
            shown = max(value, 1e-2) if unit != "%" else value
            ax.barh(y, shown - base, left=base, height=height * 0.9, color=colour)
            ax.text(shown, y, f" {value:g}{'x' if unit == 'x' else ' ' + unit} ", va="center", fontsize=7,
                    ha="left" if shown >= base else "right")
        if "target" in ratios[name]:
            ax.plot([ratios[name]["target"]] * 2, [i - 0.45, i + 0.45], color="tab:red", lw=2)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    if unit in ("x", "s"):
        ax.set_xscale("log")
        low, high = min(values_all + [1.0]), max(values_all + [1.0])
        ax.set_xlim(low / 3, high * 4)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{'x' if unit == 'x' else ' s'}"))
    else:
        ax.set_xlim(0, max(values_all) * 1.3)
    if unit == "x":
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xlabel("right of 1x: faster than the baseline; left: less memory. Red: target", fontsize=8)
    else:
        ax.set_xlabel({"%": "error (%); red: target", "s": "seconds per call"}[unit], fontsize=8)
    ax.set_title("\n".join(textwrap.wrap(f"{suite}: {entry['machine']}", 100)), fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def generate(app) -> None:
    root = os.path.dirname(os.path.abspath(app.srcdir))
    bench = os.path.join(app.srcdir, "benchmarks")
    with open(os.path.join(bench, "figures.json"), encoding="utf-8") as f:
        figures = json.load(f)
    out = os.path.join(bench, "_plots")
    os.makedirs(out, exist_ok=True)
    for suite in suites(str(root)):
        if suite not in figures:
            logger.warning("benchmark suite %s has no figures in docs/benchmarks/figures.json", suite,
                           type="nas3d", subtype="benchmarks")
            continue
        if not os.path.exists(os.path.join(bench, f"{suite}.md")):
            logger.warning("benchmark suite %s has no page docs/benchmarks/%s.md", suite, suite,
                           type="nas3d", subtype="benchmarks")
        target = os.path.join(out, f"{suite}.png")
        stamp = os.path.getmtime(os.path.join(bench, "figures.json"))
        if not os.path.exists(target) or os.path.getmtime(target) < max(stamp, os.path.getmtime(__file__)):
            draw(suite, figures[suite], target)


def setup(app):
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
