"""The ``nas3d`` command.

nas3d info           versions (torch, CUDA, Triton, compilers) and the backend table
nas3d bench SUITE    a benchmark suite side by side with its baselines (see benchmarks/run.py)
nas3d infer ...      label maps for NIfTI images with a checkpoint (see nas3d_fast/inference/checkpoint.py)
nas3d data ...       datasets in MSD layout: `mni152` (real MRI from nilearn's template), `synthetic` (blobs)
nas3d train ...      train one architecture of a search space on an MSD-layout dataset (nas3d_fast/train)
nas3d search ...     search a space for an architecture on an MSD-layout dataset (nas3d_fast/search);
                     nas3d search status RUN: the trials of a trial search; nas3d search rank RUN --against
                     RUN2: Kendall tau / Spearman rho between two runs' scores of the same architectures
nas3d profile ...    training-step peak memory of a space's candidates (see nas3d_fast/profile/cli.py)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys

import torch

from . import __version__, _extension
from .dispatch import backends


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info_rows() -> list[tuple[str, str]]:
    """(name, value) pairs describing this installation."""
    rows = [
        ("nas3d_fast", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torch CUDA", torch.version.cuda or "none (CPU build)"),
        (
            "CUDA devices",
            ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            if torch.cuda.is_available()
            else "none",
        ),
        ("triton", _version("triton")),
        ("CPU capability", torch.backends.cpu.get_cpu_capability()),
        ("torch threads", str(torch.get_num_threads())),
    ]
    if _extension.available():
        rows.append(("_C C++ compiler", _extension._C.cxx_compiler()))
        rows.append(("_C CUDA kernels", _extension._C.cuda_compiler() or "not compiled"))
    else:
        rows.append(("_C", f"not loaded: {_extension.load_error}"))
    return rows


def cmd_info(args) -> int:
    for name, value in info_rows():
        print(f"{name:<16} {value}")
    print()
    print(f"{'backend':<10} {'usable':<7} reason")
    for name, status in backends().items():
        print(f"{name:<10} {'yes' if status.usable else 'no':<7} {status.reason}")
    return 0


def cmd_bench(args) -> int:
    try:
        from benchmarks import run as bench_run
    except ImportError:
        print(
            "nas3d bench needs the benchmarks/ folder of a source checkout (run it from the repository root)",
            file=sys.stderr,
        )
        return 2
    argv = [args.suite] + (["--quick"] if args.quick else []) + (["--json", args.json] if args.json else [])
    return bench_run.main(argv)


def cmd_infer(args) -> int:
    from .inference.infer import infer

    try:
        written = infer(
            args.model,
            args.input,
            args.output,
            roi_size=args.roi,
            overlap=args.overlap,
            tta=args.tta,
            device=args.device,
            progress=not args.quiet,
            trust_pickle=args.trust_pickle,
            resample_probabilities=args.resample_probabilities,
        )
    except (ValueError, OSError) as exc:
        print(f"nas3d infer: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def _add_infer(sub) -> None:
    infer = sub.add_parser(
        "infer",
        help="label maps for NIfTI images (sliding-window inference)",
        description="Predict label maps for NIfTI images with a checkpoint: NAME.pt (nas3d train's best.pt: "
        "the space, architecture and weights as plain data, loaded without running code from the file) "
        "and NAME.json beside it (preprocessing and window settings; see nas3d_fast/inference/checkpoint.py). "
        "Label maps keep the input's affine and header.",
    )
    infer.add_argument("--model", required=True, metavar="CHECKPOINT", help="NAME.pt (settings in NAME.json)")
    infer.add_argument("--input", required=True, metavar="IMAGE|FOLDER", help=".nii/.nii.gz file, or a folder of them")
    infer.add_argument("--output", required=True, metavar="PATH", help="output .nii/.nii.gz file, or a folder")
    infer.add_argument("--roi", type=int, nargs=3, metavar=("X", "Y", "Z"), help="window size (default: checkpoint's)")
    infer.add_argument("--overlap", type=float, help="window overlap in [0, 1) (default: checkpoint's)")
    infer.add_argument("--tta", action="store_true", help="average over mirrored inputs (the checkpoint's tta_flips)")
    infer.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    infer.add_argument("--resample-probabilities", action="store_true",
                       help="when the training resampled: bring the class probabilities back to the image's grid "
                            "(linear) before the argmax, nnU-Net's way, instead of the labels (nearest)")
    infer.add_argument("--trust-pickle", action="store_true",
                       help="also read a whole pickled module (torch.save(model)), a network from outside the "
                            "package; unpickling runs code from the file: only for files you trust")
    infer.add_argument("--quiet", action="store_true", help="no progress bars")
    infer.set_defaults(func=cmd_infer)


def cmd_data(args) -> int:
    from . import data

    try:
        if args.kind == "mni152":
            out = data.build_mni152(
                args.out,
                subjects=args.subjects,
                val=args.val,
                spacing=args.spacing,
                seed=args.seed,
                test=args.test,
                progress=not args.quiet,
            )
        else:
            out = data.make_synthetic(
                args.out,
                train=args.train,
                test=args.test,
                shape=tuple(args.shape),
                num_classes=args.classes,
                channels=args.channels,
                validation=args.val,
                seed=args.seed,
            )
        index = data.MSDIndex(out)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"nas3d data {args.kind}: error: {exc}", file=sys.stderr)
        return 2
    val = index.validation_ids or []
    print(f"wrote {out}: {len(index.training)} training cases ({len(val)} for validation), {len(index.test)} test")
    return 0


def _add_data(sub) -> None:
    data = sub.add_parser(
        "data",
        help="build a dataset in MSD layout (dataset.json, imagesTr/, labelsTr/, imagesTs/)",
        description="Build a dataset in Medical Segmentation Decathlon layout. See nas3d_fast/data/mni152.py "
        "and nas3d_fast/data/synthetic.py for how the subjects are made.",
    )
    kinds = data.add_subparsers(dest="kind", required=True)
    mni = kinds.add_parser(
        "mni152",
        help="brain MRI subjects from the MNI152 template shipped with nilearn (nothing is downloaded)",
        description="T1 subjects (labels: 0 background, 1 grey matter, 2 white matter) made from the ICBM 2009 "
        "MNI152 template and its GM/WM maps inside the installed nilearn package, each with its own random "
        "smooth deformation, bias field and noise. The last --val training subjects form the validation split "
        "recorded in dataset.json.",
    )
    mni.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    mni.add_argument("--subjects", type=int, default=8, help="labelled subjects (default 8)")
    mni.add_argument("--val", type=int, default=2, help="of which validation (default 2)")
    mni.add_argument("--test", type=int, default=0, help="extra unlabelled subjects in imagesTs/ (default 0)")
    mni.add_argument("--spacing", type=float, default=2.0, metavar="MM", help="isotropic voxel size (default 2)")
    mni.add_argument("--seed", type=int, default=0)
    mni.add_argument("--quiet", action="store_true", help="no progress bar")
    syn = kinds.add_parser("synthetic", help="ellipsoid blobs in noise (for tests)")
    syn.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    syn.add_argument("--train", type=int, default=4, help="labelled cases (default 4)")
    syn.add_argument("--val", type=int, default=0, help="of which a fixed validation split (default 0: none)")
    syn.add_argument("--test", type=int, default=1, help="unlabelled cases (default 1)")
    syn.add_argument("--shape", type=int, nargs=3, default=[32, 32, 32], metavar=("X", "Y", "Z"))
    syn.add_argument("--classes", type=int, default=2, help="classes including background (default 2)")
    syn.add_argument("--channels", type=int, default=1, help="image channels (default 1)")
    syn.add_argument("--seed", type=int, default=0)
    data.set_defaults(func=cmd_data)


def cmd_train(args) -> int:
    from .train.cli import run_train

    return run_train(args)


def _add_train(sub) -> None:
    from .train.cli import add_train_arguments

    train = sub.add_parser(
        "train",
        help="train an architecture of a search space on an MSD-layout dataset",
        description="Train one architecture (ARCH.json, as Arch.to_json() writes it) of a search space on a "
        "Medical Segmentation Decathlon folder; writes a resumable checkpoint, the best model for `nas3d infer` "
        "(RUN/best.pt + best.json), CSV and TensorBoard logs and RUN/summary.json. Rerunning the same command "
        "resumes from RUN/checkpoint.pt.",
    )
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)


def cmd_search(args) -> int:
    from .search.cli import run_search

    return run_search(args)


def _add_search(sub) -> None:
    from .search.cli import __doc__ as doc
    from .search.cli import add_search_arguments

    search = sub.add_parser(
        "search",
        help="search a space for an architecture on an MSD-layout dataset",
        description="Search a space on a Medical Segmentation Decathlon folder; writes RUN/arch.json "
        "(train it with nas3d train --arch), RUN/report.png and RUN/summary.json. Supernet searchers (gumbel, dints) "
        "also write RUN/search.csv, RUN/history.jsonl and a resumable RUN/checkpoint.pt; trial searchers (random, "
        "evolution, predictor) the trial store RUN/trials.db, RUN/trials.csv and each trial's run in RUN/trials/ "
        "(`nas3d search status RUN` reads the store while the search runs). Rerunning the same command resumes "
        "the search.",
        epilog=doc.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_search_arguments(search)
    search.set_defaults(func=cmd_search)


def _add_profile(sub) -> None:
    from .profile.cli import add_parser

    add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas3d", description="Fast NAS for 3D medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"nas3d_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and the backend table").set_defaults(func=cmd_info)
    bench = sub.add_parser("bench", help="run a benchmark suite against its baselines")
    bench.add_argument("suite", help="suite name, e.g. gumbel")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and cases")
    bench.add_argument("--json", metavar="PATH", help="write results as JSON")
    bench.set_defaults(func=cmd_bench)
    _add_infer(sub)
    _add_data(sub)
    _add_train(sub)
    _add_search(sub)
    _add_profile(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["search", "status"]:  # subcommands of search, whose own options are required
        from .search.cli import status_main

        return status_main(argv[2:])
    if argv[:2] == ["search", "rank"]:
        from .search.rank import rank_main

        return rank_main(argv[2:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
