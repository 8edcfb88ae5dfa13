"""The general path of sliding-window inference: MONAI 1.6's semantics on plain (differentiable) torch ops.

`sliding_window_inference` takes this path for what the fused gather/stitch kernels cannot do: more than
3 spatial axes, predictors returning a tuple or dict or outputs at another resolution (MONAI's zoom
scales), ``process_fn``, ``with_coord``, buffered stitching (``buffer_steps``), a ``condition`` keyword
windowed with the input, and gradients (the window ops have none). It follows MONAI's algorithm step by
step (window order, batching, importance map, count map, rounding of each product, crop), so results
agree with ``monai.inferers.sliding_window_inference`` to float rounding, usually to the bit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .grid import importance_map, pad_amounts, scan_starts

_NEAREST = "nearest-exact"  # how MONAI resizes the importance map to an output at another resolution


def split_outputs(out) -> tuple[Callable, tuple]:
    """A predictor's result as (rebuild, parts): parts are the tensors in MONAI's order (a dict's values by
    sorted key); rebuild(parts) gives the same kind back (tensor, tuple or dict; a tuple or list of one tensor
    gives that tensor)."""
    if isinstance(out, torch.Tensor):
        return (lambda parts: parts[0]), (out,)
    if isinstance(out, Mapping):
        keys = sorted(out.keys())
        return (lambda parts: dict(zip(keys, parts))), tuple(out[k] for k in keys)
    if isinstance(out, (list, tuple)):  # one tensor in a tuple or list comes back alone, as MONAI's
        return (lambda parts: parts[0] if len(parts) == 1 else tuple(parts)), tuple(out)
    raise ValueError(f"predictor must return a tensor, a tuple/list of tensors or a dict of tensors, got "
                     f"{type(out).__name__}")


def with_flips(predictor: Callable, flip_sets: Sequence[tuple[int, ...]]) -> Callable:
    """The predictor averaged over mirrored windows (nas3d_tta_flips): for every set of tensor dims in
    ``flip_sets`` (the empty set first) the windows are flipped, predicted and each output flipped back
    (outputs at another resolution too); extra arguments pass through unchanged."""
    if len(flip_sets) <= 1:
        return predictor

    def predict(windows, *args, **kwargs):
        total, rebuild = None, None
        for dims in flip_sets:
            rebuild, parts = split_outputs(predictor(windows.flip(dims) if dims else windows, *args, **kwargs))
            parts = [p.flip(dims) if dims else p for p in parts]
            total = parts if total is None else [t + p for t, p in zip(total, parts)]  # out of place: aliasing
        return rebuild([t / len(flip_sets) for t in total])

    return predict


def _check_parts(parts, n: int, batch: int) -> None:
    for k, p in enumerate(parts):
        if not isinstance(p, torch.Tensor) or p.dim() != n + 2 or p.shape[0] != batch:
            got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"predictor must return tensors (N, C_out, *spatial) with N = {batch} windows and "
                             f"{n} spatial axes, got {got} for output {k}")
        if not p.is_floating_point():
            raise ValueError(f"predictor must return floating tensors, got {p.dtype} for output {k}")


def _pad(x: torch.Tensor, pad, padding_mode: str, cval: float) -> torch.Tensor:
    return F.pad(x, list(pad), mode=padding_mode, **({"value": cval} if padding_mode == "constant" else {}))


def _scaled(window: Sequence[slice], scale) -> tuple[slice, ...]:
    """A window's spatial slices on an output at another resolution (MONAI: int(start * z), int(stop * z))."""
    if scale is None:
        return tuple(window)
    return tuple(slice(int(s.start * z), int(s.stop * z)) for s, z in zip(window, scale))


def _buffer_plan(windows, B: int, sw: int, dim: int, steps: int):
    """MONAI's buffered order: windows sorted (stably) by their start on ``dim``; each buffer holds
    ``steps`` positions on that axis. Returns the windows and per buffer (b, batches, c0, c1): the image,
    its batches of per-image window indices (never across buffers) and the buffer's extent on ``dim``."""
    windows = sorted(windows, key=lambda w: w[dim].start)
    firsts = [w[dim].start for w in windows]
    ends = [i + 1 for i in range(len(firsts)) if i + 1 == len(firsts) or firsts[i + 1] != firsts[i]]
    cuts = [0, *ends][:: min(len(ends), steps)]
    if cuts[-1] < ends[-1]:
        cuts.append(ends[-1])
    plan = []
    for b in range(B):
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            batches = [range(g, min(g + sw, hi)) for g in range(lo, hi, sw)]
            plan.append((b, batches, windows[lo][dim].start, windows[hi - 1][dim].stop))
    return windows, plan


def general_inference(x: torch.Tensor, roi: tuple[int, ...], sw: int, predictor: Callable, overlap, mode: str,
                      sigma, padding_mode: str, cval: float, sw_device, device, progress: bool, roi_weight_map,
                      process_fn, buffer_steps: int | None, buffer_dim: int, with_coord: bool, args, kwargs,
                      first=None):
    """MONAI's sliding-window inference of x (B, C, *spatial), any number of spatial axes.

    roi, overlap (and sigma, for mode "gaussian") are resolved per axis; buffer_dim is in [0, n). Windows
    (N, C, *roi) go to ``predictor(windows, *args, **kwargs)`` (``predictor(windows, coords, *args,
    **kwargs)`` with_coord, coords being N lists [slice(b, b + 1), slice(None), *window slices] in padded
    image coordinates). It returns tensors (N, C_k, *spatial_k): the output k is (B, C_k, *(image *
    spatial_k / roi)) in x's dtype on ``device``, packed like the predictor's result. ``first``: the
    predictor's result for the first batch when the fast path already computed it (not predicted again).
    """
    n = x.dim() - 2
    B, image_size, dtype = x.shape[0], tuple(x.shape[2:]), x.dtype
    kwargs = dict(kwargs)
    condition = kwargs.pop("condition", None)
    pad = pad_amounts(image_size, roi)
    if any(pad):
        x = _pad(x, pad, padding_mode, cval)
        condition = None if condition is None else _pad(condition, pad, padding_mode, cval)
    padded = tuple(x.shape[2:])
    starts = [scan_starts(padded[d], roi[d], overlap[d]) for d in range(n)]
    windows = [tuple(slice(s, s + roi[d]) for d, s in enumerate(w)) for w in itertools.product(*starts)]
    T = len(windows)
    buffered = buffer_steps is not None and buffer_steps > 0
    if buffered:
        windows, plan = _buffer_plan(windows, B, sw, buffer_dim, buffer_steps)
        # (global window indices, buffer number, whether the batch is the buffer's last)
        batches = [(range(b * T + r.start, b * T + r.stop), k, j == len(rs) - 1)
                   for k, (b, rs, _, _) in enumerate(plan) for j, r in enumerate(rs)]
    else:
        batches = [(range(g, min(g + sw, B * T)), None, False) for g in range(0, B * T, sw)]
    if roi_weight_map is not None:
        imp = torch.as_tensor(roi_weight_map)
    else:
        imp = importance_map(roi, mode, sigma, dtype, sw_device)
        imp = imp if process_fn else imp[None, None]
    imp = imp.to(device=sw_device, dtype=dtype)
    outs, counts, buf, rebuild = [], [], None, None
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches)
    for i, (idx, k, flush) in enumerate(batches):
        coords = [[slice(j // T, j // T + 1), slice(None), *windows[j % T]] for j in idx]
        win = (torch.cat([x[tuple(c)] for c in coords]) if sw > 1 else x[tuple(coords[0])]).to(sw_device)
        if condition is not None:
            kwargs["condition"] = (torch.cat([condition[tuple(c)] for c in coords]) if sw > 1
                                   else condition[tuple(coords[0])]).to(sw_device)
        if first is not None and i == 0:
            result = first
        else:
            result = predictor(win, coords, *args, **kwargs) if with_coord else predictor(win, *args, **kwargs)
        rebuild, parts = split_outputs(result)
        _check_parts(parts, n, len(idx))
        w = imp
        if process_fn:
            parts, w = process_fn(parts, win, imp)
        w = (w[None, None] if w.dim() == n else w).to(dtype=dtype, device=sw_device)
        if buffered:
            buf = _into_buffer(buf, parts, w, coords, plan[k], padded, roi, buffer_dim, dtype, sw_device)
            if not flush:
                continue
            if not outs:
                outs.append(torch.zeros((B, buf.shape[1], *padded), dtype=dtype, device=device))
                counts.append(_count(windows, None, w, padded, dtype, device))
            at = [slice(None)] * (n + 2)
            at[0], at[buffer_dim + 2] = slice(plan[k][0], plan[k][0] + 1), slice(plan[k][2], plan[k][3])
            outs[0][tuple(at)] += buf.to(device=device)
            buf = None
            continue
        chain = w
        for s, p in enumerate(parts):
            scale, ws = None, w
            if tuple(p.shape[2:]) != roi:
                # MONAI resizes the weight of each output from the previous output's (a chain; for an
                # output at the roi's size after a resized one, where MONAI fails, the roi's weight)
                scale = [o / float(r) for o, r in zip(p.shape[2:], roi)]
                ws = chain = F.interpolate(chain, tuple(p.shape[2:]), mode=_NEAREST)
            if len(outs) <= s:
                size = [int(i * z) for i, z in zip(padded, scale)] if scale else list(padded)
                outs.append(torch.zeros((B, p.shape[1], *size), dtype=dtype, device=device))
                counts.append(_count(windows, scale, ws, size, dtype, device))
            p = (p * ws).to(p.dtype).to(device)  # MONAI multiplies in place, in the prediction's dtype
            for c, pc in zip(coords, p):
                outs[s][(c[0], c[1], *_scaled(c[2:], scale))] += pc
    results = []
    for out, count in zip(outs, counts):
        out = out / count
        if any(pad):
            zoom = [o / r for o, r in zip(out.shape[2:], roi)]
            before = [pad[2 * (n - 1 - d)] for d in range(n)]
            crop = [slice(int(round(b * z)), int(round((b + s) * z))) for b, s, z in zip(before, image_size, zoom)]
            out = out[(slice(None), slice(None), *crop)]
        results.append(out)
    return rebuild(results)


def _count(windows, scale, w: torch.Tensor, size, dtype, device) -> torch.Tensor:
    """(1, 1, *size): the weight summed over every window (MONAI's count map, made from the first weight)."""
    count = torch.zeros((1, 1, *size), dtype=dtype, device=device)
    w = w.to(device)
    for window in windows:
        count[(slice(None), slice(None), *_scaled(window, scale))] += w
    return count


def _into_buffer(buf, parts, w, coords, buffer, padded, roi, dim: int, dtype, sw_device):
    """Add one batch of weighted windows into the buffer (1, C, *padded with ``dim`` cut to the buffer's
    extent) on sw_device, allocated for the buffer's first batch."""
    _, _, c0, c1 = buffer
    if len(parts) != 1:
        raise ValueError(f"buffer_steps needs a predictor with one output, got {len(parts)} outputs (MONAI's "
                         "buffered stitching keeps only the first one; use buffer_steps=None)")
    p = parts[0]
    if tuple(p.shape[2:]) != roi:
        raise ValueError(f"buffer_steps needs outputs of the window's size {roi}, got {tuple(p.shape[2:])} "
                         "(outputs at another resolution need buffer_steps=None)")
    if buf is None:
        size = list(padded)
        size[dim] = c1 - c0
        buf = torch.zeros((1, p.shape[1], *size), dtype=dtype, device=sw_device)
    for c, pc in zip(coords, p):
        at = list(c)
        at[0] = slice(0, 1)
        at[dim + 2] = slice(c[dim + 2].start - c0, c[dim + 2].start - c0 + roi[dim])
        buf[tuple(at)] += pc * w
    return buf
