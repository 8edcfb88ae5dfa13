"""Whole-volume inference: MONAI-compatible sliding-window inference on the nas3d window ops, streaming
to bounded memory, and NIfTI in/out for the `nas3d infer` command."""

from . import heap
from .grid import clear_cache
from .sliding_window import sliding_window_inference

__all__ = ["clear_cache", "heap", "sliding_window_inference"]
