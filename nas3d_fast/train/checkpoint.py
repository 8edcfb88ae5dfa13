"""Training checkpoints (resumable) and the inference checkpoint that ``nas3d infer`` reads.

A training checkpoint ``RUN/checkpoint.pt`` is a ``torch.save``d dict (``format: nas3d-train-1``)::

    model, optimizer, scaler          state dicts (scaler: None without mixed precision)
    step, epoch, elapsed              optimiser steps done, epochs started, training seconds so far
    best                              {"metric": best mean foreground Dice, "step": when}
    rng                               python, numpy, torch CPU and CUDA generator states
    meta                              what rebuilds the model and its inputs (JSON-able):
        space, space_options, arch    the space name, its options and arch.to_json() parsed
        in_channels, num_classes
        preprocessing                 spacing, intensity normalisation... (what the data side used)
        infer                         the inference settings (inference/checkpoint.py's format)
    config                            the training settings (TrainConfig as a dict)

The learning-rate schedule needs no state: it is a function of the step (and of the elapsed time under a
time budget). Every file is written through ``nas3d_fast._atomic`` (a temporary name in the same folder,
fsynced, renamed over the target, the folder fsynced), so a kill at any moment leaves either the previous
complete file or the new complete file, never a partial one.

A checkpoint is always read onto the CPU: the model and optimiser state dicts are copied to the training
device when they are loaded, and the RNG states must stay CPU byte tensors (``torch.set_rng_state``
accepts nothing else), whichever device the run resumes on.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_write, write_json
from ..inference.checkpoint import FORMAT as INFER_FORMAT
from ..inference.checkpoint import InferSettings, build_network, model_record

TRAIN_FORMAT = "nas3d-train-1"


def atomic_save(obj: Any, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_json(obj: Any, path: str) -> None:
    write_json(obj, path, indent=2)


def rng_state() -> dict:
    """The generators' states as plain data (lists, ints, byte tensors), so a checkpoint loads with
    ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _cpu_bytes(state) -> torch.Tensor:
    return torch.as_tensor(state).to(device="cpu", dtype=torch.uint8)


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s generators. The torch states are taken back to CPU byte tensors first,
    so a checkpoint that was loaded with a ``map_location`` other than the CPU restores as well."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_cpu_bytes(s) for s in state["cuda"]])


def read_checkpoint(path: str, fmt: str, what: str, map_location: str | torch.device = "cpu") -> dict:
    """The dict saved at ``path`` whose "format" is ``fmt``; ValueError naming the file (and ``what`` it
    should be) if it is missing, unreadable or another kind of checkpoint. Read with
    ``torch.load(weights_only=True)``: plain data only, no code from the file runs."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} is not readable: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"checkpoint {path} is not a {what} checkpoint (format {fmt!r}, found {found!r})")
    return ckpt


def load_training_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """The dict of a training checkpoint; ValueError naming the file if it is not one. Leave
    ``map_location`` on the CPU to resume (module docstring)."""
    return read_checkpoint(path, TRAIN_FORMAT, "training", map_location)


def build_model(meta: dict) -> torch.nn.Module:
    """The network a checkpoint's ``meta`` describes (space, options, architecture), freshly initialised."""
    return build_network(meta)


def model_from_checkpoint(path: str, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained network of a training checkpoint (rebuilt from its meta, weights loaded), in eval mode."""
    ckpt = load_training_checkpoint(path, map_location)
    model = build_model(ckpt["meta"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def infer_settings_dict(settings: InferSettings) -> dict:
    d = {"format": INFER_FORMAT}
    for name in InferSettings.__dataclass_fields__:
        value = getattr(settings, name)
        d[name] = list(value) if isinstance(value, tuple) else value
    return d


def write_inference_checkpoint(model: torch.nn.Module, settings: InferSettings, path: str, meta: dict) -> None:
    """``path`` (NAME.pt: the network as plain data, ``inference.checkpoint.model_record``: the space and
    architecture of ``meta`` and the weights on the CPU) and NAME.json (``settings``), the pair
    ``nas3d infer --model NAME.pt`` reads; each file is written atomically."""
    if not path.endswith(".pt"):
        raise ValueError(f"inference checkpoint path must end in .pt, got {path}")
    atomic_json(infer_settings_dict(settings), os.path.splitext(path)[0] + ".json")
    atomic_save(model_record(model, meta), path)
