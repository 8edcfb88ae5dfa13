"""torch Datasets over an MSD-layout folder: whole preprocessed volumes, and random patches.

Both are picklable (they hold paths and settings; arrays are loaded lazily in each process, from the
on-disk cache as memory maps), so they work with DataLoader workers under fork and spawn. Randomness in
:class:`PatchDataset` comes from ``numpy.random.default_rng([seed, epoch, index])`` and a
``torch.Generator`` seeded from the same triple: a sample depends only on (seed, epoch, index), not on
which worker draws it or how many workers there are. Call :meth:`PatchDataset.set_epoch` each epoch.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .cache import PreprocessedCache, load_and_preprocess
from .msd import MSDIndex
from .preprocess import PreprocessedCase, Preprocessing
from .sampler import is_foreground_draw, sample_patch


class VolumeDataset(torch.utils.data.Dataset):
    """Whole preprocessed training cases of an MSD folder (for validation and inference).

    ``root``: dataset folder; ``ids``: case ids to use (default: all training cases, in dataset order);
    ``preprocessing``: :class:`Preprocessing` settings; ``cache_dir``: where preprocessed cases are kept
    (default ``ROOT/.nas3d_cache``; None: no disk cache). Item ``i`` is a dict:

    - ``id`` (str), ``image`` (C, X, Y, Z) float32 tensor, ``label`` (1, X, Y, Z) int64 tensor;
    - ``affine`` (4, 4) float64 tensor and ``spacing`` (3,) float64 tensor (mm) of the preprocessed grid;
    - ``meta``: dict to put a prediction back on the original grid
      (:func:`~nas3d_fast.data.preprocess.restore_labels`), ``image_path``, ``label_path``.
    """

    def __init__(self, root: str, ids=None, preprocessing: Preprocessing | None = None, cache_dir="default"):
        self.index = MSDIndex(root)
        self.preprocessing = preprocessing if preprocessing is not None else Preprocessing()
        by_id = {c.id: c for c in self.index.training}
        ids = list(by_id) if ids is None else [str(i) for i in ids]
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(f"dataset {self.index.root} has no training case(s) {missing}")
        self.cases = [by_id[i] for i in ids]
        if cache_dir == "default":
            cache_dir = os.path.join(self.index.root, ".nas3d_cache")
        self.cache_dir = cache_dir
        self._loaded: dict[int, PreprocessedCase] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_loaded"] = {}  # each worker process loads (memory-maps) its own copies
        return state

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    def case(self, i: int) -> PreprocessedCase:
        """The preprocessed case ``i`` as numpy arrays (loaded once per process)."""
        if i not in self._loaded:
            case = self.cases[i]
            if self.cache_dir is None:
                self._loaded[i] = load_and_preprocess(
                    case, self.preprocessing, self.index.num_classes, self.index.affine_tolerance
                )
            else:
                cache = PreprocessedCache(
                    self.cache_dir, self.preprocessing, self.index.num_classes, self.index.affine_tolerance
                )
                self._loaded[i] = cache.get(case)
        return self._loaded[i]

    def __getitem__(self, i: int) -> dict:
        pre = self.case(i)
        affine = torch.as_tensor(np.asarray(pre.affine), dtype=torch.float64)
        return {
            "id": self.cases[i].id,
            "image": torch.from_numpy(np.array(pre.image, dtype=np.float32)),
            "label": torch.from_numpy(np.array(pre.label, dtype=np.int64))[None],
            "affine": affine,
            "spacing": torch.tensor(pre.spacing, dtype=torch.float64),
            "meta": pre.meta,
            "image_path": self.cases[i].image,
            "label_path": self.cases[i].label,
        }


class PatchDataset(torch.utils.data.Dataset):
    """``samples_per_epoch`` random patches from a :class:`VolumeDataset`.

    Samples come in groups of pos + neg consecutive items (``ratio`` = (pos, neg), default 1:1): group
    ``g = i // (pos + neg)`` is cut from case ``perm[g % n_cases]`` (a permutation per epoch), its first
    ``pos`` items are foreground patches and the others background patches
    (:func:`~nas3d_fast.data.sampler.is_foreground_draw`). So with 1:1 and a batch of 4, a batch holds two
    patches (one foreground, one background) from each of two volumes, as in T-AutoML §4.1. Each item is
    passed through ``augment`` (a callable ``(image, label, generator) -> (image,
    label)`` on tensors, e.g. :class:`~nas3d_fast.data.augment.Augmentations`) when given. Returns a
    dict ``image`` (C, *patch) float32, ``label`` (1, *patch) int64, ``id`` and ``start`` (patch corner).
    """

    def __init__(
        self, volumes: VolumeDataset, patch_size, samples_per_epoch: int, ratio=(1, 1), seed: int = 0, augment=None
    ):
        self.volumes = volumes
        self.patch_size = tuple(int(s) for s in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive integers, got {patch_size}")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        if len(volumes) == 0:
            raise ValueError("PatchDataset needs at least one case")
        is_foreground_draw(0, *ratio)  # validates the ratio
        self.samples_per_epoch = int(samples_per_epoch)
        self.ratio = tuple(int(r) for r in ratio)
        self.seed = int(seed)
        self.epoch = 0
        self.augment = augment
        self._foreground: dict[int, np.ndarray] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_foreground"] = {}
        return state

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.samples_per_epoch:
            raise IndexError(i)
        n = len(self.volumes)
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        k = int(perm[(i // sum(self.ratio)) % n])
        rng = np.random.default_rng([self.seed, self.epoch, i, 1])
        pre = self.volumes.case(k)
        if k not in self._foreground:
            self._foreground[k] = np.flatnonzero(np.asarray(pre.label) > 0)
        image, label, start = sample_patch(
            pre.image, pre.label, self.patch_size, is_foreground_draw(i, *self.ratio), rng, self._foreground[k]
        )
        image = torch.from_numpy(image.astype(np.float32, copy=False))
        label = torch.from_numpy(label.astype(np.int64))[None]
        if self.augment is not None:
            gen = torch.Generator().manual_seed(
                int(np.random.default_rng([self.seed, self.epoch, i, 2]).integers(2**62))
            )
            image, label = self.augment(image, label, gen)
        return {"image": image, "label": label, "id": self.volumes.cases[k].id, "start": torch.tensor(start)}
