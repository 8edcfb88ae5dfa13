"""Sliding-window inference with MONAI's arguments and results, on the window_gather/window_stitch ops.

Windows are gathered in batches from the (padded) volume in one kernel, predicted, and stitched into the
output weighted by the importance map in one deterministic pass; the normaliser (the sum of the importance
maps covering each voxel) is cached per (shape, roi, overlap, mode, sigma). With output="labels" or
max_memory, windows are visited slab by slab along one axis (the one that makes the slab smallest; the
last axis on ties) and each slab of the output is normalised (and argmaxed) as soon as no remaining
window touches it, so memory grows with the slab, not with volume x classes.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..ops import window_argmax, window_gather, window_stitch
from .grid import PAD_MODES, BLEND_MODES, WindowGrid, cached_normaliser, cached_weight, make_grid
from . import heap

OUTPUTS = ("raw", "probs", "labels")


def _check_padding(padding_mode: str, grid, image_size) -> None:
    """torch pads by reflection only less than a side (a pad p reflects p elements after the edge one)
    and circularly at most a side: refuse a roi_size that needs more, naming both arguments."""
    if padding_mode not in ("reflect", "circular"):
        return
    n = len(image_size)
    roi = grid.roi[3 - n:]
    for d in range(n):
        before, after = grid.pad[2 * (n - 1 - d)], grid.pad[2 * (n - 1 - d) + 1]
        side = int(image_size[d])
        too_much = max(before, after) >= side if padding_mode == "reflect" else max(before, after) > side
        if too_much:
            limit = "less than" if padding_mode == "reflect" else "at most"
            raise ValueError(
                f"padding_mode={padding_mode!r} pads each side by {limit} the image's side, but roi_size "
                f"{tuple(roi)} on an image of spatial size {tuple(int(s) for s in image_size)} pads spatial "
                f"axis {d} (side {side}) by ({before}, {after}): use a roi_size of at most "
                f"{3 * side - 2 if padding_mode == 'reflect' else 3 * side} there, or padding_mode "
                f"'constant' or 'replicate'"
            )


def sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: Sequence[int] | int,
    sw_batch_size: int,
    predictor: Callable[..., torch.Tensor],
    overlap: Sequence[float] | float = 0.25,
    mode: str = "constant",
    sigma_scale: Sequence[float] | float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    *,
    output: str = "raw",
    tta_flips: Sequence[int] = (),
    max_memory: int | None = None,
    accumulate_dtype: torch.dtype | None = None,
    reuse_freed_pages: bool = False,
    **kwargs,
) -> torch.Tensor:
    """Predict a whole volume window by window and blend the overlapping windows (MONAI-compatible).

    The arguments shared with ``monai.inferers.sliding_window_inference`` keep its names, defaults and
    results (same output to float32 rounding for the same arguments): windows of ``roi_size`` on a regular
    grid with ``overlap`` (scalar or per axis, each in [0, 1)), the image padded when the roi is larger
    (``padding_mode``, ``cval``) and the output cropped back, windows blended with a constant or Gaussian
    (``sigma_scale``) importance map and normalised by the sum of the maps covering each voxel.

    Args:
        inputs: (B, C, *spatial) floating tensor, 1 to 3 spatial axes. The computation runs in its dtype.
        roi_size: window size, one int per spatial axis (or one int for all); entries <= 0 or None take
            the image size on that axis.
        sw_batch_size: windows per predictor call (>= 1).
        predictor: called as ``predictor(windows, **kwargs)`` with windows (N, C, *roi) on ``sw_device``;
            must return a floating tensor (N, C_out, *roi) (same spatial size as its input).
        overlap: fraction of overlap between neighbouring windows, scalar or one per axis, in [0, 1).
        mode: "constant" (equal weights) or "gaussian" (less weight near the window edges).
        sigma_scale: Gaussian sigma as a fraction of the roi, scalar or one per axis.
        padding_mode: "constant", "reflect", "replicate" or "circular" (torch.nn.functional.pad modes).
            "reflect" needs every pad less than the image's side (a roi_size of at most 3 * side - 2),
            "circular" at most the side (3 * side); larger rois are refused with a ValueError.
        cval: fill value of constant padding.
        sw_device: device of the windows given to the predictor (default: inputs' device).
        device: device of the stitched output (default: inputs' device).
        progress: show a tqdm progress bar over the predictor calls.
        output: "raw" (the stitched predictor output, as MONAI returns; (B, C_out, *spatial), inputs'
            dtype), "probs" (its softmax over channels) or "labels" (its argmax over channels,
            (B, 1, *spatial), uint8 for C_out <= 256 classes, else int16).
        tta_flips: spatial axes (0-based, e.g. (0, 1, 2)) to mirror for test-time augmentation, nnU-Net
            style: every combination of flips of these axes is predicted, flipped back and averaged
            before the one stitch (2**len(tta_flips) predictor calls per batch).
        max_memory: bytes allowed for the streaming accumulator. Setting it (or output="labels") streams:
            windows are visited slab by slab along one axis (the one with the smallest slab, the last
            axis on ties) into an accumulator one window thick, and each slab is normalised (softmaxed
            or argmaxed) and written out as soon as no remaining window touches it. A ValueError says so when the accumulator needs more.
        accumulate_dtype: dtype of the accumulator, the normaliser and the raw/probs output (default:
            inputs' dtype, as MONAI); torch.float16 or torch.bfloat16 halves the memory of probabilities
            (each add is computed in float32 and rounded once).
        reuse_freed_pages: keep freed CPU blocks in glibc's heap while the windows are predicted, so each
            batch's predictions (and the network's activations) reuse already-mapped pages instead of
            page-faulting fresh ones: faster on CPU (1.3-1.6x with a small U-Net), but the peak resident
            set grows with the heap's fragmentation (see ``nas3d_fast.inference.heap``). Not used when
            streaming (output="labels" or max_memory), which is for bounded memory.
        **kwargs: passed to the predictor.

    Returns:
        The output on ``device`` as described under ``output``.
    """
    if not isinstance(inputs, torch.Tensor):
        raise ValueError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() not in (3, 4, 5):
        raise ValueError(f"inputs must have shape (B, C, *spatial) with 1 to 3 spatial axes, got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise ValueError(f"inputs must be a floating tensor, got {inputs.dtype}")
    if inputs.numel() == 0:
        raise ValueError(f"inputs must not be empty, got shape {tuple(inputs.shape)}")
    if not isinstance(sw_batch_size, int) or isinstance(sw_batch_size, bool) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be an int >= 1, got {sw_batch_size!r}")
    if not callable(predictor):
        raise ValueError(f"predictor must be callable, got {type(predictor).__name__}")
    mode = str(getattr(mode, "value", mode))
    padding_mode = str(getattr(padding_mode, "value", padding_mode))
    if mode not in BLEND_MODES:
        raise ValueError(f"mode must be one of {BLEND_MODES}, got {mode!r}")
    if padding_mode not in PAD_MODES:
        raise ValueError(f"padding_mode must be one of {PAD_MODES}, got {padding_mode!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    n = inputs.dim() - 2
    flips = _check_flips(tta_flips, n)
    if not isinstance(reuse_freed_pages, bool):
        raise ValueError(f"reuse_freed_pages must be True or False, got {reuse_freed_pages!r}")
    if max_memory is not None and (not isinstance(max_memory, int) or isinstance(max_memory, bool) or max_memory <= 0):
        raise ValueError(f"max_memory must be a positive int (bytes) or None, got {max_memory!r}")

    B, C, *image_size = inputs.shape
    grid = make_grid(image_size, roi_size, overlap)
    _check_padding(padding_mode, grid, image_size)
    device = torch.device(device) if device is not None else inputs.device
    sw_device = torch.device(sw_device) if sw_device is not None else inputs.device
    if accumulate_dtype is not None and (
        not isinstance(accumulate_dtype, torch.dtype) or not accumulate_dtype.is_floating_point
    ):
        raise ValueError(f"accumulate_dtype must be a floating torch.dtype or None, got {accumulate_dtype!r}")
    dtype = accumulate_dtype or inputs.dtype
    x = inputs
    if any(grid.pad):
        x = F.pad(x, list(grid.pad), mode=padding_mode, **({"value": cval} if padding_mode == "constant" else {}))
    x5 = x.reshape(B, C, *grid.shape)
    weight = cached_weight(grid, n, mode, sigma_scale, dtype, device)
    job = _Job(grid, n, predictor, kwargs, flips, sw_device, device, dtype, weight)
    if output == "labels" or max_memory is not None:
        return _streamed(job, x5, B, sw_batch_size, output, max_memory, mode, sigma_scale, progress)
    with heap.reuse_freed_pages() if reuse_freed_pages else contextlib.nullcontext():
        out = _whole(job, x5, B, sw_batch_size, progress)
        out.div_(cached_normaliser(grid, weight, mode, sigma_scale))
        out = job.crop(out)
        return torch.softmax(out, dim=1) if output == "probs" else out


def _check_flips(tta_flips, n: int) -> tuple[int, ...]:
    if isinstance(tta_flips, int) or not isinstance(tta_flips, Sequence):
        raise ValueError(f"tta_flips must be a sequence of spatial axes in [0, {n}), got {tta_flips!r}")
    flips = tuple(tta_flips)
    bad = any(not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < n for a in flips)
    if bad or len(set(flips)) != len(flips):
        raise ValueError(f"tta_flips must hold distinct spatial axes in [0, {n}), got {tta_flips!r}")
    return flips


class _Job:
    """What every batch of windows needs: the grid, the predictor and where tensors live."""

    def __init__(self, grid: WindowGrid, n, predictor, kwargs, flips, sw_device, device, dtype, weight):
        self.grid, self.n, self.predictor, self.kwargs = grid, n, predictor, kwargs
        self.sw_device, self.device, self.dtype, self.weight = sw_device, device, dtype, weight
        self.roi_nd = grid.roi[3 - n :]
        # every combination of the flipped axes (the empty one first), as tensor dims
        self.flip_sets = [
            tuple(2 + a for a in combo) for k in range(len(flips) + 1) for combo in itertools.combinations(flips, k)
        ]

    def predict(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, C, rd, rh, rw) windows -> (N, C_out, rd, rh, rw) predictions on the output device and dtype."""
        N, C = windows.shape[:2]
        win = windows.view(N, C, *self.roi_nd).to(self.sw_device)
        total = None
        for dims in self.flip_sets:
            p = self._call(win.flip(dims) if dims else win, N)
            p = p.flip(dims) if dims else p
            total = p if total is None else total + p  # out of place: p may alias the windows
        if len(self.flip_sets) > 1:
            total = total / len(self.flip_sets)
        total = total.to(device=self.device, dtype=self.dtype)
        return total.reshape(N, total.shape[1], *self.grid.roi)

    def _call(self, win: torch.Tensor, N: int) -> torch.Tensor:
        p = self.predictor(win, **self.kwargs)
        if not isinstance(p, torch.Tensor):
            raise ValueError(
                f"predictor must return one tensor (N, C_out, *roi), got {type(p).__name__} "
                "(multi-output predictors are not supported)"
            )
        want = (N, *self.roi_nd)
        if p.dim() != 2 + self.n or (p.shape[0], *p.shape[2:]) != want:
            raise ValueError(
                f"predictor must return shape (N, C_out, *roi) = ({N}, C_out, {', '.join(map(str, self.roi_nd))}) "
                f"for windows {tuple(win.shape)}, got {tuple(p.shape)} (a different spatial size is not supported)"
            )
        if not p.is_floating_point():
            raise ValueError(f"predictor must return a floating tensor, got {p.dtype}")
        return p

    def crop(self, out: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) padded -> (B, C, *spatial) of the original image (a view)."""
        B, Co = out.shape[:2]
        index = tuple(slice(b, e) for b, e in self.grid.crop[3 - self.n :])
        return out.reshape(B, Co, *self.grid.shape[3 - self.n :])[(slice(None), slice(None), *index)]


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="batch", desc="sliding window")


def _whole(job: _Job, x5: torch.Tensor, B: int, sw: int, progress: bool) -> torch.Tensor:
    """Every window, in MONAI's order, stitched into one (B, C_out, D, H, W) accumulator."""
    grid = job.grid
    per_image = grid.window_starts()
    num_win = per_image.shape[0]
    starts = torch.cat(
        [torch.arange(B).repeat_interleave(num_win)[:, None], per_image.repeat(B, 1)], dim=1
    ).contiguous()
    st_in = starts.to(x5.device)
    st_out = st_in if job.device == x5.device else starts.to(job.device)
    total = starts.shape[0]
    bar = _progress(progress, (total + sw - 1) // sw)
    out = None
    windows = window_gather(x5, st_in[:sw], grid.roi)
    for g in range(0, total, sw):
        pred = job.predict(windows)
        # The next windows are gathered into the block these windows free, and this prediction is freed
        # before the next one is made, into its block (fewer fresh pages, see heap.py).
        windows = None
        if g + sw < total:
            windows = window_gather(x5, st_in[g + sw : g + 2 * sw], grid.roi)
        if out is None:
            out = torch.zeros((B, pred.shape[1], *grid.shape), dtype=job.dtype, device=job.device)
        window_stitch(out, pred, job.weight, st_out[g : g + pred.shape[0]])
        del pred
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def _labels_dtype(classes: int) -> torch.dtype:
    if classes <= 256:
        return torch.uint8
    if classes <= 32768:
        return torch.int16
    raise ValueError(f"output='labels' supports up to 32768 classes, the predictor returned {classes}")


def stream_axis(grid: WindowGrid) -> int:
    """The spatial axis (0, 1, 2 of the 3D grid) to stream along: the one whose slab accumulator (the
    volume with that axis cut to one window) is smallest; ties go to the later axis (the last by default)."""
    sizes = [grid.shape[0] * grid.shape[1] * grid.shape[2] // grid.shape[a] * grid.roi[a] for a in range(3)]
    return min(range(3), key=lambda a: (sizes[a], -a))


def _streamed(job: _Job, x5, B: int, sw: int, output: str, max_memory, mode, sigma_scale, progress) -> torch.Tensor:
    """Slab by slab along one axis (`stream_axis`): an accumulator one window thick on that axis, each
    slab finalised (normalised, softmaxed or argmaxed) as soon as the next window position has begun."""
    grid = job.grid
    a = stream_axis(grid)
    others = [d for d in range(3) if d != a]
    groups = grid.starts[a]
    cross = torch.tensor([(p, q) for p in grid.starts[others[0]] for q in grid.starts[others[1]]], dtype=torch.int64)
    per_group = cross.shape[0]
    bar = _progress(progress, B * len(groups) * ((per_group + sw - 1) // sw))
    acc = count = result = ones = None
    for b in range(B):
        for k, g0 in enumerate(groups):
            rows = torch.zeros((per_group, 4), dtype=torch.int64)
            rows[:, 1 + others[0]] = cross[:, 0]
            rows[:, 1 + others[1]] = cross[:, 1]
            stitch_starts = rows.to(job.device)  # batch 0 and axis a at 0 in the accumulator
            rows = rows.clone()
            rows[:, 0] = b
            rows[:, 1 + a] = g0
            gather_starts = rows.to(x5.device)
            for g in range(0, per_group, sw):
                windows = window_gather(x5, gather_starts[g : g + sw], grid.roi)
                pred = job.predict(windows)
                del windows
                N, Co = pred.shape[:2]
                if acc is None:
                    acc, count, result = _allocate(job, a, B, Co, output, max_memory)
                    ones = torch.ones(grid.roi, dtype=job.dtype, device=job.device)
                window_stitch(acc, pred, job.weight, stitch_starts[g : g + N])
                del pred  # before the next prediction is allocated
                if count is not None:
                    window_stitch(count, job.weight.expand(N, 1, *grid.roi), ones, stitch_starts[g : g + N])
                if bar is not None:
                    bar.update(1)
            # [g0, end) on axis a is final: every later window starts at or after the next group
            end = groups[k + 1] if k + 1 < len(groups) else grid.shape[a]
            c0, c1 = grid.crop[a]
            lo, hi = max(g0, c0), min(end, c1)
            if hi > lo:
                _finalise(acc, count, result, b, output, a, grid.crop, (lo - g0, hi - g0), lo - c0)
            _shift(acc, 2 + a, end - g0)
            if count is not None:
                _shift(count, 2 + a, end - g0)
    if bar is not None:
        bar.close()
    n = job.n
    return result.reshape(*result.shape[:2], *(e - s for s, e in grid.crop[3 - n :]))


def _allocate(job: _Job, a: int, B: int, Co: int, output: str, max_memory):
    grid = job.grid
    slab = list(grid.shape)
    slab[a] = grid.roi[a]
    item = torch.empty((), dtype=job.dtype).element_size()
    voxels = slab[0] * slab[1] * slab[2]
    need = (Co + (0 if output == "labels" else 1)) * voxels * item
    if max_memory is not None and need > max_memory:
        raise ValueError(
            f"max_memory={max_memory} bytes is too small: streaming needs an accumulator of {need} bytes "
            f"({Co} classes{'' if output == 'labels' else ' + 1 normaliser'} x slab {tuple(slab)} (one window "
            f"thick on axis {a}) x {item} bytes)"
        )
    acc = torch.zeros((1, Co, *slab), dtype=job.dtype, device=job.device)
    count = None if output == "labels" else torch.zeros((1, 1, *slab), dtype=job.dtype, device=job.device)
    size = tuple(e - s for s, e in grid.crop)
    if output == "labels":
        result = torch.empty((B, 1, *size), dtype=_labels_dtype(Co), device=job.device)
    else:
        result = torch.empty((B, Co, *size), dtype=job.dtype, device=job.device)
    return acc, count, result


def _finalise(acc, count, result, b, output, a, crop, span, out_at) -> None:
    """Write the accumulator's range ``span`` on axis a (cropped to ``crop`` on the other axes) to
    result[b] at ``out_at`` on axis a, in chunks along another axis (bounded temporaries)."""
    src = [slice(s, e) for s, e in crop]
    src[a] = slice(*span)
    dst = [slice(0, e - s) for s, e in crop]
    dst[a] = slice(out_at, out_at + span[1] - span[0])
    if output == "labels":  # one fused pass over the whole slab, no temporaries
        window_argmax(acc[(0, slice(None), *src)], None, out=result[(b, 0, *dst)])
        return
    cut = 0 if a != 0 else 1  # chunk along the first axis that is not streamed
    s0, s1 = crop[cut]
    plane = acc.shape[1] * 8
    for d in range(3):
        if d != cut:
            plane *= src[d].stop - src[d].start
    step = max(1, (32 << 20) // max(plane, 1))  # <= ~8 MiB of temporaries per chunk, few parallel regions
    for i in range(s0, s1, step):
        j = min(i + step, s1)
        src[cut] = slice(i, j)
        dst[cut] = slice(i - s0, j - s0)
        block = acc[(0, slice(None), *src)]
        target = result[(b, slice(None), *dst)]
        block = block / count[(0, slice(None), *src)]
        target.copy_(torch.softmax(block, dim=0) if output == "probs" else block)


def _shift(buf: torch.Tensor, dim: int, by: int) -> None:
    """Move [by, n) of buf along dim to [0, n - by) and zero the rest (chunks of <= by never overlap)."""
    n = buf.shape[dim]
    keep = n - by
    for j in range(0, keep, by):
        w = min(by, keep - j)
        buf.narrow(dim, j, w).copy_(buf.narrow(dim, by + j, w))
    buf.narrow(dim, max(keep, 0), n - max(keep, 0)).zero_()
