"""``nas3d search``: a dataset and a space in, ``RUN/arch.json`` out (registered in nas3d_fast/cli.py).

    nas3d data mni152 --out mni
    nas3d search --space dints --space-option num_blocks=4 --searcher gumbel --data mni --out run \\
        --patch 32 32 32 --time-budget 5
    nas3d train --space dints --space-option num_blocks=4 --arch run/arch.json --data mni --out trained

Options are named as in ``nas3d train``; rerunning the same command resumes the search.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from ..spaces.cli import space_option
from ..train.cli import add_data_arguments, data_settings
from ..train.losses import LOSSES
from ..train.optim import OPTIMIZERS, SCHEDULES
from .gumbel import TAU_SCHEDULES


_UNITS = {"": 2**20, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def memory_size(text: str) -> int:
    """A memory size in bytes (>= 0) from "8GiB", "300MiB", "2.5GB" or a bare number of MiB ("512")."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size: a number with a unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB; e.g. "
            f"8GiB) or a bare number of MiB")
    return int(round(float(m.group(1)) * _UNITS[m.group(2).lower()]))


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    from .run import SEARCHERS
    from .trials import EXECUTORS, TRIAL_SEARCHERS

    p.add_argument("--space", required=True,
                   help="search space (supernet searchers: dints, scnas, c2fnas, ronasmis; trial searchers: any)")
    p.add_argument("--searcher", required=True, choices=sorted(SEARCHERS) + sorted(TRIAL_SEARCHERS),
                   help="supernet searchers: gumbel (SCNAS's Gumbel search, any space with a supernet), dints "
                        "(MONAI's DiNTS, dints space), oneshot (single-path one-shot, ranked on inherited weights), "
                        "hypernet (HyperSegNAS: a Meta-Assistant Network, then a memory-constrained ranking; dints "
                        "space), enas (RONASMIS's controller); "
                        "trial searchers (each candidate trained on its own): random, "
                        "evolution (C2FNAS), predictor (T-AutoML's relation predictor), given (the candidates "
                        "another search ranked: --archs-from RUN)")
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
    s = p.add_argument_group("oneshot searcher (single-path one-shot; C2FNAS's fine stage on c2fnas with topology=)")
    s.add_argument("--candidates", type=int, default=20, help="architectures ranked on the inherited weights")
    s.add_argument("--eval-batches", type=int, default=4, help="batches of the architecture cases each is scored on")
    s.add_argument("--finetune-top", type=int, default=0, help="fine-tune the best N alone before picking (0: none)")
    s.add_argument("--finetune-steps", type=int, default=20, help="steps of each fine-tuning")
    s.add_argument("--finetune-lr", type=float, default=1e-3, help="Adam lr of the fine-tuning")
    s.add_argument("--proposer", choices=("random", "evolution"), default="random",
                   help="how the ranked candidates are chosen (evolution: C2FNAS's, told each inherited-weight Dice)")
    m = p.add_argument_group("memory budget (oneshot, hypernet: the ranked candidates; enas: the resource target; "
                             "dints: with --memory-model predicted)")
    m.add_argument("--memory-budget", type=memory_size, metavar="SIZE",
                   help="training-step peak to stay within, e.g. 8GiB or 300MiB (a bare number is MiB); the "
                        "oneshot and hypernet candidates are drawn inside [SIZE - --tolerance, SIZE]")
    m.add_argument("--tolerance", type=memory_size, metavar="SIZE",
                   help="how far below the budget a candidate may stay (default 300MiB, HyperSegNAS's window, or "
                        "the whole budget if smaller)")
    m.add_argument("--target", choices=("cuda", "cpu"),
                   help="the device whose allocator the peak is predicted for (required with --memory-budget)")
    s = p.add_argument_group("hypernet searcher (HyperSegNAS; also the oneshot options above)")
    s.add_argument("--w-fixed", type=float, default=0.5, help="the constant channel weight annealed to (paper: 0.5)")
    s.add_argument("--anneal-steps", type=int,
                   help="steps of the annealing at the end of the training (default a ninth of the steps, as the "
                        "paper's 20,000 of 180,000)")
    s.add_argument("--man-lr", type=float, default=1e-3, help="Adam lr of the Meta-Assistant Network")
    s.add_argument("--encoder-width", type=int, default=16, help="the MAN image encoder's first width")
    s.add_argument("--image-dim", type=int, default=256, help="the image vector's size (paper: 256)")
    s.add_argument("--hyper-hidden", type=int, default=256, help="the HyperNet's hidden units")
    s = p.add_argument_group("enas searcher (RONASMIS: an LSTM controller, children sharing the supernet)")
    s.add_argument("--children", type=int, default=4, help="children scored per controller step (RONASMIS: 20)")
    s.add_argument("--controller-lr", type=float, default=3.5e-4, help="Adam lr of the controller (ENAS: 3.5e-4)")
    s.add_argument("--entropy-weight", type=float, default=1e-4, help="entropy bonus of the controller loss")
    s.add_argument("--resource", choices=("memory", "flops"),
                   help="reward = Dice * (cost / --resource-target) ** --resource-weight (MnasNet's factor)")
    s.add_argument("--resource-target", type=float, metavar="BYTES_OR_FLOPS",
                   help="the children's target predicted training peak (bytes) or FLOPs of one patch")
    s.add_argument("--resource-weight", type=float, default=-0.07, help="the resource factor's exponent (<= 0)")
    s = p.add_argument_group("dints searcher")
    s.add_argument("--warmup-epochs", type=int,
                   help="epochs of weight training only (dints default: half the epochs; enas: 0)")
    s.add_argument("--ram-cost-factor", type=float, default=0.8,
                   help="target memory of the found network as a fraction of the supernet's (MONAI: 0.8)")
    s.add_argument("--sample-ops", action="store_true", help="two ops per edge by gumbel_topk instead of all")
    s.add_argument("--memory-model", choices=("analytic", "predicted"), default="analytic",
                   help="the memory term's usage: MONAI's formula, or fitted to the package's predicted training "
                        "peak of sampled networks (beyond MONAI)")
    s.add_argument("--memory-samples", type=int, default=24, help="networks predicted for the fit (default 24)")
    t = p.add_argument_group("trial searchers (random, evolution, predictor)")
    t.add_argument("--trials", type=int, default=20, help="candidates to train (a rerun with more extends the search)")
    t.add_argument("--trial-steps", type=int, default=200, help="training steps of each trial")
    t.add_argument("--trial-validations", type=int, default=1,
                   help="validations in a trial's training (its score is the best one's mean Dice; default 1: at the end)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="trials' optimiser, as in nas3d train")
    t.add_argument("--lr", type=float, default=1e-3, help="trials' learning rate, as in nas3d train")
    t.add_argument("--schedule", choices=SCHEDULES, default="poly", help="trials' schedule, as in nas3d train")
    t.add_argument("--max-val-cases", type=int, help="validate trials on at most this many cases")
    t.add_argument("--halving-eta", type=int, default=0,
                   help="successive halving: promote the top 1/ETA of each rung to ETA times the steps (0: off)")
    t.add_argument("--halving-rungs", type=int, default=3, help="successive halving: budgets in all")
    t.add_argument("--archs-from", metavar="RUN",
                   help="with --searcher given: train the candidates the oneshot or hypernet search RUN ranked, "
                        "for nas3d search rank RUN --against this run")
    t.add_argument("--memory-limit", type=float, metavar="MIB",
                   help="only candidates whose predicted training-step peak is at most this (MiB)")
    t.add_argument("--measure-memory", action="store_true", help="also measure each trial's training-step peak")
    t.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: in this process (or --trial-workers processes); ray: Ray tasks (pip install "
                        "'nas3d_fast[ray]')")
    t.add_argument("--trial-workers", type=int,
                   help="trials at once (local: processes, default 1 = in-process; ray: default what the cluster "
                        "holds). --workers is the DataLoader's, as in nas3d train")
    t.add_argument("--ray-address", help="join this Ray cluster (e.g. auto, ray://HEAD:10001); default: a local Ray")
    t.add_argument("--cpus-per-trial", type=float, default=1.0, help="Ray CPUs per trial (fractions allowed)")
    t.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="Ray GPUs per trial (fractions pack small candidates on one GPU)")
    t.add_argument("--max-retries", type=int, default=2, help="retries of a trial whose worker died")
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
    from .trials import TRIAL_SEARCHERS

    if args.searcher in TRIAL_SEARCHERS:
        return run_trial_search(args)
    try:
        if args.archs_from is not None:
            raise ValueError("--archs-from RUN goes with --searcher given (a trial search)")
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
        elif args.searcher == "enas":
            options = {"children": args.children, "warmup_epochs": args.warmup_epochs or 0,
                       "controller_lr": args.controller_lr, "entropy_weight": args.entropy_weight,
                       "resource": args.resource, "resource_target": args.resource_target,
                       "resource_weight": args.resource_weight}
            if args.memory_budget is not None:  # the budget is the memory resource's target
                if args.resource not in (None, "memory") or args.resource_target is not None:
                    raise ValueError("--memory-budget with enas is the memory resource's target: give either it "
                                     "or --resource/--resource-target")
                if args.target is None:
                    raise ValueError("--memory-budget needs --target (cuda or cpu: the allocator predicted)")
                options.update(resource="memory", resource_target=float(args.memory_budget),
                               memory_target=args.target)
        elif args.searcher in ("oneshot", "hypernet"):
            options = {"candidates": args.candidates, "eval_batches": args.eval_batches,
                       "finetune_top": args.finetune_top, "finetune_steps": args.finetune_steps,
                       "finetune_lr": args.finetune_lr, "proposer": args.proposer,
                       "memory_budget": args.memory_budget, "tolerance": args.tolerance, "target": args.target}
            if args.searcher == "hypernet":
                options.update(w_fixed=args.w_fixed, anneal_steps=args.anneal_steps, man_lr=args.man_lr,
                               encoder_width=args.encoder_width, image_dim=args.image_dim, hidden=args.hyper_hidden)
        else:
            options = {"warmup_epochs": args.warmup_epochs, "ram_cost_factor": args.ram_cost_factor,
                       "sample_ops": args.sample_ops, "memory_model": args.memory_model,
                       "memory_budget_mib": None if args.memory_budget is None else args.memory_budget / 2**20,
                       "memory_samples": args.memory_samples, "memory_target": args.target}
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
        + (f"; best of {len(summary['ranking'])} candidates on the inherited weights: mean Dice "
           f"{summary['ranking'][0]['inherited_dice']:.4f}" if summary.get("ranking")
           else f"; architecture entropy {summary['entropy']:.3f} nats")
    )
    print(f"architecture: {summary['arch_path']} (train it with nas3d train --arch {summary['arch_path']})")
    return 0


def run_trial_search(args) -> int:
    from .trials import TrialSearchConfig, trial_search

    try:
        searcher_options = None
        if (args.searcher == "given") != (args.archs_from is not None):
            raise ValueError("--searcher given and --archs-from RUN go together (the given architectures are "
                             "those RUN ranked)")
        if args.archs_from is not None:
            from ..spaces import base
            from .trials.given import ranked_archs

            searcher_options = {"archs": ranked_archs(args.archs_from, base.get(args.space, **dict(args.space_option)))}
        if args.no_resume and os.path.exists(os.path.join(args.out, "trials.db")):
            raise ValueError(f"{args.out} holds a trial search; --no-resume would discard it: use another --out")
        config = TrialSearchConfig(
            trials=args.trials,
            trial_steps=args.trial_steps,
            halving_eta=args.halving_eta,
            halving_rungs=args.halving_rungs,
            executor=args.executor,
            workers=args.trial_workers,
            ray_address=args.ray_address,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            max_retries=args.max_retries,
            time_budget=args.time_budget,
            progress=not args.quiet,
        )
        train = {
            "epochs": args.trial_validations,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "schedule": args.schedule,
            "loss": args.loss,
            "amp": not args.no_amp,
            "checkpoint_every": args.checkpoint_every,
            "device": args.device,
            "progress": False,
        }
        if args.trial_validations < 1:
            raise ValueError(f"--trial-validations must be >= 1, got {args.trial_validations}")
        summary = trial_search(
            args.space,
            args.searcher,
            args.data,
            args.out,
            config,
            data_settings(args, max_val_cases=args.max_val_cases),
            train,
            space_options=dict(args.space_option),
            searcher_options=searcher_options,
            seed=args.seed,
            memory_budget_mib=args.memory_limit,
            measure_memory=args.measure_memory,
        )
    except (ValueError, OSError) as exc:
        print(f"nas3d search: error: {exc}", file=sys.stderr)
        return 2
    counts = summary["trials"]
    print(f"trials: {counts['done']} done, {counts['failed']} failed in {summary['search_seconds']:.0f} s"
          + (" (time budget reached)" if summary["stopped_by_time_budget"] else "")
          + (" (every architecture of the space was tried)" if summary["space_exhausted"] else ""))
    best = summary["best"]
    if best is None:
        print("no trial reached a validation score; no architecture written", file=sys.stderr)
        return 1
    print(f"best: trial {best['id']}, mean Dice {best['score']:.4f} (rung {best['rung']}, {best['budget']} steps)")
    print(f"architecture: {summary['arch_path']} (train it with nas3d train --arch {summary['arch_path']})")
    return 0


def status_main(argv: list[str]) -> int:
    """``nas3d search status RUN [--json]``."""
    import json

    from .trials import status

    p = argparse.ArgumentParser(prog="nas3d search status", description="the state of a trial search's store: "
                                "trials by state, the best so far, the Pareto front of Dice against memory")
    p.add_argument("run", metavar="RUN", help="the search's run folder")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    args = p.parse_args(argv)
    try:
        info = status(args.run)
    except (ValueError, OSError) as exc:
        print(f"nas3d search status: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    counts = info["trials"]
    print(f"{info['run']}: {info['searcher']} search of {info['space']}")
    print("trials: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    for t in info["running"]:
        print(f"  running: trial {t['id']} on {t['worker']} (attempt {t['attempts']})")
    best = info["best"]
    print("best: " + ("-" if best is None else f"trial {best['id']}, mean Dice {best['score']:.4f} "
                      f"(rung {best['rung']}, {best['budget']} steps)"))
    if info["pareto_front"]:
        print("Pareto front (mean Dice vs predicted training peak):")
        for t in info["pareto_front"]:
            print(f"  trial {t['id']:>5}: Dice {t['score']:.4f}  {t['predicted_memory'] / 2**20:9.1f} MiB  "
                  f"{t['params']} parameters")
    return 0
