"""``nas3d profile``: training-step memory of a space's candidates, predicted and/or measured.

    nas3d profile --space dints --sample 5 --patch 96 96 96 --batch 2
    nas3d profile --space dints --arch arch.json --patch 96 96 96 --batch 2 --mode both --device cpu
    nas3d profile --space ronasmis --space-option base_channels=8 --arch default --patch 64 64 64 --batch 2 --budget 8GiB
    nas3d profile --space dints --sample 5 --patch 96 96 96 --batch 2 --budget 8GiB --tolerance 500MiB
    nas3d profile --space dints --calibrate --sample 8 --patch 64 64 64 --batch 1   (on a CUDA machine)

One row per candidate: parameters, forward FLOPs (``space.cost``, batch 1), predicted peak (for
``--target``), measured peak (on ``--device``), and the prediction's error against the measurement.
``--space-option`` and ``--arch`` (a JSON file, ``default`` or ``random[:SEED]``) read as in ``nas3d train``, so
the candidate a training run trains is the one profiled. With ``--budget``, ``--sample`` draws candidates
within the budget, and ``--arch`` says whether that one architecture fits it (``within_budget``, judged by
the measured peak where there is one, else the predicted).
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np
import torch

from .._atomic import write_json
from ..spaces.cli import read_arch, space_option

MiB = 2**20
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
}


def parse_bytes(text: str) -> int:
    """'8589934592', '8GiB', '8 GB', '500MiB' -> bytes (KB/MB/GB are powers of 10, KiB/MiB/GiB of 2)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a number of bytes such as 8589934592, 8GiB or 500MB, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {text!r}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="training-step peak memory of a space's candidates (predicted and/or measured)",
        description=__doc__.split("\n\n")[0] + " See nas3d_fast/profile for what is counted.",
    )
    p.add_argument("--space", required=True, help="search space name (nas3d_fast.spaces.names())")
    p.add_argument(
        "--space-option",
        action="append",
        type=space_option,
        default=[],
        metavar="KEY=VALUE",
        help="space constructor option, as in nas3d train (value parsed as JSON when it can be); repeatable",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--arch",
        metavar="ARCH.json",
        help="one architecture: a JSON file (nas3d-arch-1), default (the space's default_arch), or random[:SEED]",
    )
    which.add_argument("--sample", type=int, metavar="N", help="N random candidates")
    p.add_argument("--patch", type=int, nargs=3, required=True, metavar=("X", "Y", "Z"), help="input patch size")
    p.add_argument("--batch", type=int, required=True, metavar="B", help="batch size")
    p.add_argument("--channels", type=int, default=1, help="input channels (default 1)")
    p.add_argument("--classes", type=int, default=2, help="output classes (default 2)")
    p.add_argument("--mode", choices=("predict", "measure", "both"), default="predict")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where to measure (default: cuda if present, else cpu)")
    p.add_argument("--target", choices=("cuda", "cpu"), help="allocator to predict for (default: the device)")
    p.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd"))
    p.add_argument("--loss", default="dice_ce", choices=("dice_ce", "ce"))
    p.add_argument("--amp", action="store_true", help="autocast the forward")
    p.add_argument("--steps", type=int, default=3, help="training steps per measurement (default 3)")
    p.add_argument(
        "--budget",
        type=parse_bytes,
        metavar="BYTES",
        help="peak budget (8GiB, ...): --sample draws only candidates within it; --arch reports whether it fits",
    )
    p.add_argument(
        "--tolerance",
        type=parse_bytes,
        default=300 * MiB,
        metavar="BYTES",
        help="with --budget: how far below the budget a candidate may be (default 300MiB)",
    )
    p.add_argument(
        "--max-tries", type=int, default=100, help="with --budget: candidates drawn per sample (default 100)"
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="CUDA only: measure and predict --sample N candidates and print measured against predicted",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        rows, settings = _rows(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"nas3d profile: error: {exc}", file=sys.stderr)
        return 2
    print(format_rows(rows, settings))
    if args.calibrate:
        print(_calibration_summary(rows))
    if args.json:
        write_json({"settings": settings, "rows": rows}, args.json)
        print(f"wrote {args.json}")
    return 0


def _rows(args) -> tuple[list[dict], dict]:
    from .. import spaces
    from .sample import candidate_memory, sample_within

    try:
        space = spaces.get(args.space, **dict(args.space_option))
    except ImportError as exc:
        raise RuntimeError(f"space {args.space!r} is known but its module is missing from this build ({exc})") from exc
    except TypeError as exc:  # an option the space's constructor does not take
        raise ValueError(f"--space-option: {exc}") from exc
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.channels < 1 or args.classes < 2:
        raise ValueError(f"--channels must be >= 1 and --classes >= 2, got {args.channels} and {args.classes}")
    space.check_patch(args.patch)
    if args.sample is not None and args.sample < 1:
        raise ValueError(f"--sample must be >= 1, got {args.sample}")
    if args.calibrate:
        if not torch.cuda.is_available():
            raise RuntimeError("--calibrate measures on the GPU: torch sees no CUDA device here")
        if args.sample is None:
            raise ValueError("--calibrate needs --sample N")
        args.mode, args.device, args.target = "both", "cuda", "cuda"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and args.mode != "predict" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device here")
    target = args.target or device
    shape = (args.channels, *args.patch)
    step = {"loss": args.loss, "optimizer": args.optimizer, "amp": args.amp, "steps": args.steps}
    rng = np.random.default_rng(args.seed)
    archs = [read_arch(space, args.arch)] if args.arch else None
    count = 1 if archs else args.sample
    settings = {
        "space": args.space,
        "space_options": dict(space.options),
        "patch": list(args.patch),
        "batch": args.batch,
        "channels": args.channels,
        "classes": args.classes,
        "mode": args.mode,
        "device": device,
        "target": target,
        **step,
    }
    if args.budget is not None:
        settings.update(budget_bytes=args.budget, tolerance_bytes=args.tolerance)
    rows = []
    for i in _progress(range(count), args.quiet, f"profiling {args.space}"):
        predicted = None
        if archs:
            arch = archs[i]
        elif args.budget is not None:
            mode = "measure" if args.mode == "measure" else "predict"
            arch, found = sample_within(
                space,
                args.budget,
                shape,
                args.batch,
                rng,
                tolerance=args.tolerance,
                mode=mode,
                max_tries=args.max_tries,
                num_classes=args.classes,
                target=target,
                device=device,
                return_report=True,
                **step,
            )
            predicted = found if mode == "predict" else None
        else:
            arch = space.sample(rng)
        cost = space.cost(arch, shape, num_classes=args.classes)
        row = {"arch": arch.to_dict(), "params": cost.params, "flops": cost.flops}
        if args.mode in ("predict", "both"):
            predicted = predicted or candidate_memory(
                space, arch, shape, args.batch, num_classes=args.classes, mode="predict", target=target, **step
            )
            row["predicted"] = predicted.to_dict()
        if args.mode in ("measure", "both"):
            torch.manual_seed(args.seed + i)
            measured = candidate_memory(
                space, arch, shape, args.batch, num_classes=args.classes, mode="measure", device=device, **step
            )
            row["measured"] = measured.to_dict()
        if "predicted" in row and "measured" in row and target == torch.device(device).type:
            m, p = row["measured"]["peak_bytes"], row["predicted"]["peak_bytes"]
            row["error_pct"] = 100.0 * (p - m) / m
        if archs and args.budget is not None:
            peak = (row.get("measured") or row["predicted"])["peak_bytes"]
            row["within_budget"] = bool(peak <= args.budget)
        rows.append(row)
    return rows, settings


def _progress(items, quiet: bool, what: str):
    if quiet:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is an optional dependency (the demo extra): no bar then
        return items
    return tqdm(items, desc=what, unit="candidate", file=sys.stderr, leave=False, disable=None)


def format_rows(rows: list[dict], settings: dict) -> str:
    sides = []
    if settings["mode"] in ("predict", "both"):
        sides.append(f"predicted for {settings['target']}")
    if settings["mode"] in ("measure", "both"):
        sides.append(f"measured on {settings['device']}")
    head = (
        f"space {settings['space']}, patch {tuple(settings['patch'])}, batch {settings['batch']}, "
        f"{settings['optimizer']}, loss {settings['loss']}; {', '.join(sides)}"
    )
    lines = [head, f"{'#':>3} {'params':>12} {'GFLOPs':>9} {'predicted MiB':>14} {'measured MiB':>13} {'error %':>8}"]
    for i, r in enumerate(rows):
        pred = f"{r['predicted']['peak_bytes'] / MiB:.1f}" if "predicted" in r else "-"
        meas = f"{r['measured']['peak_bytes'] / MiB:.1f}" if "measured" in r else "-"
        err = f"{r['error_pct']:+.2f}" if "error_pct" in r else "-"
        lines.append(f"{i:>3} {r['params']:>12,} {r['flops'] / 1e9:>9.2f} {pred:>14} {meas:>13} {err:>8}")
        if "within_budget" in r:
            verdict = "within" if r["within_budget"] else "OVER"
            lines.append(f"    {verdict} the budget of {settings['budget_bytes'] / MiB:.1f} MiB")
    return "\n".join(lines)


def _calibration_summary(rows: list[dict]) -> str:
    errors = [abs(r["error_pct"]) for r in rows if "error_pct" in r]
    if not errors:
        return "calibration: no candidate was both measured and predicted"
    return (
        f"calibration over {len(errors)} candidates: median |error| {float(np.median(errors)):.2f}%, "
        f"max |error| {max(errors):.2f}% (measured max_memory_allocated vs the caching-allocator model; "
        f"cuDNN workspaces are not modelled)"
    )
