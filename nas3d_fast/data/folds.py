"""Cross-validation folds (the papers use 5-fold CV: T-AutoML §4.1, C2FNAS, DiNTS).

:func:`kfold` is deterministic from ``seed`` and independent of the order cases are listed in: the case
ids are sorted, shuffled with ``numpy.random.default_rng(seed)``, and cut into ``k`` consecutive chunks
of sizes differing by at most one (``numpy.array_split``); fold ``f`` validates on chunk ``f`` and
trains on the others. Every case is validated in exactly one fold.
"""

from __future__ import annotations

import numpy as np


def kfold(ids, k: int = 5, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """[(train ids, validation ids)] for folds 0..k-1, each list sorted."""
    ids = sorted(str(i) for i in ids)
    if len(set(ids)) != len(ids):
        raise ValueError("kfold: case ids must be unique")
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"kfold: k must be an integer >= 2, got {k!r}")
    if len(ids) < k:
        raise ValueError(f"kfold: {len(ids)} case(s) cannot be split into k={k} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    chunks = np.array_split(np.array(ids, dtype=object)[order], k)
    folds = []
    for f in range(k):
        val = sorted(chunks[f].tolist())
        train = sorted(i for g, c in enumerate(chunks) if g != f for i in c.tolist())
        folds.append((train, val))
    return folds


def split(index, fold: int | None = None, k: int = 5, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) of an MSDIndex: with ``fold`` None, the fixed split of its dataset.json
    ('validation') when it has one, else fold 0; with ``fold`` an integer, that fold of :func:`kfold`."""
    ids = [c.id for c in index.training]
    if fold is None and index.validation_ids is not None:
        val = sorted(index.validation_ids)
        return sorted(set(ids) - set(val)), val
    fold = 0 if fold is None else fold
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in [0, {k}), got {fold}")
    if len(ids) < k:
        raise ValueError(
            f"dataset {index.root}: {len(ids)} training case(s) cannot be split into {k} cross-validation folds; "
            "name the validation cases in dataset.json's 'validation' list, or add cases"
        )
    return kfold(ids, k, seed)[fold]
