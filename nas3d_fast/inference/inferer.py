"""`SlidingWindowInferer`: MONAI 1.6's class of the same name, on nas3d's sliding_window_inference."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

from .grid import importance_map, resolve_sigma
from .sliding_window import sliding_window_inference


class SlidingWindowInferer:
    """Drop-in for ``monai.inferers.SlidingWindowInferer``: the same constructor arguments, defaults and
    meaning, and ``inferer(inputs, network, *args, **kwargs)`` returns what MONAI's returns. ``roi_size``,
    ``sw_batch_size``, ``overlap``, ``mode``, ``sigma_scale``, ``padding_mode``, ``cval``, ``sw_device``,
    ``device``, ``progress``, ``buffer_steps``, ``buffer_dim`` and ``with_coord`` mean what they mean to
    `sliding_window_inference` (and MONAI's).

    Args:
        cache_roi_weight_map: compute the importance map (float32, on ``device`` or the CPU) once here, for
            a roi_size given as a sequence of positive ints (else a warning, as MONAI's).
        cpu_thresh: stitch on the CPU when ``device`` is None and the image has more voxels than this.
        nas3d_options: nas3d's keyword-only ``nas3d_*`` options (``nas3d_output``, ``nas3d_tta_flips``,
            ...), passed to every call.

    Calling: ``inputs`` (B, C, *spatial) tensor or MetaTensor, ``network`` the predictor; ``*args`` and
    ``**kwargs`` go to it, except ``device``, ``buffer_steps`` and ``buffer_dim`` keywords, which replace
    the constructor's for that call (as MONAI's), and ``condition`` (windowed with the inputs, which must
    have its shape).
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.25,
        mode: str = "constant",
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: str = "constant",
        cval: float = 0.0,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        cache_roi_weight_map: bool = False,
        cpu_thresh: int | None = None,
        buffer_steps: int | None = None,
        buffer_dim: int = -1,
        with_coord: bool = False,
        **nas3d_options,
    ) -> None:
        unknown = [k for k in nas3d_options if not k.startswith("nas3d_")]
        if unknown:
            raise TypeError(f"SlidingWindowInferer got unexpected keyword argument(s) {unknown} (nas3d's own "
                            "options are named nas3d_*)")
        self.roi_size, self.sw_batch_size, self.overlap = roi_size, sw_batch_size, overlap
        self.mode = str(getattr(mode, "value", mode))
        self.sigma_scale, self.padding_mode, self.cval = sigma_scale, padding_mode, cval
        self.sw_device, self.device, self.progress, self.cpu_thresh = sw_device, device, progress, cpu_thresh
        self.buffer_steps, self.buffer_dim, self.with_coord = buffer_steps, buffer_dim, with_coord
        self.nas3d_options = nas3d_options
        self.roi_weight_map = None
        if cache_roi_weight_map:
            static = isinstance(roi_size, Sequence) and not isinstance(roi_size, str) and min(roi_size) > 0
            if static:
                roi = tuple(int(r) for r in roi_size)
                sigma = resolve_sigma(sigma_scale, len(roi)) if self.mode == "gaussian" else None
                self.roi_weight_map = importance_map(roi, self.mode, sigma, torch.float32, device or "cpu")
            else:
                warnings.warn("cache_roi_weight_map=True, but cache is not created. (dynamic roi_size?)",
                              stacklevel=2)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs):
        """Sliding-window inference of ``inputs`` with ``network`` (see the class docstring)."""
        condition = kwargs.get("condition")
        if condition is not None and tuple(condition.shape) != tuple(inputs.shape):
            raise ValueError(f"condition must match the shape of inputs {tuple(inputs.shape)}, got "
                             f"{tuple(condition.shape)}")
        device = kwargs.pop("device", self.device)
        buffer_steps = kwargs.pop("buffer_steps", self.buffer_steps)
        buffer_dim = kwargs.pop("buffer_dim", self.buffer_dim)
        if device is None and self.cpu_thresh is not None and inputs.shape[2:].numel() > self.cpu_thresh:
            device = "cpu"  # stitch in CPU memory when the image is large
        options = {**self.nas3d_options, **{k: kwargs.pop(k) for k in list(kwargs) if k.startswith("nas3d_")}}
        return sliding_window_inference(
            inputs, self.roi_size, self.sw_batch_size, network, self.overlap, self.mode, self.sigma_scale,
            self.padding_mode, self.cval, self.sw_device, device, self.progress, self.roi_weight_map, None,
            buffer_steps, buffer_dim, self.with_coord, *args, **options, **kwargs,
        )
