"""Arguments of ``nas3d train`` and the command itself (registered in nas3d_fast/cli.py)."""

from __future__ import annotations

import argparse
import sys

from ..spaces.cli import space_option
from .losses import LOSSES
from .optim import OPTIMIZERS, SCHEDULES


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="search space name (e.g. ronasmis)")
    p.add_argument(
        "--arch",
        required=True,
        metavar="ARCH.json",
        help="architecture JSON file, default (the space's default_arch), or random[:SEED]",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder in MSD layout (dataset.json ...)")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (checkpoints, logs, best model)")
    p.add_argument(
        "--space-option",
        action="append",
        type=space_option,
        default=[],
        metavar="KEY=VALUE",
        help="space constructor option (value parsed as JSON when it can be); repeatable",
    )
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--steps-per-epoch", type=int, default=100)
    g.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="stop after this much wall-clock time (then validate and save); the learning-rate "
        "schedule follows time or steps, whichever is further along",
    )
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--schedule", choices=SCHEDULES, default="poly")
    g.add_argument("--warmup-steps", type=int, default=0)
    g.add_argument("--warmup-start", type=float, default=0.1, help="first warm-up lr as a fraction of --lr")
    g.add_argument("--milestones", type=int, nargs="*", default=[], help="multistep: steps where lr *= --gamma")
    g.add_argument("--gamma", type=float, default=0.5)
    g.add_argument("--loss", choices=list(LOSSES), default="dice_ce")
    g.add_argument("--seed", type=int, default=0)
    add_data_arguments(p)
    v = p.add_argument_group("validation and checkpoints")
    v.add_argument("--val-every", type=int, default=1, help="epochs between validations")
    v.add_argument("--max-val-cases", type=int, help="validate on at most this many cases (0: no validation)")
    v.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap")
    v.add_argument("--sw-batch-size", type=int, default=2)
    v.add_argument("--nsd-tolerance", type=float, default=2.0, metavar="MM")
    v.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="also checkpoint every this many steps (default: at epoch ends only)",
    )
    v.add_argument("--no-resume", action="store_true", help="start afresh even if RUN/checkpoint.pt exists")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The data options of ``nas3d train`` (and ``nas3d search``, named alike): patch, batch, preprocessing,
    augmentation, fold, workers; read back by :func:`data_settings`."""
    d = p.add_argument_group("data")
    d.add_argument(
        "--patch",
        type=int,
        nargs=3,
        default=[64, 64, 64],
        metavar=("X", "Y", "Z"),
        help="training patch and validation window (voxels)",
    )
    d.add_argument("--batch-size", type=int, default=2)
    d.add_argument(
        "--spacing",
        type=float,
        nargs="+",
        metavar="MM",
        help="resample to this spacing (one value or three; default: keep each image's grid)",
    )
    d.add_argument(
        "--intensity",
        choices=["zscore", "zscore-nonzero", "ct", "none"],
        default="zscore",
        help="zscore (MRI, whole image), zscore-nonzero (statistics of non-zero voxels), ct (clip to "
        "--ct-window and scale to [0, 1]), none",
    )
    d.add_argument("--ct-window", type=float, nargs=2, default=[-1000.0, 1000.0], metavar=("LOW", "HIGH"))
    d.add_argument("--crop-nonzero", action="store_true", help="crop volumes to their non-zero region")
    d.add_argument("--augment", type=float, default=0.15, help="probability of each augmentation (0: none)")
    d.add_argument(
        "--fg-ratio",
        type=int,
        nargs=2,
        default=[1, 1],
        metavar=("POS", "NEG"),
        help="foreground:background patch ratio",
    )
    d.add_argument("--fold", type=int, help="5-fold CV fold for validation (default: dataset.json's split)")
    d.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def _intensity(args) -> dict:
    if args.intensity == "ct":
        return {"kind": "ct", "window": list(args.ct_window)}
    if args.intensity == "none":
        return {"kind": "none"}
    return {"kind": "zscore", "nonzero": args.intensity == "zscore-nonzero"}


def data_settings(args, **more):
    """The DataSettings of :func:`add_data_arguments`'s options (``more``: further fields)."""
    from .run import DataSettings

    spacing = None
    if args.spacing:
        if len(args.spacing) not in (1, 3):
            raise ValueError(f"--spacing takes one value or three, got {args.spacing}")
        spacing = tuple(args.spacing) * (3 if len(args.spacing) == 1 else 1)
    return DataSettings(
        patch=tuple(args.patch),
        batch_size=args.batch_size,
        spacing=spacing,
        intensity=_intensity(args),
        crop_nonzero=args.crop_nonzero,
        augment=args.augment,
        ratio=tuple(args.fg_ratio),
        fold=args.fold,
        workers=args.workers,
        **more,
    )


def run_train(args) -> int:
    from .run import train
    from .trainer import TrainConfig

    try:
        config = TrainConfig(
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            optimizer=args.optimizer,
            lr=args.lr,
            weight_decay=args.weight_decay,
            schedule=args.schedule,
            warmup_steps=args.warmup_steps,
            warmup_start=args.warmup_start,
            milestones=tuple(args.milestones),
            gamma=args.gamma,
            loss=args.loss,
            val_every=args.val_every,
            roi_size=tuple(args.patch),
            overlap=args.overlap,
            sw_batch_size=args.sw_batch_size,
            nsd_tolerance=args.nsd_tolerance,
            amp=not args.no_amp,
            checkpoint_every=args.checkpoint_every,
            time_budget=args.time_budget,
            seed=args.seed,
            device=args.device,
            progress=not args.quiet,
        )
        data = data_settings(args, max_val_cases=args.max_val_cases)
        summary = train(
            args.space, args.arch, args.data, args.out, config, data, dict(args.space_option), resume=not args.no_resume
        )
    except (ValueError, OSError) as exc:
        print(f"nas3d train: error: {exc}", file=sys.stderr)
        return 2
    last = summary.get("last_validation") or {}
    print(
        f"steps {summary['steps']}/{summary['total_steps']} in {summary['train_seconds']:.0f} s"
        + (" (time budget reached)" if summary["stopped_by_time_budget"] else "")
    )
    if last:
        print(f"validation at step {last['step']}: mean Dice {last['mean_dice']:.4f}, mean NSD {last['mean_nsd']:.4f}")
    print(
        f"best model: {summary['best_model']} (mean Dice {summary['best']['metric']:.4f} at step "
        f"{summary['best']['step']})"
        if summary["best_model"]
        else f"checkpoint: {summary['checkpoint']}"
    )
    return 0
