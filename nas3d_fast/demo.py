"""The demo (``make demo``): real brain MRI in, a network from a search space trained on the CPU, a label map
and a picture out.

1. ``nas3d data mni152``: MSD-format subjects made from nilearn's MNI152 T1 template and its grey/white
   matter maps (labels 0 background, 1 grey matter, 2 white matter; 2 mm; the last subjects validate).
2. ``nas3d train``: the ``ronasmis`` space's plain U-Net (``default_arch``, 8 base channels) for a
   wall-clock budget (``--time-budget`` minutes) or its steps, whichever ends first.
3. Sliding-window inference of the best model on a validation subject, on that subject's own grid;
   Dice and NSD per class against its labels.
4. Writes ``OUT/prediction.nii.gz`` (input affine), ``OUT/slices.png`` (axial, coronal and sagittal slices
   of image, truth and prediction) and ``OUT/summary.json``; prints the figures and the targets
   (mean foreground Dice >= 0.80, whole demo <= 15 minutes on 2 CPU cores).

Run ``python -m nas3d_fast.demo --help`` for the knobs. Rerunning resumes training from OUT/run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

DICE_TARGET = 0.80
MINUTES_TARGET = 15.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas3d_fast.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=9.0,
        metavar="MINUTES",
        help="training wall-clock budget, validation included (default 8)",
    )
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--steps-per-epoch", type=int, default=10)
    p.add_argument("--patch", type=int, nargs=3, default=[48, 48, 48], metavar=("X", "Y", "Z"))
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--layers-per-stage", type=int, default=1, help="ronasmis layers per U-Net level")
    p.add_argument("--val-every", type=int, default=5, help="epochs between validations")
    p.add_argument("--subjects", type=int, default=8, help="MNI152 subjects (the last 2 validate)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="delete OUT/run first (no resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _write_png(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, spacing, path: str, title: str) -> None:
    """Axial, coronal and sagittal slices through the centre of the truth's foreground: image, truth and
    prediction side by side (labels coloured over the image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from .train.checkpoint import atomic_write

    centre = np.round(np.argwhere(truth > 0).mean(0)).astype(int) if (truth > 0).any() else np.array(truth.shape) // 2
    cmap = ListedColormap([(0, 0, 0, 0), (0.95, 0.45, 0.1, 0.75), (0.2, 0.6, 1.0, 0.75), (0.3, 0.9, 0.3, 0.75)])
    views = [
        ("axial", lambda a: a[:, :, centre[2]], (spacing[1], spacing[0])),
        ("coronal", lambda a: a[:, centre[1], :], (spacing[2], spacing[0])),
        ("sagittal", lambda a: a[centre[0], :, :], (spacing[2], spacing[1])),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(9, 9.6))
    for row, (name, cut, (sy, sx)) in enumerate(views):
        img = np.rot90(cut(image))
        for col, (what, lab) in enumerate((("image", None), ("truth", truth), ("prediction", pred))):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", aspect=sy / sx)
            if lab is not None:
                ax.imshow(np.rot90(cut(lab)), cmap=cmap, vmin=0, vmax=3, interpolation="nearest", aspect=sy / sx)
            ax.set_title(f"{name}: {what}", fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t_start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    from . import data as nd
    from .inference import sliding_window_inference
    from .inference.checkpoint import load_model
    from .train.checkpoint import atomic_json, load_training_checkpoint
    from .train.metrics import dice_per_class, nsd_per_class
    from .train.run import DataSettings, train
    from .train.trainer import TrainConfig

    out = os.path.abspath(args.out)
    data_dir, run_dir = os.path.join(out, "data"), os.path.join(out, "run")
    os.makedirs(out, exist_ok=True)
    if args.fresh and os.path.isdir(run_dir):
        import shutil

        shutil.rmtree(run_dir)

    # 1. data
    t0 = time.monotonic()
    if not os.path.exists(os.path.join(data_dir, "dataset.json")):
        print(f"[1/4] building the MNI152 dataset in {data_dir}", flush=True)
        nd.build_mni152(data_dir, subjects=args.subjects, val=2, spacing=2.0, seed=args.seed, progress=not args.quiet)
    else:
        print(f"[1/4] MNI152 dataset already in {data_dir}", flush=True)
    t_data = time.monotonic() - t0

    # 2. training
    print(
        f"[2/4] training ronasmis (plain U-Net, {args.base_channels} base channels) for at most "
        f"{args.time_budget:g} min or {args.epochs * args.steps_per_epoch} steps",
        flush=True,
    )
    t0 = time.monotonic()
    config = TrainConfig(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        optimizer="adam",
        lr=args.lr,
        schedule="poly",
        loss="dice_ce",
        val_every=args.val_every,
        roi_size=tuple(args.patch),
        overlap=0.25,
        sw_batch_size=2,
        time_budget=args.time_budget,
        seed=args.seed,
        device="cpu",
        progress=not args.quiet,
    )
    settings = DataSettings(
        patch=tuple(args.patch), batch_size=args.batch_size, augment=0.15, workers=1, max_val_cases=1
    )
    summary = train(
        "ronasmis",
        "default",
        data_dir,
        run_dir,
        config,
        settings,
        {"base_channels": args.base_channels, "layers_per_stage": args.layers_per_stage},
    )
    t_train = time.monotonic() - t0

    # 3. inference on a validation subject, on its own grid
    t0 = time.monotonic()
    index = nd.MSDIndex(data_dir)
    case = index.case(index.validation_ids[0]) if index.validation_ids else index.training[-1]
    print(f"[3/4] sliding-window inference on validation subject {case.id}", flush=True)
    image, affine = nd.read_image(case.image)
    truth, _ = nd.read_label(case.label)
    meta = load_training_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["meta"]
    pre = nd.Preprocessing.from_dict(meta["preprocessing"])  # as in training
    prepared = nd.preprocess_case(image, affine, None, pre)
    model = load_model(os.path.join(run_dir, "best.pt"), torch.device("cpu"))
    with torch.no_grad():
        labels = sliding_window_inference(
            torch.from_numpy(prepared.image)[None],
            config.roi_size,
            2,
            model,
            overlap=0.5,
            mode="gaussian",
            nas3d_output="labels",
            progress=not args.quiet,
        )[0, 0].numpy()
    pred = nd.restore_labels(labels, prepared.meta).astype(np.uint8)
    spacing = nd.spacing_of(affine)
    num_classes = len(index.labels)
    dice = dice_per_class(pred, truth, num_classes)
    nsd = nsd_per_class(pred, truth, num_classes, spacing, tolerance=2.0)
    t_infer = time.monotonic() - t0

    # 4. outputs
    pred_path, png_path = os.path.join(out, "prediction.nii.gz"), os.path.join(out, "slices.png")
    nd.write_nifti(pred, affine, pred_path, dtype=np.uint8)
    mean_dice = float(np.nanmean(dice))
    names = [index.labels[k] for k in sorted(index.labels, key=int)][1:]
    _write_png(
        image[0],
        truth,
        pred,
        spacing,
        png_path,
        f"{case.id}: mean foreground Dice {mean_dice:.3f} (ronasmis U-Net, {summary['steps']} steps)",
    )
    total = time.monotonic() - t_start
    result = {
        "case": case.id,
        "classes": names,
        "dice": dict(zip(names, map(float, dice))),
        "nsd_2mm": dict(zip(names, map(float, nsd))),
        "mean_foreground_dice": mean_dice,
        "mean_nsd_2mm": float(np.nanmean(nsd)),
        "targets": {"mean_foreground_dice": DICE_TARGET, "minutes": MINUTES_TARGET},
        "seconds": {
            "data": round(t_data, 1),
            "train": round(t_train, 1),
            "inference": round(t_infer, 1),
            "demo_total": round(total, 1),
        },
        "training": {k: summary[k] for k in ("steps", "total_steps", "epochs", "stopped_by_time_budget", "best")},
        "threads": torch.get_num_threads(),
        "outputs": {
            "prediction": pred_path,
            "png": png_path,
            "best_model": os.path.join(run_dir, "best.pt"),
            "run": run_dir,
        },
    }
    atomic_json(result, os.path.join(out, "summary.json"))
    print("[4/4] results")
    print(f"  {'class':<14} {'Dice':>7} {'NSD@2mm':>8}")
    for n, d, s in zip(names, dice, nsd):
        print(f"  {n:<14} {d:7.4f} {s:8.4f}")
    ok_dice = mean_dice >= DICE_TARGET
    ok_time = total / 60 <= MINUTES_TARGET
    print(f"  mean foreground Dice {mean_dice:.4f} (target >= {DICE_TARGET:.2f}: {'met' if ok_dice else 'MISSED'})")
    print(
        f"  demo time {total / 60:.1f} min, of which training {t_train / 60:.1f} min "
        f"(target <= {MINUTES_TARGET:g} min including installation: {'met' if ok_time else 'MISSED'})"
    )
    print(f"  wrote {pred_path}, {png_path}, {os.path.join(out, 'summary.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
