"""nas3d_fast: fast kernels and searchers for neural architecture search in 3D medical image segmentation."""

from . import (
    _extension,  # noqa: F401  (loads nas3d_fast._C, or warns once how to build it)
    ops,
)
from .dispatch import BackendStatus, backends, get_backend, set_backend

__version__ = "0.1.0"

__all__ = ["BackendStatus", "backends", "get_backend", "ops", "set_backend", "__version__"]
