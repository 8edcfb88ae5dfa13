"""gumbel_topk: every backend against the reference (through the op harness), plus the sampling law."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch
from harness import OpSpec, OpTests, forced_backend

import nas3d_fast
from nas3d_fast.ops import gumbel_topk

TAU = 0.7


def make_inputs(dtype, device, contiguous=True, seed=0, E=33, K=7, k=2, hard=False, tau=TAU):
    """Logits whose perturbed values z = (logits + g) / tau are spaced >= 0.6 apart in every row, so
    that the top-k choice is the same at every precision (low-precision runs are compared on weights)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(E, K, generator=gen, dtype=torch.float64).clamp(0.02, 0.98)
    order = torch.argsort(torch.rand(E, K, generator=gen), dim=1).double()
    z = order * 0.6 + 0.1 * torch.rand(E, K, generator=gen, dtype=torch.float64)
    logits = z * tau + torch.log(-torch.log(u))
    if not contiguous:  # every other column of a wider logits buffer; column-major noise
        wide = torch.zeros(E, 2 * K, dtype=torch.float64)
        wide[:, ::2] = logits
        logits = wide.to(device=device, dtype=dtype)[:, ::2]  # slice after .to(), which would copy densely
        u = u.t().contiguous().t()  # .to() keeps the strides of a dense tensor
    logits = logits.to(device=device, dtype=dtype).detach().requires_grad_(True)
    return {"logits": logits, "noise": u.to(device=device, dtype=dtype), "tau": tau, "k": k, "hard": hard}


def call(inputs):
    return gumbel_topk(**inputs)


def opchecks(k, hard):
    def samples(device, forward, backward):
        inputs = make_inputs(torch.float32, device, k=k, hard=hard)
        logits, noise = inputs["logits"], inputs["noise"]
        weights, _ = forward(logits.detach(), noise, TAU, k, hard)
        grad = torch.randn_like(weights)
        return [
            (forward.default, (logits, noise, TAU, k, hard)),
            (backward.default, (grad, logits.detach(), noise, weights, TAU, hard)),
        ]

    def compiled(device):
        return samples(device, torch.ops.nas3d.gumbel_topk, torch.ops.nas3d.gumbel_topk_backward)

    def triton(device):
        import nas3d_fast.kernels.triton.gumbel  # noqa: F401  (registers the triton ops)

        return samples(device, torch.ops.nas3d.gumbel_topk_triton, torch.ops.nas3d.gumbel_topk_backward_triton)

    return {"cpu": compiled, "cuda": compiled, "triton": triton}


def bad_inputs(device):
    good = make_inputs(torch.float32, device)
    logits, noise = good["logits"], good["noise"]
    nan = logits.detach().clone()
    nan[3, 2] = float("nan")
    all_masked = logits.detach().clone()
    all_masked[0] = float("-inf")
    return [
        ("rank", {**good, "logits": logits[0]}, ValueError, "logits must have 2 dimensions"),
        ("int", {**good, "logits": logits.long()}, ValueError, "logits must have dtype"),
        ("no columns", {**good, "logits": logits[:, :0], "noise": noise[:, :0]}, ValueError, "at least one column"),
        ("tau", {**good, "tau": 0.0}, ValueError, "tau must be a number in \\[0.0001, 10000\\]"),
        ("k=3", {**good, "k": 3}, ValueError, "k must be 1 or 2"),
        ("k>K", {**good, "logits": logits[:, :1], "noise": noise[:, :1]}, ValueError, "k must be <= K"),
        ("hard k=2", {**good, "hard": True}, ValueError, "hard=True needs k=1"),
        ("noise shape", {**good, "noise": noise[:, :3]}, ValueError, "noise must have the shape of logits"),
        ("noise dtype", {**good, "noise": noise.double()}, ValueError, "noise must have the dtype of logits"),
        ("noise range", {**good, "noise": noise + 1.0}, ValueError, "strictly inside \\(0, 1\\)"),
        ("nan", {**good, "logits": nan}, ValueError, "NaN or \\+inf"),
        ("row of -inf", {**good, "logits": all_masked}, ValueError, "one finite entry in every row"),
    ]


class TestGumbelTop2(OpTests):
    spec = OpSpec(
        name="gumbel_topk(k=2)",
        call=call,
        make_inputs=make_inputs,
        grad_inputs=("logits",),
        float_outputs=(0,),
        exact_outputs=(1,),
        opchecks=opchecks(2, False),
        bad_inputs=bad_inputs,
    )


class TestGumbelTop1Hard(OpTests):
    """Straight-through: the forward is one-hot, so gradcheck (finite differences) does not apply; the
    gradient is checked against the reference's straight-through autograd instead."""

    spec = OpSpec(
        name="gumbel_topk(k=1, hard)",
        call=call,
        make_inputs=lambda **kw: make_inputs(**kw, k=1, hard=True),
        grad_inputs=("logits",),
        float_outputs=(0,),
        exact_outputs=(1,),
        gradcheck_backends=(),
        opchecks=opchecks(1, True),
        bad_inputs=bad_inputs,
    )


def _plackett_luce_pair_probs(p: torch.Tensor) -> torch.Tensor:
    """P(first = i, second = j) when sampling two without replacement with probabilities p."""
    pair = p[:, None] * p[None, :] / (1 - p[:, None])
    return pair.fill_diagonal_(0)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_indices_follow_gumbel_top_k_law(backend):
    """Over many draws, (first, second) follow sampling without replacement from softmax(logits),
    whatever tau (chi-square goodness of fit)."""
    from scipy.stats import chisquare

    reasons = nas3d_fast.backends()[backend].reason
    if not nas3d_fast.backends()[backend].usable:
        pytest.skip(reasons)
    logits = torch.tensor([1.0, 0.0, -0.5, 0.7, -2.0])
    draws = 20000
    gen = torch.Generator().manual_seed(1234)
    with forced_backend(backend):
        _, idx = gumbel_topk(logits.expand(draws, -1), tau=0.3, k=2, generator=gen)
    K = logits.numel()
    observed = torch.bincount(idx[:, 0] * K + idx[:, 1], minlength=K * K).double()
    expected = _plackett_luce_pair_probs(torch.softmax(logits.double(), 0)).flatten() * draws
    keep = expected > 0
    assert observed[~keep].sum() == 0, "an op was chosen twice in one row"
    _, p_value = chisquare(observed[keep].numpy(), expected[keep].numpy())
    assert p_value > 1e-4, f"chosen pairs do not follow the Gumbel-top-2 law (p = {p_value:.2e})"


def test_weights_sum_to_one_and_order():
    inputs = make_inputs(torch.float64, "cpu")
    w, idx = gumbel_topk(**inputs)
    torch.testing.assert_close(w.sum(1), torch.ones(w.shape[0], dtype=w.dtype))
    assert (w > 0).sum(1).eq(2).all()
    first, second = w.gather(1, idx).unbind(1)
    assert (first >= second).all()


def test_k1_soft_weight_is_one_with_zero_gradient():
    inputs = make_inputs(torch.float64, "cpu", k=1)
    w, idx = gumbel_topk(**inputs)
    assert torch.equal(w, torch.zeros_like(w).scatter(1, idx, 1.0))
    (g,) = torch.autograd.grad(w.sum(), inputs["logits"])
    assert torch.count_nonzero(g) == 0


def test_hard_gradient_is_softmax_gradient():
    inputs = make_inputs(torch.float64, "cpu", k=1, hard=True)
    logits, noise = inputs["logits"], inputs["noise"]
    w, _ = gumbel_topk(**inputs)
    cot = torch.randn_like(w)
    (g,) = torch.autograd.grad(w, logits, cot)
    y = torch.softmax((logits - torch.log(-torch.log(noise))) / TAU, 1)
    (want,) = torch.autograd.grad(y, logits, cot)
    torch.testing.assert_close(g, want)


def test_generator_reproducible_and_noise_in_range():
    logits = torch.randn(100, 8)
    a = gumbel_topk(logits, 1.0, generator=torch.Generator().manual_seed(7))
    b = gumbel_topk(logits, 1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    u = nas3d_fast.ops.gumbel.uniform_noise(torch.empty(1000, 100, dtype=torch.float16))
    assert (u > 0).all() and (u < 1).all()


def test_masked_op_never_chosen():
    logits = torch.randn(500, 6)
    logits[:, 2] = float("-inf")
    w, idx = gumbel_topk(logits, 0.5, k=2)
    assert not (idx == 2).any() and torch.isfinite(w).all()


def test_empty_rows():
    w, idx = gumbel_topk(torch.zeros(0, 4, requires_grad=True), 1.0)
    assert w.shape == (0, 4) and idx.shape == (0, 2)


def test_large_temperature_range_is_finite():
    logits = torch.randn(64, 8, dtype=torch.float32)
    for tau in (1e-3, 1e-1, 1.0, 1e3):
        w, _ = gumbel_topk(logits, tau)
        assert torch.isfinite(w).all() and math.isclose(float(w.sum()), 64.0, rel_tol=1e-5)


def _needs_compiled_cpu():
    if not nas3d_fast.backends()["cpu"].usable:
        pytest.skip(nas3d_fast.backends()["cpu"].reason)


@pytest.mark.parametrize("k,hard", [(2, False), (1, True)])
def test_sample_op_equals_explicit_noise(k, hard):
    """gumbel_topk_sample (noise drawn in the kernel) returns the noise it drew; the explicit-noise op
    on that noise gives the same weights, indices and gradients."""
    _needs_compiled_cpu()
    logits = torch.randn(50, 6, dtype=torch.float64, requires_grad=True)
    w, idx, noise = torch.ops.nas3d.gumbel_topk_sample(logits, TAU, k, hard, torch.Generator().manual_seed(3))
    assert ((noise > 0) & (noise < 1)).all()
    w2, idx2 = torch.ops.nas3d.gumbel_topk(logits, noise, TAU, k, hard)
    assert torch.equal(idx, idx2) and torch.equal(w, w2)
    cot = torch.randn_like(w)
    (g,) = torch.autograd.grad(w, logits, cot)
    (g2,) = torch.autograd.grad(w2, logits, cot)
    torch.testing.assert_close(g, g2)


def test_sample_op_opcheck():
    """Schema, autograd registration and fake kernel of the random op (the aot test compares two runs,
    which a random op cannot pass, so it is left out)."""
    _needs_compiled_cpu()
    logits = torch.randn(9, 5, requires_grad=True)
    torch.library.opcheck(
        torch.ops.nas3d.gumbel_topk_sample.default,
        (logits, TAU, 2, False, None),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_sampled_noise_stays_inside_unit_interval(dtype):
    _needs_compiled_cpu()
    _, _, noise = torch.ops.nas3d.gumbel_topk_sample(torch.zeros(4000, 16, dtype=dtype), 1.0, 2, False, None)
    assert noise.dtype == dtype and ((noise > 0) & (noise < 1)).all()


def test_compile_fullgraph_without_noise():
    fn = torch.compile(lambda logits: gumbel_topk(logits, 0.5, k=2), fullgraph=True, backend="aot_eager")
    logits = torch.randn(30, 7, requires_grad=True)
    w, idx = fn(logits)
    w.sum().backward()
    assert w.shape == (30, 7) and idx.shape == (30, 2)
    torch.testing.assert_close(w.sum(1), torch.ones(30))
    assert logits.grad is not None


def test_eager_fast_path_equals_the_op():
    """Without noise or generator, gumbel_topk calls the op through a direct binding (_SAMPLE_PAIR); it
    gives what torch.ops gives from the same default-generator state, gradients included."""
    _needs_compiled_cpu()
    assert nas3d_fast.ops.gumbel._SAMPLE_PAIR is not None
    logits = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    w, idx = gumbel_topk(logits, TAU, k=2)
    torch.manual_seed(5)
    w2, idx2, _ = torch.ops.nas3d.gumbel_topk_sample(logits, TAU, 2, False, None)
    assert torch.equal(idx, idx2) and torch.equal(w, w2)
    cot = torch.randn_like(w)
    (g,) = torch.autograd.grad(w, logits, cot)
    (g2,) = torch.autograd.grad(w2, logits, cot)
    assert torch.equal(g, g2)


def test_eager_fast_path_refuses_bad_values():
    _needs_compiled_cpu()
    nan = torch.randn(20, 8)
    nan[4, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        gumbel_topk(nan, TAU)
    masked = torch.randn(20, 8)
    masked[7] = float("-inf")
    with pytest.raises(ValueError, match="one finite entry in every row"):
        gumbel_topk(masked, TAU)


@pytest.mark.parametrize(
    "case", [c for c in bad_inputs("cpu") if "noise" not in c[0] and c[0] not in ("nan", "row of -inf")]
)
def test_eager_fast_path_refuses_bad_arguments(case):
    """The fast path leaves argument checks to the kernel: it must refuse what the Python checks refuse,
    with the same ValueError, before drawing from the generator."""
    _needs_compiled_cpu()
    _, inputs, exc, match = case
    inputs = {name: value for name, value in inputs.items() if name != "noise"}
    state = torch.get_rng_state()
    with pytest.raises(exc, match=match):
        gumbel_topk(**inputs)
    assert torch.equal(torch.get_rng_state(), state)


def test_scalar_log_path_equals_vectorised():
    """The cpu kernels take log(-log(u)) through SLEEF's AVX2 routines where the CPU has them and through
    std::log otherwise (forced here with ATEN_CPU_CAPABILITY=default): both agree to rounding, forward
    and straight-through backward, in float32 and float64."""
    _needs_compiled_cpu()
    script = textwrap.dedent(
        """
        import sys, torch
        import nas3d_fast  # noqa: F401
        out = {}
        for dtype in (torch.float32, torch.float64):
            gen = torch.Generator().manual_seed(3)
            logits = torch.randn(61, 9, generator=gen, dtype=dtype)
            noise = torch.rand(61, 9, generator=gen, dtype=dtype).clamp(1e-6, 1 - 1e-6)
            cot = torch.randn(61, 9, generator=gen, dtype=dtype)
            w, idx = torch.ops.nas3d.gumbel_topk(logits, noise, 0.3, 1, True)
            g = torch.ops.nas3d.gumbel_topk_backward(cot, logits, noise, w, 0.3, True)
            w2, idx2 = torch.ops.nas3d.gumbel_topk(logits, noise, 0.3, 2, False)
            out[str(dtype)] = (idx, g, w2, idx2)
        torch.save(out, sys.argv[1])
        """
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for capability in ("default", ""):
            path = os.path.join(tmp, f"{capability or 'native'}.pt")
            env = {name: value for name, value in os.environ.items() if name != "ATEN_CPU_CAPABILITY"}
            if capability:
                env["ATEN_CPU_CAPABILITY"] = capability
            subprocess.run([sys.executable, "-c", script, path], check=True, env=env)
            results[capability] = torch.load(path)
    for dtype, (idx, g, w2, idx2) in results["default"].items():
        idx_v, g_v, w2_v, idx2_v = results[""][dtype]
        assert torch.equal(idx, idx_v) and torch.equal(idx2, idx2_v), dtype
        torch.testing.assert_close(g, g_v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w2, w2_v, rtol=1e-5, atol=1e-6)


# --- regressions of issue 27 ------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1e30, 1e-300, 1e5, 1e-5, float("inf"), float("nan")])
@pytest.mark.parametrize("backend", ["auto", "reference", "cpu", "triton"])
def test_finding4_tau_outside_the_valid_range_is_refused(tau, backend):
    """Issue 27 finding 4: the float16 reference broke down at tau = 1e30 and 1e-300 while the cpu kernel
    stayed finite. tau must now lie in [1e-4, 1e4] on every backend (the eager fast path included)."""
    if backend != "auto" and not nas3d_fast.backends()[backend].usable:
        pytest.skip(nas3d_fast.backends()[backend].reason)
    logits = torch.randn(5, 4, dtype=torch.float16)
    with forced_backend(None if backend == "auto" else backend):
        with pytest.raises(ValueError, match=r"tau must be a number in \[0.0001, 10000\]"):
            gumbel_topk(logits, tau)
        with pytest.raises(ValueError, match=r"tau must be a number in \[0.0001, 10000\]"):
            gumbel_topk(logits, tau, noise=torch.rand(5, 4).clamp(0.01, 0.99).to(torch.float16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("tau", [1e-4, 1e-2, 1.0, 1e2, 1e4])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_finding4_backends_agree_at_the_ends_of_the_range(dtype, tau, backend):
    """Inside the range every backend computes in float32 (float64 for float64) and agrees with the
    reference: same indices, weights to the dtype's rounding."""
    if not nas3d_fast.backends()[backend].usable:
        pytest.skip(nas3d_fast.backends()[backend].reason)
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 8, generator=gen) * 4).to(dtype)
    noise = torch.rand(64, 8, generator=gen).clamp(0.01, 0.99).to(dtype)
    with forced_backend("reference"):
        w_ref, i_ref = gumbel_topk(logits, tau, noise=noise)
    with forced_backend(backend):
        w, i = gumbel_topk(logits, tau, noise=noise)
    assert torch.isfinite(w_ref).all() and torch.isfinite(w).all()
    assert torch.equal(i, i_ref)
    tol = (8 if dtype == torch.float32 else 2) * torch.finfo(dtype).eps  # a few float32 ulps, or one rounding
    torch.testing.assert_close(w.float(), w_ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("tau", [1e30, 1e-300, 9.9e-5, 1.01e4, float("nan")])
def test_finding4_the_registered_ops_refuse_tau_outside_the_range_too(tau):
    """The compiled ops (cpu and cuda share csrc/gumbel/gumbel_args.h) check the same range when called
    directly through torch.ops, forward, sampling and backward alike."""
    if not nas3d_fast.backends()["cpu"].usable:
        pytest.skip(nas3d_fast.backends()["cpu"].reason)
    logits = torch.randn(5, 4)
    noise = torch.rand(5, 4).clamp(0.01, 0.99)
    match = r"tau must be a number in \[0.0001, 10000\]"
    with pytest.raises(ValueError, match=match):
        torch.ops.nas3d.gumbel_topk(logits, noise, tau, 2, False)
    with pytest.raises(ValueError, match=match):
        torch.ops.nas3d.gumbel_topk_sample(logits, tau, 2, False, None)
    with pytest.raises(ValueError, match=match):
        torch.ops.nas3d.gumbel_topk_backward(torch.ones(5, 4), logits, noise, torch.ones(5, 4), tau, False)
