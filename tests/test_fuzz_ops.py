"""Fuzz of every op in the op harness (SPEC §2.5, issue 27): adversarial inputs on every backend.

Every ``OpSpec`` of an ``OpTests`` class in tests/test_*.py is fuzzed, with no code here per op. A case
starts from the spec's own inputs (any dtype among float16/bfloat16/float32/float64, contiguous or
not) and applies up to three mutations: other strides (every other element of a wider buffer,
channels-last, reversed storage order, a storage offset, stride 0, overlapping as_strided rows, a
reversed copy), cut sizes (zero and one), a rank too many or too few, another dtype for one tensor
(wrong floats, ints, bool, complex), NaN/±Inf/±max/tiny values, boundary and overflowing integers
(starts of 2**63-1), and other scalar arguments (0, -1, 2**63-1, NaN, 1e300, None, strings, ...).

Every call runs in a worker process (fuzz_ops.Pool), and must end in
- a result equal to the reference backend's on the same inputs (float32/float64: the spec's
  tolerances, NaN where the reference has NaN; float16/bfloat16: the NaN/Inf pattern of the
  reference at that precision and at most twice its error against float64 plus one rounding unit),
  gradients too where the op has autograd; or
- the same refusal as the reference: on both backends a ValueError/TypeError/RuntimeError whose
  message names the argument;
never in a crash (segfault, abort, sanitizer report), a hang (NAS3D_FUZZ_TIMEOUT s) or a result where
the reference refuses (or the reverse). On the reference backend itself the suite checks that it
refuses clearly, and that its results do not depend on the strides (against dense copies).

Two documented exceptions to "equal to the reference" (fuzz_ops.compare_tensors and
compare_low_precision; NAS3D_FUZZ_RULE_LOG=path logs every use):
- The overflow rule. Where the reference's value is an infinity or NaN but the float64 result of the
  same inputs (the reference on float64 copies) is finite, an intermediate of the reference overflowed
  (e.g. q . k before the scale with q = finfo.max): summation and scaling order decide, not the op.
  There a backend may give a finite value instead, but only that float64 result within the tolerance
  (float32) or within the low-precision bound (float16/bfloat16); a NaN or Inf the inputs carry is
  NaN/Inf in the float64 result too, so it is never excused. For float64 inputs no wider result
  exists: where every input is finite such places are not judged (every other place is); with
  non-finite float64 inputs the rule does not apply.
- The precision-model rule, for an op whose spec declares ``precision_model`` (so far axial attention:
  its backward forms delta from the stored output, a precision limit documented with its bound in
  axial_attention's docstring). Where a gradient misses the reference, it passes if, in float16/
  bfloat16, it meets the model's float64 result as closely as the reference meets the exact one,
  plus the model's slack (the documented bound on the float32 accumulation's rounding); in float32/
  float64, if it is within the tolerance of the reference plus that slack. The slack is zero for the
  quantities the limit does not touch (dv, drel_v, the output), and of the order of the tolerance for
  ordinary inputs; it grows only with |q|, |k| in a saturated softmax, as the bound does.

Settings (environment):
- NAS3D_FUZZ_EXAMPLES (default 12): examples per op and backend (the Triton interpreter, slow, gets
  a quarter); `make fuzz` runs thousands in all.
- NAS3D_FUZZ_SEED (default 0): the cases are a fixed function of it (reproducible CI runs).
- NAS3D_FUZZ_SHRINK=0: report the first failing case without shrinking it.
A failing case prints its JSON and the command that replays it in one process (fuzz_ops.replay).
"""

from __future__ import annotations

import json
import os
import zlib

import fuzz_ops
import pytest
import torch
from harness import backend_params
from hypothesis import HealthCheck, Phase, given, reject, seed, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("NAS3D_FUZZ_EXAMPLES", "12"))
SEED = int(os.environ.get("NAS3D_FUZZ_SEED", "0"))
SHRINK = os.environ.get("NAS3D_FUZZ_SHRINK", "1") != "0"
MAX_MUTATIONS = 3

SPECS = fuzz_ops.discover_specs()


def _params():
    params = []
    for p in backend_params():
        backend, device = p.values
        for spec_id in SPECS:
            params.append(pytest.param(spec_id, backend, device, marks=p.marks, id=f"{spec_id.split(':')[1]}-{p.id}"))
    return params


@pytest.fixture(scope="module")
def pool():
    yield fuzz_ops.pool()


def test_every_op_is_fuzzed():
    """The harness's ops are found (a new OpTests class joins with no change here)."""
    names = {spec.name.split("(")[0] for spec in SPECS.values()}
    assert {"window_gather", "window_stitch", "window_argmax", "axial_attention", "gumbel_topk"} <= names
    assert {"weighted_sum", "kernel_merge", "max_pool3", "avg_pool3", "depthwise_conv3"} <= names


def test_comparison_rules_are_narrow():
    """The overflow and precision-model rules accept only what they document."""
    nan, Dis = float("nan"), fuzz_ops.Disagreement
    f32 = torch.float32
    want, exact = torch.tensor([nan, 1.0], dtype=f32), torch.tensor([2.0, 1.0], dtype=torch.float64)
    fuzz_ops.compare_tensors(torch.tensor([2.0, 1.0], dtype=f32), want, 1e-5, 1e-6, "x", exact, None, "reference")
    for got, mode in ((torch.tensor([3.0, 1.0], dtype=f32), "either"), (torch.tensor([2.0, 1.0], dtype=f32), None)):
        with pytest.raises(Dis):  # not the float64 result; no overflow rule
            fuzz_ops.compare_tensors(got, want, 1e-5, 1e-6, "x", exact, None, mode)
    got = torch.tensor([nan, float("inf")], dtype=f32)
    with pytest.raises(Dis):  # a backend's non-finite value where the reference is finite: only with "either"
        fuzz_ops.compare_tensors(got, want, 1e-5, 1e-6, "x", exact, None, "reference")
    fuzz_ops.compare_tensors(got, want, 1e-5, 1e-6, "x", exact, None, "either")
    big, small = {"finite_inputs": True, "input_scale": 2e19}, {"finite_inputs": True, "input_scale": 1e19}
    case = {"dtype": "float32"}
    nonfinite = {"finite_inputs": False, "input_scale": 2e19}
    assert [fuzz_ops.overflow_mode(case, r) for r in (big, small, nonfinite)] == ["either", "reference", "reference"]
    assert fuzz_ops.overflow_mode({"dtype": "float64"}, nonfinite) is None
    half = torch.float16
    ref_low = torch.tensor([nan, 1.0, 3.0], dtype=half)
    exact3 = torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)
    fuzz_ops.compare_low_precision(torch.tensor([2.0, 1.0, 3.0], dtype=half), ref_low, exact3, "x", "reference")
    for got, mode in (([2.0, 1.0, 3.0], None), ([2.5, 1.0, 3.0], "either"), ([nan, 1.0, nan], "reference")):
        with pytest.raises(Dis):
            fuzz_ops.compare_low_precision(torch.tensor(got, dtype=half), ref_low, exact3, "x", mode)
    fuzz_ops.compare_low_precision(torch.tensor([nan, 1.0, nan], dtype=half), ref_low, exact3, "x", "either")
    # The precision model: a result off the exact one passes only where it meets the model (+ slack).
    ref_low, exact3 = torch.tensor([1.0, 2.0, 3.0], dtype=half), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    model = (torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    fuzz_ops.compare_low_precision(torch.tensor([1.5, 2.0, 3.0], dtype=half), ref_low, exact3, "x", False, model)
    with pytest.raises(Dis):
        fuzz_ops.compare_low_precision(torch.tensor([1.5, 2.5, 3.0], dtype=half), ref_low, exact3, "x", False, model)
    slack = torch.tensor([0.0, 1e-3, 0.0], dtype=torch.float64)
    want = torch.tensor([1.0, 2.0, 3.0], dtype=f32)
    fuzz_ops.compare_tensors(torch.tensor([1.0, 2.0009, 3.0], dtype=f32), want, 1e-5, 1e-6, "x", None, (None, slack))
    with pytest.raises(Dis):
        fuzz_ops.compare_tensors(torch.tensor([1.001, 2.0, 3.0], dtype=f32), want, 1e-5, 1e-6, "x", None, (None, slack))


# -- drawing cases ---------------------------------------------------------------------------------------

LAYOUTS = ("slice", "channels_last", "transposed", "offset", "expand", "overlap", "flip")


def _sizes(inputs: dict) -> set[int]:
    sizes = set()
    for v in inputs.values():
        if isinstance(v, torch.Tensor):
            sizes |= set(v.shape)
        elif isinstance(v, (list, tuple)) and all(isinstance(x, int) for x in v):
            sizes |= set(v)
    return {int(s) for s in sizes}


def _index_values(inputs: dict) -> list[int]:
    """Integers at and beyond the edges: sizes and differences of sizes (start <= size - roi), +-1,
    and values that overflow 32 and 64-bit sums."""
    sizes = _sizes(inputs) | {0}
    near = {a - b + e for a in sizes for b in sizes for e in (0, 1)} | {s + e for s in sizes for e in (-1, 0, 1)}
    return sorted(near | set(fuzz_ops.BIG_INTS))


def _scalar_values(value, inputs: dict) -> list:
    if isinstance(value, bool):
        return [not value, None, 0, 1, "yes"]
    if isinstance(value, int):
        return [*fuzz_ops.SCALAR_INTS, None, "abc", {"f": "1.5"}, {"f": "nan"}, True]
    if isinstance(value, float):
        return [*({"f": f} for f in fuzz_ops.SCALAR_FLOATS), None, "abc", 1, True]
    if isinstance(value, torch.dtype):
        return [{"dtype": name} for name in fuzz_ops.DTYPES]
    if isinstance(value, (list, tuple)) and all(isinstance(x, int) for x in value):
        v = list(value)
        out = [v[:-1], v + [1], {"tuple": v}, {"size": v}, None, "abc", [float(x) for x in v]]
        for i in range(len(v)):
            for bad in (0, -1, 2**63 - 1, 2**31, max(_sizes(inputs)) + 1):
                out.append(v[:i] + [bad] + v[i + 1 :])
        return out
    if isinstance(value, str):
        return ["", "abc", None]
    return []


@st.composite
def _mutation(draw, inputs: dict):
    tensors = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]
    floats = [k for k in tensors if inputs[k].is_floating_point() and inputs[k].numel()]
    ints = [k for k in tensors if not (inputs[k].is_floating_point() or inputs[k].is_complex()) and inputs[k].numel()]
    scalars = [k for k, v in inputs.items() if _scalar_values(v, inputs) and not isinstance(v, torch.Tensor)]
    kinds = ["layout"] * 3 + ["special"] * 2 * bool(floats) + ["fill"] * bool(floats)
    kinds += ["index"] * 4 * bool(ints) + ["cast", "rank", "resize", "same"] + ["scalar"] * 2 * bool(scalars)
    kind = draw(st.sampled_from(kinds))
    if kind == "layout":
        key = draw(st.sampled_from(tensors))
        return ("layout", key, draw(st.sampled_from(LAYOUTS)), draw(st.integers(0, 4)), 0)
    if kind in ("special", "fill"):
        key = draw(st.sampled_from(floats))
        value = draw(st.sampled_from(fuzz_ops.SPECIAL_FLOATS))
        if kind == "fill":
            return ("fill", key, value)
        return ("special", key, draw(st.integers(0, inputs[key].numel() - 1)), value)
    if kind == "index":
        key = draw(st.sampled_from(ints))
        pos = draw(st.integers(0, inputs[key].numel() - 1))
        return ("index", key, pos, draw(st.sampled_from(_index_values(inputs))))
    if kind == "cast":
        return ("cast", draw(st.sampled_from(tensors)), draw(st.sampled_from(list(fuzz_ops.DTYPES))))
    if kind == "rank":
        return ("rank", draw(st.sampled_from(tensors)), draw(st.sampled_from(["unsqueeze", "drop", "flatten"])))
    if kind == "resize":
        sizes = sorted(s for k in tensors for s in inputs[k].shape if s > 0)
        if not sizes:
            reject()
        size = draw(st.sampled_from(sorted(set(sizes))))
        return ("resize", size, draw(st.sampled_from(sorted({0, 1, max(size - 1, 0)}))))
    if kind == "same":
        pairs = [
            (a, b)
            for a in tensors
            for b in tensors
            if a != b and inputs[a].shape == inputs[b].shape and inputs[a].dtype == inputs[b].dtype
        ]
        if not pairs:
            reject()
        a, b = draw(st.sampled_from(pairs))
        return ("same", a, b)
    key = draw(st.sampled_from(scalars))
    return ("scalar", key, draw(st.sampled_from(_scalar_values(inputs[key], inputs))))


def draw_case(data, spec_id: str, device: str) -> tuple[dict, dict]:
    spec = SPECS[spec_id]
    dtype = data.draw(st.sampled_from(["float32", "float64", "float16", "bfloat16"]), label="dtype")
    case = {
        "spec": spec_id,
        "device": device,
        "dtype": dtype,
        "contiguous": data.draw(st.booleans(), label="contiguous"),
        "seed": data.draw(st.integers(0, 3), label="seed"),
        "mutations": [],
    }
    inputs = fuzz_ops.build_inputs(case)
    for _ in range(data.draw(st.integers(0, MAX_MUTATIONS), label="mutations")):
        m = data.draw(_mutation(inputs), label="mutation")
        try:
            inputs = fuzz_ops.apply_mutations(inputs, [m], spec.grad_inputs)
        except Exception:
            continue  # does not apply to these inputs (e.g. a cast of a tensor that cannot be cast)
        case["mutations"].append(m)
    return case, inputs


# -- verdicts -------------------------------------------------------------------------------------------


def _report(case: dict, inputs: dict, backend: str, problem: str) -> str:
    text = json.dumps(case)
    return (
        f"{case['spec']} on {backend}: {problem}\n"
        f"case: {text}\ninputs:\n{fuzz_ops.describe_inputs(inputs)}\n"
        f"replay: cd tests && TRITON_INTERPRET=1 ../.venv/bin/python fuzz_ops.py '{text}' {backend}"
    )


def _needs_float64(inputs: dict) -> bool:
    return any(isinstance(v, torch.Tensor) and v.dtype in fuzz_ops.LOW_PRECISION for v in inputs.values())


def check_case(pool, case: dict, inputs: dict, backend: str) -> None:
    """Raises AssertionError (with the case) on a crash, a hang, an unclear error or a disagreement."""
    spec = SPECS[case["spec"]]
    names = fuzz_ops.argument_names(spec, inputs)
    want = pool.call(case, "reference")
    if want["status"] == "inapplicable":
        reject()
    try:
        if backend == "reference":
            _check_reference(pool, spec, case, inputs, want, names)
            return
        got = pool.call(case, backend)
        if got["status"] == "error" and want["status"] == "error" and not (got["in_op"] or want["in_op"]):
            reject()  # the test's own call wrapper refused the mutated inputs, before any op ran
        exact, model = _exact_and_model(pool, spec, case, inputs, want)
        fuzz_ops.compare_records(spec, case, got, want, exact, names, backend, model)
    except fuzz_ops.Disagreement as exc:
        raise AssertionError(_report(case, inputs, backend, str(exc))) from None


def _exact_and_model(pool, spec, case: dict, inputs: dict, want: dict):
    """The reference on float64 copies where a comparison needs it (low precision; a reference result
    holding an infinity or NaN: the overflow rule), and the records of the spec's
    precision model (model at low precision, slack) where it has one."""
    if "outputs" not in want:  # refused or crashed: nothing to compare
        return None, None
    low = _needs_float64(inputs)
    exact = model = None
    if low or fuzz_ops.has_nonfinite(want):
        exact = pool.call(case, "reference", "upcast")
    if spec is not None and spec.precision_model is not None and want["status"] == "ok":
        model = (pool.call(case, "reference", "model") if low else None, pool.call(case, "reference", "slack"))
    return exact, model


def _check_reference(pool, spec, case, inputs, native, names) -> None:
    """The reference: clear refusals, no crash, and the same result on dense copies of its inputs."""
    if native["status"] == "crash":
        raise fuzz_ops.Disagreement(f"reference crashed: {native['message']}\n{native['log']}")
    if native["status"] == "error":
        if native["in_op"]:
            fuzz_ops.check_clear(native, names, f"reference {native['stage']}")
        elif not native.get("forward_ok"):
            reject()
        return
    dense = pool.call(case, "reference", "contiguous")
    exact, _ = _exact_and_model(pool, None, case, inputs, dense)
    fuzz_ops.compare_records(spec, case, native, dense, exact, names, "reference (strided, vs dense copies)")


def run_fuzz(pool, spec_id: str, backend: str, device: str, examples: int) -> None:
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else [])

    @seed(zlib.crc32(f"{spec_id}/{backend}/{device}/{SEED}".encode()))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(data=st.data())
    def fuzz(data):
        case, inputs = draw_case(data, spec_id, device)
        check_case(pool, case, inputs, backend)

    fuzz()


@pytest.mark.parametrize("spec_id,backend,device", _params())
def test_fuzz(pool, spec_id, backend, device):
    examples = EXAMPLES if backend != "triton" else max(2, EXAMPLES // 4)
    run_fuzz(pool, spec_id, backend, device, examples)


# -- a sweep of boundary and overflowing integers (deterministic, every column) ---------------------------


def _int_keys(spec, device):
    base = spec.make_inputs(dtype=torch.float32, device=device, contiguous=True, seed=0)
    return base, [
        k
        for k, v in base.items()
        if isinstance(v, torch.Tensor) and not v.is_floating_point() and not v.is_complex() and v.numel()
    ]


def _sweep_params():
    return [p for p in _params() if _int_keys(SPECS[p.values[0]], "cpu")[1]]


@pytest.mark.parametrize("spec_id,backend,device", _sweep_params())
def test_index_boundaries(pool, spec_id, backend, device):
    """Every column of every integer input (e.g. each of b, z, y, x of window starts) at each edge
    value and at values whose sums overflow 64 bits, one at a time in the first row."""
    spec = SPECS[spec_id]
    base, keys = _int_keys(spec, device)
    values = _index_values(base) if backend != "triton" else [-1, *fuzz_ops.BIG_INTS]
    failures = []
    for key in keys:
        t = base[key]
        columns = t.shape[-1] if t.dim() >= 2 else min(t.numel(), 4)
        for col in range(columns):
            for value in values:
                case = {"spec": spec_id, "device": device, "dtype": "float32", "contiguous": True, "seed": 0}
                case["mutations"] = [("index", key, col, value)]
                inputs = fuzz_ops.build_inputs(case)
                try:
                    check_case(pool, case, inputs, backend)
                except AssertionError as exc:
                    failures.append(str(exc))
                except Exception as exc:  # hypothesis' reject() outside a hypothesis test
                    if type(exc).__name__ != "UnsatisfiedAssumption":
                        raise
                if len(failures) >= 3:
                    break
    assert not failures, f"{len(failures)} failing boundary cases (first ones):\n\n" + "\n\n".join(failures[:3])
