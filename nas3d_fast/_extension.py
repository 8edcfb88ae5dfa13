"""Loads the compiled extension nas3d_fast._C, or records why it could not be loaded.

Importing nas3d_fast never fails because of _C: without it the ops run on their triton or reference
backends, and a single warning says how to build the extension.
"""

from __future__ import annotations

import importlib
import warnings

import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

BUILD_HINT = (
    "build it from a source checkout with `make install` (or `pip install --no-build-isolation -e .`); "
    "set FORCE_CPU=1 to skip the CUDA kernels"
)

_C = None
load_error: str | None = None

try:
    _C = importlib.import_module("nas3d_fast._C")
except Exception as exc:  # ImportError, or an OSError/undefined symbol from a torch version mismatch
    load_error = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        f"nas3d_fast: the compiled extension nas3d_fast._C could not be loaded ({load_error}); "
        f"ops fall back to the triton/reference backends. To get the cpu/cuda kernels, {BUILD_HINT}.",
        RuntimeWarning,
        stacklevel=2,
    )


def available() -> bool:
    """True when nas3d_fast._C is loaded (the torch.ops.nas3d C++ kernels exist)."""
    return _C is not None


def cuda_compiled() -> bool:
    """True when nas3d_fast._C carries CUDA kernels."""
    return _C is not None and bool(_C.cuda_compiled())
