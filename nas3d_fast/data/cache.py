"""On-disk cache of preprocessed cases.

Layout: ``CACHE_DIR/<settings hash>/<case id>.image.npy``, ``.label.npy`` and ``.json`` (affine, the
meta for :func:`~nas3d_fast.data.preprocess.restore_labels`, the settings, and the size and
modification time of the source files). Every file is written to a temporary name and renamed; the
JSON is written last, so a case counts as cached only once all of its files are complete, and a
process killed mid-write leaves at most a stray ``.tmp-*`` file. A source file that changed (size or
mtime) makes the entry stale and it is rebuilt. Several DataLoader workers may fill the cache at once:
they write identical content and the renames are atomic.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from .._atomic import atomic_path
from .msd import AFFINE_TOLERANCE, Case, check_label_values, check_same_grid
from .nifti import read_image, read_label, write_json
from .preprocess import PreprocessedCase, Preprocessing, preprocess_case


def _stamp(path: str | None):
    if path is None:
        return None
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _save_npy(array: np.ndarray, path: str) -> None:
    with atomic_path(path, ".npy") as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def load_and_preprocess(
    case: Case, settings: Preprocessing, num_classes: int | None = None, affine_tolerance: float = AFFINE_TOLERANCE
) -> PreprocessedCase:
    """Read a case's NIfTI files and preprocess them (no cache). The label is checked as the index checks
    it (:func:`~nas3d_fast.data.msd.check_same_grid`: the image's shape and affine; with ``num_classes``,
    values below it): ValueError naming the files otherwise."""
    image, affine = read_image(case.image)
    label = None
    if case.label is not None:
        label, label_affine = read_label(case.label)
        check_same_grid(
            case.image, image.shape[1:], affine, case.label, label.shape, label_affine, affine_tolerance
        )
        if num_classes is not None:
            values = np.flatnonzero(np.bincount(label.ravel().astype(np.int64))) if label.size else []
            check_label_values(case.label, values, num_classes, f"the dataset ({num_classes} classes)")
    return preprocess_case(image, affine, label, settings)


class PreprocessedCache:
    """Preprocessed cases of one settings hash under ``root``; :meth:`get` fills it on a miss (reading
    the files with :func:`load_and_preprocess`, so with the index's checks of the label)."""

    def __init__(
        self, root: str, settings: Preprocessing, num_classes: int | None = None, affine_tolerance=AFFINE_TOLERANCE
    ):
        self.settings = settings
        self.num_classes = num_classes
        self.affine_tolerance = affine_tolerance
        self.dir = os.path.join(root, settings.key())

    def _paths(self, case_id: str):
        base = os.path.join(self.dir, case_id)
        return base + ".image.npy", base + ".label.npy", base + ".json"

    def get(self, case: Case, mmap: bool = True) -> PreprocessedCase:
        image_path, label_path, meta_path = self._paths(case.id)
        stamps = {"image": _stamp(case.image), "label": _stamp(case.label)}
        if os.path.exists(meta_path):
            try:
                with open(meta_path) as f:
                    record = json.load(f)
                if record.get("sources") == stamps:
                    mode = "r" if mmap else None
                    image = np.load(image_path, mmap_mode=mode)
                    label = np.load(label_path, mmap_mode=mode) if record["has_label"] else None
                    return PreprocessedCase(image, label, np.asarray(record["affine"]), record["meta"])
            except (OSError, ValueError, KeyError):
                pass  # unreadable or stale entry: rebuild it below
        pre = load_and_preprocess(case, self.settings, self.num_classes, self.affine_tolerance)
        try:
            self._write(case, pre, stamps)
        except OSError as exc:  # e.g. a read-only dataset folder: train without the cache
            warnings.warn(
                f"cannot write the preprocessing cache {self.dir}: {exc}; continuing without it", stacklevel=2
            )
        return pre

    def _write(self, case: Case, pre: PreprocessedCase, stamps: dict) -> None:
        image_path, label_path, meta_path = self._paths(case.id)
        os.makedirs(self.dir, exist_ok=True)
        _save_npy(pre.image, image_path)
        if pre.label is not None:
            _save_npy(pre.label, label_path)
        record = {
            "case": case.id,
            "settings": self.settings.to_dict(),
            "sources": stamps,
            "has_label": pre.label is not None,
            "affine": np.asarray(pre.affine).tolist(),
            "meta": pre.meta,
        }
        write_json(record, meta_path)
