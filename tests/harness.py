"""A reusable test harness for nas3d ops.

An op joins by describing itself in an ``OpSpec`` and subclassing ``OpTests``::

    class TestMyOp(OpTests):
        spec = OpSpec(name="my_op", call=..., make_inputs=..., ...)

``OpTests`` then checks, for every backend usable here (the triton backend through the Triton
interpreter on CPU tensors): equality with the reference in float64 and float32, non-contiguous
inputs, float16/bfloat16 by the flash-attention rule (the backend's error against a float64 reference
is at most twice the reference implementation's own error at that precision), gradients against the
reference's autograd, ``torch.autograd.gradcheck`` in float64 (reference and cpu),
``torch.library.opcheck`` on the registered ops, tracing on the meta device, ``torch.compile``
with fullgraph=True, and bad inputs raising clear errors.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

import nas3d_fast
from nas3d_fast import dispatch as nas3d_backends

LOW_PRECISION = (torch.float16, torch.bfloat16)
# Default tolerances (rtol, atol) for comparing a backend with the reference at the same precision.
TOLERANCES = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6)}


@dataclass
class OpSpec:
    """What the harness needs to know of one op.

    call(inputs: dict) -> tuple of output tensors: the public function on keyword ``inputs``.
    make_inputs(dtype, device, contiguous, seed) -> dict: inputs for ``call``; the entries named in
        ``grad_inputs`` are leaf tensors of ``dtype`` that require grad.
    float_outputs / exact_outputs: output positions compared with tolerance / exactly.
    opchecks(device) -> list of (op overload packet, args tuple) for torch.library.opcheck; the
        backend's registered ops, e.g. [(torch.ops.nas3d.my_op, (x, 2.0))].
    bad_inputs(device) -> list of (id, inputs dict, exception type, message regex).
    precision_model(inputs, dtype, slack=False) -> tuple of outputs, or None: for an op whose compiled
        kernels, by a documented design choice, compute something other than the exact result (axial
        attention's backward forms delta from the stored output), a differentiable float64 model of
        what they compute from the float64 ``inputs`` at ``dtype``: its gradients are the model's; with
        slack=True they are instead the documented bound on the rounding the model leaves out (>= 0).
        Only the op fuzz (tests/fuzz_ops.py) uses it: a result that misses the reference passes if it
        meets the model within the usual bound plus that slack.
    valid_range(inputs) -> bool, or None: False when the inputs lie outside the op's documented numeric
        range (magnitudes whose products overflow the accumulation type, where the result depends on
        each backend's summation order). The op fuzz then checks only that every backend returns or
        refuses clearly like the reference, without a crash; nothing else uses it.
    """

    name: str
    call: Callable[[dict], tuple]
    make_inputs: Callable[..., dict]
    grad_inputs: tuple[str, ...]
    float_outputs: tuple[int, ...]
    exact_outputs: tuple[int, ...] = ()
    low_precision: tuple[torch.dtype, ...] = LOW_PRECISION
    gradcheck_backends: tuple[str, ...] = ("reference", "cpu")
    opchecks: dict[str, Callable] = field(default_factory=dict)
    bad_inputs: Callable[[str], list] = lambda device: []
    tolerances: dict = field(default_factory=lambda: dict(TOLERANCES))
    precision_model: Callable[..., tuple] | None = None
    valid_range: Callable[[dict], bool] | None = None


def finite_magnitude(tensors) -> float:
    """The largest |value| among the finite elements of ``tensors`` (0.0 for none): what a valid_range
    compares, so that NaN/Inf inputs (judged by the ops' IEEE rules) are not taken for out of range."""
    top = 0.0
    for t in tensors:
        t = t.detach()
        if t.is_floating_point() and t.numel():
            finite = t[t.isfinite()]
            if finite.numel():
                top = max(top, finite.abs().max().double().item())
    return top


def accumulation_max(dtype: torch.dtype) -> float:
    """finfo.max of the type the kernels accumulate ``dtype`` in (float32; float64 for float64)."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).max


@contextlib.contextmanager
def forced_backend(name: str):
    before = nas3d_fast.get_backend()
    nas3d_fast.set_backend(name)
    try:
        yield
    finally:
        nas3d_fast.set_backend(before)


def backend_params() -> list:
    """(backend, device) pairs: every backend that could run here, skipped with its reason if not."""
    params = []
    for device in ["cpu", "cuda"]:
        for name in nas3d_backends.BACKENDS:
            reasons = (
                nas3d_backends.device_reasons(name, torch.device(device))
                if (device == "cpu" or torch.cuda.is_available())
                else ["no CUDA device"]
            )
            marks = [pytest.mark.skip(reason=f"{name} on {device}: {'; '.join(reasons)}")] if reasons else []
            params.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    return params


def run(spec: OpSpec, inputs: dict, backend: str) -> tuple:
    with forced_backend(backend):
        out = spec.call(inputs)
    return out if isinstance(out, tuple) else (out,)


def cast_inputs(inputs: dict, dtype: torch.dtype, grad_inputs) -> dict:
    """The same inputs in another floating dtype (integer and non-tensor entries unchanged)."""
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.detach().to(dtype)
            if key in grad_inputs:
                value.requires_grad_(True)
        out[key] = value
    return out


def grads(spec: OpSpec, inputs: dict, outputs: tuple, seed: int = 1) -> list[torch.Tensor]:
    """Gradients of sum_i <cot_i, out_i> over the float outputs, for a fixed random cotangent."""
    if not spec.grad_inputs:  # an op without gradients (e.g. inference-only)
        return []
    gen = torch.Generator().manual_seed(seed)
    floats = [outputs[i] for i in spec.float_outputs]
    cots = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in floats]
    leaves = [inputs[name] for name in spec.grad_inputs]
    return list(torch.autograd.grad(floats, leaves, cots, allow_unused=True))


def assert_outputs_close(spec: OpSpec, got: tuple, want: tuple, dtype: torch.dtype, what: str) -> None:
    rtol, atol = spec.tolerances[dtype]
    for i in spec.exact_outputs:
        torch.testing.assert_close(got[i].cpu(), want[i].cpu(), rtol=0, atol=0, msg=lambda m: f"{what} output {i}: {m}")
    for i in spec.float_outputs:
        torch.testing.assert_close(
            got[i].detach().cpu().to(want[i].dtype),
            want[i].detach().cpu(),
            rtol=rtol,
            atol=atol,
            msg=lambda m: f"{what} output {i}: {m}",
        )


class OpTests:
    """The generic tests; subclasses set ``spec``."""

    spec: OpSpec

    @pytest.mark.parametrize("backend,device", backend_params())
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
    @pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
    def test_matches_reference(self, backend, device, dtype, contiguous):
        spec = self.spec
        inputs = spec.make_inputs(dtype=dtype, device=device, contiguous=contiguous, seed=0)
        ref_inputs = cast_inputs(inputs, dtype, spec.grad_inputs)
        got = run(spec, inputs, backend)
        want = run(spec, ref_inputs, "reference")
        assert_outputs_close(spec, got, want, dtype, f"{spec.name}[{backend}] forward")
        for name, g, w in zip(spec.grad_inputs, grads(spec, inputs, got), grads(spec, ref_inputs, want)):
            assert (g is None) == (w is None), f"{name}: gradient presence differs from the reference"
            if g is not None:
                rtol, atol = spec.tolerances[dtype]
                torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m: f"grad of {name}: {m}")

    @pytest.mark.parametrize("backend,device", backend_params())
    @pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["float16", "bfloat16"])
    def test_low_precision(self, backend, device, dtype):
        """Error at low precision is at most twice the reference's at that precision (vs float64)."""
        spec = self.spec
        if dtype not in spec.low_precision:
            pytest.skip(f"{spec.name} does not support {dtype}")
        base = spec.make_inputs(dtype=torch.float64, device=device, contiguous=True, seed=0)
        exact = run(spec, base, "reference")
        low = cast_inputs(base, dtype, spec.grad_inputs)
        got = run(spec, low, backend)
        ref_low_inputs = cast_inputs(base, dtype, spec.grad_inputs)
        ref_low = run(spec, ref_low_inputs, "reference")
        for i in spec.exact_outputs:
            torch.testing.assert_close(got[i], exact[i], rtol=0, atol=0)
        floor = torch.finfo(dtype).eps

        def check(what, value, ref_value, want):
            err = (value.double() - want).abs().max().item()
            ref_err = (ref_value.double() - want).abs().max().item()
            assert err <= 2 * ref_err + floor, f"{what}: error {err:.3g} > 2 x reference error {ref_err:.3g}"

        for i in spec.float_outputs:
            check(f"output {i}", got[i], ref_low[i], exact[i])
        g_exact = grads(spec, base, exact)
        g_got = grads(spec, low, got)
        g_ref = grads(spec, ref_low_inputs, ref_low)
        for name, e, g, r in zip(spec.grad_inputs, g_exact, g_got, g_ref):
            if e is not None:
                check(f"grad of {name}", g, r, e)

    @pytest.mark.parametrize("backend", ["reference", "cpu"])
    def test_gradcheck(self, backend):
        spec = self.spec
        if backend not in spec.gradcheck_backends:
            pytest.skip(f"{spec.name}: no gradcheck for {backend}")
        reasons = nas3d_backends.device_reasons(backend, torch.device("cpu"))
        if reasons:
            pytest.skip("; ".join(reasons))
        inputs = spec.make_inputs(dtype=torch.float64, device="cpu", contiguous=True, seed=0)
        leaves = [inputs[name] for name in spec.grad_inputs]

        def f(*args):
            out = run(spec, {**inputs, **dict(zip(spec.grad_inputs, args))}, backend)
            return tuple(out[i] for i in spec.float_outputs)

        assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5)

    @pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
    def test_opcheck(self, backend):
        spec = self.spec
        if backend not in spec.opchecks:
            pytest.skip(f"{spec.name}: no registered op for {backend}")
        device = "cuda" if backend in ("cuda", "triton") else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs a CUDA device (the Triton interpreter cannot run under fake tensors)")
        reasons = nas3d_backends.device_reasons(backend, torch.device(device))
        if reasons:
            pytest.skip("; ".join(reasons))
        for op, args in spec.opchecks[backend](device):
            torch.library.opcheck(op, args)

    def test_meta_device(self):
        """Shapes and dtypes trace on the meta device (as memory prediction will do)."""
        spec = self.spec
        real = spec.make_inputs(dtype=torch.float32, device="cpu", contiguous=True, seed=0)
        meta = {
            k: (v.detach().to("meta").requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v)
            for k, v in real.items()
        }
        with forced_backend(None):  # automatic choice: the compiled op's fake kernel, else the reference
            got = spec.call(meta)
        got = got if isinstance(got, tuple) else (got,)
        want = run(spec, real, "reference")
        for g, w in zip(got, want):
            assert g.device.type == "meta" and g.shape == w.shape and g.dtype == w.dtype

    def test_compile_fullgraph(self):
        spec = self.spec
        inputs = spec.make_inputs(dtype=torch.float32, device="cpu", contiguous=True, seed=0)
        eager = run(spec, inputs, "cpu" if nas3d_fast.backends()["cpu"].usable else "reference")
        torch._dynamo.reset()
        compiled = torch.compile(spec.call, fullgraph=True, backend="aot_eager")
        got = compiled(inputs)
        got = got if isinstance(got, tuple) else (got,)
        assert_outputs_close(spec, got, eager, torch.float32, f"{spec.name} compiled")

    def test_bad_inputs(self):
        spec = self.spec
        cases = spec.bad_inputs("cpu")
        assert cases, f"{spec.name}: the spec lists no bad inputs"
        for case_id, inputs, exc, match in cases:
            with pytest.raises(exc, match=match):
                spec.call(inputs)
