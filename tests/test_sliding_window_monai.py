"""MONAI 1.6's whole sliding-window contract (issue 24 item 2): every argument of
monai.inferers.sliding_window_inference and SlidingWindowInferer, compared with MONAI's result on the same
inputs; gradients, MetaTensors, buffered memory, the nas3d_* keyword rule, and that the fast path stays
the default."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import nas3d_fast.inference.sliding_window as sw_module
from nas3d_fast.inference import SlidingWindowInferer, sliding_window_inference
from nas3d_fast.inference import sw_general

monai_inferers = pytest.importorskip("monai.inferers", reason="monai (the `bench` extra) compares results")
from monai.data import MetaTensor  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-6)


def _volume(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def _mix(c_in: int, c_out: int = 3, seed: int = 1):
    """A 1x1 "convolution" for any number of spatial axes, no kwargs accepted."""
    w = torch.randn(c_out, c_in, generator=torch.Generator().manual_seed(seed))

    def predict(t):
        return torch.einsum("oc,nc...->no...", w, t)

    return predict


def assert_same(got, want):
    """Same structure (tensor, tuple or dict with the same keys), types, shapes, dtypes and values."""
    assert type(got) is type(want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            assert_same(got[k], want[k])
    elif isinstance(want, tuple):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    else:
        assert got.shape == want.shape and got.dtype == want.dtype and got.device == want.device
        torch.testing.assert_close(got, want, **TOL)


def both(*args, **kwargs):
    """(nas3d's result, MONAI's result) for the same arguments."""
    return sliding_window_inference(*args, **kwargs), monai_inferers.sliding_window_inference(*args, **kwargs)


# --- input kinds: spatial axes, roi -1, scalar/list/tuple/numpy arguments ------------------------------------
KINDS = {
    "1d": ((2, 2, 53), 16, 4, dict(overlap=0.4, mode="gaussian")),
    "2d": ((2, 2, 37, 29), (16, 12), 3, dict(overlap=(0.5, 0.25), mode="gaussian", sigma_scale=[1.0, 1.0])),
    "3d": ((1, 2, 19, 14, 17), [8, 10, 8], 3, dict(overlap=[0.5, 0.3, 0.0], mode="constant")),
    "4d": ((1, 1, 9, 7, 8, 6), (4, 4, 8, 4), 5, dict(overlap=0.5, mode="gaussian")),
    "roi-1": ((1, 1, 20, 18, 9), (8, -1, 8), 2, dict(overlap=0.5, mode="gaussian")),
    "numpy": ((1, 1, 20, 18, 9), np.array([8, -1, 6]), np.int64(3),
              dict(overlap=np.array([0.5, 0.25, 0.5]), mode="gaussian", sigma_scale=np.float64(0.3))),
    "np-scalars": ((2, 1, 15, 13), np.int64(6), np.int32(2), dict(overlap=np.float32(0.5), cval=np.float64(0.5))),
    "padded": ((1, 1, 6, 20, 5), (8, 8, 8), 2, dict(overlap=0.25, padding_mode="replicate", mode="gaussian")),
    "enum-modes": ((1, 1, 12, 13), (8, 8), 2, dict(mode=None, padding_mode=None)),
}


@pytest.mark.parametrize("kind", KINDS)
def test_input_kinds_match_monai(kind):
    from monai.utils import BlendMode, PytorchPadMode

    shape, roi, sw, kw = KINDS[kind]
    if kind == "enum-modes":
        kw = dict(mode=BlendMode.GAUSSIAN, padding_mode=PytorchPadMode.REFLECT)
    x = _volume(shape)
    assert_same(*both(x, roi, sw, _mix(shape[1]), **kw))


# --- MONAI's keywords -------------------------------------------------------------------------------------------
def test_roi_weight_map_matches_monai():
    x = _volume((1, 2, 17, 15, 12))
    roi = (8, 8, 6)
    ramp = torch.linspace(0.2, 1.0, 6)
    for w in (torch.rand(roi, generator=torch.Generator().manual_seed(3)) + 0.1,  # fast path
              (torch.ones(roi) * ramp)[None, None],  # (1, 1, *roi): fast path too
              torch.linspace(0.2, 1.0, 8).view(1, 1, 8, 1, 1)):  # broadcast along two axes: general path
        assert_same(*both(x, roi, 3, _mix(2), 0.5, "gaussian", roi_weight_map=w))


def test_process_fn_matches_monai():
    def process(outputs, windows, importance):
        assert importance.shape == (8, 6)  # MONAI hands the map without batch/channel axes
        return tuple(torch.sigmoid(o) + windows.mean() for o in outputs), importance**2

    x = _volume((2, 1, 21, 13))
    assert_same(*both(x, (8, 6), 3, _mix(1), 0.5, "gaussian", process_fn=process))


@pytest.mark.parametrize("steps,dim", [(1, -1), (2, 0), (3, 1), (10, 2)])
@pytest.mark.parametrize("batch", [1, 2])
def test_buffered_matches_monai(steps, dim, batch):
    x = _volume((batch, 2, 20, 17, 23))
    assert_same(*both(x, (8, 8, 8), 3, _mix(2), 0.5, "gaussian", buffer_steps=steps, buffer_dim=dim))


def test_buffered_allocates_less(monkeypatch):
    """The buffer on sw_device holds buffer_steps window positions along buffer_dim, not the volume."""
    sizes = []
    original = sw_general._into_buffer

    def record(*args, **kwargs):
        buf = original(*args, **kwargs)
        sizes.append(buf.numel())
        return buf

    monkeypatch.setattr(sw_general, "_into_buffer", record)
    x = _volume((1, 1, 16, 16, 64))
    got = sliding_window_inference(x, (8, 8, 8), 4, _mix(1), 0.0, buffer_steps=2, buffer_dim=-1)
    want = monai_inferers.sliding_window_inference(x, (8, 8, 8), 4, _mix(1), 0.0, buffer_steps=2, buffer_dim=-1)
    assert_same(got, want)
    assert max(sizes) == 3 * 16 * 16 * 16  # 2 positions of 8 along the last axis, 3 classes
    assert max(sizes) * 4 <= got.numel()  # a quarter of the output


def test_with_coord_matches_monai():
    seen = {"nas3d": [], "monai": []}

    def make(side):
        mix = _mix(1)

        def predict(t, coords, scale):
            seen[side].append([[(s.start, s.stop) for s in c] for c in coords])
            offsets = torch.tensor([float(c[2].start + 10 * c[3].start) for c in coords]).view(-1, 1, 1, 1)
            return mix(t) * scale + offsets

        return predict

    x = _volume((2, 1, 14, 11))
    args = (x, (6, 8), 3)
    got = sliding_window_inference(*args, make("nas3d"), 0.5, with_coord=True, scale=2.0)
    want = monai_inferers.sliding_window_inference(*args, make("monai"), 0.5, with_coord=True, scale=2.0)
    assert_same(got, want)
    assert seen["nas3d"] == seen["monai"]  # coordinates in MONAI's form and order


def test_condition_is_windowed_like_monai():
    x = _volume((1, 2, 13, 11, 9))
    condition = _volume((1, 2, 13, 11, 9), seed=5)
    assert_same(*both(x, (8, 8, 8), 2, lambda t, condition: t * condition, 0.5, condition=condition))
    inferer = SlidingWindowInferer((8, 8, 8), 2, 0.5)
    with pytest.raises(ValueError, match="condition must match the shape of inputs"):
        inferer(x, lambda t, condition: t, condition=condition[:, :1])


# --- predictor outputs: tensor, tuple, dict, other resolutions (zoom scales) ------------------------------------
def _multi(kind):
    mix = _mix(1, 2)

    def predict(t):
        p = mix(t)
        half = torch.nn.functional.avg_pool2d(p, 2) if t.dim() == 4 else torch.nn.functional.avg_pool3d(p, 2)
        double = torch.nn.functional.interpolate(p, scale_factor=2, mode="nearest")
        if kind == "tuple":
            return p, half * 3, double[:, :1]
        if kind == "dict":
            return {"low": half, "high": double, "a_seg": p}  # MONAI's order: sorted keys
        if kind == "list":
            return [half]
        return double

    return predict


@pytest.mark.parametrize("kind", ["tuple", "dict", "list", "zoomed"])
@pytest.mark.parametrize("shape,roi", [((2, 1, 20, 18), (8, 8)), ((1, 1, 6, 18, 20), (8, 8, 8))])  # 3d: padded
def test_multi_output_and_zoom_scales_match_monai(kind, shape, roi):
    x = _volume(shape)
    assert_same(*both(x, roi, 3, _multi(kind), 0.5, "gaussian"))


def test_an_output_at_the_roi_size_after_a_zoomed_one():
    """Where MONAI fails (it resizes each output's weight from the previous output's), each output is
    MONAI's result for that output alone."""
    x = _volume((1, 1, 20, 18))
    full = _multi("dict")
    got = sliding_window_inference(x, (8, 8), 3, lambda t: {"a": full(t)["low"], "b": full(t)["a_seg"]}, 0.5,
                                   "gaussian")
    for key, part in (("a", "low"), ("b", "a_seg")):
        want = monai_inferers.sliding_window_inference(x, (8, 8), 3, lambda t: full(t)[part], 0.5, "gaussian")
        torch.testing.assert_close(got[key], want, **TOL)


# --- extra arguments for the predictor ----------------------------------------------------------------------------
def test_positional_and_keyword_extras_reach_the_predictor():
    x = _volume((1, 1, 12, 12, 12))
    calls = []

    def predict(t, a, b, *, output, scale=1.0):  # no **kwargs; `output` is the predictor's keyword
        calls.append((a, b, output))
        return t * a + b * scale

    mon = (0.25, "constant", 0.125, "constant", 0.0, None, None, False, None, None, None, -1, False)
    got = sliding_window_inference(x, 8, 2, predict, *mon, 2.0, 1.0, output="mine", scale=3.0)
    want = monai_inferers.sliding_window_inference(x, 8, 2, predict, *mon, 2.0, 1.0, output="mine", scale=3.0)
    assert_same(got, want)
    assert set(calls) == {(2.0, 1.0, "mine")}
    with pytest.raises(TypeError, match="nas3d_output="):  # a former nas3d keyword the predictor cannot take
        sliding_window_inference(x, 8, 2, _mix(1), output="labels")
    with pytest.raises(TypeError, match="nas3d_tta_flips="):
        sliding_window_inference(x, 8, 2, _mix(1), tta_flips=(0,))
    # an unknown keyword is never dropped: it reaches the predictor (which refuses it here, as with MONAI)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        sliding_window_inference(x, 8, 2, _mix(1), bogus=1)


def test_nas3d_keywords_are_keyword_only_and_prefixed():
    import inspect

    params = inspect.signature(sliding_window_inference).parameters
    monai_params = list(inspect.signature(monai_inferers.sliding_window_inference).parameters)
    assert list(params)[: len(monai_params) - 2] == monai_params[:-2]  # MONAI's positions, then *args
    own = [p for p in params.values() if p.kind is p.KEYWORD_ONLY]
    assert own and all(p.name.startswith("nas3d_") for p in own)


# --- gradients, MetaTensor, determinism -------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["inputs", "parameters"])
def test_gradients_match_monai(what):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1)
    x = _volume((1, 2, 13, 11, 10))
    grads = []
    for fn in (sliding_window_inference, monai_inferers.sliding_window_inference):
        conv.zero_grad()
        xi = x.clone().requires_grad_(what == "inputs")
        out = fn(xi, (8, 8, 8), 3, conv, 0.5, "gaussian")
        assert out.requires_grad
        (out.square().sum()).backward()
        grads.append(xi.grad if what == "inputs" else conv.weight.grad.clone())
        grads.append(out.detach())
    torch.testing.assert_close(grads[0], grads[2], **TOL)
    torch.testing.assert_close(grads[1], grads[3], **TOL)


def test_labels_need_no_gradient_and_stay_fast():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1)  # parameters require grad, grad mode on
    x = _volume((1, 1, 14, 12, 10))
    labels = sliding_window_inference(x, 8, 2, conv, 0.5, nas3d_output="labels")
    with torch.no_grad():
        want = monai_inferers.sliding_window_inference(x, 8, 2, conv, 0.5).argmax(1, keepdim=True)
    assert labels.dtype == torch.uint8 and torch.equal(labels.long(), want)


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict"])
def test_metatensor_in_metatensor_out(kind):
    x = MetaTensor(_volume((1, 1, 14, 12, 10)), affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])),
                   meta={"filename_or_obj": "case.nii.gz"})
    mix = _mix(1)
    predict = {"tensor": mix, "tuple": lambda t: (mix(t), t), "dict": lambda t: {"b": mix(t), "a": t}}[kind]
    got, want = both(x, 8, 2, predict, 0.5, "gaussian")
    assert_same(got, want)
    for g, w in zip(*(list(r.values()) if isinstance(r, dict) else list(r) if isinstance(r, tuple) else [r]
                      for r in (got, want))):
        assert isinstance(g, MetaTensor)
        assert g.meta.get("filename_or_obj") == w.meta.get("filename_or_obj")
        torch.testing.assert_close(g.affine, w.affine)


def test_importing_nas3d_does_not_import_monai():
    code = "import sys, nas3d_fast, nas3d_fast.inference; assert 'monai' not in sys.modules, 'monai imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kw", [dict(), dict(buffer_steps=2), dict(with_coord=True)])
def test_repeated_runs_are_bit_identical(kw):
    x = _volume((2, 1, 17, 15, 13))
    mix = _mix(1)
    predict = (lambda t, coords: (mix(t), t)) if kw.get("with_coord") else mix
    first = sliding_window_inference(x, 8, 3, predict, 0.5, "gaussian", **kw)
    again = sliding_window_inference(x, 8, 3, predict, 0.5, "gaussian", **kw)
    for a, b in zip(first if isinstance(first, tuple) else [first], again if isinstance(again, tuple) else [again]):
        assert torch.equal(a, b)


# --- SlidingWindowInferer ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    dict(),
    dict(mode="gaussian", sigma_scale=(0.2, 0.3, 0.4), cache_roi_weight_map=True),
    dict(buffer_steps=2, buffer_dim=0, cpu_thresh=100),
    dict(with_coord=True, padding_mode="replicate"),
    dict(padding_mode="constant", cval=1.5, sw_device="cpu", device="cpu", progress=True),
])
def test_inferer_matches_monai(kw):
    x = _volume((1, 2, 10, 14, 9))
    mix = _mix(2)

    def predict(t, *rest, bias=0.0):
        return mix(t) + bias

    ours = SlidingWindowInferer((8, 8, 12), 3, 0.5, **kw)
    theirs = monai_inferers.SlidingWindowInferer((8, 8, 12), 3, 0.5, **kw)
    assert_same(ours(x, predict, bias=0.5), theirs(x, predict, bias=0.5))
    # call-time device / buffer_steps / buffer_dim replace the constructor's, as MONAI's
    assert_same(ours(x, predict, device="cpu", buffer_steps=1, buffer_dim=-1),
                theirs(x, predict, device="cpu", buffer_steps=1, buffer_dim=-1))


def test_inferer_nas3d_options_and_exports():
    import nas3d_fast.inference as inference

    assert "SlidingWindowInferer" in inference.__all__
    x = _volume((1, 1, 12, 12, 12))
    labels = SlidingWindowInferer(8, 2, 0.5, nas3d_output="labels")(x, _mix(1))
    assert labels.dtype == torch.uint8 and labels.shape == (1, 1, 12, 12, 12)
    with pytest.raises(TypeError, match="nas3d_"):
        SlidingWindowInferer(8, 2, output="labels")


# --- the fast path stays the default ------------------------------------------------------------------------------
def test_fast_path_is_the_default_and_general_where_needed(monkeypatch):
    calls = {"fast": 0, "general": 0}
    fast, general = sw_module.window_stitch, sw_module.general_inference

    def count_fast(*a, **k):
        calls["fast"] += 1
        return fast(*a, **k)

    def count_general(*a, **k):
        calls["general"] += 1
        return general(*a, **k)

    monkeypatch.setattr(sw_module, "window_stitch", count_fast)
    monkeypatch.setattr(sw_module, "general_inference", count_general)
    x = _volume((1, 1, 12, 12, 12))
    mix = _mix(1)
    sliding_window_inference(x, 8, 2, mix, 0.5, "gaussian", np.array([0.2, 0.2, 0.2]), roi_weight_map=None)
    assert calls == {"fast": 4, "general": 0}  # 8 windows in batches of 2
    calls.update(fast=0)
    calls_before = []

    def counted(t):
        calls_before.append(1)
        return mix(t), mix(t)

    sliding_window_inference(x, 8, 2, counted, 0.5)  # a tuple: found on the first batch, reused
    assert calls == {"fast": 0, "general": 1} and len(calls_before) == 4  # 8 windows, 4 calls, none twice


# --- bad input ----------------------------------------------------------------------------------------------------
def _args(**changes):
    args = dict(inputs=_volume((1, 1, 12, 12, 12)), roi_size=(8, 8, 8), sw_batch_size=2, predictor=_mix(1))
    args.update(changes)
    return args


@pytest.mark.parametrize("args,match", [
    (_args(sw_batch_size=2.5), "sw_batch_size must be an int >= 1"),
    (_args(sw_batch_size=np.int64(0)), "sw_batch_size must be an int >= 1"),
    (_args(roi_size=np.array([8.5, 8, 8])), "roi_size entries must be ints"),
    (_args(sigma_scale=[1.0, 1.0], mode="gaussian"), "sigma_scale must be a number or 3 numbers"),
    (_args(buffer_steps=2, buffer_dim=3), "buffer_dim must be in \\[-3, 3\\)"),
    (_args(buffer_steps=2.5), "buffer_steps"),
    (_args(process_fn=3), "process_fn must be callable"),
    (_args(condition=torch.zeros(1, 1, 4, 4, 4)), "condition must be a tensor"),
    (_args(predictor=lambda t: (t, t), buffer_steps=1), "buffer_steps needs a predictor with one output"),
    (_args(process_fn=lambda o, w, i: (o, i), nas3d_max_memory=1 << 20), "nas3d_max_memory needs the fast path"),
    (_args(predictor=lambda t: (t, t), nas3d_output="probs"), "nas3d_output='probs' needs a predictor returning"),
])
def test_bad_input_names_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        sliding_window_inference(**args)
