"""The inference checkpoint format (until the training issue's checkpoints land) and its preprocessing.

A checkpoint is two files side by side:

- ``NAME.pt``: a whole ``torch.nn.Module`` saved with ``torch.save(model, "NAME.pt")``. It maps a
  (N, in_channels, *roi) float32 batch to (N, num_classes, *roi) logits. Loading unpickles Python
  objects (``torch.load(weights_only=False)``): load only checkpoints you trust, with the model's class
  importable.
- ``NAME.json`` (optional; defaults below), the preprocessing and inference settings::

      {
        "format": "nas3d-infer-1",
        "in_channels": 1,                  # channels the model expects (NIfTI 4th axis, or 1)
        "roi_size": [96, 96, 96],          # sliding-window size in voxels
        "overlap": 0.5,                    # scalar or one per axis, in [0, 1)
        "mode": "gaussian",                # "constant" | "gaussian"
        "sw_batch_size": 4,
        "tta_flips": [0, 1, 2],            # axes mirrored by `nas3d infer --tta`
        "intensity": {"kind": "ct", "window": [-1000, 1000], "mean": 0.0, "std": 1.0}
      }

  ``intensity`` is the training preprocessing's own dict, applied by the same function
  (``nas3d_fast.data.preprocess.normalise_intensity``), so an image is normalised at inference exactly as
  it was for training: "none" (as stored); "zscore" (per channel: subtract the mean, divide by the
  standard deviation; MRI), with ``"nonzero"`` (default true) taking the statistics of the non-zero
  voxels only and setting the others to 0; or "ct" (clip to ``window``, then subtract ``mean`` and
  divide by ``std`` when given, else scale the window to [0, 1]). Resampling to a target spacing is not
  part of this format: images are predicted on their own grid, so the label map shares the input's affine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

FORMAT = "nas3d-infer-1"


@dataclass
class InferSettings:
    in_channels: int = 1
    roi_size: tuple[int, ...] = (96, 96, 96)
    overlap: float | tuple[float, ...] = 0.5
    mode: str = "gaussian"
    sw_batch_size: int = 4
    tta_flips: tuple[int, ...] = (0, 1, 2)
    intensity: dict = field(default_factory=lambda: {"kind": "none"})


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
    return s


def load_model(model_path: str, device: torch.device) -> torch.nn.Module:
    if not os.path.isfile(model_path):
        raise ValueError(f"--model {model_path} is not a file")
    try:
        model = torch.load(model_path, map_location=device, weights_only=False)
    except Exception as exc:
        raise ValueError(f"--model {model_path} is not a torch.save'd module: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model {model_path} holds a {type(model).__name__}, expected a torch.nn.Module")
    return model.to(device).eval()


def preprocess(image: torch.Tensor, intensity: dict) -> torch.Tensor:
    """Intensity preprocessing of a (1, C, X, Y, Z) float32 CPU image: the training's own
    (module docstring)."""
    from ..data.preprocess import normalise_intensity

    if intensity.get("kind", "none") == "none":
        return image
    return torch.from_numpy(normalise_intensity(image[0].numpy(), intensity))[None]
