"""The mixed-edge kernels (weighted_sum, kernel_merge, max_pool3, avg_pool3, depthwise_conv3): every
backend against the reference through the op harness, plus the properties the harness cannot see."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from harness import OpSpec, OpTests, accumulation_max, finite_magnitude, forced_backend

import nas3d_fast
from nas3d_fast import ops
from nas3d_fast.reference import mixed as reference

SHAPE = (2, 3, 5, 6, 7)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _leaf(t, dtype, device):
    return t.to(device=device, dtype=dtype).detach().requires_grad_(True)


def _strided(t):
    """The same values as a non-contiguous view: every other entry of the last axis of a wider buffer."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


def _volume(seed, shape=SHAPE):
    """Distinct small integers per (n, c) slice (no ties in max pooling, exact in bfloat16)."""
    n = shape[2] * shape[3] * shape[4]
    g = _gen(seed)
    rows = [torch.randperm(n, generator=g).double() - n // 2 for _ in range(shape[0] * shape[1])]
    return torch.stack(rows).reshape(shape) / 8


# -- weighted_sum ---------------------------------------------------------------------------------


def ws_inputs(dtype, device, contiguous=True, seed=0, K=3):
    g = _gen(seed)
    xs = [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(K)]
    if not contiguous:
        xs = [_strided(x) for x in xs]
    w = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    inputs = {f"x{k}": _leaf(x, dtype, device) for k, x in enumerate(xs)}
    if not contiguous:  # keep the strides: .to() above made them dense
        inputs = {k: _strided(v.detach()).requires_grad_(True) for k, v in inputs.items()}
    inputs["weights"] = _leaf(w, dtype, device)
    return inputs


def ws_call(inputs):
    xs = [inputs[k] for k in sorted(inputs) if k.startswith("x")]
    return ops.weighted_sum(xs, inputs["weights"])


def ws_opchecks(device):
    i = ws_inputs(torch.float32, device)
    xs = [i["x0"], i["x1"], i["x2"]]
    grad = torch.randn(SHAPE, device=device)
    return [
        (torch.ops.nas3d.weighted_sum.default, (xs, i["weights"])),
        (torch.ops.nas3d.weighted_sum_backward.default, (grad, [x.detach() for x in xs])),
    ]


def ws_bad(device):
    i = ws_inputs(torch.float32, device)
    x0, x1, x2, w = i["x0"], i["x1"], i["x2"], i["weights"]
    return [
        ("weights length", {"x0": x0, "x1": x1, "x2": x2, "weights": w[:2]}, ValueError, "one entry per tensor"),
        ("weights rank", {"x0": x0, "x1": x1, "x2": x2, "weights": w[None]}, ValueError, "weights must have 1 dim"),
        ("shape", {"x0": x0, "x1": x1[:, :2], "x2": x2, "weights": w}, ValueError, "xs\\[1\\] must have the shape"),
        ("dtype", {"x0": x0, "x1": x1.double(), "x2": x2, "weights": w}, ValueError, "xs\\[1\\] must have the dtype"),
        ("int", {"x0": x0.long(), "x1": x1, "x2": x2, "weights": w}, ValueError, "xs\\[0\\] must have dtype"),
        (
            "weights dtype",
            {"x0": x0, "x1": x1, "x2": x2, "weights": w.double()},
            ValueError,
            "weights\\[0\\] must have the dtype",
        ),
    ]


def sum_valid_range(inputs, grad_bound=8.0):
    """OpSpec.valid_range of weighted_sum and kernel_merge, as their docstrings state it: max(K, n) *
    max(1, W) * M * G <= finfo(acc).max, with n the elements of one tensor, W and M the largest finite
    magnitudes of the weights and of the other tensors, G that of grad (the fuzz's cotangents: standard
    normal, < grad_bound). Beyond it a float32 (float64) partial sum such as <grad, x> may overflow, to
    +inf, -inf or NaN by each backend's summation order."""
    tensors = [t for n, t in inputs.items() if n != "weights" and torch.is_tensor(t)]
    n = max((t.numel() for t in tensors), default=0)
    W, M = finite_magnitude([inputs["weights"]]), finite_magnitude(tensors)
    bound = max(len(tensors), n) * max(1.0, W) * M * max(1.0, grad_bound)
    return bound <= accumulation_max(inputs["weights"].dtype)


class TestWeightedSum(OpTests):
    spec = OpSpec(
        name="weighted_sum",
        call=ws_call,
        make_inputs=ws_inputs,
        grad_inputs=("x0", "x1", "x2", "weights"),
        float_outputs=(0,),
        opchecks={"cpu": ws_opchecks, "cuda": ws_opchecks},
        bad_inputs=ws_bad,
        valid_range=sum_valid_range,
    )


# -- kernel_merge ---------------------------------------------------------------------------------

KERNEL_SIZES = ((3, 3, 3), (3, 3, 1), (1, 3, 3), (1, 1, 1), (3, 1, 3))


def km_inputs(dtype, device, contiguous=True, seed=0):
    g = _gen(seed)
    inputs = {}
    for j, k in enumerate(KERNEL_SIZES):
        t = torch.randn(4, 3, *k, generator=g, dtype=torch.float64)
        inputs[f"k{j}"] = _leaf(t, dtype, device)
        if not contiguous:  # channels and taps out of order, as composed P3D kernels arrive (permuted views)
            k_strided = inputs[f"k{j}"].detach().permute(1, 0, 4, 2, 3).contiguous().permute(1, 0, 3, 4, 2)
            inputs[f"k{j}"] = k_strided.requires_grad_(True)
    inputs["weights"] = _leaf(torch.randn(len(KERNEL_SIZES), generator=g, dtype=torch.float64), dtype, device)
    return inputs


def km_call(inputs):
    kernels = [inputs[f"k{j}"] for j in range(len(KERNEL_SIZES))]
    return ops.kernel_merge(kernels, inputs["weights"], (3, 3, 3))


def km_opchecks(device):
    i = km_inputs(torch.float32, device)
    kernels = [i[f"k{j}"] for j in range(len(KERNEL_SIZES))]
    grad = torch.randn(4, 3, 3, 3, 3, device=device)
    return [
        (torch.ops.nas3d.kernel_merge.default, (kernels, i["weights"], [3, 3, 3])),
        (torch.ops.nas3d.kernel_merge_backward.default, (grad, [k.detach() for k in kernels], i["weights"].detach())),
    ]


def km_bad(device):
    i = km_inputs(torch.float32, device)
    even = {**i, "k1": torch.randn(4, 3, 2, 3, 3)}
    big = {**i, "k1": torch.randn(4, 3, 5, 3, 3)}
    channels = {**i, "k1": torch.randn(4, 2, 3, 3, 3)}
    return [
        ("even", even, ValueError, "odd sizes at most"),
        ("too big", big, ValueError, "odd sizes at most"),
        ("channels", channels, ValueError, "must have shape \\(O, I, k0, k1, k2\\) with O, I"),
        ("weights", {**i, "weights": i["weights"][:3]}, ValueError, "one entry per tensor of kernels"),
    ]


class TestKernelMerge(OpTests):
    spec = OpSpec(
        name="kernel_merge",
        call=km_call,
        make_inputs=km_inputs,
        grad_inputs=(*(f"k{j}" for j in range(len(KERNEL_SIZES))), "weights"),
        float_outputs=(0,),
        opchecks={"cpu": km_opchecks, "cuda": km_opchecks},
        bad_inputs=km_bad,
        valid_range=sum_valid_range,
    )


def test_merged_kernel_convolution_equals_sum_of_convolutions():
    """The point of the merge: one convolution with the merged kernel = the weighted sum of the
    candidates' "same" convolutions."""
    i = km_inputs(torch.float64, "cpu")
    kernels = [i[f"k{j}"].detach() for j in range(len(KERNEL_SIZES))]
    w = i["weights"].detach()
    x = torch.randn(2, 3, 6, 5, 7, dtype=torch.float64)
    merged = torch.nn.functional.conv3d(x, ops.kernel_merge(kernels, w), padding=1)
    separate = sum(
        wk * torch.nn.functional.conv3d(x, k, padding=tuple(n // 2 for n in k.shape[2:])) for wk, k in zip(w, kernels)
    )
    torch.testing.assert_close(merged, separate)


# -- pooling and the depthwise convolution ---------------------------------------------------------


def vol_inputs(dtype, device, contiguous=True, seed=0, stride=1, shape=SHAPE):
    x = _volume(seed, shape)
    if not contiguous:  # channels-last storage
        x = x.to(memory_format=torch.channels_last_3d)
        return {"x": x.to(device=device, dtype=dtype).detach().requires_grad_(True), "stride": stride}
    return {"x": _leaf(x, dtype, device), "stride": stride}


def pool_opchecks(kind, stride):
    def checks(device):
        x = vol_inputs(torch.float32, device, stride=stride)["x"]
        if kind == "max":
            out, code = torch.ops.nas3d.max_pool3(x.detach(), stride)
            return [
                (torch.ops.nas3d.max_pool3.default, (x, stride)),
                (torch.ops.nas3d.max_pool3_backward.default, (torch.randn_like(out), code, list(x.shape), stride)),
            ]
        out = torch.ops.nas3d.avg_pool3(x.detach(), stride)
        return [
            (torch.ops.nas3d.avg_pool3.default, (x, stride)),
            (torch.ops.nas3d.avg_pool3_backward.default, (torch.randn_like(out), list(x.shape), stride)),
        ]

    return {"cpu": checks, "cuda": checks}


def pool_bad(fn):
    def cases(device):
        x = vol_inputs(torch.float32, device)["x"]
        return [
            ("rank", {"x": x[0], "stride": 1}, ValueError, "x must have 5 dimensions"),
            ("stride", {"x": x, "stride": 3}, ValueError, "stride must be 1 or 2"),
            ("int", {"x": x.long(), "stride": 1}, ValueError, "x must have dtype"),
            ("empty", {"x": x[:, :, :0], "stride": 1}, ValueError, "non-empty spatial sizes"),
        ]

    return cases


def _pool_spec(kind, stride):
    fn = ops.max_pool3 if kind == "max" else ops.avg_pool3
    return OpSpec(
        name=f"{kind}_pool3(stride={stride})",
        call=lambda inputs: fn(inputs["x"], inputs["stride"]),
        make_inputs=lambda **kw: vol_inputs(**kw, stride=stride),
        grad_inputs=("x",),
        float_outputs=(0,),
        opchecks=pool_opchecks(kind, stride),
        bad_inputs=pool_bad(fn),
    )


class TestMaxPool3(OpTests):
    spec = _pool_spec("max", 1)


class TestMaxPool3Stride2(OpTests):
    spec = _pool_spec("max", 2)


class TestAvgPool3(OpTests):
    spec = _pool_spec("avg", 1)


class TestAvgPool3Stride2(OpTests):
    spec = _pool_spec("avg", 2)


def dw_inputs(dtype, device, contiguous=True, seed=0, stride=1, dilation=2):
    g = _gen(seed)
    inputs = vol_inputs(dtype, device, contiguous, seed, stride)
    inputs["weight"] = _leaf(torch.randn(SHAPE[1], 1, 3, 3, 3, generator=g, dtype=torch.float64), dtype, device)
    inputs["dilation"] = dilation
    return inputs


def dw_call(inputs):
    return ops.depthwise_conv3(inputs["x"], inputs["weight"], inputs["stride"], inputs["dilation"])


def dw_opchecks(stride, dilation):
    def checks(device):
        i = dw_inputs(torch.float32, device, stride=stride, dilation=dilation)
        out = torch.ops.nas3d.depthwise_conv3(i["x"].detach(), i["weight"].detach(), stride, dilation)
        grad = torch.randn_like(out)
        return [
            (torch.ops.nas3d.depthwise_conv3.default, (i["x"], i["weight"], stride, dilation)),
            (
                torch.ops.nas3d.depthwise_conv3_backward.default,
                (grad, i["x"].detach(), i["weight"].detach(), stride, dilation, [True, True]),
            ),
        ]

    return {"cpu": checks, "cuda": checks}


def dw_bad(device):
    i = dw_inputs(torch.float32, device)
    return [
        ("weight shape", {**i, "weight": i["weight"][:2]}, ValueError, "weight must have shape \\(C, 1, 3, 3, 3\\)"),
        ("weight dtype", {**i, "weight": i["weight"].double()}, ValueError, "weight\\[0\\] must have the dtype of x"),
        ("dilation", {**i, "dilation": 0}, ValueError, "dilation must be an int >= 1"),
        ("stride", {**i, "stride": 0}, ValueError, "stride must be 1 or 2"),
    ]


def _dw_spec(stride, dilation):
    # Inputs reach |13| and 27 products cancel: float32 sums agree to a few units of 1e-5 absolute.
    tolerances = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 5e-5)}
    return OpSpec(
        tolerances=tolerances,
        name=f"depthwise_conv3(stride={stride}, dilation={dilation})",
        call=dw_call,
        make_inputs=lambda **kw: dw_inputs(**kw, stride=stride, dilation=dilation),
        grad_inputs=("x", "weight"),
        float_outputs=(0,),
        opchecks=dw_opchecks(stride, dilation),
        bad_inputs=dw_bad,
    )


class TestDepthwiseConv3(OpTests):
    spec = _dw_spec(1, 2)


class TestDepthwiseConv3Stride2Dilation3(OpTests):
    spec = _dw_spec(2, 3)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_ties_route_to_first_tap(backend, stride):
    """On a constant volume every window ties: the gradient goes to the lowest (dx, dy, dz) tap of each
    window, as the reference (torch.max_pool3d) does."""
    if not nas3d_fast.backends()[backend].usable:
        pytest.skip(nas3d_fast.backends()[backend].reason)
    x = torch.ones(1, 2, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    with forced_backend(backend):
        out = ops.max_pool3(x, stride)
    (got,) = torch.autograd.grad(out, x, torch.arange(out.numel(), dtype=torch.float64).reshape(out.shape))
    want_out = reference.max_pool3(x, stride)
    (want,) = torch.autograd.grad(want_out, x, torch.arange(out.numel(), dtype=torch.float64).reshape(out.shape))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_max_pool_propagates_nan(backend):
    if not nas3d_fast.backends()[backend].usable:
        pytest.skip(nas3d_fast.backends()[backend].reason)
    x = torch.randn(1, 1, 4, 4, 4)
    x[0, 0, 1, 2, 3] = float("nan")
    with forced_backend(backend):
        out = ops.max_pool3(x, 1)
    torch.testing.assert_close(out, reference.max_pool3(x, 1), equal_nan=True)


@pytest.mark.parametrize("backend", ["reference", "cpu", "cuda", "triton"])
def test_depthwise_conv_skips_out_of_volume_taps(backend):
    """A non-finite weight reaches only the outputs whose tap reads inside the volume (the documented
    rule, issue 27): F.conv3d's zero padding would give 0 * inf = NaN at the border outputs. Channel 0's
    tap dx=0 (reading x at ox - r) is +inf, channel 1's tap dx=2 (reading ox + r) is NaN."""
    if not nas3d_fast.backends()[backend].usable:
        pytest.skip(nas3d_fast.backends()[backend].reason)
    device = "cuda" if backend in ("cuda", "triton") and torch.cuda.is_available() else "cpu"
    r, X = 2, 5
    g = _gen(3)
    x = torch.randn(1, 2, X, 4, 6, generator=g, dtype=torch.float64)
    w = torch.randn(2, 1, 3, 3, 3, generator=g, dtype=torch.float64)
    cot = torch.randn(1, 2, X, 4, 6, generator=g, dtype=torch.float64)
    w_finite = w.clone()
    w_finite[0, 0, 0, 1, 1] = w_finite[1, 0, 2, 1, 1] = 0.0
    w[0, 0, 0, 1, 1], w[1, 0, 2, 1, 1] = float("inf"), float("nan")

    # By hand: the convolution without the two taps, plus each tap where it reads inside the volume.
    xl = x.clone().requires_grad_(True)
    want = torch.nn.functional.conv3d(xl, w_finite, padding=r, dilation=r, groups=2)
    extra = torch.zeros_like(want)
    extra[:, 0, r:] = float("inf") * xl[:, 0, : X - r]
    extra[:, 1, : X - r] = float("nan") * xl[:, 1, r:]
    want = want + extra
    (want_dx,) = torch.autograd.grad(want, xl, cot)
    wl = w_finite.clone().requires_grad_(True)  # the weight gradient does not depend on the weights
    (want_dw,) = torch.autograd.grad(torch.nn.functional.conv3d(x, wl, padding=r, dilation=r, groups=2), wl, cot)
    assert want[:, 0, :r].isfinite().all() and want[:, 1, X - r :].isfinite().all()

    xd, wd = _leaf(x, torch.float64, device), _leaf(w, torch.float64, device)
    with forced_backend(backend):
        out = ops.depthwise_conv3(xd, wd, 1, r)
        dx, dw = torch.autograd.grad(out, (xd, wd), cot.to(device))
    torch.testing.assert_close(out.cpu(), want.detach(), equal_nan=True)
    torch.testing.assert_close(dx.cpu(), want_dx, equal_nan=True)
    torch.testing.assert_close(dw.cpu(), want_dw, equal_nan=True)


_HUGE_DILATION = """
import torch, nas3d_fast
from nas3d_fast import ops
nas3d_fast.set_backend({backend!r})
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 3, 5, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
w = torch.randn(3, 1, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
for s in (1, 2):
    want = ops.depthwise_conv3(x, w, s, 7)  # the largest size: only the centre tap inside
    cot = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want_g = torch.autograd.grad(want, (x, w), cot)
    for r in (8, 2**31, 2**62 - 1, 2**63 - 2, 2**63 - 1):
        out = ops.depthwise_conv3(x, w, s, r)
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        for a, b in zip(torch.autograd.grad(out, (x, w), cot), want_g):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        if {backend!r} == "cpu":  # the registered op itself, called directly
            got = torch.ops.nas3d.depthwise_conv3(x.detach(), w.detach(), s, r)
            torch.testing.assert_close(got, want.detach(), rtol=0, atol=0)
print("ok")
"""


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_depthwise_conv_any_dilation(backend):
    """Issue 27 (fuzz): a dilation near 2**63 overflowed the cpu kernel's tap range (o * s + r wrapped)
    and it wrote in front of its output rows (a segfault); the reference raised torch's padding error
    naming no argument. Any dilation >= the largest spatial size gives the centre tap only, as that
    size does, on every backend. In a subprocess: the old failure is a crash."""
    if not nas3d_fast.backends()[backend].usable:
        pytest.skip(nas3d_fast.backends()[backend].reason)
    run = subprocess.run(
        [sys.executable, "-c", _HUGE_DILATION.format(backend=backend)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), (run.returncode, run.stderr[-3000:])


@pytest.mark.parametrize("op", ["max_pool3", "depthwise_conv3", "weighted_sum"])
def test_cpu_results_do_not_depend_on_thread_count(op):
    """Deterministic reductions: the same bits with 1 thread and with 2."""
    if not nas3d_fast.backends()["cpu"].usable:
        pytest.skip(nas3d_fast.backends()["cpu"].reason)
    x = torch.randn(2, 4, 9, 8, 10, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, 3, requires_grad=True)
    weights = torch.randn(2, requires_grad=True)

    def run():
        if op == "max_pool3":
            out, leaves = ops.max_pool3(x, 1), [x]
        elif op == "depthwise_conv3":
            out, leaves = ops.depthwise_conv3(x, w, 1, 3), [x, w]
        else:
            out, leaves = ops.weighted_sum([x, x * 2], weights), [x, weights]
        return [out.detach(), *torch.autograd.grad(out, leaves, torch.ones_like(out))]

    threads = torch.get_num_threads()
    try:
        with forced_backend("cpu"):
            torch.set_num_threads(1)
            one = run()
            torch.set_num_threads(2)
            two = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


# --- regressions of issue 27 ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("stride", [1, 2])
def test_finding3_max_pool_nan_gradient_goes_to_the_first_nan(backend, stride):
    """Issue 27 finding 3: with two NaNs in a window the reference (torch.max_pool3d, which keeps the last
    NaN) sent the gradient elsewhere than cpu and triton. One rule everywhere: the first tap in (dx, dy, dz)
    order, NaN beating every number."""
    if not nas3d_fast.backends()[backend].usable:
        pytest.skip(nas3d_fast.backends()[backend].reason)
    x = torch.zeros(1, 1, 3, 3, 3, dtype=torch.float64)
    x[0, 0, 0, 1, 1] = x[0, 0, 2, 1, 1] = x[0, 0, 1, 2, 0] = x[0, 0, 1, 0, 1] = float("nan")
    x.requires_grad_(True)
    with forced_backend(backend):
        out = ops.max_pool3(x, stride)
    centre = (1, 1, 1) if stride == 1 else (0, 0, 0)
    (got,) = torch.autograd.grad(out[(0, 0, *centre)], x)
    want = torch.zeros_like(x)
    # the first NaN in raster order of the window: [0, 2]^3 around (1, 1, 1), or [0, 1]^3 for output
    # (0, 0, 0) at stride 2; torch.max_pool3d keeps the last NaN, (2, 1, 1) or (1, 0, 1)
    want[0, 0, 0, 1, 1] = 1.0
    assert torch.equal(got, want), got.nonzero().tolist()


@pytest.mark.parametrize("op", ["max_pool3", "avg_pool3", "depthwise_conv3"])
@pytest.mark.parametrize("empty", ["channels", "batch"])
def test_finding5_reference_returns_empty_like_the_kernels(op, empty):
    """Issue 27 finding 5: zero channels raised torch-internal errors on the reference, where cpu and triton
    return empty tensors."""
    shape = (1, 0, 4, 4, 4) if empty == "channels" else (0, 2, 4, 4, 4)
    x = torch.randn(shape, requires_grad=True)
    args = (torch.randn(shape[1], 1, 3, 3, 3),) if op == "depthwise_conv3" else ()
    results = {}
    for backend in ("reference", "cpu", "triton"):
        if not nas3d_fast.backends()[backend].usable:
            continue
        with forced_backend(backend):
            results[backend] = getattr(ops, op)(x, *args, 2)
    for backend, got in results.items():
        assert got.shape == (*shape[:2], 2, 2, 2), (backend, got.shape)
        (g,) = torch.autograd.grad(got.sum(), x, allow_unused=True)
        assert g is None or g.shape == x.shape


@pytest.mark.parametrize("size,match", [("abc", "size must be 3 odd positive ints, got 'abc'"), (None, "size must be"),
                                        ((3, 3), "size must be"), ((3, 3.5, 3), "size must be"),
                                        ((3, "3", 3), "size must be")])
def test_finding5_kernel_merge_size_errors_name_size(size, match):
    """Issue 27 finding 5: size="abc" and size=None failed inside int() / iteration without naming size."""
    with pytest.raises(ValueError, match=match):
        ops.kernel_merge([torch.randn(2, 2, 3, 3, 3)], torch.ones(1), size=size)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("stride", [1, 2])
def test_finding3_max_pool_routes_nan_inf_and_ties_like_the_reference(backend, stride):
    """The one rule, on values built to collide: windows of equal numbers, ±inf next to NaN, windows of
    -inf only at the border (the padding is never chosen): every backend sends each output's gradient
    to the same element as the reference, and the outputs agree (NaN where the window holds one)."""
    if not nas3d_fast.backends()[backend].usable:
        pytest.skip(nas3d_fast.backends()[backend].reason)
    gen = torch.Generator().manual_seed(27)
    choices = torch.tensor([0.0, 1.0, float("inf"), -float("inf"), float("nan")], dtype=torch.float64)
    for trial in range(6):
        x = choices[torch.randint(0, 5, (1, 2, 5, 4, 3), generator=gen)]
        if trial == 0:
            x = torch.full_like(x, -float("inf"))
        x.requires_grad_(True)
        grad_out = torch.randn(1, 2, *((n - 1) // stride + 1 for n in x.shape[2:]), generator=gen, dtype=x.dtype)
        results = []
        for b in ("reference", backend):
            with forced_backend(b):
                out = ops.max_pool3(x, stride)
            results.append((out.detach(), torch.autograd.grad(out, x, grad_out)[0]))
        (want, want_grad), (got, got_grad) = results
        torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
        # an element chosen by several outputs sums their gradients, in another order per backend
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12, msg=f"trial {trial}")
