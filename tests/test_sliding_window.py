"""sliding_window_inference against MONAI's, on every backend: equal results for the same arguments,
bit-identical repeat runs, streaming labels/probs against the whole-volume result, TTA, bad inputs."""

from __future__ import annotations

import pytest
import torch
from harness import backend_params, forced_backend

from nas3d_fast.inference import sliding_window_inference

monai_inferers = pytest.importorskip("monai.inferers", reason="monai (the `bench` extra) compares results")


def conv_predictor(c_in: int, c_out: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d(c_in, c_out, 3, padding=1)

    def predict(x):
        with torch.no_grad():
            return conv(x)

    return predict


def _volume(shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# (shape, roi, overlap, mode, sw_batch_size): sides that are no multiple of the roi, scalar and
# per-axis overlap, roi larger than the image on some axes, batch 1 and 7, B = 2.
CASES = [
    ((1, 1, 37, 41, 29), (16, 16, 16), 0.25, "constant", 1),
    ((1, 2, 37, 41, 29), (16, 20, 12), 0.5, "gaussian", 7),
    ((2, 1, 33, 26, 30), (16, 16, 16), (0.5, 0.3, 0.0), "gaussian", 7),
    ((1, 1, 33, 26, 30), (12, 16, 20), (0.0, 0.75, 0.6), "constant", 7),
    ((1, 1, 10, 41, 13), (16, 16, 16), 0.5, "gaussian", 3),  # roi larger than the image on 2 axes
    ((2, 1, 9, 7, 11), (12, 12, 12), 0.25, "constant", 1),  # roi larger everywhere
    ((1, 1, 30, 30, 30), (16, -1, 16), 0.8, "gaussian", 7),  # -1: the image size
]


@pytest.mark.parametrize("shape,roi,overlap,mode,sw", CASES)
def test_matches_monai(shape, roi, overlap, mode, sw):
    x = _volume(shape)
    pred = conv_predictor(shape[1])
    want = monai_inferers.sliding_window_inference(x, roi, sw, pred, overlap=overlap, mode=mode)
    got = sliding_window_inference(x, roi, sw, pred, overlap=overlap, mode=mode)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "constant"])
def test_padding_modes_match_monai(padding_mode):
    x = _volume((1, 1, 10, 20, 9))
    pred = conv_predictor(1)
    kw = dict(overlap=0.5, mode="gaussian", padding_mode=padding_mode, cval=0.5 if padding_mode == "constant" else 0.0)
    want = monai_inferers.sliding_window_inference(x, (12, 12, 12), 2, pred, **kw)
    got = sliding_window_inference(x, (12, 12, 12), 2, pred, **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dims", [1, 2])
def test_fewer_spatial_axes_match_monai(dims):
    shape = (2, 2, 37, 29)[: 2 + dims] if dims == 2 else (2, 2, 53)
    roi = (16, 12)[:dims]
    x = _volume(shape)
    weights = torch.randn(3, shape[1], dtype=torch.float32)

    def pred(t):  # a 1x1 "convolution" for any rank
        return torch.einsum("oc,nc...->no...", weights, t)

    want = monai_inferers.sliding_window_inference(x, roi, 4, pred, overlap=0.4, mode="gaussian")
    got = sliding_window_inference(x, roi, 4, pred, overlap=0.4, mode="gaussian")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    labels = sliding_window_inference(x, roi, 4, pred, overlap=0.4, mode="gaussian", nas3d_output="labels")
    assert labels.shape == (shape[0], 1, *shape[2:])
    assert torch.equal(labels[:, 0].long(), want.argmax(1))


def test_float64_matches_monai():
    x = _volume((1, 1, 21, 19, 17), dtype=torch.float64)
    conv = conv_predictor(1)

    def pred(t):
        return conv(t.float()).double()

    want = monai_inferers.sliding_window_inference(x, 8, 3, pred, overlap=0.5, mode="gaussian")
    got = sliding_window_inference(x, 8, 3, pred, overlap=0.5, mode="gaussian")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,device", backend_params())
def test_backends_match_monai_and_repeat_bit_identical(backend, device):
    shape, roi = (1, 2, 19, 14, 17), (8, 10, 8)
    x = _volume(shape).to(device)
    pred = conv_predictor(2)
    want = monai_inferers.sliding_window_inference(x.cpu(), roi, 3, pred, overlap=0.5, mode="gaussian")
    with forced_backend(backend):
        first = sliding_window_inference(x, roi, 3, pred, overlap=0.5, mode="gaussian")
        torch.testing.assert_close(first.cpu(), want, rtol=1e-5, atol=1e-6)
        for _ in range(2):
            assert torch.equal(sliding_window_inference(x, roi, 3, pred, overlap=0.5, mode="gaussian"), first)
        labels = sliding_window_inference(x, roi, 3, pred, overlap=0.5, mode="gaussian", nas3d_output="labels")
        again = sliding_window_inference(x, roi, 3, pred, overlap=0.5, mode="gaussian", nas3d_output="labels")
        assert torch.equal(again, labels)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize(
    "shape,roi,overlap,sw",
    [  # streamed along axis 1, 2 (the last, with a roi larger than the image on axis 0) and 0
        ((2, 1, 37, 41, 29), (16, 16, 16), 0.5, 4),
        ((1, 1, 9, 30, 50), (12, 12, 16), (0.25, 0.5, 0.7), 7),
        ((1, 1, 50, 20, 21), (8, 8, 8), 0.3, 5),
    ],
)
def test_streaming_labels_equal_argmax_of_probs(mode, shape, roi, overlap, sw):
    x = _volume(shape)
    pred = conv_predictor(1, c_out=4)
    probs = sliding_window_inference(x, roi, sw, pred, overlap=overlap, mode=mode, nas3d_output="probs")
    torch.testing.assert_close(probs.sum(1), torch.ones_like(probs[:, 0]))
    labels = sliding_window_inference(x, roi, sw, pred, overlap=overlap, mode=mode, nas3d_output="labels")
    assert labels.dtype == torch.uint8 and labels.shape == (shape[0], 1, *shape[2:])
    assert torch.equal(labels[:, 0].long(), probs.argmax(1))


@pytest.mark.parametrize("output", ["raw", "probs"])
def test_streaming_with_max_memory_matches_whole_volume(output):
    x = _volume((2, 1, 23, 30, 41))
    pred = conv_predictor(1)
    kw = dict(overlap=(0.5, 0.25, 0.6), mode="gaussian", nas3d_output=output)
    whole = sliding_window_inference(x, (10, 12, 16), 4, pred, **kw)
    streamed = sliding_window_inference(x, (10, 12, 16), 4, pred, nas3d_max_memory=1 << 30, **kw)
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("streamed", [False, True])
def test_float16_accumulation_of_probabilities(streamed):
    x = _volume((1, 1, 20, 24, 28))
    pred = conv_predictor(1)
    kw = dict(overlap=0.5, mode="gaussian", nas3d_output="probs")
    full = sliding_window_inference(x, 12, 4, pred, **kw)
    half = sliding_window_inference(x, 12, 4, pred, nas3d_accumulate_dtype=torch.float16,
                                    nas3d_max_memory=(1 << 30) if streamed else None, **kw)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), full, rtol=0, atol=3e-3)


def test_max_memory_too_small_is_refused():
    x = _volume((1, 1, 20, 20, 20))
    with pytest.raises(ValueError, match="nas3d_max_memory=1000 bytes is too small"):
        sliding_window_inference(x, 8, 2, conv_predictor(1), nas3d_output="labels", nas3d_max_memory=1000)


def test_labels_int16_for_many_classes():
    x = _volume((1, 1, 12, 12, 12))
    weights = torch.randn(300, 1)

    def pred(t):
        return torch.einsum("oc,nc...->no...", weights, t)

    labels = sliding_window_inference(x, 8, 2, pred, overlap=0.5, nas3d_output="labels")
    assert labels.dtype == torch.int16
    raw = sliding_window_inference(x, 8, 2, pred, overlap=0.5)
    assert torch.equal(labels[:, 0].long(), raw.argmax(1))


def test_tta_flips_average_mirrored_predictions():
    x = _volume((1, 1, 20, 18, 22))
    roi = (8, 8, 8)
    ramp = torch.linspace(0.0, 1.0, 8)

    def pred(t):  # not mirror-symmetric: weights grow along the last window axis
        return t * ramp

    def symmetric(t):  # what averaging over a flip of the last axis gives
        return t * (ramp + ramp.flip(0)) / 2

    got = sliding_window_inference(x, roi, 3, pred, overlap=0.5, nas3d_tta_flips=(2,))
    want = sliding_window_inference(x, roi, 3, symmetric, overlap=0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # flips of axes the predictor is symmetric in change nothing
    torch.testing.assert_close(
        sliding_window_inference(x, roi, 3, pred, overlap=0.5, nas3d_tta_flips=(0, 1)),
        sliding_window_inference(x, roi, 3, pred, overlap=0.5),
        rtol=1e-5,
        atol=1e-6,
    )


def test_kwargs_reach_the_predictor():
    x = _volume((1, 1, 12, 12, 12))
    got = sliding_window_inference(x, 8, 2, lambda t, scale: t * scale, overlap=0.5, scale=2.0)
    torch.testing.assert_close(got, 2 * x)


def _bad(**changes):
    args = dict(inputs=_volume((1, 1, 12, 12, 12)), roi_size=(8, 8, 8), sw_batch_size=2, predictor=lambda t: t)
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "args,match",
    [
        (_bad(roi_size=(8, 8)), "roi_size must have one entry per spatial axis"),
        (_bad(roi_size=(8, 8, 8, 8)), "roi_size must have one entry per spatial axis"),
        (_bad(overlap=1.0), "overlap must be in \\[0, 1\\)"),
        (_bad(overlap=-0.1), "overlap must be in \\[0, 1\\)"),
        (_bad(overlap=(0.5, 0.5, 1.2)), "overlap must be in \\[0, 1\\)"),
        (_bad(overlap=(0.5, 0.5)), "overlap must be a number or 3 numbers"),
        # (outputs of another spatial size and tuples are MONAI's zoom scales and multi-output: see
        # test_sliding_window_monai.py)
        (_bad(predictor=lambda t: t[..., 0]), "predictor must return tensors \\(N, C_out, \\*spatial\\)"),
        (_bad(predictor=lambda t: t[:1]), "predictor must return tensors \\(N, C_out, \\*spatial\\) with N = 2"),
        (_bad(predictor=lambda t: "mask"), "predictor must return a tensor, a tuple/list of tensors or a dict"),
        (_bad(predictor=lambda t: t.long()), "predictor must return floating tensors"),
        (_bad(inputs=torch.zeros(12, 12)), "inputs must have shape \\(B, C, \\*spatial\\)"),
        (_bad(inputs=torch.zeros(1, 1, 12, 12, 12, 12)), "roi_size must have one entry per spatial axis"),
        (_bad(inputs=torch.zeros(1, 1, 12, 12, 12, dtype=torch.int64)), "inputs must be a floating tensor"),
        (_bad(sw_batch_size=0), "sw_batch_size must be an int >= 1"),
        (_bad(mode="linear"), "mode must be one of"),
        (_bad(padding_mode="edge"), "padding_mode must be one of"),
        (_bad(nas3d_output="mask"), "nas3d_output must be one of"),
        (_bad(nas3d_tta_flips=(3,)), "nas3d_tta_flips must hold distinct spatial axes"),
        (_bad(nas3d_max_memory=-5), "nas3d_max_memory must be a positive int"),
        (_bad(nas3d_accumulate_dtype=torch.int8), "nas3d_accumulate_dtype must be a floating torch.dtype"),
    ],
)
def test_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        sliding_window_inference(**args)


def test_progress_bar(capsys):
    x = _volume((1, 1, 12, 12, 12))
    out = sliding_window_inference(x, 8, 2, lambda t: t, overlap=0.5, progress=True)
    torch.testing.assert_close(out, x)
    assert "sliding window" in capsys.readouterr().err


def test_benchmark_suite_has_the_issue_ratio_keys():
    from benchmarks.sliding_window import SUITE

    keys = {r.key for r in SUITE.ratios}
    assert keys == {
        "cheap_gaussian.speedup_vs_monai",
        "cheap_gaussian.memory_vs_monai",
        "labels_large.speedup_vs_monai",
        "labels_large.memory_vs_monai",
        "unet.speedup_vs_monai",
        "unet_reuse.speedup_vs_monai",  # the opt-in reuse_freed_pages, beyond the issue's table
        "unet_reuse.memory_vs_monai",
        "cheap_gaussian.speedup_ceiling",  # diagnostic: MONAI over the cheap predictor alone
    }
    for r in SUITE.ratios:
        SUITE.case(r.case), SUITE.case(r.baseline)  # both sides exist


@pytest.mark.parametrize("padding_mode", ["reflect", "circular"])
def test_finding5_padding_mode_needs_an_image_larger_than_the_padding(padding_mode):
    """Issue 27 finding 5: reflect/circular padding of an image smaller than half the roi surfaced torch's
    padding error without naming padding_mode or roi_size."""
    x = _volume((1, 1, 4, 12, 12))
    with pytest.raises(ValueError, match=rf"padding_mode={padding_mode!r}.*roi_size"):
        sliding_window_inference(x, (16, 8, 8), 2, lambda t: t, padding_mode=padding_mode)


@pytest.mark.parametrize("padding_mode,largest", [("reflect", 10), ("circular", 12)])
def test_finding5_padding_mode_accepts_rois_up_to_the_limit(padding_mode, largest):
    """The refusal starts exactly where torch's padding would fail: on a side of 4, reflect pads up to 3
    per side (roi 10), circular up to 4 (roi 12); one more is refused, naming the limit."""
    x = _volume((1, 1, 4, 12, 12))
    out = sliding_window_inference(x, (largest, 8, 8), 2, lambda t: t, padding_mode=padding_mode)
    torch.testing.assert_close(out, x)
    with pytest.raises(ValueError, match=rf"padding_mode={padding_mode!r}.*roi_size.*at most {largest}"):
        sliding_window_inference(x, (largest + 1, 8, 8), 2, lambda t: t, padding_mode=padding_mode)
