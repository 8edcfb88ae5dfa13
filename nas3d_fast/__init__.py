"""nas3d_fast: fast kernels and searchers for neural architecture search in 3D medical image segmentation."""

from . import (
    _extension,  # noqa: F401  (loads nas3d_fast._C, or warns once how to build it)
    nn,
    ops,
)
from .dispatch import BackendStatus, backends, get_backend, set_backend

#: the package version (also in pyproject.toml).
__version__ = "0.1.0"

__all__ = ["BackendStatus", "__version__", "backends", "get_backend", "nn", "ops", "set_backend"]
