"""Gumbel top-k sampling over all edges of a supernet at once (SCNAS Algorithm 1)."""

from __future__ import annotations

import torch

from .. import _extension, dispatch
from ..reference import gumbel as reference
from ._checks import check_like, check_tensor, checking_values

# For CUDA tensors the CUDA kernel goes first: the op is a single tiny launch, and a C++ launch costs
# less host time than a Triton launch from Python.
CUDA_ORDER = ("cuda", "triton")

# The temperatures every backend accepts (csrc/gumbel/gumbel_args.h checks the same range for direct
# torch.ops calls). Both tau and 1 / tau, the scale of z = (l + g) / tau and of the gradient, stay inside
# float16's normal range (6.1e-5 .. 65504), so each dtype represents them and every backend, computing in
# float32 (float64 for float64), agrees with the reference. At tau = 1e30 or 1e-300 the float16 reference
# broke down while the cpu kernel stayed finite (issue 27 finding 4); SCNAS anneals tau from ~1 to ~0.1.
TAU_MIN, TAU_MAX = 1e-4, 1e4
TAU_RANGE = (TAU_MIN, TAU_MAX)


def gumbel_topk(
    logits: torch.Tensor,
    tau: float,
    k: int = 2,
    hard: bool = False,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample k candidate ops per supernet edge with the Gumbel-softmax trick, for all E edges at once.

    With g = -log(-log(u)), u ~ U(0, 1): y = softmax((logits + g) / tau) per row; the top-k entries of
    each row of y are chosen (ties to the lower index), and their weights are renormalised to sum to 1
    (SCNAS Algorithm 1). The chosen indices follow the Gumbel-top-k law: sampling k ops without
    replacement with probabilities softmax(logits), whatever tau.

    Args:
        logits: (E, K) float16/bfloat16/float32/float64 architecture logits, one row per edge. Entries
            may be -inf (an op that is never chosen), but each row needs one finite entry; NaN and
            +inf are refused.
        tau: temperature, a number in [1e-4, 1e4] (TAU_RANGE; other values, NaN and inf raise a
            ValueError on every backend): inside it tau and 1 / tau are normal float16 numbers, and every
            backend computes in float32 (float64 for float64) and agrees with the reference. Small tau
            sharpens y; the renormalised weights depend on tau.
        k: ops per edge, 1 or 2, at most K.
        hard: k = 1 only: weights are one-hot in the forward pass and carry the gradient of y
            (straight-through). With hard=False the gradient is the exact gradient of the weights
            (which, for k = 1, is zero: the weight of the one chosen op is always 1).
        noise: optional (E, K) uniform samples in (0, 1), same dtype and device as logits. With it every
            backend returns the same answer; without it noise is drawn from ``generator``.
        generator: the torch.Generator for the noise (the device's default generator if None). The
            cpu kernel takes one 64-bit seed from it and draws the noise from a counter-based
            SplitMix64 stream (the same for a seeded generator whatever the thread count); the cuda
            kernel uses torch.rand's Philox stream; the reference and triton backends torch.rand.

    Returns:
        The pair ``(weights, indices)``.

        - weights: (E, K) of logits' dtype, zero except at the chosen entries, each row summing to 1;
          differentiable with respect to logits.
        - indices: (E, k) int64, the chosen ops of each row, the larger weight first.
    """
    if (  # the common training call on a CPU tensor: straight to the kernel, which validates everything
        noise is None
        and generator is None
        and type(logits) is torch.Tensor
        and type(tau) is float
        and TAU_MIN <= tau <= TAU_MAX
        and type(k) is int
        and type(hard) is bool
        and _SAMPLE_PAIR is not None
        and logits.is_cpu
        and dispatch.get_backend() is None
        and _eager_plain(logits)
    ):
        return _SAMPLE_PAIR(logits, tau, k, hard)
    check_tensor(logits, "logits", dim=2)
    E, K = logits.shape
    if K < 1:
        raise ValueError(f"logits must have at least one column (K >= 1), got shape {tuple(logits.shape)}")
    if isinstance(tau, torch.Tensor):
        tau = float(tau)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not TAU_MIN <= tau <= TAU_MAX:
        raise ValueError(f"tau must be a number in [{TAU_MIN:g}, {TAU_MAX:g}], got {tau!r}")
    if k not in (1, 2) or isinstance(k, bool):
        raise ValueError(f"k must be 1 or 2, got {k!r}")
    if k > K:
        raise ValueError(f"k must be <= K = logits.shape[1] = {K}, got {k}")
    if hard and k != 1:
        raise ValueError(f"hard=True needs k=1 (straight-through one-hot), got k={k}")
    if noise is not None:
        check_like(noise, logits, "noise", "logits")
    backend = dispatch.choose("gumbel_topk", logits.device, CUDA_ORDER)
    # The cpu kernel checks values in its own pass; elsewhere a check costs extra passes (and a sync).
    if backend != "cpu" and E * K and checking_values(logits):
        _check_values(logits, noise)
    if noise is not None:
        return _IMPLS[backend](logits, noise, float(tau), int(k), bool(hard))
    if backend in ("cpu", "cuda"):  # the kernel draws the noise itself: one op, no extra pass
        if generator is None and _SAMPLE_PAIR is not None and _eager_plain(logits):
            return _SAMPLE_PAIR(logits, float(tau), int(k), bool(hard))  # values were checked above
        weights, indices, _ = _SAMPLE(logits, float(tau), int(k), bool(hard), generator)
        return weights, indices
    return _IMPLS[backend](logits, uniform_noise(logits, generator), float(tau), int(k), bool(hard))


def _eager_plain(logits: torch.Tensor) -> bool:
    """True when ``_SAMPLE_PAIR`` (a direct binding of the same op, which reaches the same dispatcher,
    autograd included) may stand in for torch.ops: a plain tensor (not fake or another subclass), not
    a meta tensor, no __torch_function__ mode, not being traced by torch.compile (which sees only
    torch.ops calls)."""
    return (
        type(logits) is torch.Tensor
        and not logits.is_meta
        and not _torch_function_mode_enabled()
        and not torch.compiler.is_compiling()
    )


_torch_function_mode_enabled = torch._C._is_torch_function_mode_enabled


def _check_values(logits: torch.Tensor, noise: torch.Tensor | None) -> None:
    if noise is not None and not bool(((noise > 0) & (noise < 1)).all()):
        raise ValueError("noise must hold uniform samples strictly inside (0, 1)")
    if not bool((logits < float("inf")).all()):
        raise ValueError("logits must not contain NaN or +inf")
    if not bool((logits > float("-inf")).any(dim=1).all()):
        raise ValueError("logits must have at least one finite entry in every row")


def uniform_noise(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(E, K) uniform samples in (0, 1) shaped like logits; exact zeros (possible in torch.rand) are
    lifted to the smallest normal number so that the Gumbel transform stays finite."""
    u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
    return u.clamp_min_(torch.finfo(logits.dtype).tiny)


def _compiled(logits, noise, tau, k, hard):
    return _FORWARD(logits, noise, tau, k, hard)


def _triton(logits, noise, tau, k, hard):
    from ..kernels.triton import gumbel as triton_gumbel  # noqa: F401  (registers the triton ops)

    return torch.ops.nas3d.gumbel_topk_triton(logits, noise, tau, k, hard)


_IMPLS = {"reference": reference.gumbel_topk, "cpu": _compiled, "cuda": _compiled, "triton": _triton}


def _fake_forward(logits, noise, tau, k, hard):
    return torch.empty_like(logits, memory_format=torch.contiguous_format), logits.new_empty(
        (logits.shape[0], k), dtype=torch.int64
    )


def _fake_sample(logits, tau, k, hard, generator=None):
    weights, indices = _fake_forward(logits, logits, tau, k, hard)
    return weights, indices, torch.empty_like(weights)


def _fake_backward(grad_weights, logits, noise, weights, tau, hard):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


_SAMPLE_PAIR = None  # set below when _C loads
if _extension.available():  # autograd of the compiled op is registered in C++ (csrc/gumbel/gumbel_autograd.cpp)
    # The overloads themselves: calling them skips the packet's overload resolution on every step.
    _FORWARD = torch.ops.nas3d.gumbel_topk.default
    _SAMPLE = torch.ops.nas3d.gumbel_topk_sample.default
    # (weights, indices) of _SAMPLE with the default generator, minus torch.ops' boxing of Python
    # arguments and the Python wrapper of the noise output: at E ~ 200 those dominate the op's cost.
    _SAMPLE_PAIR = getattr(_extension._C, "gumbel_topk_sample_pair", None)  # None: a _C built before it
    torch.library.register_fake("nas3d::gumbel_topk")(_fake_forward)
    torch.library.register_fake("nas3d::gumbel_topk_sample")(_fake_sample)
    torch.library.register_fake("nas3d::gumbel_topk_backward")(_fake_backward)
