"""Argument checks shared by the public op functions: shapes, dtypes and devices always; values (NaN,
ranges) only on real tensors in eager mode (see checking_values)."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(t, name: str, *, dim: int | None = None, dtypes=FLOAT_DTYPES) -> None:
    """Raise a ValueError naming ``name`` unless ``t`` is a tensor of rank ``dim`` and one of ``dtypes``."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype in ({allowed}), got {t.dtype}")


def check_like(t, ref, name: str, ref_name: str) -> None:
    """Raise unless ``t`` has the shape, dtype and device of ``ref``."""
    check_tensor(t, name, dtypes=None)
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")
    if t.dtype != ref.dtype:
        raise ValueError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def checking_values(*tensors: torch.Tensor) -> bool:
    """Data-dependent checks (NaN, ranges) run on real tensors in eager mode only: under torch.compile
    they would break the graph, and meta or fake tensors hold no values."""
    if torch.compiler.is_compiling():
        return False
    return not any(t.device.type == "meta" or is_fake(t) for t in tensors)
