"""window_gather / window_stitch / window_argmax: every backend against the reference (through the op harness), and
stitching that is bit-identical from run to run."""

from __future__ import annotations

import pytest
import torch
from harness import OpSpec, OpTests, backend_params, forced_backend

from nas3d_fast.ops import window_argmax, window_gather, window_stitch

ROI = [4, 5, 6]


def _starts(B, shape, roi, n, gen):
    rows = [torch.randint(0, B, (n, 1), generator=gen)]
    for d in range(3):
        rows.append(torch.randint(0, shape[d] - roi[d] + 1, (n, 1), generator=gen))
    return torch.cat(rows, dim=1)


def gather_inputs(dtype, device, contiguous=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, C, shape = 2, 3, (9, 8, 11)
    volume = torch.randn(B, C, *shape, generator=gen, dtype=torch.float64)
    if not contiguous:  # every other voxel along the last axis of a channels-last buffer
        wide = torch.zeros(B, *shape[:2], 2 * shape[2], C, dtype=torch.float64)
        wide[..., ::2, :] = volume.permute(0, 2, 3, 4, 1)
        volume = wide.to(device=device, dtype=dtype)[..., ::2, :].permute(0, 4, 1, 2, 3)
    starts = _starts(B, shape, ROI, 7, gen)
    return {"volume": volume.to(device=device, dtype=dtype), "starts": starts.to(device), "roi": list(ROI)}


def stitch_inputs(dtype, device, contiguous=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, C, shape, N = 2, 3, (9, 8, 11), 7
    out = torch.randn(B, C, *shape, generator=gen, dtype=torch.float64)
    pred = torch.randn(N, C, *ROI, generator=gen, dtype=torch.float64)
    weight = torch.rand(*ROI, generator=gen, dtype=torch.float64) + 0.1
    if not contiguous:
        wide = torch.zeros(N, C, *ROI[:2], 2 * ROI[2], dtype=torch.float64)
        wide[..., ::2] = pred
        pred = wide.to(device=device, dtype=dtype)[..., ::2]
    starts = _starts(B, shape, ROI, N, gen)
    starts[1] = starts[0]  # two windows at the same place: order matters
    return {
        "out": out.to(device=device, dtype=dtype),
        "pred": pred.to(device=device, dtype=dtype),
        "weight": weight.to(device=device, dtype=dtype),
        "starts": starts.to(device),
    }


def call_gather(inputs):
    return window_gather(**inputs)


def call_stitch(inputs):
    return window_stitch(inputs["out"].clone(), inputs["pred"], inputs["weight"], inputs["starts"])


def gather_opchecks():
    def compiled(device):
        i = gather_inputs(torch.float32, device)
        return [(torch.ops.nas3d.window_gather.default, (i["volume"], i["starts"], i["roi"]))]

    def triton(device):
        import nas3d_fast.kernels.triton.window  # noqa: F401

        i = gather_inputs(torch.float32, device)
        return [(torch.ops.nas3d.window_gather_triton.default, (i["volume"], i["starts"], i["roi"]))]

    return {"cpu": compiled, "cuda": compiled, "triton": triton}


def stitch_opchecks():
    def compiled(device):
        i = stitch_inputs(torch.float32, device)
        return [(torch.ops.nas3d.window_stitch.default, (i["out"], i["pred"], i["weight"], i["starts"]))]

    def triton(device):
        import nas3d_fast.kernels.triton.window  # noqa: F401

        i = stitch_inputs(torch.float32, device)
        return [(torch.ops.nas3d.window_stitch_triton.default, (i["out"], i["pred"], i["weight"], i["starts"]))]

    return {"cpu": compiled, "cuda": compiled, "triton": triton}


def gather_bad_inputs(device):
    good = gather_inputs(torch.float32, device)
    v, s = good["volume"], good["starts"]
    far = s.clone()
    far[2, 3] = v.shape[4] - ROI[2] + 1
    neg = s.clone()
    neg[0, 1] = -1
    return [
        ("rank", {**good, "volume": v[0]}, ValueError, "volume must have 5 dimensions"),
        ("int volume", {**good, "volume": v.long()}, ValueError, "volume must have dtype"),
        ("starts cols", {**good, "starts": s[:, :3]}, ValueError, "starts must have shape \\(N, 4\\)"),
        ("starts dtype", {**good, "starts": s.float()}, ValueError, "starts must have dtype"),
        ("outside", {**good, "starts": far}, (ValueError, RuntimeError), "outside"),
        ("negative", {**good, "starts": neg}, (ValueError, RuntimeError), "outside"),
        ("roi rank", {**good, "roi": [4, 5]}, ValueError, "roi must be 3 ints"),
        ("roi large", {**good, "roi": [4, 5, 12]}, ValueError, "roi must lie in"),
    ]


def stitch_bad_inputs(device):
    good = stitch_inputs(torch.float32, device)
    o, p, w, s = good["out"], good["pred"], good["weight"], good["starts"]
    far = s.clone()
    far[1, 2] = o.shape[3]
    bad_batch = s.clone()
    bad_batch[0, 0] = o.shape[0]

    def call(**kw):
        return {**good, **kw}

    return [
        ("pred rank", call(pred=p[0]), ValueError, "pred must have 5 dimensions"),
        ("pred dtype", call(pred=p.double()), ValueError, "pred must have the dtype of out"),
        ("weight shape", call(weight=w[:, :, :2]), ValueError, "weight must have the window shape"),
        ("channels", call(pred=p[:, :2]), ValueError, "pred must have the channels of out"),
        ("starts rows", call(starts=s[:3]), ValueError, "one row per window"),
        ("outside", call(starts=far), (ValueError, RuntimeError), "outside"),
        ("batch", call(starts=bad_batch), (ValueError, RuntimeError), "outside"),
    ]


class TestWindowGather(OpTests):
    spec = OpSpec(
        name="window_gather",
        call=call_gather,
        make_inputs=gather_inputs,
        grad_inputs=(),
        float_outputs=(0,),  # a copy: compared with zero tolerance
        gradcheck_backends=(),
        tolerances={torch.float64: (0.0, 0.0), torch.float32: (0.0, 0.0)},
        opchecks=gather_opchecks(),
        bad_inputs=gather_bad_inputs,
    )


class TestWindowStitch(OpTests):
    spec = OpSpec(
        name="window_stitch",
        call=call_stitch,
        make_inputs=stitch_inputs,
        grad_inputs=(),
        float_outputs=(0,),
        gradcheck_backends=(),
        opchecks=stitch_opchecks(),
        bad_inputs=stitch_bad_inputs,
    )

    def test_noncontiguous_out_refused(self):
        good = stitch_inputs(torch.float32, "cpu")
        out = good["out"].transpose(3, 4).contiguous().transpose(3, 4)
        with pytest.raises(ValueError, match="out must be contiguous"):
            window_stitch(out, good["pred"], good["weight"], good["starts"])

    @pytest.mark.parametrize("backend,device", backend_params())
    def test_bit_identical_runs(self, backend, device):
        """Many overlapping windows: the same bits every run (no atomics, fixed order)."""
        gen = torch.Generator().manual_seed(3)
        out = torch.zeros(1, 2, 12, 12, 12, device=device)
        pred = torch.randn(40, 2, *ROI, generator=gen).to(device)
        weight = torch.rand(*ROI, generator=gen).to(device)
        starts = _starts(1, (12, 12, 12), ROI, 40, gen).to(device)
        with forced_backend(backend):
            first = window_stitch(out.clone(), pred, weight, starts)
            for _ in range(3):
                assert torch.equal(window_stitch(out.clone(), pred, weight, starts), first)


# window_argmax: a (C, D, H, W) slab of the accumulator and its weight sum -> (D, H, W) labels.
ARGMAX_SHAPE = (5, 6, 7, 9)


def argmax_inputs(dtype, device, contiguous=True, seed=0, normalise=True):
    gen = torch.Generator().manual_seed(seed)
    C, D, H, W = ARGMAX_SHAPE
    acc = torch.randn(C, D, H, W, generator=gen, dtype=torch.float64)
    weight_sum = torch.rand(D, H, W, generator=gen, dtype=torch.float64) * 3 + 0.25
    acc, weight_sum = acc.to(device=device, dtype=dtype), weight_sum.to(device=device, dtype=dtype)
    if not contiguous:  # a cropped view of a wider accumulator, a weight sum broadcast along y
        wide = torch.zeros(1, C, D + 2, H, 2 * W, dtype=dtype, device=device)
        wide[0, :, 1 : D + 1, :, ::2] = acc
        acc = wide[0, :, 1 : D + 1, :, ::2]
        weight_sum = weight_sum[:, :1].expand(D, H, W)
    return {"acc": acc, "weight_sum": weight_sum if normalise else None, "labels_dtype": torch.uint8,
            "out_stride": 1 if contiguous else 3}


def call_argmax(inputs):
    """window_argmax into a fresh out (every third voxel of a wider buffer when out_stride is 3)."""
    acc = inputs["acc"]
    D, H, W = acc.shape[-3:]
    step = inputs["out_stride"]
    buffer = torch.full((D, H, W * step), 77, dtype=inputs["labels_dtype"], device=acc.device)
    return window_argmax(acc, inputs["weight_sum"], out=buffer[..., ::step])


def argmax_opchecks():
    def compiled(device):
        i = argmax_inputs(torch.float32, device)
        labels = torch.zeros(ARGMAX_SHAPE[1:], dtype=torch.uint8, device=device)
        op = torch.ops.nas3d.window_argmax.default
        return [(op, (i["acc"], i["weight_sum"], labels)), (op, (i["acc"], None, labels.clone()))]

    def triton(device):
        import nas3d_fast.kernels.triton.window  # noqa: F401

        i = argmax_inputs(torch.float32, device)
        labels = torch.zeros(ARGMAX_SHAPE[1:], dtype=torch.uint8, device=device)
        return [(torch.ops.nas3d.window_argmax_triton.default, (i["acc"], i["weight_sum"], labels))]

    return {"cpu": compiled, "cuda": compiled, "triton": triton}


def argmax_bad_inputs(device):
    good = argmax_inputs(torch.float32, device)
    a, w = good["acc"], good["weight_sum"]

    def call(**kw):
        return {**good, **kw}

    return [
        ("acc rank", call(acc=a[0]), ValueError, "acc must have 4 dimensions"),
        ("acc dtype", call(acc=a.long()), ValueError, "acc must have dtype"),
        ("no classes", call(acc=a[:0]), ValueError, "at least one class"),
        ("weight shape", call(weight_sum=w[:, :, :2]), ValueError, "weight_sum must have the spatial shape"),
        ("weight dtype", call(weight_sum=w.double()), ValueError, "weight_sum must have the dtype of acc"),
        ("labels dtype", call(labels_dtype=torch.float32), ValueError, "out must have dtype"),
        ("too many classes", call(acc=a[:1].expand(300, *a.shape[1:])), ValueError, "cannot hold 300 classes"),
    ]


class TestWindowArgmax(OpTests):
    spec = OpSpec(
        name="window_argmax",
        call=call_argmax,
        make_inputs=argmax_inputs,
        grad_inputs=(),
        float_outputs=(),
        exact_outputs=(0,),
        low_precision=(),  # labels at low precision: test_low_precision_equals_reference below
        gradcheck_backends=(),
        opchecks=argmax_opchecks(),
        bad_inputs=argmax_bad_inputs,
    )

    @pytest.mark.parametrize("backend,device", backend_params())
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
    @pytest.mark.parametrize("normalise", [True, False], ids=["weight_sum", "raw"])
    def test_low_precision_equals_reference(self, backend, device, dtype, normalise):
        """The quotient is rounded to acc's dtype before the compare, as torch's division is."""
        inputs = argmax_inputs(dtype, device, seed=1, normalise=normalise)
        inputs["acc"] = (inputs["acc"] * 64).round() / 64  # coarse values: many quotients round to ties
        with forced_backend("reference"):
            want = call_argmax(inputs)
        with forced_backend(backend):
            got = call_argmax(inputs)
        assert torch.equal(got.cpu(), want.cpu())

    @pytest.mark.parametrize("backend,device", backend_params())
    @pytest.mark.parametrize("labels_dtype", [torch.uint8, torch.int16, torch.int32, torch.int64], ids=str)
    def test_ties_and_nan_follow_torch_argmax(self, backend, device, labels_dtype):
        """First maximum on ties, NaN beats every number (the first NaN wins), in every labels dtype."""
        acc = torch.tensor(
            [[1.0, 2.0, 0.0, float("nan"), -1.0], [3.0, 2.0, float("nan"), 5.0, -1.0], [3.0, 1.0, float("nan"), 0.0, -1.0]]
        ).reshape(3, 1, 1, 5)
        acc = acc.to(device)
        with forced_backend(backend):
            got = window_argmax(acc, out=torch.empty(1, 1, 5, dtype=labels_dtype, device=device))
        assert got.flatten().tolist() == [1, 0, 1, 0, 0]
        assert torch.equal(got.flatten().cpu(), acc.argmax(dim=0).flatten().cpu().to(labels_dtype))

    def test_default_out_dtype_follows_the_class_count(self):
        acc = torch.randn(300, 2, 2, 2)
        labels = window_argmax(acc)
        assert labels.dtype == torch.int16 and torch.equal(labels.long(), acc.argmax(dim=0))
        assert window_argmax(acc[:256]).dtype == torch.uint8


# --- regressions of issue 27 ------------------------------------------------------------------------------

_OVERFLOW_SCRIPT = r"""
import sys
import torch
import nas3d_fast
from nas3d_fast import ops

backend, op, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
nas3d_fast.set_backend(backend)
big = torch.tensor([[0, 2**63 - 1, 0, 0]])
try:
    if op == "gather":
        ops.window_gather(torch.randn(1, 1, size, size, size), big, [1, 1, 1])
    else:
        out = torch.zeros(1, 1, size, size, size)
        ops.window_stitch(out, torch.full((1, 1, 1, 1, 1), 7.0), torch.ones(1, 1, 1), big)
        print("sum of out", float(out.sum()))
except (ValueError, RuntimeError) as e:
    print("REFUSED", type(e).__name__, e)
    sys.exit(0)
print("ACCEPTED")
sys.exit(3)
"""


@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
@pytest.mark.parametrize("op", ["gather", "stitch"])
@pytest.mark.parametrize("size", [3, 4])
def test_finding1_start_near_int64_max_is_refused(backend, op, size):
    """Issue 27 finding 1: a start of 2**63 - 1 overflowed ``start + roi <= size`` in the shared C++ check,
    so the cpu kernels read and wrote outside the volume (free(): invalid next size). Run in a subprocess:
    the old code's heap corruption aborts that process, not pytest."""
    import os
    import subprocess
    import sys

    if not nas3d_fast_backends()[backend].usable:
        pytest.skip(nas3d_fast_backends()[backend].reason)
    proc = subprocess.run(
        [sys.executable, "-c", _OVERFLOW_SCRIPT, backend, op, str(size)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-2000:]}"
    assert "REFUSED" in proc.stdout and "starts" in proc.stdout, proc.stdout


def test_finding1_direct_op_call_is_refused():
    """The same start through torch.ops.nas3d.window_gather/stitch (the C++ check alone), in a subprocess."""
    import subprocess
    import sys

    if not nas3d_fast_backends()["cpu"].usable:
        pytest.skip(nas3d_fast_backends()["cpu"].reason)
    script = (
        "import torch, nas3d_fast\n"
        "big = torch.tensor([[0, 2**63 - 1, 0, 0]])\n"
        "for f in (lambda: torch.ops.nas3d.window_gather(torch.randn(1, 1, 4, 4, 4), big, [1, 1, 1]),\n"
        "          lambda: torch.ops.nas3d.window_stitch(torch.zeros(1, 1, 4, 4, 4), torch.ones(1, 1, 1, 1, 1),\n"
        "                                                 torch.ones(1, 1, 1), big)):\n"
        "    try:\n"
        "        f()\n"
        "        raise SystemExit('ACCEPTED')\n"
        "    except (ValueError, RuntimeError) as e:\n"
        "        assert 'starts[0]' in str(e), e\n"
        "print('REFUSED')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "REFUSED" in proc.stdout, f"rc={proc.returncode} {proc.stdout} {proc.stderr[-2000:]}"


def nas3d_fast_backends():
    import nas3d_fast

    return nas3d_fast.backends()


def _odd_starts(starts: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "transposed":  # the same rows, column-major
        return starts.t().contiguous().t()
    if kind == "strided":  # every other row of a wider buffer
        wide = torch.zeros(2 * starts.shape[0], 4, dtype=torch.int64)
        wide[::2] = starts
        return wide[::2]
    return starts[:1].expand(starts.shape[0], 4)  # "expanded": one row, stride 0


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("kind", ["transposed", "strided", "expanded"])
def test_finding2_starts_of_any_strides(backend, device, kind):
    """Issue 27 finding 2: the Triton stitch read starts as if contiguous (rel. error 0.5-1.0 with 2 batches
    and channels), while the cpu backend refused non-contiguous starts. Now every backend accepts starts of
    any strides and agrees with the reference."""
    gen = torch.Generator().manual_seed(5)
    out = torch.randn(2, 3, 9, 8, 11, generator=gen, dtype=torch.float64)
    pred = torch.randn(7, 3, *ROI, generator=gen, dtype=torch.float64)
    weight = torch.rand(*ROI, generator=gen, dtype=torch.float64) + 0.1
    starts = _odd_starts(_starts(2, (9, 8, 11), ROI, 7, gen), kind)
    assert not starts.is_contiguous()
    with forced_backend("reference"):
        want = window_stitch(out.clone(), pred, weight, starts.contiguous())
        want_g = window_gather(out, starts.contiguous(), ROI)
    with forced_backend(backend):
        got = window_stitch(out.clone().to(device), pred.to(device), weight.to(device), starts.to(device))
        got_g = window_gather(out.to(device), starts.to(device), ROI)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_g.cpu(), want_g, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", backend_params())
def test_finding5_argmax_into_an_overlapping_out_is_refused(backend, device):
    """Issue 27 finding 5: an expanded (self-overlapping) out worked on cpu (each label overwrote the last)
    and failed inside torch on the reference; every backend now refuses it, naming out."""
    acc = torch.randn(3, 2, 2, 2, device=device)
    out = torch.zeros(1, 1, 1, dtype=torch.uint8, device=device).expand(2, 2, 2)
    with forced_backend(backend), pytest.raises(ValueError, match="out must not overlap itself"):
        window_argmax(acc, out=out)
