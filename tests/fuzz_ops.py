"""The machinery of the op fuzz suite (tests/test_fuzz_ops.py): cases, crash-isolated workers, verdicts.

A *case* is plain data (JSON): which ``OpSpec`` (``"test_window:TestWindowStitch"``), the dtype,
contiguity and seed handed to its ``make_inputs``, and a list of *mutations* applied to those inputs
(strides, sizes, ranks, dtypes, special values, boundary and overflowing indices, other scalar
arguments). Every op that joins the op harness (an ``OpTests`` subclass with a ``spec`` in a
``tests/test_*.py`` file) is found by ``discover_specs`` and fuzzed with no further code.

Calls run in worker processes forked from a forkserver that has torch, nas3d_fast and Triton already
imported, so a segfault, abort or hang (``NAS3D_FUZZ_TIMEOUT`` seconds, default 120) fails the one
case, with its description and the worker's stderr, and the next case gets a fresh worker in a few
milliseconds. One worker is kept alive between calls (the pool of this process).

A case is replayed by hand with::

    cd tests && TRITON_INTERPRET=1 ../.venv/bin/python fuzz_ops.py '<case json>' cpu

which runs it in this process (no worker) and prints the outputs or the error.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import io
import json
import math
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time
import traceback
import warnings

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (as conftest.py does)

import torch  # noqa: E402

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_S = float(os.environ.get("NAS3D_FUZZ_TIMEOUT", "120"))

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "complex64": torch.complex64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")
LOW_PRECISION = (torch.float16, torch.bfloat16)
# Errors an op may raise for bad input (SPEC §2.5); the message must name the argument.
CLEAR_ERRORS = (ValueError, TypeError, RuntimeError)


# -- the op specs -----------------------------------------------------------------------------------


def spec_modules() -> list[str]:
    """The test modules that define op-harness tests (``class ...(OpTests)``)."""
    names = []
    for path in sorted(glob.glob(os.path.join(TESTS_DIR, "test_*.py"))):
        name = os.path.basename(path)[:-3]
        if name == "test_fuzz_ops":
            continue
        with open(path, encoding="utf-8") as f:
            if re.search(r"^class \w+\(.*\bOpTests\b.*\):", f.read(), re.M):
                names.append(name)
    return names


def discover_specs() -> dict:
    """{"module:Class": OpSpec} for every OpTests subclass of the test modules."""
    import harness

    found = {}
    for module_name in spec_modules():
        module = importlib.import_module(module_name)
        for cls_name, cls in vars(module).items():
            if (
                isinstance(cls, type)
                and issubclass(cls, harness.OpTests)
                and cls is not harness.OpTests
                and cls.__module__ == module.__name__
                and isinstance(getattr(cls, "spec", None), harness.OpSpec)
            ):
                found[f"{module_name}:{cls_name}"] = cls.spec
    return found


_SPECS: dict = {}


def get_spec(spec_id: str):
    if spec_id not in _SPECS:
        module_name, cls_name = spec_id.split(":")
        _SPECS[spec_id] = getattr(importlib.import_module(module_name), cls_name).spec
    return _SPECS[spec_id]


def argument_names(spec, inputs: dict) -> set[str]:
    """Names an error message may use for an argument: the public function's parameters (the spec's name
    up to '(' names it in nas3d_fast.ops), the keys of its inputs, and those without trailing digits
    (``x0`` -> ``x``, ``xs``)."""
    import nas3d_fast.ops

    names = set()
    fn = getattr(nas3d_fast.ops, spec.name.split("(")[0].strip(), None)
    if fn is not None:
        try:
            names |= set(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            pass
    for key in inputs:
        names.add(key)
        stem = key.rstrip("0123456789")
        if stem:
            names |= {stem, stem + "s"}
    return names


def names_an_argument(message: str, names) -> bool:
    """True when the message talks about one of ``names``: the name as a word (``starts[0] ...``,
    "volume must ..."); a name of one or two letters (``x``, ``q``, ``xs``) only with what is wrong with
    it next to it ("x must", "xs[1] has", "k =") or quoted, since such letters also occur as prose."""
    for name in names:
        n = re.escape(name)
        if re.search(rf"[`'\"]{n}[`'\"]", message):
            return True
        if len(name) >= 3 and re.search(rf"(?<![\w.]){n}(?![\w(])", message):
            return True
        if re.search(rf"(?<![\w.]){n}(\[[^\]]*\])*\s*(must|should|has|have|is|are|needs?|cannot|=|:)", message):
            return True
    return False


# -- cases: base inputs and mutations ----------------------------------------------------------------

SPECIAL_FLOATS = ("nan", "inf", "-inf", "-0.0", "max", "-max", "tiny", "1e4", "-1e4")
BIG_INTS = (2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 2, 2**63 - 1, -(2**31), -(2**63))
SCALAR_INTS = (0, -1, 1, 2, 3, 4, 5, 2**31, 2**63 - 1, -(2**63))
SCALAR_FLOATS = ("0.0", "-1.0", "nan", "inf", "-inf", "5e-324", "1e-300", "1e-30", "1e-5", "1e4", "1e30", "1e300")


def decode_float(v, dtype=None) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    if v in ("max", "-max", "tiny"):
        info = torch.finfo(dtype if dtype is not None and dtype.is_floating_point else torch.float64)
        return {"max": info.max, "-max": -info.max, "tiny": info.tiny}[v]
    return float(v)


def _leafify(inputs: dict, grad_inputs) -> dict:
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if key in grad_inputs and (value.is_floating_point() or value.is_complex()):
                value.requires_grad_(True)
        out[key] = value
    return out


def _contiguous_strides(shape) -> list[int]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return strides[::-1]


def _layout(t: torch.Tensor, how: str, dim: int, seed: int) -> torch.Tensor:
    """Views of (mostly) the same values with other strides; ``expand``, ``overlap`` and ``flip`` change
    the values (a broadcast, an as_strided view whose rows share memory, a reversed copy)."""
    shape = list(t.shape)
    ndim = t.dim()
    d = dim % ndim if ndim else 0
    if how == "slice":  # every other element of a wider buffer along one axis
        if ndim == 0:
            return t
        idx = (slice(None),) * d + (slice(None, None, 2),)
        wide = t.new_zeros(*shape[:d], 2 * shape[d], *shape[d + 1 :])
        wide[idx] = t
        return wide[idx]
    if how == "channels_last":
        if ndim == 5:
            return t.contiguous(memory_format=torch.channels_last_3d)
        if ndim == 4:
            return t.contiguous(memory_format=torch.channels_last)
        how = "transposed"
    if how == "transposed":  # storage in the reverse axis order, seen in the original order
        rev = list(range(ndim))[::-1]
        return t.permute(rev).contiguous().permute(rev)
    if how == "offset":  # a view at a storage offset
        base = t.new_zeros(t.numel() + 7)
        view = base[7:].view(shape)
        view.copy_(t)
        return view
    if how == "expand":  # stride 0 along one axis
        if ndim == 0 or shape[d] == 0:
            return t
        return t.narrow(d, 0, 1).expand(shape)
    if how == "overlap":  # an as_strided view whose neighbouring rows overlap in memory
        strides = _contiguous_strides(shape)
        big = [i for i in range(ndim - 1) if shape[i] > 1 and strides[i] > 1]
        if not big:
            return t
        i = big[d % len(big)]
        strides[i] = max(1, strides[i] // 2)
        size = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if t.numel() else 0
        src = t.detach().reshape(-1)
        if src.numel() == 0:
            return t
        base = src.repeat(size // src.numel() + 1)[:size].clone()
        return base.as_strided(shape, strides)
    if how == "flip":  # a negative-step view made contiguous: the values reversed along one axis
        return t.flip(d) if ndim else t
    raise ValueError(f"unknown layout {how!r}")


def _set_flat(t: torch.Tensor, pos: int, value) -> torch.Tensor:
    if t.numel() == 0:
        return t
    t = t.clone()
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(pos % t.numel()), t.shape))
    t[idx] = value
    return t


def apply_mutations(inputs: dict, mutations, grad_inputs) -> dict:
    """The inputs after each mutation in turn (deterministic: the worker rebuilds them from the case)."""
    inputs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    for m in mutations:
        kind = m[0]
        if kind == "layout":
            _, key, how, dim, seed = m
            inputs[key] = _layout(inputs[key], how, dim, seed)
        elif kind == "special":
            _, key, pos, value = m
            t = inputs[key]
            inputs[key] = _set_flat(t, pos, decode_float(value, t.dtype))
        elif kind == "fill":
            _, key, value = m
            t = inputs[key]
            inputs[key] = torch.full_like(t, decode_float(value, t.dtype))
        elif kind == "index":
            _, key, pos, value = m
            inputs[key] = _set_flat(inputs[key], pos, int(value))
        elif kind == "cast":
            _, key, dtype = m
            with warnings.catch_warnings():  # complex -> real drops the imaginary part: intended
                warnings.simplefilter("ignore")
                inputs[key] = inputs[key].to(DTYPES[dtype])
        elif kind == "rank":
            _, key, how = m
            t = inputs[key]
            if how == "unsqueeze":
                t = t.unsqueeze(0)
            elif how == "drop":
                t = t[0] if t.dim() and t.shape[0] else t.reshape(t.shape[1:]) if t.dim() else t
            elif how == "flatten":
                t = t.reshape(-1)
            inputs[key] = t
        elif kind == "resize":  # every axis of size `size` in every tensor cut to `new` (0: empty)
            _, size, new = m
            for key, t in inputs.items():
                if isinstance(t, torch.Tensor):
                    for d in range(t.dim()):
                        if t.shape[d] == size:
                            t = t.narrow(d, 0, min(new, size))
                    inputs[key] = t
        elif kind == "scalar":
            _, key, value = m
            inputs[key] = decode_scalar(value)
        elif kind == "same":
            _, key, other = m
            inputs[other] = inputs[key]
        else:
            raise ValueError(f"unknown mutation {m!r}")
    return _leafify(inputs, grad_inputs)


def decode_scalar(value):
    """Scalars travel as JSON: {"f": "nan"} a float, {"dtype": "int32"} a dtype, {"size": [..]} a
    torch.Size, {"tuple": [..]} a tuple; anything else as itself."""
    if isinstance(value, dict):
        if "f" in value:
            return decode_float(value["f"])
        if "dtype" in value:
            return DTYPES[value["dtype"]]
        if "size" in value:
            return torch.Size(value["size"])
        if "tuple" in value:
            return tuple(value["tuple"])
    return value


def build_inputs(case: dict, upcast: bool = False, contiguous_copies: bool = False) -> dict:
    """The inputs of ``case``: its spec's make_inputs, then its mutations. ``upcast``: every float tensor
    in float64 (the same values); ``contiguous_copies``: every tensor a dense contiguous copy."""
    spec = get_spec(case["spec"])
    device = case.get("device", "cpu")
    dtype = DTYPES[case["dtype"]]
    base = spec.make_inputs(dtype=dtype, device=device, contiguous=case["contiguous"], seed=case["seed"])
    inputs = apply_mutations(base, case["mutations"], spec.grad_inputs)
    if upcast or contiguous_copies:
        changed = {}
        for key, t in inputs.items():
            if isinstance(t, torch.Tensor):
                t = t.detach()
                if upcast and t.is_floating_point():
                    t = t.to(torch.float64)
                if contiguous_copies:
                    t = t.clone(memory_format=torch.contiguous_format)
            changed[key] = t
        inputs = _leafify(changed, spec.grad_inputs)
    return inputs


def describe_inputs(inputs: dict) -> str:
    """Shapes, strides, dtypes and the odd values of each input, for failure messages."""
    lines = []
    for key, v in inputs.items():
        if isinstance(v, torch.Tensor):
            t = v.detach()
            dtype = DTYPE_NAMES.get(t.dtype, t.dtype)
            line = f"  {key}: {dtype} shape {tuple(t.shape)} strides {t.stride()} offset {t.storage_offset()}"
            if t.numel() and (t.is_floating_point()):
                f = t.double()
                n_nan, n_inf = int(f.isnan().sum()), int(f.isinf().sum())
                line += f" nan {n_nan} inf {n_inf}"
                if t.numel() <= 8:
                    line += f" values {f.flatten().tolist()}"
            elif t.numel() and t.numel() <= 64:
                line += f" values {t.tolist()}"
            lines.append(line)
        else:
            lines.append(f"  {key} = {v!r}")
    return "\n".join(lines)


# -- running one call ---------------------------------------------------------------------------------


def _entered_package(tb) -> bool:
    """True when the traceback passes through nas3d_fast (the op raised, not the test's call wrapper)."""
    import nas3d_fast

    roots = [os.path.realpath(p) for p in nas3d_fast.__path__] + list(nas3d_fast.__path__)
    for frame, _ in traceback.walk_tb(tb):
        filename = frame.f_code.co_filename
        if any(filename.startswith(r + os.sep) for r in roots):
            return True
    return False


def _error(exc: BaseException, stage: str) -> dict:
    return {
        "status": "error",
        "stage": stage,
        "type": type(exc).__name__,
        "clear_type": isinstance(exc, CLEAR_ERRORS),
        "message": str(exc)[:2000],
        "in_op": _entered_package(exc.__traceback__),
        "traceback": "".join(traceback.format_exception(exc))[-3000:],
    }


def _grads(spec, inputs: dict, outputs: tuple, cot_dtype: torch.dtype | None = None):
    """Gradients of sum_i <cot_i, out_i> over the float outputs (the harness's fixed cotangents) with
    respect to the grad inputs that are still float leaves; None for an op without autograd.
    ``cot_dtype``: the cotangents rounded to it first (the float64 runs of a case use the values the
    case's own run gets: at float16 the rounding of a cotangent times a large input is no rounding of
    the op's)."""
    leaves = [k for k in spec.grad_inputs if isinstance(inputs.get(k), torch.Tensor) and inputs[k].requires_grad]
    if not leaves:
        return None
    floats = [outputs[i] for i in spec.float_outputs]
    gen = torch.Generator().manual_seed(1)
    cots = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in floats]
    if cot_dtype is not None:
        cots = [c.to(cot_dtype) for c in cots]
    cots = [c.to(o) for c, o in zip(cots, floats)]
    got = torch.autograd.grad(floats, [inputs[k] for k in leaves], cots, allow_unused=True)
    return dict(zip(leaves, got))


def all_finite(inputs: dict) -> bool:
    """True when every floating tensor among the inputs holds only finite values."""
    return all(
        bool(v.detach().isfinite().all())
        for v in inputs.values()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    )


def input_scale(inputs: dict) -> float:
    """The largest magnitude among the floating inputs (0 without any)."""
    scale = 0.0
    for v in inputs.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
            scale = max(scale, v.detach().abs().max().double().item())
    return scale


def overflow_mode(case: dict, record: dict) -> str | None:
    """Which overflow rule applies to a case, from the reference's record: "reference" (the reference's
    intermediates may overflow: where its value is non-finite and the float64 result finite, a backend
    may give that finite result; with non-finite inputs too, as the float64 result propagates their
    NaN/Inf wherever they reach), "either" (finite inputs, one of magnitude >= sqrt(finfo.max), so that
    a product of two overflows: the backend's may overflow too), or None (float64 with non-finite
    inputs: no wider result tells an overflow from a NaN/Inf the inputs carried)."""
    if case["dtype"] == "float64" and not record.get("finite_inputs"):
        return None
    big = record.get("input_scale", 0.0) >= math.sqrt(torch.finfo(DTYPES[case["dtype"]]).max)
    return "either" if big and record.get("finite_inputs") else "reference"


def has_nonfinite(record: dict) -> bool:
    """True when a record's float outputs or gradients hold an infinity or a NaN."""
    if "outputs" not in record:
        return False
    tensors = list(unpack(record["outputs"]))
    if "grads" in record:
        tensors += list((unpack(record["grads"]) or {}).values())
    return any(t is not None and t.is_floating_point() and not bool(t.isfinite().all()) for t in tensors)


def _pack(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def unpack(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


def execute(case: dict, backend: str, mode: str = "native") -> dict:
    """Run the case on ``backend``; modes: native, upcast (float64 copies), contiguous (dense copies),
    model and slack (the spec's precision_model on float64 copies for the case's dtype; see
    compare_records).
    Returns {"status": "ok", "outputs": bytes, "grads": bytes} or an error record."""
    import harness

    spec = get_spec(case["spec"])
    call = spec.call
    if mode in ("model", "slack"):
        if spec.precision_model is None:
            return {"status": "inapplicable", "message": f"{spec.name} has no precision model"}
        dtype = DTYPES[case["dtype"]]
        call = lambda inputs: spec.precision_model(inputs, dtype, slack=mode == "slack")  # noqa: E731
    try:
        upcast = mode in ("upcast", "model", "slack")
        inputs = build_inputs(case, upcast=upcast, contiguous_copies=mode == "contiguous")
    except Exception as exc:  # the mutation does not apply to these inputs
        return {"status": "inapplicable", "message": f"{type(exc).__name__}: {exc}"}
    try:
        with harness.forced_backend(backend):
            out = call(inputs)
        out = out if isinstance(out, tuple) else (out,)
    except Exception as exc:
        return _error(exc, "forward")
    record = {"status": "ok", "outputs": _pack([o.detach().cpu().clone() for o in out])}
    record["finite_inputs"] = all_finite(inputs)
    record["input_scale"] = input_scale(inputs)
    record["in_range"] = True
    if spec.valid_range is not None:
        try:
            record["in_range"] = bool(spec.valid_range(inputs))
        except Exception:  # inputs the op refuses anyway
            pass
    try:
        with harness.forced_backend(backend):
            dtype = DTYPES[case["dtype"]]
            g = _grads(spec, inputs, out, dtype if upcast and dtype.is_floating_point else None)
        if g is not None:
            g = {k: (None if v is None else v.detach().cpu().clone()) for k, v in g.items()}
        record["grads"] = _pack(g)
    except Exception as exc:
        err = _error(exc, "backward")
        record.update(status="error", **{k: v for k, v in err.items() if k != "status"})
        record["forward_ok"] = True
    return record


# -- the worker pool ------------------------------------------------------------------------------------

PRELOAD = [
    "torch",
    "nas3d_fast",
    "nas3d_fast.ops",
    "triton",
    "nas3d_fast.kernels.triton.window",
    "nas3d_fast.kernels.triton.mixed",
    "nas3d_fast.kernels.triton.axial",
    "nas3d_fast.kernels.triton.gumbel",
    "hypothesis",
]


def _worker_main(conn, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    import faulthandler

    faulthandler.enable(file=sys.stderr)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        case, backend, mode = request
        print(f"--- {backend}/{mode}: {json.dumps(case)}", flush=True)
        conn.send(execute(case, backend, mode))


class WorkerDied(Exception):
    pass


class Pool:
    """One worker process, forked from a forkserver with the heavy modules imported, restarted after a
    crash or a timeout."""

    def __init__(self):
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.proc = None
        self.conn = None
        self.log_dir = tempfile.mkdtemp(prefix="nas3d_fuzz_")
        self.log_path = os.path.join(self.log_dir, "worker.log")
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main, args=(child, self.log_path), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def _stop(self, kill: bool) -> None:
        if self.proc is None:
            return
        if kill and self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(5)
        self.conn.close()
        self.proc = self.conn = None

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
        self._stop(kill=True)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read()[-6000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def call(self, case: dict, backend: str, mode: str = "native", timeout: float = TIMEOUT_S) -> dict:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        start = time.monotonic()
        pid = self.proc.pid
        try:
            self.conn.send((case, backend, mode))
            if self.conn.poll(timeout):
                return self.conn.recv()
            died = f"no answer within {timeout:.0f} s (a hang); the worker was killed"
            self._stop(kill=True)
        except (EOFError, OSError, ConnectionError):
            self.proc.join(10)
            code = self.proc.exitcode
            if code is not None and code < 0:
                died = f"the worker died of signal {signal.Signals(-code).name}"
            else:
                died = f"the worker exited with status {code}"
            self._stop(kill=True)
        self.restarts += 1
        return {
            "status": "crash",
            "message": f"{died} after {time.monotonic() - start:.1f} s",
            "log": self._log_since(offset) + _sanitizer_report(pid),
        }


def _sanitizer_report(pid: int) -> str:
    """The AddressSanitizer report of process ``pid`` when ASAN_OPTIONS sends reports to log_path."""
    match = re.search(r"(?:^|:)log_path=([^:]+)", os.environ.get("ASAN_OPTIONS", ""))
    if not match:
        return ""
    text = ""
    for path in glob.glob(f"{match.group(1)}.{pid}*"):
        with open(path, encoding="utf-8", errors="replace") as f:
            text += f"\n--- {path} ---\n" + f.read()[-8000:]
    return text


_POOL: Pool | None = None


def pool() -> Pool:
    global _POOL
    if _POOL is None:
        _POOL = Pool()
        import atexit

        atexit.register(_POOL.close)
    return _POOL


# -- verdicts ----------------------------------------------------------------------------------------


class Disagreement(AssertionError):
    pass


def _nan_inf_pattern(t: torch.Tensor):
    f = t.double()
    return f.isnan(), f == math.inf, f == -math.inf


def compare_tensors(
    got: torch.Tensor,
    want: torch.Tensor,
    rtol: float,
    atol: float,
    what: str,
    exact: torch.Tensor | None = None,
    model: tuple | None = None,
    overflow: str | None = None,
) -> None:
    """Equal within tolerance, NaN where the reference has NaN (torch.testing's equal_nan).

    ``overflow`` (the overflow rule, see overflow_mode; ``exact`` is the float64 result): where the
    reference's value is non-finite and the backend's finite, the backend's must equal the float64
    result there within tolerance (for float64 inputs no wider result exists: not judged); with
    "either", where the backend's value is non-finite and the reference's is not, or another
    non-finite value, it is accepted as an overflow of the backend's own intermediates.
    ``model`` (the precision-model rule): (model, slack) from the spec's precision_model; a backend that
    misses the tolerance passes if |got - want| <= atol + rtol |want| + slack everywhere (the model's
    documented rounding bound, as the model equals the exact result at this precision but for it)."""
    if got.shape != want.shape:
        raise Disagreement(f"{what}: shape {tuple(got.shape)} != reference {tuple(want.shape)}")
    if got.dtype != want.dtype:
        raise Disagreement(f"{what}: dtype {got.dtype} != reference {want.dtype}")
    if overflow == "either":
        own = ~got.isfinite() & ~(got.isnan() & want.isnan()) & (got != want)
        if bool(own.any()):
            _count_rule("overflow (backend)", what)
            got = torch.where(own, want, got)
    if overflow is not None and exact is not None:
        over = ~want.isfinite() & got.isfinite()
        if bool(over.any()):
            e = exact.double().reshape(got.shape)[over]
            if got.dtype != torch.float64:
                g = got[over].double()
                bound = atol + rtol * e.abs()
                if model is not None and model[1] is not None:  # the precision model's slack too
                    bound = bound + model[1].double().reshape(got.shape)[over]
                if not bool(((g - e).abs() <= bound).all()):
                    worst = ((g - e).abs() - bound).max().item()
                    raise Disagreement(
                        f"{what}: finite where the reference overflowed, but not the float64 result there "
                        f"(off by up to {worst:.3g} beyond the tolerance)"
                    )
            _count_rule("overflow", what)
            got = torch.where(over, want, got)
    try:
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True, check_dtype=True)
        return
    except AssertionError as exc:
        problem = f"{what}: {exc}"
    if model is not None and model[1] is not None:
        slack = model[1].double().reshape(got.shape)
        g, w = got.double(), want.double()
        same = (g.isnan() & w.isnan()) | (g == w)
        ok = same | ((g - w).abs() <= atol + rtol * w.abs() + slack)
        if bool(slack.isfinite().all()) and bool(ok.all()):
            _count_rule("precision model", what)
            return
        excess = ((g - w).abs() - atol - rtol * w.abs() - slack)[~ok]
        problem += f"\nand beyond the precision model's slack (by up to {excess.nan_to_num(math.inf).max().item():.3g})"
    raise Disagreement(problem)


def compare_low_precision(
    got: torch.Tensor,
    ref_low: torch.Tensor,
    exact: torch.Tensor,
    what: str,
    overflow: str | None = None,
    model: tuple | None = None,
) -> None:
    """float16/bfloat16: the NaN and infinity pattern of the reference at that precision, and (where all
    three are finite) an error against the float64 reference of at most twice the reference's own
    error at that precision plus one unit of rounding (the harness's flash-attention rule).

    ``overflow`` (the overflow rule, see overflow_mode): where the reference is non-finite but the
    backend and the float64 result are finite, the backend's error there counts like its error
    elsewhere instead; with "either", a non-finite backend value where the reference's differs is
    accepted as an overflow of the backend's own intermediates.
    ``model`` (the precision-model rule): (model, slack), the float64 result of what the kernels are
    documented to compute at this precision and the bound on the rounding it leaves out; a backend that
    misses the exact result passes if it meets the model within the same bound (twice the reference's
    error against the exact result, plus one unit of rounding) plus the slack, everywhere."""
    if got.shape != ref_low.shape or got.dtype != ref_low.dtype:
        raise Disagreement(
            f"{what}: {got.dtype} {tuple(got.shape)} != reference {ref_low.dtype} {tuple(ref_low.shape)}"
        )
    g, r, e = got.double(), ref_low.double(), exact.double().reshape(got.shape)
    none = torch.zeros_like(g, dtype=torch.bool)
    over = (~r.isfinite() & g.isfinite() & e.isfinite()) if overflow is not None else none
    own = (~g.isfinite() & ~(g.isnan() & r.isnan()) & (g != r)) if overflow == "either" else none
    excused = over | own
    for name, a, b in zip(("NaN", "+inf", "-inf"), _nan_inf_pattern(got), _nan_inf_pattern(ref_low)):
        if not torch.equal(a & ~excused, b & ~excused):
            where = ((a != b) & ~excused).nonzero()[:5].tolist()
            raise Disagreement(f"{what}: {name} at other places than the reference (first differing {where})")
    if bool(over.any()):
        _count_rule("overflow", what)
    if bool(own.any()):
        _count_rule("overflow (backend)", what)
    both = g.isfinite() & r.isfinite() & e.isfinite()
    finite = both | over
    if not bool(finite.any()):
        return
    err = (g - e)[finite].abs().max().item()
    ref_err = (r - e)[both].abs().max().item() if bool(both.any()) else 0.0
    floor = torch.finfo(got.dtype).eps * max(1.0, e[finite].abs().max().item())
    if err <= 2 * ref_err + floor:
        return
    problem = f"{what}: error {err:.3g} against float64 > 2 x reference error {ref_err:.3g} + {floor:.2g}"
    if model is not None and model[0] is not None:
        m = model[0].double().reshape(got.shape)
        slack = torch.zeros_like(m) if model[1] is None else model[1].double().reshape(got.shape)
        if bool((m[finite].isfinite()).all()) and bool(slack[finite].isfinite().all()):
            floor_m = torch.finfo(got.dtype).eps * max(1.0, m[finite].abs().max().item())
            excess = ((g - m).abs() - slack)[finite].max().item()
            if excess <= 2 * ref_err + floor_m:
                _count_rule("precision model", what)
                return
            problem += f"; against the precision model {excess:.3g} (less its slack) > {2 * ref_err + floor_m:.3g}"
        else:
            problem += "; the precision model is not finite there"
    raise Disagreement(problem)


# Each use of a documented exception of the comparison (the overflow and precision-model rules):
# NAS3D_FUZZ_RULE_LOG=path appends one line per use, to check that they apply only where meant to.
def _count_rule(rule: str, what: str) -> None:
    path = os.environ.get("NAS3D_FUZZ_RULE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{rule}\t{what}\t{json.dumps(_CURRENT_CASE)}\n")


_CURRENT_CASE: dict | None = None


def check_clear(record: dict, names, who: str) -> None:
    if not record["clear_type"]:
        kind = record["type"]
        raise Disagreement(f"{who} raised {kind} (not ValueError/TypeError/RuntimeError): {record['message']}")
    if not names_an_argument(record["message"], names):
        raise Disagreement(
            f"{who} raised {record['type']} whose message names no argument (of {sorted(names)}): {record['message']}"
        )


def compare_records(
    spec, case: dict, got: dict, want: dict, exact: dict | None, names, who: str, model=None
) -> None:
    """The verdict on one backend's record against the reference's (see test_fuzz_ops). ``exact``: the
    reference on float64 copies (low precision, or finite inputs where the reference gave a non-finite
    value); ``model``: (model record, slack record) of the spec's precision model, or None."""
    global _CURRENT_CASE
    _CURRENT_CASE = case
    for rec, label in ((got, who), (want, "reference")):
        if rec["status"] == "crash":
            raise Disagreement(f"{label} crashed: {rec['message']}\n--- worker output ---\n{rec['log']}")
    got_fwd = got["status"] == "ok" or got.get("forward_ok", False)
    want_fwd = want["status"] == "ok" or want.get("forward_ok", False)
    if got_fwd != want_fwd:
        ok, bad = (who, want) if got_fwd else ("reference", got)
        raise Disagreement(
            f"{ok} returns a result where {'reference' if got_fwd else who} raises "
            f"{bad['type']}: {bad['message']}"
        )
    if not got_fwd:  # both refused the input: with clear errors
        check_clear(got, names, who)
        check_clear(want, names, "reference")
        return
    if not want.get("in_range", True):  # outside the op's documented numeric range: no values to judge
        _count_rule("out of range", who)
        return
    overflow = overflow_mode(case, want)
    got_out, want_out = unpack(got["outputs"]), unpack(want["outputs"])
    exact_out = unpack(exact["outputs"]) if exact and exact["status"] == "ok" else None
    model_recs = [r if r is not None and r["status"] == "ok" else None for r in (model or (None, None))]
    if len(got_out) != len(want_out):
        raise Disagreement(f"{who}: {len(got_out)} outputs, reference {len(want_out)}")
    for i in spec.exact_outputs:
        compare_tensors(got_out[i], want_out[i], 0.0, 0.0, f"{who} output {i}")
    # The precision model is about the gradients: the outputs are judged as usual.
    for i in spec.float_outputs:
        e = None if exact_out is None else exact_out[i]
        _compare_float(spec, got_out[i], want_out[i], e, f"{who} output {i}", overflow, None)
    # gradients
    got_bwd, want_bwd = got["status"] == "ok", want["status"] == "ok"
    if got_bwd != want_bwd:
        bad = want if got_bwd else got
        raise Disagreement(
            f"backward: {who if got_bwd else 'reference'} gives gradients where "
            f"{'reference' if got_bwd else who} raises {bad['type']}: {bad['message']}"
        )
    if not got_bwd:
        check_clear(got, names, f"{who} backward")
        check_clear(want, names, "reference backward")
        return
    got_g, want_g = unpack(got["grads"]), unpack(want["grads"])
    exact_g = unpack(exact["grads"]) if exact and exact["status"] == "ok" else None
    model_g = [None if r is None else unpack(r["grads"]) or {} for r in model_recs]
    if (got_g is None) != (want_g is None):
        raise Disagreement(f"{who}: gradients {'present' if got_g is not None else 'absent'}, unlike the reference")
    for name in (got_g or {}):
        g, w = got_g[name], want_g[name]
        if (g is None) != (w is None):
            raise Disagreement(f"{who}: grad of {name} presence differs from the reference")
        if g is not None:
            e = None if exact_g is None else exact_g.get(name)
            m = None if model_g == [None, None] else tuple(None if mg is None else mg.get(name) for mg in model_g)
            _compare_float(spec, g, w, e, f"{who} grad of {name}", overflow, m)


def _compare_float(spec, got, want, exact, what, overflow=None, model=None) -> None:
    if got.dtype in LOW_PRECISION:
        if exact is None:
            raise Disagreement(f"{what}: no float64 reference to compare {got.dtype} with")
        compare_low_precision(got, want, exact, what, overflow, model)
    else:
        rtol, atol = spec.tolerances.get(got.dtype, (1e-5, 1e-6))
        compare_tensors(got, want, rtol, atol, what, exact, model, overflow)


# -- replay -------------------------------------------------------------------------------------------


def replay(case, backend: str) -> None:
    """Run one case here (no worker) and print what each step gives."""
    if isinstance(case, str):
        case = json.loads(case)
    sys.path.insert(0, TESTS_DIR)
    print(describe_inputs(build_inputs(case)))
    for who in ("reference", backend):
        rec = execute(case, who)
        if rec["status"] == "ok":
            print(f"{who}: ok", unpack(rec["outputs"]), unpack(rec["grads"]))
        else:
            print(f"{who}: {rec.get('type')}: {rec.get('message')}\n{rec.get('traceback', '')}")


if __name__ == "__main__":
    replay(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cpu")
