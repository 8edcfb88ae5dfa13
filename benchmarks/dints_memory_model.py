"""How well the dints search's memory term knows a network's training peak: the package's fitted model
(``nas3d_fast.search.memory_model``, ``--memory-model predicted``) against MONAI's analytic formula
(``get_ram_cost_usage``, given its best single scale factor to bytes), both judged on held-out random
architectures against ``profile.predict_training_memory`` (which agrees with measured CUDA peaks; see the
memory_prediction suite). An accuracy check, not a timing: it prints one line per figure.

    python -m benchmarks.dints_memory_model --space-option num_blocks=12 --space-option num_depths=4 \\
        --space-option channel_mul=0.5 --patch 96 --batch-size 1 --target cuda
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from nas3d_fast import spaces
from nas3d_fast.profile.sample import candidate_memory
from nas3d_fast.search.dints import DintsCosts
from nas3d_fast.search.memory_model import calibrate
from nas3d_fast.spaces.cli import space_option
from nas3d_fast.train.losses import make_loss


def _ranks(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v))


def monai_usage(space, costs: DintsCosts, arch, shape) -> float:
    """MONAI's usage (MiB) of one architecture: its formula at (numerically) one-hot logits."""
    e = torch.tensor(arch.edges)
    a = torch.where(e > 0, 30.0, -30.0)
    c = torch.nn.functional.one_hot((e - 1).clamp(min=0), len(space.ops)).float() * 60.0 - 30.0
    return float(costs.usage(a, c, shape))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space-option", action="append", type=space_option, default=[])
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--target", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--samples", type=int, default=24, help="architectures of the fit")
    p.add_argument("--held-out", type=int, default=12, help="architectures it is judged on")
    args = p.parse_args(argv)
    space = spaces.get("dints", **dict(args.space_option))
    shape = (args.batch_size, 1, *(3 * [args.patch]))
    start = time.perf_counter()
    model = calibrate(space, space.supernet(1, 3), shape, num_classes=3, loss=make_loss("dice_ce"),
                      target=args.target, samples=args.samples, seed=0)
    fit_seconds = time.perf_counter() - start
    rng = np.random.default_rng(12345)
    test = [space.sample(rng) for _ in range(args.held_out)]
    peaks = np.array([candidate_memory(space, a, shape[1:], args.batch_size, num_classes=3, target=args.target)
                      .peak_bytes for a in test], dtype=np.float64)
    ours = np.array([model.predict(a.edges) for a in test])
    costs = DintsCosts(space)
    monai = np.array([monai_usage(space, costs, a, shape) for a in test])
    monai = monai * (monai @ peaks) / (monai @ monai)  # its best scale to bytes (least squares)
    rel = lambda v: np.abs(v - peaks) / peaks  # noqa: E731
    result = {
        "space_options": dict(args.space_option), "patch": args.patch, "batch_size": args.batch_size,
        "target": args.target, "fit_seconds": round(fit_seconds, 1), "fit": model.fit_stats,
        "held_out": args.held_out, "peak_mib_range": [peaks.min() / 2**20, peaks.max() / 2**20],
        "ours_mean_rel_error": float(rel(ours).mean()), "ours_max_rel_error": float(rel(ours).max()),
        "monai_scaled_mean_rel_error": float(rel(monai).mean()), "monai_scaled_max_rel_error": float(rel(monai).max()),
        "ours_rank_corr": float(np.corrcoef(_ranks(ours), _ranks(peaks))[0, 1]),
        "monai_rank_corr": float(np.corrcoef(_ranks(monai), _ranks(peaks))[0, 1]),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
