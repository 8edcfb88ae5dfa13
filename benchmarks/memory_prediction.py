"""Suite ``memory_prediction``: predicted training-step peak memory against the CPU allocator's
measurement, for random candidates of every search space, and MONAI's DiNTS estimate against the same
measurement.

Per space: 20 random candidates (seeded), input (1, 1, 64, 64, 64), batch 1, 2 classes, Dice+CE,
Adam, the peak of 2 training steps. Each candidate is built (torch.manual_seed(0)), its peak predicted
(``predict_training_memory(target="cpu", steps=2)``) and measured (``measure_training_memory(device=
"cpu", steps=1, steady_state=True)``: the CPU allocator's events from torch.profiler). The
measurement runs one real step after making Adam's state without one: the same peak as two steps
(the first step never exceeds the second; tests/test_profile_steady_state.py) at half the compute,
which is nearly all of a measurement's time (a large dints candidate's step takes minutes at 64^3).
For dints candidates, MONAI's ``TopologySearch.get_ram_cost_usage`` (static per-op coefficients times
feature-map sizes) is evaluated with its probabilities set to the candidate's codes (``full=False``)
and compared with the same measurement. Keys (``ratios`` of the runner's JSON; units in ``units``):

- ``max_abs_error_pct``: largest |predicted - measured| / measured over all candidates (target <= 10);
- ``median_abs_error_pct``: its median;
- ``monai_dints_max_abs_error_pct``: the same for MONAI's estimate over the dints candidates;
- ``predict_seconds_per_candidate_96``: case ``predict_96``, the median time of one prediction at
  96^3 (target <= 1), cycling through candidates of the present spaces.

Spaces whose module is missing from this build are listed under ``missing`` (never skipped silently);
a space missing makes the error keys cover fewer candidates, and ``candidates`` says how many.
``--quick``: 3 candidates per space at 32^3.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from .core import Case, Ratio, Suite

SPACES = ("dints", "scnas", "c2fnas", "tautoml", "ronasmis")
CANDIDATES, PATCH = 20, 64
QUICK_CANDIDATES, QUICK_PATCH = 3, 32
SPEED_PATCH = 96
NUM_CLASSES = 2
STEPS = 2
MEASURE_STEPS = {"steps": 1, "steady_state": True}


def present_spaces() -> tuple[dict, dict]:
    """({name: space} for spaces whose module imports, {name: reason} for the others)."""
    from nas3d_fast import spaces

    found, missing = {}, {}
    for name in SPACES:
        try:
            found[name] = spaces.get(name)
        except ImportError as exc:
            missing[name] = f"module not in this build ({exc})"
        except Exception as exc:  # noqa: BLE001 (a broken space is reported, not hidden)
            missing[name] = f"{type(exc).__name__}: {exc}"
    return found, missing


def _patch_for(space, size: int) -> tuple[int, int, int]:
    stride = int(getattr(space, "stride", 1))
    side = max(stride, size // stride * stride)
    return (side, side, side)


def _build(space, arch, device: str = "cpu"):
    torch.manual_seed(0)
    return space.build(arch, 1, NUM_CLASSES).to(device)


def monai_dints_estimate_mib(space, arch, shape) -> float:
    """MONAI's get_ram_cost_usage for a dints candidate, in MiB (MONAI's unit: 4-byte values / 2**20)."""
    from monai.networks.nets.dints import TopologySearch

    fields = arch.to_dict()
    if "edges" in fields:  # DintsArch: L x E, 0 = edge off, k = op k - 1; edges in MONAI's path order
        edges = np.asarray(fields["edges"])
        codes = ((edges > 0).astype(int), np.maximum(edges - 1, 0))
    elif "arch_code_a" in fields and "arch_code_c" in fields:
        codes = (fields["arch_code_a"], fields["arch_code_c"])
    else:
        raise RuntimeError("the dints architecture has neither 'edges' nor MONAI's arch_code_a/arch_code_c")
    code_a, code_c = (np.asarray(c) for c in codes)
    opts = getattr(space, "options", {})
    search = TopologySearch(
        channel_mul=float(opts.get("channel_mul", 1.0)),
        num_blocks=int(code_a.shape[0]),
        num_depths=(int(code_a.shape[1]) + 2) // 3,  # E = 3 D - 2 edges per layer
        use_downsample=bool(opts.get("use_downsample", True)),
        device="cpu",
    )
    with torch.no_grad():
        search.log_alpha_a.copy_(torch.as_tensor(np.where(code_a > 0, 30.0, -30.0), dtype=torch.float32))
        onehot = np.full(search.log_alpha_c.shape, -30.0, dtype=np.float32)
        for b in range(code_c.shape[0]):
            for p in range(code_c.shape[1]):
                onehot[b, p, int(code_c[b, p])] = 30.0
        search.log_alpha_c.copy_(torch.from_numpy(onehot))
        return float(search.get_ram_cost_usage((1, 1, *shape), full=False))


def evaluate(quick: bool = False, progress: bool = True, count: int | None = None, size: int | None = None) -> dict:
    """Predict and measure every candidate; returns {"ratios", "units", "details", "missing"}.
    ``count``/``size`` override the candidates per space and the patch side."""
    from nas3d_fast.profile import measure_training_memory, predict_training_memory

    default_count, default_size = (QUICK_CANDIDATES, QUICK_PATCH) if quick else (CANDIDATES, PATCH)
    count, size = count or default_count, size or default_size
    found, missing = present_spaces()
    rows, errors, monai_errors = [], [], []
    bar = _bar(progress, len(found) * count)
    for name, space in found.items():
        rng = np.random.default_rng(0)
        patch = _patch_for(space, size)
        shape = (1, *patch)
        for i in range(count):
            arch = space.sample(rng)
            with torch.device("meta"):
                meta_model = space.build(arch, 1, NUM_CLASSES)
            predicted = predict_training_memory(
                meta_model, shape, batch_size=1, num_classes=NUM_CLASSES, target="cpu", steps=STEPS
            )
            # one steady-state step: the peak of STEPS (>= 2) steps, whose steps from the second on repeat
            measured = measure_training_memory(
                _build(space, arch), shape, batch_size=1, num_classes=NUM_CLASSES, device="cpu", **MEASURE_STEPS
            )
            err = 100.0 * (predicted.peak_bytes - measured.peak_bytes) / measured.peak_bytes
            errors.append(abs(err))
            row = {
                "space": name,
                "index": i,
                "patch": list(patch),
                "predicted_bytes": predicted.peak_bytes,
                "measured_bytes": measured.peak_bytes,
                "error_pct": err,
                "predict_s": predicted.seconds,
                "measure_s": measured.seconds,
            }
            if name == "dints":
                try:
                    monai = monai_dints_estimate_mib(space, arch, patch) * 2**20
                    row["monai_bytes"] = monai
                    row["monai_error_pct"] = 100.0 * (monai - measured.peak_bytes) / measured.peak_bytes
                    monai_errors.append(abs(row["monai_error_pct"]))
                except (RuntimeError, ValueError, ImportError) as exc:
                    missing.setdefault("monai_dints", str(exc))
            rows.append(row)
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    ratios, units = {}, {}
    if errors:
        ratios["max_abs_error_pct"] = max(errors)
        ratios["median_abs_error_pct"] = statistics.median(errors)
        units.update(max_abs_error_pct="%", median_abs_error_pct="%")
    if monai_errors:
        ratios["monai_dints_max_abs_error_pct"] = max(monai_errors)
        units["monai_dints_max_abs_error_pct"] = "%"
    elif "dints" not in missing:
        missing.setdefault("monai_dints", "no dints candidate was evaluated")
    return {
        "ratios": ratios,
        "units": units,
        "details": {"candidates": len(rows), "patch": size, "rows": rows},
        "missing": missing,
    }


def _bar(enabled: bool, total: int):
    if not enabled or not total:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total, desc="memory_prediction candidates", unit="candidate", file=sys.stderr, leave=False, disable=None
    )


def _predict_96(device: str):
    """One prediction at 96^3 per call, cycling through the first candidates of each present space."""
    from nas3d_fast.profile import predict_training_memory

    found, _ = present_spaces()
    models = []
    for space in found.values():
        rng = np.random.default_rng(0)
        for _ in range(3):
            with torch.device("meta"):
                models.append((space.build(space.sample(rng), 1, NUM_CLASSES), (1, *_patch_for(space, SPEED_PATCH))))
    turn = [0]

    def step():
        model, shape = models[turn[0] % len(models)]
        turn[0] += 1
        predict_training_memory(model, shape, batch_size=1, num_classes=NUM_CLASSES, target="cpu", steps=STEPS)

    return step


def _no_space(device: str) -> str | None:
    found, missing = present_spaces()
    return None if found else f"no search space module in this build (missing: {', '.join(missing)})"


SUITE = Suite(
    name="memory_prediction",
    description="predicted vs CPU-measured training-step peak memory of random candidates of every space",
    cases=(Case("predict_96", _predict_96, "nas3d", ("cpu",), _no_space),),
    ratios=(Ratio("predict_seconds_per_candidate_96", "predict_96", "", kind="seconds"),),
    metrics=evaluate,
)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.memory_prediction [--quick] [--candidates N] [--patch P] [--json PATH]``:
    the error keys alone (no timing case), with every candidate's row."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_prediction")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--candidates", type=int, help=f"per space (default {CANDIDATES})")
    parser.add_argument("--patch", type=int, help=f"patch side (default {PATCH})")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    doc = evaluate(quick=args.quick, count=args.candidates, size=args.patch)
    for row in doc["details"]["rows"]:
        print(
            f"{row['space']:<9} {row['index']:>3} predicted {row['predicted_bytes'] / 2**20:9.1f} MiB  measured "
            f"{row['measured_bytes'] / 2**20:9.1f} MiB  error {row['error_pct']:+6.2f}%  "
            f"({row['predict_s']:.2f} s predicted, {row['measure_s']:.0f} s measured)"
            + (f"  MONAI {row['monai_error_pct']:+7.1f}%" if "monai_error_pct" in row else "")
        )
    for name, reason in doc["missing"].items():
        print(f"MISSING {name}: {reason}")
    print(json.dumps(doc["ratios"]), f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        from .run import write_json

        write_json(doc, args.json)


if __name__ == "__main__":
    main()
