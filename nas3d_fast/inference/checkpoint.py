"""The inference checkpoint format and its preprocessing.

A checkpoint is two files side by side:

- ``NAME.pt``: the network as plain data (``format: nas3d-model-1``): ``space``, ``space_options``,
  ``arch`` (its JSON), ``in_channels``, ``num_classes`` and the ``state_dict``, as ``nas3d train`` writes
  ``best.pt``. It is read with ``torch.load(weights_only=True)``, which runs no code from the file, and
  the network is rebuilt from the recorded space and architecture. The network maps a
  (N, in_channels, *roi) float32 batch to (N, num_classes, *roi) logits.
  A whole pickled ``torch.nn.Module`` (``torch.save(model, "NAME.pt")``, for a network from outside the
  package) is read only with ``trust_pickle=True`` (``nas3d infer --trust-pickle``): unpickling runs
  whatever code the file names, so do that only for files you trust.
- ``NAME.json`` (optional; defaults below), the preprocessing and inference settings::

      {
        "format": "nas3d-infer-1",
        "in_channels": 1,                  # channels the model expects (NIfTI 4th axis, or 1)
        "roi_size": [96, 96, 96],          # sliding-window size in voxels
        "overlap": 0.5,                    # scalar or one per axis, in [0, 1)
        "mode": "gaussian",                # "constant" | "gaussian"
        "sw_batch_size": 4,
        "tta_flips": [0, 1, 2],            # axes mirrored by `nas3d infer --tta`
        "intensity": {"kind": "ct", "window": [-1000, 1000], "mean": 0.0, "std": 1.0},
        "preprocessing": {"spacing": [1.5, 1.5, 1.5], "intensity": {...}, "crop_nonzero": true}
      }

  ``preprocessing`` (optional; ``nas3d train`` records its own) is the training's whole preprocessing
  (``nas3d_fast.data.Preprocessing``): an image is cropped to its non-zero region, resampled to the
  training spacing and normalised exactly as in training (``data.preprocess_case``, with the statistics
  of the non-zero voxels where the training took them), predicted there, and the labels are put back on
  the image's own grid and affine (``data.restore_labels``: nearest, or with ``resample_probabilities``
  the class probabilities resampled linearly before the argmax, nnU-Net's way). It replaces
  ``intensity`` when present.

  ``intensity`` is the training preprocessing's own dict, applied by the same function
  (``nas3d_fast.data.preprocess.normalise_intensity``), so an image is normalised at inference exactly as
  it was for training: "none" (as stored); "zscore" (per channel: subtract the mean, divide by the
  standard deviation; MRI), with ``"nonzero"`` (default true) taking the statistics of the non-zero
  voxels only and setting the others to 0; or "ct" (clip to ``window``, then subtract ``mean`` and
  divide by ``std`` when given, else scale the window to [0, 1]). Without ``preprocessing`` images are
  predicted on their own grid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

FORMAT = "nas3d-infer-1"
MODEL_FORMAT = "nas3d-model-1"
MODEL_KEYS = ("space", "space_options", "arch", "in_channels", "num_classes", "state_dict")


@dataclass
class InferSettings:
    in_channels: int = 1
    roi_size: tuple[int, ...] = (96, 96, 96)
    overlap: float | tuple[float, ...] = 0.5
    mode: str = "gaussian"
    sw_batch_size: int = 4
    tta_flips: tuple[int, ...] = (0, 1, 2)
    intensity: dict = field(default_factory=lambda: {"kind": "none"})
    preprocessing: dict | None = None


def settings_path(model_path: str) -> str:
    return os.path.splitext(model_path)[0] + ".json"


def load_settings(model_path: str) -> InferSettings:
    """The JSON beside ``model_path`` (NAME.json for NAME.pt), or the defaults when there is none."""
    path = settings_path(model_path)
    if not os.path.exists(path):
        return InferSettings()
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"checkpoint settings {path} are not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"checkpoint settings {path} must hold a JSON object, got {type(raw).__name__}")
    if raw.get("format", FORMAT) != FORMAT:
        raise ValueError(f"checkpoint settings {path} have format {raw.get('format')!r}, expected {FORMAT!r}")
    known = set(InferSettings.__dataclass_fields__)
    unknown = set(raw) - known - {"format"}
    if unknown:
        raise ValueError(f"checkpoint settings {path} have unknown keys {sorted(unknown)}; known: {sorted(known)}")
    s = InferSettings(**{k: v for k, v in raw.items() if k in known})
    s.roi_size = tuple(s.roi_size) if isinstance(s.roi_size, (list, tuple)) else s.roi_size
    s.overlap = tuple(s.overlap) if isinstance(s.overlap, list) else s.overlap
    s.tta_flips = tuple(s.tta_flips)
    kind = s.intensity.get("kind") if isinstance(s.intensity, dict) else None
    if kind not in ("none", "zscore", "ct"):
        raise ValueError(f"checkpoint settings {path}: intensity.kind must be 'none', 'zscore' or 'ct', got {kind!r}")
    if kind == "ct" and not (isinstance(s.intensity.get("window"), list) and len(s.intensity["window"]) == 2):
        raise ValueError(f"checkpoint settings {path}: intensity 'ct' needs window: [low, high]")
    if s.preprocessing is not None:
        from ..data.preprocess import Preprocessing

        try:
            Preprocessing.from_dict(s.preprocessing)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"checkpoint settings {path}: preprocessing: {exc}") from exc
    return s


def build_network(record: dict) -> torch.nn.Module:
    """The network a record describes (``space``, ``space_options``, ``arch`` JSON or parsed,
    ``in_channels``, ``num_classes``), freshly initialised."""
    from ..spaces import base

    space = base.get(record["space"], **record.get("space_options", {}))
    arch = record["arch"]
    arch = space.arch_from_json(arch if isinstance(arch, str) else json.dumps(arch))
    return space.build(arch, int(record["in_channels"]), int(record["num_classes"]))


def model_record(model: torch.nn.Module, meta: dict) -> dict:
    """The plain-data ``NAME.pt`` of ``model`` (module docstring); ``meta`` names its space and arch."""
    record = {"format": MODEL_FORMAT, **{k: meta[k] for k in MODEL_KEYS[:-1]}}
    record["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return record


def load_model(model_path: str, device: torch.device, trust_pickle: bool = False) -> torch.nn.Module:
    """The network of ``model_path`` on ``device``, in eval mode (module docstring). ValueError naming the
    file for a missing, truncated or unreadable file, a format this version does not know, weights that
    do not fit the recorded architecture, or a pickled module without ``trust_pickle``."""
    if not os.path.isfile(model_path):
        raise ValueError(f"--model {model_path} is not a file")
    try:
        obj = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not isinstance(exc, __import__("pickle").UnpicklingError):
            raise ValueError(f"--model {model_path} is not readable (truncated or not a torch.save file): "
                             f"{type(exc).__name__}: {exc}") from exc
        if not trust_pickle:
            raise ValueError(
                f"--model {model_path} holds pickled Python objects (a whole module, or other code), which "
                "loading would run; nas3d train writes plain-data checkpoints. If you trust the file, pass "
                f"--trust-pickle (trust_pickle=True). ({str(exc).splitlines()[0]})"
            ) from None
        try:
            obj = torch.load(model_path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise ValueError(f"--model {model_path} is not readable: {type(exc2).__name__}: {exc2}") from exc2
    if isinstance(obj, torch.nn.Module):
        if not trust_pickle:  # a module whose classes weights_only allows: still code-defined, refuse the same
            raise ValueError(f"--model {model_path} is a pickled module; pass --trust-pickle if you trust it")
        return obj.to(device).eval()
    if not isinstance(obj, dict) or "format" not in obj:
        raise ValueError(f"--model {model_path} holds a {type(obj).__name__}, expected a {MODEL_FORMAT} checkpoint")
    if obj["format"] != MODEL_FORMAT:
        raise ValueError(f"--model {model_path} has format {obj['format']!r}; this nas3d_fast reads {MODEL_FORMAT!r} "
                         "(a newer format needs a newer nas3d_fast)")
    missing = [k for k in MODEL_KEYS if k not in obj]
    if missing:
        raise ValueError(f"--model {model_path} lacks {missing} of a {MODEL_FORMAT} checkpoint")
    try:
        model = build_network(obj)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--model {model_path}: its space or architecture cannot be rebuilt: {exc}") from exc
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"--model {model_path}: the weights do not match its architecture: {exc}") from exc
    return model.to(device).eval()


def preprocess(image: torch.Tensor, intensity: dict) -> torch.Tensor:
    """Intensity preprocessing of a (1, C, X, Y, Z) float32 CPU image: the training's own
    (module docstring)."""
    from ..data.preprocess import normalise_intensity

    if intensity.get("kind", "none") == "none":
        return image
    return torch.from_numpy(normalise_intensity(image[0].numpy(), intensity))[None]
