"""Backend availability and choice.

Four backends implement every op: ``reference`` (plain PyTorch, the ground truth), ``cpu`` (C++ kernels
in nas3d_fast._C), ``cuda`` (CUDA kernels in nas3d_fast._C) and ``triton`` (Triton kernels). For each
call the first backend in the op's order that has no reason to refuse the inputs runs; a forced backend
(``set_backend(name)`` or the environment variable ``NAS3D_BACKEND``) runs or fails with its reasons.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from . import _extension

BACKENDS = ("reference", "cpu", "cuda", "triton")
_ENV = "NAS3D_BACKEND"


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here at all; ``reason`` says why not ('' when usable)."""

    name: str
    usable: bool
    reason: str = ""


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _cuda_capability() -> tuple[int, int] | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability()


def _status(name: str) -> BackendStatus:
    if name == "reference":
        return BackendStatus(name, True)
    if name == "cpu":
        if not _extension.available():
            return BackendStatus(
                name, False, f"nas3d_fast._C could not be loaded ({_extension.load_error}); {_extension.BUILD_HINT}"
            )
        return BackendStatus(name, True)
    if name == "cuda":
        reasons = []
        if not _extension.available():
            reasons.append(f"nas3d_fast._C could not be loaded; {_extension.BUILD_HINT}")
        elif not _extension.cuda_compiled():
            reasons.append(
                "nas3d_fast._C was built without CUDA kernels (no nvcc or CPU torch at build time, or FORCE_CPU=1)"
            )
        if torch.version.cuda is None:
            reasons.append(f"torch {torch.__version__} is a CPU build")
        elif not torch.cuda.is_available():
            reasons.append("no CUDA device is visible")
        return BackendStatus(name, not reasons, "; ".join(reasons))
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return BackendStatus(name, False, "triton is not installed (pip install triton)")
        if _triton_interpret():
            return BackendStatus(name, True, "")
        cap = _cuda_capability()
        if cap is None:
            return BackendStatus(
                name,
                False,
                "no CUDA GPU (set TRITON_INTERPRET=1 to run the Triton kernels on CPU tensors, for testing)",
            )
        if cap < (8, 0):
            return BackendStatus(
                name, False, f"GPU compute capability {cap[0]}.{cap[1]} < 8.0; the cuda backend serves it"
            )
        return BackendStatus(name, True)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


_STATUS_CACHE: dict[str, BackendStatus] = {}


def status(name: str) -> BackendStatus:
    """The (cached) availability of one backend on this machine."""
    if name not in _STATUS_CACHE:
        _STATUS_CACHE[name] = _status(name)
    return _STATUS_CACHE[name]


def backends() -> dict[str, BackendStatus]:
    """Every backend with whether it is usable on this machine and, if not, why."""
    return {name: status(name) for name in BACKENDS}


def _check_name(name: str | None, source: str) -> str | None:
    if name is None or name == "" or name == "auto":
        return None
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} or 'auto', got {name!r}")
    return name


_forced: str | None = _check_name(os.environ.get(_ENV), _ENV)
_forced_by = _ENV if _forced else ""


def set_backend(name: str | None) -> None:
    """Force every op to run on backend ``name`` ('reference', 'cpu', 'cuda', 'triton'), or restore
    automatic choice with None or 'auto'. Overrides the NAS3D_BACKEND environment variable."""
    global _forced, _forced_by
    _forced = _check_name(name, "set_backend(name)")
    _forced_by = "set_backend()" if _forced else ""


def get_backend() -> str | None:
    """The forced backend, or None when each call chooses automatically."""
    return _forced


def device_reasons(name: str, device: torch.device) -> list[str]:
    """Why backend ``name`` cannot run tensors on ``device`` (empty when it can)."""
    st = status(name)
    if not st.usable:
        return [st.reason]
    kind = device.type
    if name == "cpu" and kind not in ("cpu", "meta"):
        return [f"runs CPU tensors, got {kind} tensors"]
    if name == "cuda" and kind not in ("cuda", "meta"):
        return [f"runs CUDA tensors, got {kind} tensors"]
    if name == "triton":
        if kind == "cpu" and not _triton_interpret():
            return ["runs CPU tensors only under TRITON_INTERPRET=1"]
        if kind not in ("cpu", "cuda"):
            return [f"runs CUDA tensors, got {kind} tensors"]
    return []


_CHOICE_CACHE: dict[tuple, str] = {}


def choose(op: str, device: torch.device, cuda_order: tuple[str, ...], extra_reasons=None) -> str:
    """The backend that runs ``op`` on tensors of ``device``.

    ``cuda_order`` is the op's preference among backends for CUDA tensors (the faster first);
    ``extra_reasons(name) -> list[str]`` adds op-specific refusals (dtype, sizes). Raises a RuntimeError
    that lists every backend's reasons when none can run.
    """

    if extra_reasons is None:  # the answer depends only on these: ops call this on every step
        key = (device.type, cuda_order, _forced)
        if key not in _CHOICE_CACHE:
            _CHOICE_CACHE[key] = _choose(op, device, cuda_order, None)
        return _CHOICE_CACHE[key]
    return _choose(op, device, cuda_order, extra_reasons)


def _choose(op: str, device: torch.device, cuda_order: tuple[str, ...], extra_reasons) -> str:
    def reasons(name: str) -> list[str]:
        found = device_reasons(name, device)
        if not found and extra_reasons is not None:
            found = list(extra_reasons(name))
        return found

    if _forced is not None:
        refused = reasons(_forced)
        if refused:
            raise RuntimeError(
                f"{op}: backend {_forced!r} (forced by {_forced_by}) cannot run these inputs: {'; '.join(refused)}"
            )
        return _forced
    if device.type == "cuda":
        order = (*cuda_order, "reference")
    elif device.type == "cpu":
        order = ("cpu", "reference")
    else:  # meta: the compiled op traces through its fake kernel; else the plain-PyTorch reference
        order = ("cpu", "reference")
    refusals = {}
    for name in order:
        refused = reasons(name)
        if not refused:
            return name
        refusals[name] = refused
    listing = "; ".join(f"{n}: {', '.join(r)}" for n, r in refusals.items())
    raise RuntimeError(f"{op}: no backend can run inputs on {device}: {listing}")
