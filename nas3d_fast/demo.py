"""The demo (``make demo``): real brain MRI in, an architecture searched, trained and applied on the CPU, a
label map and a picture out.

1. ``nas3d data mni152``: MSD-format subjects made from nilearn's MNI152 T1 template and its grey/white
   matter maps (labels 0 background, 1 grey matter, 2 white matter; 2 mm; the last subjects validate).
2. ``nas3d search``: SCNAS's Gumbel search (``--searcher gumbel``; any supernet searcher can be named) over
   the ``ronasmis`` space (ops and skips of every layer of a U-Net, 8 base channels) for
   ``--search-minutes`` of wall-clock time or its steps, whichever ends first: ``OUT/search/arch.json``.
3. ``nas3d train``: the found architecture, and, for comparison, the space's plain U-Net
   (``default_arch``) with the base channels that bring its predicted training peak closest to the found
   network's, each for the same steps and ``--time-budget`` minutes.
4. Sliding-window inference of both best models on a validation subject, on that subject's own grid; Dice
   and NSD per class against its labels.
5. Writes ``OUT/prediction.nii.gz`` (the found network's labels, input affine), ``OUT/slices.png`` (slices of
   image, truth and both predictions, and the search's curves) and ``OUT/summary.json`` (the search: searcher,
   budget, steps, architecture, predicted memory; Dice and NSD of both networks); prints the figures and
   the targets (mean foreground Dice >= 0.85 for the found network, whole demo <= 15 minutes on 2 CPU cores).

Run ``python -m nas3d_fast.demo --help`` for the knobs. Rerunning resumes the search and both trainings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

DICE_TARGET = 0.85
MINUTES_TARGET = 15.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas3d_fast.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--searcher", default="gumbel", help="supernet searcher (default gumbel: SCNAS's)")
    p.add_argument("--search-minutes", type=float, default=2.5, help="the search's wall-clock budget (default 2.5)")
    p.add_argument("--search-epochs", type=int, default=10)
    p.add_argument("--search-steps-per-epoch", type=int, default=20)
    p.add_argument("--search-patch", type=int, nargs=3, default=[32, 32, 32], metavar=("X", "Y", "Z"))
    p.add_argument(
        "--time-budget",
        type=float,
        default=4.5,
        metavar="MINUTES",
        help="wall-clock budget of each of the two trainings, validation included (default 4.5)",
    )
    p.add_argument("--no-default", action="store_true", help="skip the plain U-Net trained for comparison")
    p.add_argument("--epochs", type=int, default=50)
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


def _write_png(image, truth, preds: dict, spacing, search_csv: str, path: str, title: str) -> None:
    """Axial, coronal and sagittal slices through the centre of the truth's foreground (image, truth and each
    prediction, labels coloured over the image), and the search's loss and architecture entropy per step."""
    import csv

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
    columns = [("image", None), ("truth", truth), *preds.items()]
    fig = plt.figure(figsize=(3 * len(columns), 12))
    grid = fig.add_gridspec(4, len(columns), height_ratios=[1, 1, 1, 0.8])
    for row, (name, cut, (sy, sx)) in enumerate(views):
        img = np.rot90(cut(image))
        for col, (what, lab) in enumerate(columns):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(img, cmap="gray", aspect=sy / sx)
            if lab is not None:
                ax.imshow(np.rot90(cut(lab)), cmap=cmap, vmin=0, vmax=3, interpolation="nearest", aspect=sy / sx)
            ax.set_title(f"{name}: {what}", fontsize=9)
            ax.axis("off")
    steps, loss, entropy = [], [], []
    if os.path.exists(search_csv):
        with open(search_csv) as f:
            for row in csv.DictReader(f):
                steps.append(int(row["step"]))
                loss.append(float(row["weight_loss"]))
                entropy.append(float(row["entropy"]))
    ax = fig.add_subplot(grid[3, :])
    ax.plot(steps, loss, color="tab:blue", label="search: weight loss")
    ax.set_xlabel("search step")
    ax.set_ylabel("loss")
    twin = ax.twinx()
    twin.plot(steps, entropy, color="tab:orange", label="architecture entropy (nats)")
    twin.set_ylabel("entropy (nats)")
    ax.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)


def _predicted_mib(space, arch, patch, batch_size: int, num_classes: int) -> float:
    from .profile.sample import candidate_memory

    report = candidate_memory(space, arch, (1, *patch), batch_size, num_classes=num_classes, target="cpu")
    return report.peak_bytes / 2**20


def _matched_default(args, found_mib: float, num_classes: int) -> tuple[int, float]:
    """The plain U-Net's base channels (4..16) whose predicted CPU training peak is closest to ``found_mib``."""
    from .spaces import base

    best = None
    for channels in range(4, 17):
        space = base.get("ronasmis", base_channels=channels, layers_per_stage=args.layers_per_stage)
        mib = _predicted_mib(space, space.default_arch(), args.patch, args.batch_size, num_classes)
        if best is None or abs(mib - found_mib) < abs(best[1] - found_mib):
            best = (channels, mib)
    return best


def _segment(run_dir: str, prepared, roi, quiet: bool) -> np.ndarray:
    from .inference import sliding_window_inference
    from .inference.checkpoint import load_model

    model = load_model(os.path.join(run_dir, "best.pt"), torch.device("cpu"))
    with torch.no_grad():
        return sliding_window_inference(
            torch.from_numpy(prepared.image)[None], roi, 2, model, overlap=0.5, mode="gaussian",
            nas3d_output="labels", progress=not quiet,
        )[0, 0].numpy()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t_start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    from . import data as nd
    from .search import SearchConfig, search
    from .spaces import base
    from .train.checkpoint import atomic_json, load_training_checkpoint
    from .train.metrics import dice_per_class, nsd_per_class
    from .train.run import DataSettings, train
    from .train.trainer import TrainConfig

    out = os.path.abspath(args.out)
    data_dir, search_dir = os.path.join(out, "data"), os.path.join(out, "search")
    run_dir, default_dir = os.path.join(out, "run"), os.path.join(out, "run_default")
    os.makedirs(out, exist_ok=True)
    if args.fresh:
        import shutil

        for folder in (search_dir, run_dir, default_dir):
            if os.path.isdir(folder):
                shutil.rmtree(folder)
    space_options = {"base_channels": args.base_channels, "layers_per_stage": args.layers_per_stage}
    space = base.get("ronasmis", **space_options)

    # 1. data
    t0 = time.monotonic()
    if not os.path.exists(os.path.join(data_dir, "dataset.json")):
        print(f"[1/5] building the MNI152 dataset in {data_dir}", flush=True)
        nd.build_mni152(data_dir, subjects=args.subjects, val=2, spacing=2.0, seed=args.seed, progress=not args.quiet)
    else:
        print(f"[1/5] MNI152 dataset already in {data_dir}", flush=True)
    index = nd.MSDIndex(data_dir)
    num_classes = len(index.labels)
    t_data = time.monotonic() - t0

    # 2. search
    print(f"[2/5] searching ronasmis ({args.searcher}) for at most {args.search_minutes:g} min or "
          f"{args.search_epochs * args.search_steps_per_epoch} steps", flush=True)
    t0 = time.monotonic()
    found = search(
        "ronasmis", args.searcher, data_dir, search_dir,
        SearchConfig(epochs=args.search_epochs, steps_per_epoch=args.search_steps_per_epoch,
                     time_budget=args.search_minutes, seed=args.seed, device="cpu", progress=not args.quiet),
        DataSettings(patch=tuple(args.search_patch), batch_size=args.batch_size, augment=0.0, workers=1),
        space_options=space_options,
    )
    arch = space.arch_from_json(json.dumps(found["arch"]))
    found_mib = _predicted_mib(space, arch, args.patch, args.batch_size, num_classes)
    t_search = time.monotonic() - t0

    # 3. training: the found network, then the plain U-Net at about the same predicted memory
    config = TrainConfig(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, optimizer="adam", lr=args.lr, schedule="poly",
        loss="dice_ce", val_every=args.val_every, roi_size=tuple(args.patch), overlap=0.25, sw_batch_size=2,
        time_budget=args.time_budget, seed=args.seed, device="cpu", progress=not args.quiet,
    )
    settings = DataSettings(patch=tuple(args.patch), batch_size=args.batch_size, augment=0.15, workers=1,
                            max_val_cases=1)
    nets = {"found": (os.path.join(search_dir, "arch.json"), space_options, run_dir, found_mib)}
    if not args.no_default:
        channels, default_mib = _matched_default(args, found_mib, num_classes)
        nets["default"] = ("default", {**space_options, "base_channels": channels}, default_dir, default_mib)
    t0 = time.monotonic()
    trained = {}
    for i, (name, (the_arch, options, folder, mib)) in enumerate(nets.items()):
        what = "found network" if name == "found" else "plain U-Net (default_arch)"
        print(f"[3/5] training the {what} ({i + 1}/{len(nets)}; {options['base_channels']} base channels, "
              f"predicted peak {mib:.0f} MiB) for at most {args.time_budget:g} min or "
              f"{args.epochs * args.steps_per_epoch} steps", flush=True)
        trained[name] = train("ronasmis", the_arch, data_dir, folder, config, settings, options)
    t_train = time.monotonic() - t0

    # 4. inference on a validation subject, on its own grid
    t0 = time.monotonic()
    case = index.case(index.validation_ids[0]) if index.validation_ids else index.training[-1]
    print(f"[4/5] sliding-window inference on validation subject {case.id}", flush=True)
    image, affine = nd.read_image(case.image)
    truth, _ = nd.read_label(case.label)
    spacing = nd.spacing_of(affine)
    preds, scores = {}, {}
    names = [index.labels[k] for k in sorted(index.labels, key=int)][1:]
    for name, (_, _, folder, mib) in nets.items():
        meta = load_training_checkpoint(os.path.join(folder, "checkpoint.pt"))["meta"]
        prepared = nd.preprocess_case(image, affine, None, nd.Preprocessing.from_dict(meta["preprocessing"]))
        preds[name] = nd.restore_labels(_segment(folder, prepared, config.roi_size, args.quiet),
                                        prepared.meta).astype(np.uint8)
        dice = dice_per_class(preds[name], truth, num_classes)
        nsd = nsd_per_class(preds[name], truth, num_classes, spacing, tolerance=2.0)
        summary = trained[name]
        scores[name] = {
            "dice": dict(zip(names, map(float, dice))),
            "nsd_2mm": dict(zip(names, map(float, nsd))),
            "mean_foreground_dice": float(np.nanmean(dice)),
            "mean_nsd_2mm": float(np.nanmean(nsd)),
            "base_channels": nets[name][1]["base_channels"],
            "predicted_peak_mib": round(mib, 2),
            "training": {k: summary[k] for k in ("steps", "total_steps", "epochs", "stopped_by_time_budget", "best")},
            "best_model": os.path.join(folder, "best.pt"),
        }
    t_infer = time.monotonic() - t0

    # 5. outputs
    pred_path, png_path = os.path.join(out, "prediction.nii.gz"), os.path.join(out, "slices.png")
    nd.write_nifti(preds["found"], affine, pred_path, dtype=np.uint8)
    mean_dice = scores["found"]["mean_foreground_dice"]
    _write_png(image[0], truth, preds, spacing, os.path.join(search_dir, "search.csv"), png_path,
               f"{case.id}: mean foreground Dice {mean_dice:.3f} for the found network ({args.searcher} search, "
               f"{found['steps']} steps; trained {trained['found']['steps']} steps)")
    total = time.monotonic() - t_start
    result = {
        "case": case.id,
        "classes": names,
        "search": {
            "searcher": args.searcher,
            "space": "ronasmis",
            "space_options": space_options,
            "budget_minutes": args.search_minutes,
            "steps": found["steps"],
            "total_steps": found["total_steps"],
            "stopped_by_time_budget": found["stopped_by_time_budget"],
            "arch": found["arch"],
            "arch_path": os.path.join(search_dir, "arch.json"),
            "predicted_peak_mib": round(found_mib, 2),
            "memory_target": "cpu",
        },
        "networks": scores,
        "mean_foreground_dice": mean_dice,
        "mean_nsd_2mm": scores["found"]["mean_nsd_2mm"],
        "targets": {"mean_foreground_dice": DICE_TARGET, "minutes": MINUTES_TARGET},
        "seconds": {"data": round(t_data, 1), "search": round(t_search, 1), "train": round(t_train, 1),
                    "inference": round(t_infer, 1), "demo_total": round(total, 1)},
        "threads": torch.get_num_threads(),
        "outputs": {"prediction": pred_path, "png": png_path, "search": search_dir, "run": run_dir},
    }
    atomic_json(result, os.path.join(out, "summary.json"))
    print("[5/5] results")
    print(f"  {'network':<14} {'class':<14} {'Dice':>7} {'NSD@2mm':>8}")
    for name, sc in scores.items():
        for n in names:
            print(f"  {name:<14} {n:<14} {sc['dice'][n]:7.4f} {sc['nsd_2mm'][n]:8.4f}")
    ok_dice = mean_dice >= DICE_TARGET
    ok_time = total / 60 <= MINUTES_TARGET
    print(f"  found network: mean foreground Dice {mean_dice:.4f} (target >= {DICE_TARGET:.2f}: "
          f"{'met' if ok_dice else 'MISSED'})")
    if "default" in scores:
        print(f"  default U-Net at about the same predicted memory: mean foreground Dice "
              f"{scores['default']['mean_foreground_dice']:.4f}")
    print(
        f"  demo time {total / 60:.1f} min: search {t_search / 60:.1f}, training {t_train / 60:.1f} min "
        f"(target <= {MINUTES_TARGET:g} min after installation: {'met' if ok_time else 'MISSED'})"
    )
    print(f"  wrote {pred_path}, {png_path}, {os.path.join(out, 'summary.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
