"""``nas3d search``: a dataset and a space in, ``RUN/arch.json`` out (registered in nas3d_fast/cli.py).

    nas3d data mni152 --out mni
    nas3d search --space dints --space-option num_blocks=4 --searcher gumbel --data mni --out run \\
        --patch 32 32 32 --time-budget 5
    nas3d train --space dints --space-option num_blocks=4 --arch run/arch.json --data mni --out trained

Options are named as in ``nas3d train``; rerunning the same command resumes the search.
"""

from __future__ import annotations

import argparse
import sys

from ..spaces.cli import space_option
from ..train.cli import add_data_arguments, data_settings
from ..train.losses import LOSSES
from .gumbel import TAU_SCHEDULES


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    from .run import SEARCHERS

    p.add_argument("--space", required=True, help="search space with a supernet (dints, scnas, c2fnas, ronasmis)")
    p.add_argument("--searcher", required=True, choices=sorted(SEARCHERS),
                   help="gumbel: SCNAS's Gumbel search (any space with a supernet); dints: MONAI's DiNTS (dints space)")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder in MSD layout (dataset.json ...)")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (checkpoint, logs, arch.json, report)")
    p.add_argument("--space-option", action="append", type=space_option, default=[], metavar="KEY=VALUE",
                   help="space constructor option, as in nas3d train; repeatable")
    p.add_argument("--supernet-option", action="append", type=space_option, default=[], metavar="KEY=VALUE",
                   help="supernet option (e.g. norm=shared on dints); repeatable")
    g = p.add_argument_group("budget and optimisation")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--steps-per-epoch", type=int, default=50)
    g.add_argument("--time-budget", type=float, metavar="MINUTES", help="stop after this much wall-clock time")
    g.add_argument("--weight-lr", type=float, default=0.025, help="Adam lr of the supernet weights (SCNAS: 0.025)")
    g.add_argument("--arch-lr", type=float, default=0.003, help="Adam lr of the architecture logits (SCNAS: 0.003)")
    g.add_argument("--plateau-epochs", type=int, default=20, help="epochs without progress before lr /= 10")
    g.add_argument("--loss", choices=list(LOSSES), default="dice_ce")
    g.add_argument("--seed", type=int, default=0)
    s = p.add_argument_group("gumbel searcher")
    s.add_argument("--k", type=int, default=2, help="candidates sampled per edge (SCNAS: 2)")
    s.add_argument("--tau-start", type=float, default=1.0, help="first temperature")
    s.add_argument("--tau-end", type=float, default=0.1, help="last temperature")
    s.add_argument("--tau-schedule", choices=TAU_SCHEDULES, default="exponential")
    s = p.add_argument_group("dints searcher")
    s.add_argument("--warmup-epochs", type=int, help="epochs of weight training only (default: half the epochs)")
    s.add_argument("--ram-cost-factor", type=float, default=0.8,
                   help="target memory of the found network as a fraction of the supernet's (MONAI: 0.8)")
    s.add_argument("--sample-ops", action="store_true", help="two ops per edge by gumbel_topk instead of all")
    s.add_argument("--memory-model", choices=("analytic", "predicted"), default="analytic",
                   help="the memory term's usage: MONAI's formula, or fitted to the package's predicted training "
                        "peak of sampled networks (beyond MONAI)")
    s.add_argument("--memory-budget", type=float, metavar="MIB",
                   help="with --memory-model predicted: the found network's training peak to aim at, in MiB "
                        "(instead of --ram-cost-factor)")
    s.add_argument("--memory-samples", type=int, default=24, help="networks predicted for the fit (default 24)")
    add_data_arguments(p)
    c = p.add_argument_group("checkpoints")
    c.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every this many steps (default: at epoch ends only)")
    c.add_argument("--no-resume", action="store_true", help="start afresh even if RUN/checkpoint.pt exists")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_search(args) -> int:
    from .base import SearchConfig
    from .run import search

    try:
        config = SearchConfig(
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            time_budget=args.time_budget,
            weight_lr=args.weight_lr,
            arch_lr=args.arch_lr,
            plateau_epochs=args.plateau_epochs,
            loss=args.loss,
            seed=args.seed,
            amp=not args.no_amp,
            checkpoint_every=args.checkpoint_every,
            device=args.device,
            progress=not args.quiet,
        )
        if args.searcher == "gumbel":
            options = {"k": args.k, "tau_start": args.tau_start, "tau_end": args.tau_end,
                       "tau_schedule": args.tau_schedule}
        else:
            options = {"warmup_epochs": args.warmup_epochs, "ram_cost_factor": args.ram_cost_factor,
                       "sample_ops": args.sample_ops, "memory_model": args.memory_model,
                       "memory_budget_mib": args.memory_budget, "memory_samples": args.memory_samples}
        summary = search(
            args.space,
            args.searcher,
            args.data,
            args.out,
            config,
            data_settings(args),
            space_options=dict(args.space_option),
            searcher_options=options,
            supernet_options=dict(args.supernet_option),
            resume=not args.no_resume,
        )
    except (ValueError, OSError) as exc:
        print(f"nas3d search: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"steps {summary['steps']}/{summary['total_steps']} in {summary['search_seconds']:.0f} s"
        + (" (time budget reached)" if summary["stopped_by_time_budget"] else "")
        + f"; architecture entropy {summary['entropy']:.3f} nats"
    )
    print(f"architecture: {summary['arch_path']} (train it with nas3d train --arch {summary['arch_path']})")
    return 0
