"""Sliding-window gather, stitch and argmax: the kernels of whole-volume inference (nas3d_fast.inference).

Both ops work on 5D tensors (B, C, D, H, W); 1D/2D volumes are viewed as 5D with unit leading spatial
axes by the caller. Windows are named by an (N, 4) int64 tensor of rows (b, z, y, x): the batch index
and the first voxel of each window. Neither op has a gradient (inference only).

One rule for ``starts`` on every backend: any strides are accepted (a transposed, sliced or expanded
tensor); the op reads a contiguous copy of its N x 4 values, made once here before dispatch. The bounds
check of the start values cannot overflow (``0 <= start <= size - roi``, not ``start + roi <= size``).
Tensors written in place (``out``) must not overlap themselves (e.g. an expanded tensor) nor the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _extension, dispatch
from ..reference import window as reference
from ._checks import check_tensor, checking_values

# For CUDA tensors: the CUDA kernels first (one C++ launch per window costs less host time than Triton's).
CUDA_ORDER = ("cuda", "triton")


def _check_starts(starts, like: torch.Tensor, n_expected: int | None = None) -> None:
    check_tensor(starts, "starts", dim=2, dtypes=(torch.int64,))
    if starts.shape[1] != 4:
        raise ValueError(f"starts must have shape (N, 4) with rows (b, z, y, x), got {tuple(starts.shape)}")
    if starts.device != like.device:
        raise ValueError(f"starts must be on the device of the volume ({like.device}), got {starts.device}")
    if n_expected is not None and starts.shape[0] != n_expected:
        raise ValueError(f"starts must have one row per window of pred ({n_expected}), got {starts.shape[0]}")


def _overlaps_itself(t: torch.Tensor) -> bool:
    """True when two elements of t share memory (an expanded or as_strided view); torch's own test."""
    return torch._debug_has_internal_overlap(t) == 1  # 0: no, 1: yes, 2: too hard to tell (treated as no)


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """[first, last) byte range of t's elements in its storage."""
    if t.numel() == 0:
        return (0, 0)
    first = t.storage_offset()
    last = first + sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if st > 0)
    low = first + sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if st < 0)
    return (low * t.element_size(), (last + 1) * t.element_size())


def _check_no_alias(written: torch.Tensor, name: str, others) -> None:
    """Refuse inputs whose memory overlaps the tensor written in place (the result would depend on the
    backend's order of reads and writes)."""
    if written.device.type == "meta" or not checking_values(written):
        return
    if _overlaps_itself(written):
        raise ValueError(f"{name} must not overlap itself (e.g. an expanded tensor): it is written in place")
    if written.numel() == 0:
        return
    ptr = written.untyped_storage().data_ptr()
    lo, hi = _extent(written)
    for other, other_name in others:
        if other is None or other.numel() == 0 or other.untyped_storage().data_ptr() != ptr:
            continue
        olo, ohi = _extent(other)
        if olo < hi and lo < ohi:
            raise ValueError(f"{other_name} must not share memory with {name} (which is written in place)")


def _check_start_values(starts: torch.Tensor, shape: Sequence[int], roi: Sequence[int], what: str) -> None:
    """Every window inside ``shape`` (B, C, D, H, W); one host copy of the (small) starts."""
    if not checking_values(starts) or starts.numel() == 0:
        return
    s = starts.cpu()
    upper = torch.tensor([shape[0] - 1, shape[2] - roi[0], shape[3] - roi[1], shape[4] - roi[2]])
    bad = ((s < 0) | (s > upper)).any(dim=1)
    if bool(bad.any()):
        n = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"starts[{n}] = {s[n].tolist()} puts a window of {list(roi)} outside {what} of shape {list(shape)} "
            f"(rows are (b, z, y, x) with 0 <= b < B and 0 <= start <= size - roi)"
        )


def _check_roi(roi, volume: torch.Tensor) -> list[int]:
    if isinstance(roi, torch.Size):
        roi = list(roi)
    if not isinstance(roi, (list, tuple)) or len(roi) != 3 or not all(isinstance(r, int) for r in roi):
        raise ValueError(f"roi must be 3 ints (rd, rh, rw), got {roi!r}")
    spatial = list(volume.shape[2:])
    if any(r < 1 or r > s for r, s in zip(roi, spatial)):
        raise ValueError(f"roi must lie in [1, volume.shape[2:]] = [1, {spatial}], got {list(roi)}")
    return [int(r) for r in roi]


def window_gather(volume: torch.Tensor, starts: torch.Tensor, roi: Sequence[int]) -> torch.Tensor:
    """Copy N windows out of a volume into one batch, in one kernel.

    Args:
        volume: (B, C, D, H, W) float16/bfloat16/float32/float64, any strides (e.g. a padded image).
        starts: (N, 4) int64 on volume's device, rows (b, z, y, x), any strides; each window
            volume[b, :, z:z+rd, y:y+rh, x:x+rw] must lie inside the volume (else a ValueError naming
            starts: 0 <= b < B, 0 <= z <= D - rd, ...).
        roi: (rd, rh, rw), the window extent in voxels.

    Returns:
        (N, C, rd, rh, rw) contiguous, volume's dtype and device; row n is window n.
    """
    check_tensor(volume, "volume", dim=5)
    _check_starts(starts, volume)
    roi = _check_roi(roi, volume)
    starts = starts.contiguous()  # one rule for every backend: any strides
    backend = dispatch.choose("window_gather", volume.device, CUDA_ORDER)
    if backend not in ("cpu", "cuda"):  # the compiled kernels check the start values themselves
        _check_start_values(starts, volume.shape, roi, "the volume")
    return _GATHER[backend](volume, starts, roi)


def window_stitch(out: torch.Tensor, pred: torch.Tensor, weight: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Accumulate weighted windows into ``out`` in place: for n = 0, 1, ..., N-1 in this order,
    out[b, :, z:z+rd, y:y+rh, x:x+rw] += weight * pred[n] with (b, z, y, x) = starts[n].

    Deterministic: each voxel's sum is formed in window order (windows one after the other, the voxels
    of one window in parallel), with no atomics; the product weight * pred is rounded before the add,
    as in MONAI's ``out[idx] += importance_map * seg_prob``. Accumulates in out's dtype (float32
    arithmetic for float16/bfloat16, which is the optional low-precision accumulation).

    Args:
        out: (B, C, D, H, W) contiguous accumulator, float16/bfloat16/float32/float64, modified in place.
        pred: (N, C, rd, rh, rw) predicted windows, out's dtype and device, any strides (stride 0 too),
            not sharing memory with out.
        weight: (rd, rh, rw) importance map of one window, out's dtype and device, any strides, not
            sharing memory with out.
        starts: (N, 4) int64 rows (b, z, y, x) on out's device, any strides; each window must lie inside
            out (else a ValueError naming starts).

    Returns:
        out.
    """
    check_tensor(out, "out", dim=5)
    check_tensor(pred, "pred", dim=5)
    check_tensor(weight, "weight", dim=3)
    for t, name in ((pred, "pred"), (weight, "weight")):
        if t.dtype != out.dtype:
            raise ValueError(f"{name} must have the dtype of out ({out.dtype}), got {t.dtype}")
        if t.device != out.device:
            raise ValueError(f"{name} must be on the device of out ({out.device}), got {t.device}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous (it is accumulated in place)")
    if pred.shape[1] != out.shape[1]:
        raise ValueError(f"pred must have the channels of out ({out.shape[1]}), got shape {tuple(pred.shape)}")
    if tuple(weight.shape) != tuple(pred.shape[2:]):
        raise ValueError(
            f"weight must have the window shape of pred {tuple(pred.shape[2:])}, got {tuple(weight.shape)}"
        )
    if any(r > s for r, s in zip(pred.shape[2:], out.shape[2:])):
        raise ValueError(f"pred windows {tuple(pred.shape[2:])} must fit in out {tuple(out.shape[2:])}")
    _check_starts(starts, out, pred.shape[0])
    _check_no_alias(out, "out", ((pred, "pred"), (weight, "weight")))
    weight = weight.contiguous()
    starts = starts.contiguous()  # one rule for every backend: any strides
    backend = dispatch.choose("window_stitch", out.device, CUDA_ORDER)
    if backend not in ("cpu", "cuda"):
        _check_start_values(starts, out.shape, pred.shape[2:], "out")
    _STITCH[backend](out, pred, weight, starts)
    return out


LABEL_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
_LABEL_MAX = {torch.uint8: 255, torch.int16: 32767, torch.int32: 2**31 - 1, torch.int64: 2**63 - 1}


def labels_dtype(classes: int) -> torch.dtype:
    """The smallest labels dtype of window_argmax for ``classes`` classes: uint8 up to 256, int16 up to
    32768, else int64."""
    if classes <= 256:
        return torch.uint8
    if classes <= 32768:
        return torch.int16
    return torch.int64


def window_argmax(acc: torch.Tensor, weight_sum: torch.Tensor | None = None, *, out: torch.Tensor | None = None):
    """Labels of a slab of the stitched accumulator in one pass: the argmax over classes of the normalised
    scores, with no per-class temporaries.

    out[z, y, x] = argmax over c of acc[c, z, y, x] / weight_sum[z, y, x], the quotient rounded to acc's
    dtype (MONAI's ``(output / count_map).argmax(1)``); without ``weight_sum``, the argmax of acc itself
    (equal up to near-ties the division's rounding may merge, since the weight sum is positive). As
    torch.argmax: the first of equal maxima wins, and NaN beats every number.

    Args:
        acc: (C, D, H, W) float16/bfloat16/float32/float64, any strides (e.g. a cropped view of an
            accumulator (1, C, D', H', W') indexed at batch 0).
        weight_sum: None, or (D, H, W) of acc's dtype and device, any strides (stride 0 broadcasts): the sum
            of the importance maps covering each voxel, > 0.
        out: None, or (D, H, W) uint8/int16/int32/int64 on acc's device, any strides that do not
            overlap (an expanded out is refused: which label would land is undefined), not sharing memory
            with acc or weight_sum, written in place; by default a new contiguous tensor of
            ``labels_dtype(C)``.

    Returns:
        out, the (D, H, W) labels.
    """
    check_tensor(acc, "acc", dim=4)
    if acc.shape[0] < 1:
        raise ValueError(f"acc must have at least one class, got shape {tuple(acc.shape)}")
    spatial = tuple(acc.shape[1:])
    if weight_sum is not None:
        check_tensor(weight_sum, "weight_sum", dim=3)
        if tuple(weight_sum.shape) != spatial:
            raise ValueError(f"weight_sum must have the spatial shape of acc {spatial}, got {tuple(weight_sum.shape)}")
        if weight_sum.dtype != acc.dtype:
            raise ValueError(f"weight_sum must have the dtype of acc ({acc.dtype}), got {weight_sum.dtype}")
        if weight_sum.device != acc.device:
            raise ValueError(f"weight_sum must be on the device of acc ({acc.device}), got {weight_sum.device}")
    if out is None:
        out = torch.empty(spatial, dtype=labels_dtype(acc.shape[0]), device=acc.device)
    else:
        check_tensor(out, "out", dim=3, dtypes=LABEL_DTYPES)
        if tuple(out.shape) != spatial:
            raise ValueError(f"out must have the spatial shape of acc {spatial}, got {tuple(out.shape)}")
        if out.device != acc.device:
            raise ValueError(f"out must be on the device of acc ({acc.device}), got {out.device}")
        if acc.shape[0] - 1 > _LABEL_MAX[out.dtype]:
            raise ValueError(f"out of dtype {out.dtype} cannot hold {acc.shape[0]} classes; use int16 or wider")
        _check_no_alias(out, "out", ((acc, "acc"), (weight_sum, "weight_sum")))
    backend = dispatch.choose("window_argmax", acc.device, CUDA_ORDER)
    _ARGMAX[backend](acc, weight_sum, out)
    return out


def _gather_compiled(volume, starts, roi):
    return torch.ops.nas3d.window_gather.default(volume, starts, roi)


def _stitch_compiled(out, pred, weight, starts):
    torch.ops.nas3d.window_stitch.default(out, pred, weight, starts)


def _gather_triton(volume, starts, roi):
    from ..kernels.triton import window as triton_window  # noqa: F401  (registers the triton ops)

    return torch.ops.nas3d.window_gather_triton(volume, starts, roi)


def _stitch_triton(out, pred, weight, starts):
    from ..kernels.triton import window as triton_window  # noqa: F401

    torch.ops.nas3d.window_stitch_triton(out, pred, weight, starts)


def _argmax_compiled(acc, weight_sum, out):
    torch.ops.nas3d.window_argmax.default(acc, weight_sum, out)


def _argmax_triton(acc, weight_sum, out):
    from ..kernels.triton import window as triton_window  # noqa: F401

    torch.ops.nas3d.window_argmax_triton(acc, weight_sum, out)


_GATHER = {
    "reference": reference.window_gather,
    "cpu": _gather_compiled,
    "cuda": _gather_compiled,
    "triton": _gather_triton,
}
_STITCH = {
    "reference": reference.window_stitch,
    "cpu": _stitch_compiled,
    "cuda": _stitch_compiled,
    "triton": _stitch_triton,
}


_ARGMAX = {
    "reference": reference.window_argmax,
    "cpu": _argmax_compiled,
    "cuda": _argmax_compiled,
    "triton": _argmax_triton,
}


def _fake_gather(volume, starts, roi):
    return volume.new_empty((starts.shape[0], volume.shape[1], *roi))


def _fake_stitch(out, pred, weight, starts):
    return None


def _fake_argmax(acc, weight_sum, labels):
    return None


if _extension.available():
    torch.library.register_fake("nas3d::window_gather")(_fake_gather)
    torch.library.register_fake("nas3d::window_stitch")(_fake_stitch)
    torch.library.register_fake("nas3d::window_argmax")(_fake_argmax)
