"""Sliding-window inference with MONAI 1.6's whole contract, fast on the window_gather/window_stitch ops.

Fast path (the default wherever the arguments allow): windows are gathered in batches from the (padded)
volume in one kernel, predicted, and stitched into the output weighted by the importance map in one
deterministic pass; the normaliser (the sum of the importance maps covering each voxel) is cached per
(shape, roi, overlap, mode, sigma). With nas3d_output="labels" or nas3d_max_memory, windows are visited
slab by slab along one axis (the one that makes the slab smallest; the last axis on ties) and each slab
of the output is normalised (and argmaxed) as soon as no remaining window touches it, so memory grows
with the slab, not with volume x classes. Everything the kernels cannot take goes to the general path
(`sw_general`, MONAI's algorithm on differentiable torch ops).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..ops import window_argmax, window_gather, window_stitch
from . import heap
from .grid import (PAD_MODES, BLEND_MODES, WindowGrid, as_index, cached_normaliser, cached_weight, make_grid,
                   normaliser, resolve_overlap, resolve_roi, resolve_sigma)
from .sw_general import general_inference, with_flips

OUTPUTS = ("raw", "probs", "labels")
# nas3d's keywords before they took the nas3d_ prefix: now forwarded to the predictor, as MONAI does
LEGACY_KEYWORDS = ("output", "tta_flips", "max_memory", "accumulate_dtype", "reuse_freed_pages")


class _Fallback(Exception):
    """Raised by the fast path on a prediction it cannot stitch (a tuple or dict, another resolution, a
    gradient to keep); ``first`` is that prediction, reused by the general path for the first batch."""

    def __init__(self, first, reusable: bool):
        super().__init__("fast path fallback")
        self.first, self.reusable = first, reusable


def _check_padding(padding_mode: str, roi, image_size) -> None:
    """torch pads by reflection only less than a side (a pad p reflects p elements after the edge one)
    and circularly at most a side: refuse a roi_size that needs more, naming both arguments."""
    if padding_mode not in ("reflect", "circular"):
        return
    for d, (r, side) in enumerate(zip(roi, image_size)):
        diff = max(r - int(side), 0)
        before, after = diff // 2, diff - diff // 2
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


def _meta_tensor_class(inputs):
    """monai's MetaTensor class when inputs is one (monai is then imported already: nothing is imported)."""
    module = sys.modules.get("monai.data.meta_tensor")
    cls = getattr(module, "MetaTensor", None) if module is not None else None
    return cls if cls is not None and isinstance(inputs, cls) else None


def _check_legacy_keywords(predictor, kwargs: dict) -> None:
    """A former nas3d keyword (output=, tta_flips=, ...) is the predictor's now; refuse it, naming the new
    keyword, when the predictor's signature cannot take it (instead of a TypeError from inside it)."""
    legacy = [k for k in LEGACY_KEYWORDS if k in kwargs]
    if not legacy:
        return
    try:
        params = inspect.signature(predictor).parameters.values()
    except (TypeError, ValueError):  # no signature (a builtin): forward, as MONAI does
        return
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for k in legacy:
        if not takes_any and k not in names:
            raise TypeError(
                f"{k}= is passed to the predictor (as MONAI passes unknown keywords), which takes no {k!r}: "
                f"nas3d's own option is now keyword-only nas3d_{k}="
            )


def _fast_weight_map(roi_weight_map, roi: tuple[int, ...]):
    """The caller's roi_weight_map as a tensor when the fused stitch can use it (the roi's shape, with
    leading unit axes at most), else None."""
    w = torch.as_tensor(roi_weight_map)
    n = len(roi)
    if w.dim() >= n and tuple(w.shape[w.dim() - n :]) == roi and all(s == 1 for s in w.shape[: w.dim() - n]):
        return w.reshape(roi)
    return None


def sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: Sequence[int] | int,
    sw_batch_size: int,
    predictor: Callable[..., torch.Tensor | Sequence[torch.Tensor] | dict],
    overlap: Sequence[float] | float = 0.25,
    mode: str = "constant",
    sigma_scale: Sequence[float] | float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    roi_weight_map: torch.Tensor | None = None,
    process_fn: Callable | None = None,
    buffer_steps: int | None = None,
    buffer_dim: int = -1,
    with_coord: bool = False,
    *args,
    nas3d_output: str = "raw",
    nas3d_tta_flips: Sequence[int] = (),
    nas3d_max_memory: int | None = None,
    nas3d_accumulate_dtype: torch.dtype | None = None,
    nas3d_reuse_freed_pages: bool = False,
    **kwargs,
):
    """Predict a whole volume window by window and blend the overlapping windows (MONAI 1.6's contract).

    Every argument of ``monai.inferers.sliding_window_inference`` 1.6 keeps its position, name, default
    and meaning, and results agree with MONAI's (to float32 rounding; to the bit in the tests): windows of
    ``roi_size`` on MONAI's grid with ``overlap``, the image padded when the roi is larger (``padding_mode``,
    ``cval``) and the output cropped back, windows blended with a constant or Gaussian (``sigma_scale``)
    importance map (or ``roi_weight_map``) and normalised by the sum of the maps covering each voxel.

    **Keyword rule.** nas3d's own options are keyword-only and named ``nas3d_*`` (``nas3d_output``,
    ``nas3d_tta_flips``, ``nas3d_max_memory``, ``nas3d_accumulate_dtype``, ``nas3d_reuse_freed_pages``);
    every other extra keyword, and every extra positional argument after ``with_coord``, goes to the
    predictor unchanged, as MONAI forwards ``*args, **kwargs`` (never dropped, never taken by nas3d). The
    former names (``output=``, ``tta_flips=``, ``max_memory=``, ``accumulate_dtype=``,
    ``reuse_freed_pages=``) are therefore the predictor's too; when the predictor's signature cannot take
    one, a TypeError names its ``nas3d_`` replacement.

    **Fast and general path.** The fused gather/stitch (and the streaming of labels) runs whenever the
    arguments allow. These leave it for the general path (``nas3d_fast.inference.sw_general``, MONAI's
    algorithm on differentiable torch ops, about MONAI's speed and memory): more than 3 spatial axes,
    ``process_fn``, ``with_coord=True``, ``buffer_steps > 0``, a ``condition=`` keyword (MONAI windows it
    with the input), a ``roi_weight_map`` not of the roi's shape, inputs that require grad (with grad
    enabled), and, found on the first batch (reused, not predicted again), predictors returning a tuple,
    list or dict or an output of another spatial size, or an output that requires grad. nas3d_output
    "labels" needs no gradient and stays fast; ``nas3d_max_memory`` and ``nas3d_accumulate_dtype`` need the
    fast path (a ValueError says why otherwise).

    Args:
        inputs: (B, C, *spatial) floating tensor or monai MetaTensor, any number of spatial axes (1 to 3
            on the fast path). The computation runs in its dtype. A MetaTensor gives MetaTensor outputs
            (monai's own conversion, so metadata as MONAI returns it).
        roi_size: window size: an int for every axis, or one entry per spatial axis (list, tuple, numpy
            array; numpy integers welcome); entries <= 0 (e.g. -1) or None take the image size there.
        sw_batch_size: windows per predictor call (an int >= 1, np.int64 too).
        predictor: called as ``predictor(windows, *args, **kwargs)`` with windows (N, C, *roi) on
            ``sw_device`` (``predictor(windows, coords, *args, **kwargs)`` with ``with_coord``). Returns a
            floating tensor (N, C_out, *spatial_out), or a tuple/list or dict of them; an output whose
            spatial size differs from the roi is stitched at its own resolution (MONAI's zoom scale
            spatial_out / roi; choose roi and overlap so that the scaled windows are whole voxels).
        overlap: fraction of overlap between neighbouring windows, scalar or one per axis, in [0, 1).
        mode: "constant" (equal weights) or "gaussian" (less weight near the window edges), or MONAI's
            BlendMode.
        sigma_scale: Gaussian sigma as a fraction of the roi, scalar or one per axis (list, tuple, numpy).
        padding_mode: "constant", "reflect", "replicate" or "circular" (torch.nn.functional.pad modes).
            "reflect" needs every pad less than the image's side (a roi_size of at most 3 * side - 2),
            "circular" at most the side (3 * side); larger rois are refused with a ValueError.
        cval: fill value of constant padding.
        sw_device: device of the windows given to the predictor (default: inputs' device).
        device: device of the stitched output (default: inputs' device).
        progress: show a tqdm progress bar over the predictor calls.
        roi_weight_map: the importance map of one window (non-negative, the roi's shape, or whatever
            broadcasts against the predictions on the general path), used instead of ``mode``.
        process_fn: ``process_fn(outputs, windows, importance_map) -> (outputs, weight)``, called on every
            batch with the predictor's outputs as a tuple; its weight multiplies the outputs (MONAI builds
            the count map from the first batch's weight).
        buffer_steps: MONAI's buffered stitching: windows sorted along ``buffer_dim`` and accumulated on
            ``sw_device`` in a buffer ``buffer_steps`` window positions thick, added to the output on
            ``device`` when full; None or <= 0: no buffering. Needs one output at the roi's size.
        buffer_dim: the spatial axis of the buffers, in [-n, n) (default -1: the last).
        with_coord: pass each batch's window coordinates to the predictor as its second argument.
        nas3d_output: "raw" (MONAI's result), "probs" (its softmax over channels) or "labels" (its argmax
            over channels, (B, 1, *spatial), uint8 for C_out <= 256 classes, else int16); "probs" and
            "labels" need a predictor returning one tensor.
        nas3d_tta_flips: spatial axes (0-based, e.g. (0, 1, 2)) to mirror for test-time augmentation,
            nnU-Net style: every combination of flips of these axes is predicted, flipped back and averaged
            before the one stitch (2**len(nas3d_tta_flips) predictor calls per batch).
        nas3d_max_memory: bytes allowed for the streaming accumulator. Setting it (or
            nas3d_output="labels") streams: windows are visited slab by slab along one axis (the one with
            the smallest slab, the last axis on ties) into an accumulator one window thick, and each slab
            is normalised (softmaxed or argmaxed) and written out as soon as no remaining window touches
            it. A ValueError says so when the accumulator needs more.
        nas3d_accumulate_dtype: dtype of the accumulator, the normaliser and the raw/probs output
            (default: inputs' dtype, as MONAI); torch.float16 or torch.bfloat16 halves the memory of
            probabilities (each add is computed in float32 and rounded once).
        nas3d_reuse_freed_pages: keep freed CPU blocks in glibc's heap while the windows are predicted, so
            each batch's predictions (and the network's activations) reuse already-mapped pages instead of
            page-faulting fresh ones: faster on CPU (1.3-1.6x with a small U-Net), but the peak resident
            set grows with the heap's fragmentation (see ``nas3d_fast.inference.heap``). Not used when
            streaming, which is for bounded memory.
        *args, **kwargs: passed to the predictor (a ``condition`` tensor of the inputs' shape is windowed
            with the inputs, as MONAI does).

    Returns:
        On ``device``: a tensor (B, C_out, *spatial_out) as described under ``nas3d_output``, or a tuple
        or dict of them (dict keys sorted) as the predictor returns; spatial_out = spatial * zoom scale.
    """
    meta_cls = _meta_tensor_class(inputs)
    temp_meta = None
    if meta_cls is not None:
        temp_meta = meta_cls([]).copy_meta_from(inputs, copy_attr=False)
        inputs = inputs.as_tensor()
    if not isinstance(inputs, torch.Tensor):
        raise ValueError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() < 3:
        raise ValueError(
            f"inputs must have shape (B, C, *spatial) with at least 1 spatial axis, got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise ValueError(f"inputs must be a floating tensor, got {inputs.dtype}")
    if inputs.numel() == 0:
        raise ValueError(f"inputs must not be empty, got shape {tuple(inputs.shape)}")
    sw_batch_size = as_index(sw_batch_size, "sw_batch_size", 1)
    if not callable(predictor):
        raise ValueError(f"predictor must be callable, got {type(predictor).__name__}")
    if process_fn is not None and not callable(process_fn):
        raise ValueError(f"process_fn must be callable or None, got {type(process_fn).__name__}")
    mode = str(getattr(mode, "value", mode))
    padding_mode = str(getattr(padding_mode, "value", padding_mode))
    if mode not in BLEND_MODES:
        raise ValueError(f"mode must be one of {BLEND_MODES}, got {mode!r}")
    if padding_mode not in PAD_MODES:
        raise ValueError(f"padding_mode must be one of {PAD_MODES}, got {padding_mode!r}")
    if nas3d_output not in OUTPUTS:
        raise ValueError(f"nas3d_output must be one of {OUTPUTS}, got {nas3d_output!r}")
    n = inputs.dim() - 2
    flips = _check_flips(nas3d_tta_flips, n)
    if not isinstance(nas3d_reuse_freed_pages, bool):
        raise ValueError(f"nas3d_reuse_freed_pages must be True or False, got {nas3d_reuse_freed_pages!r}")
    if nas3d_max_memory is not None:
        try:
            nas3d_max_memory = as_index(nas3d_max_memory, "nas3d_max_memory", 1)
        except ValueError:
            raise ValueError(
                f"nas3d_max_memory must be a positive int (bytes) or None, got {nas3d_max_memory!r}") from None
    if nas3d_accumulate_dtype is not None and (
        not isinstance(nas3d_accumulate_dtype, torch.dtype) or not nas3d_accumulate_dtype.is_floating_point
    ):
        raise ValueError(
            f"nas3d_accumulate_dtype must be a floating torch.dtype or None, got {nas3d_accumulate_dtype!r}")
    buffered = buffer_steps is not None and as_index(buffer_steps, "buffer_steps (or None)", -sys.maxsize) > 0
    if buffered:
        buffer_steps = as_index(buffer_steps, "buffer_steps", 1)
        buffer_dim = as_index(buffer_dim, "buffer_dim", -n)
        if buffer_dim >= n:
            raise ValueError(f"buffer_dim must be in [{-n}, {n}) (a spatial axis), got {buffer_dim}")
        buffer_dim %= n
    image_size = tuple(inputs.shape[2:])
    condition = kwargs.get("condition")
    if condition is not None and (not isinstance(condition, torch.Tensor) or condition.dim() != inputs.dim()
                                  or (condition.shape[0], *condition.shape[2:]) != (inputs.shape[0], *image_size)):
        got = tuple(condition.shape) if isinstance(condition, torch.Tensor) else type(condition).__name__
        raise ValueError(f"condition must be a tensor (B, C', *spatial) with the inputs' batch and spatial size "
                         f"{(inputs.shape[0], *image_size)}, got {got}")
    _check_legacy_keywords(predictor, kwargs)
    roi = resolve_roi(roi_size, image_size)
    ov = resolve_overlap(overlap, n)
    sigma = resolve_sigma(sigma_scale, n) if mode == "gaussian" and roi_weight_map is None else None
    _check_padding(padding_mode, roi, image_size)
    device = torch.device(device) if device is not None else inputs.device
    sw_device = torch.device(sw_device) if sw_device is not None else inputs.device
    flip_sets = [tuple(2 + a for a in c) for k in range(len(flips) + 1) for c in itertools.combinations(flips, k)]
    predict = with_flips(predictor, flip_sets)
    weight_map = None if roi_weight_map is None else _fast_weight_map(roi_weight_map, roi)
    grad = torch.is_grad_enabled() and inputs.requires_grad and nas3d_output != "labels"
    general = [why for why, cond in (
        (f"{n} spatial axes", n > 3), ("process_fn", process_fn is not None), ("with_coord", bool(with_coord)),
        ("buffer_steps", buffered), ("condition=", condition is not None), ("inputs that require grad", grad),
        ("a roi_weight_map not of the roi's shape", roi_weight_map is not None and weight_map is None),
    ) if cond]
    first = None
    streamed = nas3d_output == "labels" or nas3d_max_memory is not None  # bounded memory: no heap reuse
    with heap.reuse_freed_pages() if nas3d_reuse_freed_pages and not streamed else contextlib.nullcontext():
        if not general:
            try:
                result = _fast(inputs, roi, ov, sw_batch_size, predict, args, kwargs, mode, sigma, padding_mode,
                               cval, sw_device, device, progress, weight_map, nas3d_output, nas3d_max_memory,
                               nas3d_accumulate_dtype)
            except _Fallback as fallback:
                general = ["a predictor output the fused stitch cannot take"]
                first = fallback.first if fallback.reusable else None
        if general:
            fast_only = (("nas3d_max_memory", nas3d_max_memory), ("nas3d_accumulate_dtype", nas3d_accumulate_dtype))
            for name, value in fast_only:
                if value is not None:
                    raise ValueError(f"{name} needs the fast path, which {', '.join(general)} leave(s)")
            result = general_inference(inputs, roi, sw_batch_size, predict, ov, mode, sigma, padding_mode, cval,
                                       sw_device, device, progress, roi_weight_map, process_fn,
                                       buffer_steps if buffered else None, buffer_dim, with_coord, args, kwargs,
                                       first=first)
            result = _finish_general(result, nas3d_output)
    if temp_meta is not None:
        from monai.utils import convert_to_dst_type  # monai is imported already: the input is its MetaTensor

        keep = {"dtype": result.dtype} if nas3d_output == "labels" else {}
        result = convert_to_dst_type(result, temp_meta, device=device, **keep)[0]
    return result


def _finish_general(result, output: str):
    """nas3d_output applied to the general path's result (one tensor for "probs" and "labels")."""
    if output == "raw":
        return result
    if not isinstance(result, torch.Tensor):
        raise ValueError(
            f"nas3d_output={output!r} needs a predictor returning one tensor, got a {type(result).__name__}")
    if output == "probs":
        return torch.softmax(result, dim=1)
    return result.argmax(1, keepdim=True).to(_labels_dtype(result.shape[1]))


def _fast(inputs, roi, ov, sw, predict, args, kwargs, mode, sigma, padding_mode, cval, sw_device, device,
          progress, weight_map, output, max_memory, accumulate_dtype) -> torch.Tensor:
    """The fused path: 1 to 3 spatial axes, one output at the roi's size (else `_Fallback`)."""
    B, C, *image_size = inputs.shape
    n = len(image_size)
    grid = make_grid(image_size, roi, ov)
    dtype = accumulate_dtype or inputs.dtype
    x = inputs.detach()  # the window ops have no gradient: this path runs only when none is needed
    if any(grid.pad):
        x = F.pad(x, list(grid.pad), mode=padding_mode, **({"value": cval} if padding_mode == "constant" else {}))
    x5 = x.reshape(B, C, *grid.shape)
    streamed = output == "labels" or max_memory is not None
    if weight_map is None:
        weight = cached_weight(grid, n, mode, sigma, dtype, device)
    else:
        weight = weight_map.to(device=device, dtype=dtype).reshape(grid.roi)
    job = _Job(grid, n, predict, args, kwargs, sw_device, device, dtype, weight, labels=output == "labels",
               reusable=not streamed)
    if streamed:
        return _streamed(job, x5, B, sw, output, max_memory, progress)
    out = _whole(job, x5, B, sw, progress)
    out.div_(cached_normaliser(grid, weight, mode, sigma) if weight_map is None else normaliser(grid, weight))
    out = job.crop(out)
    return torch.softmax(out, dim=1) if output == "probs" else out


def _check_flips(tta_flips, n: int) -> tuple[int, ...]:
    if isinstance(tta_flips, int) or not isinstance(tta_flips, Sequence):
        raise ValueError(f"nas3d_tta_flips must be a sequence of spatial axes in [0, {n}), got {tta_flips!r}")
    flips = tuple(tta_flips)
    bad = any(not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < n for a in flips)
    if bad or len(set(flips)) != len(flips):
        raise ValueError(f"nas3d_tta_flips must hold distinct spatial axes in [0, {n}), got {tta_flips!r}")
    return flips


class _Job:
    """What every batch of windows needs: the grid, the predictor and where tensors live."""

    def __init__(self, grid: WindowGrid, n, predict, args, kwargs, sw_device, device, dtype, weight, labels,
                 reusable):
        self.grid, self.n, self.predict_fn, self.args, self.kwargs = grid, n, predict, args, kwargs
        self.sw_device, self.device, self.dtype, self.weight = sw_device, device, dtype, weight
        self.labels, self.reusable, self.calls = labels, reusable, 0
        self.roi_nd = grid.roi[3 - n :]

    def predict(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, C, rd, rh, rw) windows -> (N, C_out, rd, rh, rw) predictions on the output device and dtype."""
        N, C = windows.shape[:2]
        win = windows.view(N, C, *self.roi_nd).to(self.sw_device)
        p = self.predict_fn(win, *self.args, **self.kwargs)
        fits = isinstance(p, torch.Tensor) and p.dim() == 2 + self.n and tuple(p.shape[2:]) == self.roi_nd
        if fits and p.requires_grad and torch.is_grad_enabled():
            if self.labels:
                p = p.detach()  # labels have no gradient
            else:
                fits = False
        if fits and (p.shape[0] != N or not p.is_floating_point()):
            fits = False  # the general path names the problem
        if not fits:
            if self.calls == 0:
                raise _Fallback(p, self.reusable)
            raise ValueError(f"predictor must return what it returned for the first windows: a floating tensor "
                             f"({N}, C_out, {', '.join(map(str, self.roi_nd))}), got "
                             f"{tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__}")
        self.calls += 1
        p = p.to(device=self.device, dtype=self.dtype)
        return p.reshape(N, p.shape[1], *self.grid.roi)

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
    out = None
    windows = window_gather(x5, st_in[:sw], grid.roi)
    pred = job.predict(windows)  # first: a prediction the fused stitch cannot take raises _Fallback here
    bar = _progress(progress, (total + sw - 1) // sw)
    for g in range(0, total, sw):
        if g:
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


def _streamed(job: _Job, x5, B: int, sw: int, output: str, max_memory, progress) -> torch.Tensor:
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
            f"nas3d_max_memory={max_memory} bytes is too small: streaming needs an accumulator of {need} bytes "
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
