"""Run a benchmark suite side by side with its baselines: ``python -m benchmarks.run SUITE``.

Time: each case and its baseline run in turns in this process (median of repeats after warm-up).
Memory: each case runs in a fresh subprocess, and its peak above what was live before it is recorded,
the same way for both sides. Prints a table and writes JSON::

    {"suite": str, "machine": {...}, "cases": {NAME: {"median_s": float, "peak_mib": float|null}},
     "ratios": {KEY: float}}

where a speedup is baseline time / nas3d time and a memory ratio is nas3d peak / baseline peak.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys

import torch

from nas3d_fast import _atomic

from .core import Suite, peak_memory_mib, time_interleaved

SUITES = (
    "gumbel",
    "mixed_edge",
    "sliding_window",
    "axial_attention",
    "supernet",
    "memory_prediction",
    "conv_route",
    "upsample",
    "search_step",
    "compile",
    "trial_overhead",
)


def load_suite(name: str) -> Suite:
    if name not in SUITES:
        raise SystemExit(f"unknown suite {name!r}; suites: {', '.join(SUITES)}")
    return importlib.import_module(f"benchmarks.{name}").SUITE


def machine_info() -> dict:
    import nas3d_fast

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "nas3d_fast": nas3d_fast.__version__,
        "backends": {n: s.usable for n, s in nas3d_fast.backends().items()},
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _case_key(case_name: str, device: str) -> str:
    return case_name if device == "cpu" else f"{case_name}@{device}"


def _measure_peak_in_subprocess(suite: str, case: str, device: str) -> float | None:
    cmd = [sys.executable, "-m", "benchmarks.run", suite, "--peak-of", case, "--device", device]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # glibc serves allocations >= 64 KiB by mmap and returns them on free, so the resident set follows
    # the live tensors (not malloc's free lists) and VmHWM is their peak; both sides run alike.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory run of {case} failed:\n{done.stderr[-2000:]}")
    value = json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]
    return value


def _pairs(suite: Suite, names: list[str]) -> list[list[str]]:
    """Groups timed together: the cases each ratio compares (cases shared by two ratios join one
    group), so a big case's aftermath (warm worker threads, a flushed cache) never lands on a small
    one; then any case left, alone."""
    groups: list[list[str]] = []
    for ratio in suite.ratios:
        members = [n for n in (ratio.case, ratio.baseline) if n in names]
        hit = [g for g in groups if any(m in g for m in members)]
        merged = [n for g in hit for n in g] + [m for m in members if not any(m in g for g in hit)]
        groups = [g for g in groups if g not in hit] + ([merged] if merged else [])
    grouped = {n for g in groups for n in g}
    return groups + [[n] for n in names if n not in grouped]


def run_suite(
    suite: Suite, quick: bool = False, repeats: int | None = None, memory: bool = True, progress: bool = True
) -> dict:
    """Measure every runnable case of ``suite`` on every device here; returns the JSON document."""
    repeats = repeats or (5 if quick else 21)
    selected = [c for c in suite.cases if not quick or not suite.quick_cases or c.name in suite.quick_cases]
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for device in _devices():
        runnable = {}
        for case in selected:
            if device not in case.devices:
                continue
            reason = case.skip_reason(device)
            if reason:
                skipped[_case_key(case.name, device)] = reason
            else:
                runnable[case.name] = case
        for group in _pairs(suite, list(runnable)):
            fns = {name: runnable[name].make(device) for name in group}
            bar = _progress(progress, total=repeats, what=f"{' vs '.join(group)} on {device}")
            medians = time_interleaved(fns, device, repeats, progress=bar.update if bar else None)
            if bar:
                bar.close()
            del fns
            for name, median in medians.items():
                peak = _measure_peak_in_subprocess(suite.name, name, device) if memory else None
                results[_case_key(name, device)] = {
                    "median_s": median,
                    "peak_mib": peak,
                    "device": device,
                    "side": runnable[name].side,
                }
    ratios = {}
    for device in _devices():
        suffix = "" if device == "cpu" else f"@{device}"
        for ratio in suite.ratios:
            a = results.get(_case_key(ratio.case, device))
            b = results.get(_case_key(ratio.baseline, device))
            if a and ratio.kind == "seconds":
                ratios[ratio.key + suffix] = a["median_s"]
                continue
            if not a or not b:
                continue
            if ratio.kind == "speedup":
                ratios[ratio.key + suffix] = b["median_s"] / a["median_s"]
            elif a["peak_mib"] and b["peak_mib"]:
                ratios[ratio.key + suffix] = a["peak_mib"] / b["peak_mib"]
    doc = {
        "suite": suite.name,
        "description": suite.description,
        "machine": machine_info(),
        "cases": results,
        "ratios": ratios,
        "skipped": skipped,
    }
    if suite.metrics is not None:
        extra = suite.metrics(quick)
        ratios.update(extra.get("ratios", {}))
        doc["units"] = {**{r.key: "s" for r in suite.ratios if r.kind == "seconds"}, **extra.get("units", {})}
        doc["details"] = extra.get("details", {})
        doc["missing"] = extra.get("missing", {})
    return doc


class _Bar:
    def __init__(self, total: int, what: str):
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=what, unit="round", file=sys.stderr, leave=False, disable=None)

    def update(self, done: int) -> None:
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def _progress(enabled: bool, total: int, what: str):
    if not enabled:
        return None
    try:
        return _Bar(total, what)
    except ImportError:
        return None


def format_table(doc: dict) -> str:
    lines = [f"suite {doc['suite']}: {doc.get('description', '')}", f"{'case':<32} {'median':>12} {'peak MiB':>10}"]
    for name, r in doc["cases"].items():
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        lines.append(f"{name:<32} {r['median_s'] * 1e6:>10.1f}us {peak:>10}")
    for name, reason in doc.get("skipped", {}).items():
        lines.append(f"{name:<32} skipped: {reason}")
    for name, reason in doc.get("missing", {}).items():
        lines.append(f"{name:<32} MISSING: {reason}")
    lines.append("")
    units = doc.get("units", {})
    for key, value in doc["ratios"].items():
        lines.append(f"{key:<32} {value:>10.2f}{units.get(key, 'x')}")
    return "\n".join(lines)


def write_json(doc: dict, path: str) -> None:
    """Written to a temporary name beside ``path`` and renamed, so a crash never leaves half a file."""
    _atomic.write_json(doc, path)


def write_plot(doc: dict, path: str) -> None:
    """A bar chart of the median times (log scale), nas3d and baseline side by side, ratios in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["cases"])
    times = [doc["cases"][n]["median_s"] * 1e3 for n in names]
    sides = [doc["cases"][n].get("side", "") for n in names]
    colors = ["tab:green" if side == "nas3d" else "tab:gray" if side != "floor" else "lightgray" for side in sides]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names)), 4.0))
    ax.bar(range(len(names)), times, color=colors)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("median time per call (ms)")
    ratios = "\n".join(f"{k}: {v:.2f}x" for k, v in doc["ratios"].items())
    ax.set_title(f"{doc['suite']} ({doc['machine']['processor']})\n{ratios}", fontsize=8)
    fig.tight_layout()
    with _atomic.atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", help=f"one of: {', '.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and only the suite's quick cases")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--plot", metavar="PATH", help="write a bar chart of the results as PNG to PATH")
    parser.add_argument("--repeats", type=int, help="timed rounds per case (default 21, 5 with --quick)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--peak-of", metavar="CASE", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    suite = load_suite(args.suite)
    if args.peak_of:  # child process of a peak-memory measurement
        fn = suite.case(args.peak_of).make(args.device)
        print(json.dumps({"peak_mib": peak_memory_mib(fn, args.device)}))
        return 0
    doc = run_suite(suite, quick=args.quick, repeats=args.repeats, memory=not args.no_memory)
    print(format_table(doc))
    if args.json:
        write_json(doc, args.json)
        print(f"\nwrote {args.json}")
    if args.plot:
        write_plot(doc, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
