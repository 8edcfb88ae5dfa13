"""Whole-volume inference: MONAI-compatible sliding-window inference on the nas3d window ops (function and
SlidingWindowInferer class), streaming to bounded memory, and NIfTI in/out for the `nas3d infer` command."""

from . import heap
from .checkpoint import InferSettings, load_model, load_settings
from .grid import clear_cache
from .infer import predict_volume
from .inferer import SlidingWindowInferer
from .sliding_window import sliding_window_inference

__all__ = ["InferSettings", "SlidingWindowInferer", "clear_cache", "heap", "load_model", "load_settings",
           "predict_volume", "sliding_window_inference"]
