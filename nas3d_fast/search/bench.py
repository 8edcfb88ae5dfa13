"""A tabular benchmark: architectures of the ``dints`` space trained stand-alone on an MNI152 task with one
fixed protocol (issue 23 item 1), so that searchers and weight-sharing rankings can be judged against it.

    from nas3d_fast.search import bench
    table = bench.load()                    # the table shipped with the package (bench_mni152_dints.json)
    row = table.lookup(encoding)            # mean Dice over its seeds, per-class Dice and NSD, memory...
    table.separation_ratio()                # across-architecture std of mean Dice / mean seed std

Building or extending it (resumable: every architecture is a trial of a trial store; a rerun with more
``--archs`` adds architectures, and a killed build continues)::

    python -m nas3d_fast.search.bench build --out bench_runs --archs 100 --seed-archs 10
    python -m nas3d_fast.search.bench export --out bench_runs      # writes the table file

:data:`PROTOCOL` is the whole recipe: the data (``nas3d data mni152``'s 8 subjects at 2 mm, the last 2
validate), the space and its options, the patch, batch, steps, optimiser, learning rate, schedule, loss and
the seeds. Seed 0 trains ``archs`` random architectures (a random trial search); seeds 1 and 2 train the first
``seed_archs`` of them again (``GivenSearch``), which measures the seed noise (they are built first, so a
build stopped early has them). Each row is one training:
mean and per-class validation Dice and NSD (2 mm), parameters, FLOPs (one patch), predicted and measured
(CPU) training-step peak in bytes, seconds. ``Bench.train_missing`` trains an architecture the table lacks
with the same protocol.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence

import numpy as np

from .._atomic import write_json

#: the format tag of a table file
TABLE_FORMAT = "nas3d-bench-1"
#: the table shipped with the package
TABLE = os.path.join(os.path.dirname(__file__), "bench_mni152_dints.json")
#: the protocol every row of the table was trained with
PROTOCOL = {
    "task": "MNI152 grey/white matter (nas3d data mni152: 8 subjects at 2 mm, the last 2 validate, seed 0)",
    "subjects": 8,
    "spacing_mm": 2.0,
    "space": "dints",
    "space_options": {"num_blocks": 4, "channel_mul": 0.25},
    "patch": [32, 32, 32],
    "batch_size": 2,
    "steps": 40,
    "optimizer": "adam",
    "lr": 1e-3,
    "schedule": "poly",
    "loss": "dice_ce",
    "augment": 0.0,
    "max_val_cases": 2,
    "device": "cpu",
    "seeds": [0, 1, 2],
}
_ROW_FIELDS = ("mean_dice", "dice_per_class", "mean_nsd", "nsd_per_class", "params", "flops", "predicted_memory",
               "measured_memory", "seconds")


def _settings(p: dict):
    from ..train.run import DataSettings

    data = DataSettings(patch=tuple(p["patch"]), batch_size=p["batch_size"], augment=p["augment"],
                        max_val_cases=p["max_val_cases"], workers=1)
    train = {"epochs": 1, "optimizer": p["optimizer"], "lr": p["lr"], "schedule": p["schedule"], "loss": p["loss"],
             "amp": False, "device": p["device"], "progress": False}
    return data, train


def _data(out_dir: str, p: dict, progress: bool) -> str:
    from .. import data as nd

    data_dir = os.path.join(out_dir, "data")
    if not os.path.exists(os.path.join(data_dir, "dataset.json")):
        nd.build_mni152(data_dir, subjects=p["subjects"], val=2, spacing=p["spacing_mm"], seed=0, progress=progress)
    return data_dir


def build(out_dir: str, archs: int = 100, seed_archs: int = 10, progress: bool = True) -> dict:
    """Train the table's runs into ``out_dir`` (``seed0/``, ``seed1/``, ``seed2/``, each a trial search run
    folder; ``data/``); resumable. Returns :func:`export`'s table (not written)."""
    from .trials import TrialSearchConfig, trial_search
    from .trials.store import TrialStore

    for name, value, low in (("archs", archs, 1), ("seed_archs", seed_archs, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if seed_archs > archs:
        raise ValueError(f"seed_archs ({seed_archs}) cannot exceed archs ({archs})")
    p = PROTOCOL
    data_dir = _data(out_dir, p, progress)
    data, train = _settings(p)
    common = dict(data=data, train=train, space_options=p["space_options"], measure_memory=True)

    def first_seed(trials: int) -> None:  # a rerun with more trials extends the same random sequence
        trial_search(p["space"], "random", data_dir, os.path.join(out_dir, "seed0"),
                     TrialSearchConfig(trials=trials, trial_steps=p["steps"], progress=progress), seed=0, **common)

    # the seed repeats first, so that a build stopped early already measures the seed noise
    first_seed(max(seed_archs, 1))
    if seed_archs:
        from ..spaces import base

        space = base.get(p["space"], **p["space_options"])
        with TrialStore.read_only(os.path.join(out_dir, "seed0", "trials.db"), space) as store:
            first = sorted(store.trials("done"), key=lambda t: t.id)[:seed_archs]
        for seed in p["seeds"][1:]:
            trial_search(p["space"], "given", data_dir, os.path.join(out_dir, f"seed{seed}"),
                         TrialSearchConfig(trials=len(first), trial_steps=p["steps"], progress=progress),
                         searcher_options={"archs": [t.arch for t in first]}, seed=seed, **common)
    first_seed(archs)
    return export(out_dir, write=False)


def export(out_dir: str, write: bool = True, path: str = TABLE, protocol: dict | None = None) -> dict:
    """The table of the runs in ``out_dir`` (every done trial of each seed's store) trained with ``protocol``
    (default :data:`PROTOCOL`), written atomically to ``path`` when ``write``."""
    from ..spaces import base
    from .trials.store import TrialStore

    protocol = protocol or PROTOCOL
    space = base.get(protocol["space"], **protocol["space_options"])
    rows = []
    for seed in protocol["seeds"]:
        db = os.path.join(out_dir, f"seed{seed}", "trials.db")
        if not os.path.exists(db):
            continue
        with TrialStore.read_only(db, space) as store:
            for t in sorted(store.trials("done"), key=lambda t: t.id):
                m = t.metrics or {}
                rows.append({"encoding": [int(v) for v in t.encoding], "seed": seed, "mean_dice": t.score,
                             "dice_per_class": m.get("dice_per_class"), "mean_nsd": m.get("mean_nsd"),
                             "nsd_per_class": m.get("nsd_per_class"), "params": t.params, "flops": t.flops,
                             "predicted_memory": t.predicted_memory, "measured_memory": t.measured_memory,
                             "seconds": t.seconds})
    if not rows:
        raise ValueError(f"{out_dir} holds no trained architecture (run bench build first)")
    table = {"format": TABLE_FORMAT, "protocol": protocol, "rows": rows}
    table["summary"] = Bench(table).summary()
    if write:
        write_json(table, path)
    return table


class Bench:
    """The table (see the module docstring): ``rows`` (one per training), ``protocol``."""

    def __init__(self, table: dict):
        if table.get("format") != TABLE_FORMAT:
            raise ValueError(f"not a nas3d benchmark table (format {table.get('format')!r}, expected {TABLE_FORMAT!r})")
        self.protocol, self.rows = table["protocol"], table["rows"]
        self._by_code: dict[tuple[int, ...], list[dict]] = {}
        for row in self.rows:
            self._by_code.setdefault(tuple(row["encoding"]), []).append(row)

    def __len__(self) -> int:
        return len(self._by_code)

    def encodings(self) -> list[tuple[int, ...]]:
        """Every architecture of the table, as encodings of the protocol's space."""
        return list(self._by_code)

    def lookup(self, encoding: Sequence[int]) -> dict | None:
        """The architecture's results: ``mean_dice`` (over its seeds), ``seed_std`` (0 for one seed), the
        seed-0 row's other fields and ``seeds`` (every row); None when the table lacks it."""
        rows = self._by_code.get(tuple(int(v) for v in encoding))
        if not rows:
            return None
        base = next((r for r in rows if r["seed"] == 0), rows[0])
        dice = [r["mean_dice"] for r in rows if r["mean_dice"] is not None]
        return {**{k: base.get(k) for k in _ROW_FIELDS}, "encoding": list(base["encoding"]),
                "mean_dice": float(np.mean(dice)) if dice else None,
                "seed_std": float(np.std(dice, ddof=1)) if len(dice) > 1 else 0.0, "seeds": rows}

    def separation_ratio(self) -> float | None:
        """Across-architecture std of seed-0 mean Dice over the mean across-seed std of the architectures
        trained with several seeds (issue 23: at least 3 for the task to separate architectures); None
        without seed repeats."""
        first = [r["mean_dice"] for r in self.rows if r["seed"] == 0 and r["mean_dice"] is not None]
        seed_stds = [self.lookup(c)["seed_std"] for c, rows in self._by_code.items() if len(rows) > 1]
        if len(first) < 2 or not seed_stds or np.mean(seed_stds) == 0:
            return None
        return float(np.std(first, ddof=1) / np.mean(seed_stds))

    def summary(self) -> dict:
        """Counts, the seed-0 mean Dice range, the across-architecture and mean seed std, the separation ratio."""
        first = [r["mean_dice"] for r in self.rows if r["seed"] == 0 and r["mean_dice"] is not None]
        repeated = [c for c, rows in self._by_code.items() if len(rows) > 1]
        return {"architectures": len(self), "rows": len(self.rows), "seed_repeated": len(repeated),
                "mean_dice_range": [min(first), max(first)] if first else None,
                "across_arch_std": float(np.std(first, ddof=1)) if len(first) > 1 else None,
                "mean_seed_std": float(np.mean([self.lookup(c)["seed_std"] for c in repeated])) if repeated else None,
                "separation_ratio": self.separation_ratio()}

    def train_missing(self, encoding: Sequence[int], out_dir: str, seed: int = 0) -> dict:
        """Train the architecture of ``encoding`` with the table's protocol in ``out_dir`` (a trial search run
        folder; resumable) and return its row (not added to the shipped table)."""
        from ..spaces import base
        from .trials import TrialSearchConfig, trial_search

        p = self.protocol
        space = base.get(p["space"], **p["space_options"])
        arch = space.decode([int(v) for v in encoding])
        data, train = _settings(p)
        trial_search(p["space"], "given", _data(out_dir, p, False), os.path.join(out_dir, f"seed{seed}"),
                     TrialSearchConfig(trials=1, trial_steps=p["steps"], progress=False), data=data, train=train,
                     space_options=p["space_options"], searcher_options={"archs": [arch]}, seed=seed,
                     measure_memory=True)
        table = export(out_dir, write=False, protocol=p)
        return next(r for r in table["rows"] if r["encoding"] == list(space.encode(arch)) and r["seed"] == seed)


def load(path: str = TABLE) -> Bench:
    """The table at ``path`` (default: the one shipped with the package)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no benchmark table at {path} (python -m nas3d_fast.search.bench build, then export)")
    with open(path) as f:
        return Bench(json.load(f))


def main(argv: list[str] | None = None) -> int:
    """``python -m nas3d_fast.search.bench build|export``."""
    p = argparse.ArgumentParser(prog="python -m nas3d_fast.search.bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the table's architectures (resumable), then write the table")
    b.add_argument("--out", required=True, metavar="DIR", help="the runs' folder")
    b.add_argument("--archs", type=int, default=100, help="random architectures trained with seed 0")
    b.add_argument("--seed-archs", type=int, default=10, help="of those, how many are trained with seeds 1 and 2")
    b.add_argument("--table", default=TABLE, help="where to write the table (default: the package's)")
    b.add_argument("--quiet", action="store_true")
    e = sub.add_parser("export", help="write the table of the runs built so far")
    e.add_argument("--out", required=True, metavar="DIR")
    e.add_argument("--table", default=TABLE)
    args = p.parse_args(argv)
    try:
        if args.command == "build":
            build(args.out, args.archs, args.seed_archs, progress=not args.quiet)
        table = export(args.out, path=args.table)
    except (ValueError, OSError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    s = table["summary"]
    ratio = s["separation_ratio"]
    print(f"{args.table}: {s['architectures']} architectures, {s['rows']} rows, {s['seed_repeated']} with seed "
          f"repeats; mean Dice {s['mean_dice_range']}, separation ratio "
          + ("n/a" if ratio is None or math.isnan(ratio) else f"{ratio:.2f} (target >= 3)"))
    return 0


__all__ = ["PROTOCOL", "TABLE", "TABLE_FORMAT", "Bench", "build", "export", "load", "main"]


if __name__ == "__main__":
    sys.exit(main())
