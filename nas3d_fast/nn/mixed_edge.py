"""``MixedEdge3d``: one supernet edge, out = sum_k w_k * op_k(x) over candidate ops, on the fused kernels.

Two normalisation placements, both exact (``nas3d_fast.reference.mixed_edge`` is the eager DARTS-style
computation they equal):

- ``norm="shared"``: InstanceNorm(sum_k w_k op_k(act(x))). The mergeable candidates (zero, identity,
  the convolutions, the P3D pairs, average pooling) become ONE convolution whose kernel is the
  weighted sum of their zero-padded kernels (``ops.kernel_merge``); the others (dilated separable
  convolutions, max pooling) run on the memory-efficient path below.
- ``norm="per_op"``: sum_k w_k op_k'(x), where a candidate with weights is activation, op,
  InstanceNorm (SCNAS's LeakyReLU-Conv-InstanceNorm, MONAI DiNTS's ReLU-Conv-Norm) and a candidate
  without (identity, pooling, zero) is the op alone, as in DARTS. All run on the memory-efficient path.

The memory-efficient path keeps no candidate output for backward: the forward adds each candidate's
output into the sum as soon as it is computed, and the backward recomputes the candidates one at a
time, reducing each weight gradient <grad, op_k(x)> with a fused kernel (``weighted_sum_backward``)
while that candidate's output exists, so K candidate outputs never coexist in memory.

Tiny activations (``keeps_outputs``): where a candidate's kernel holds at least ``KEEP_OUTPUTS_RATIO``
times as many values as the edge's output (coarse, wide scales: 4^3 voxels at 256 channels), both
placements run the plain autograd computation instead, keeping every candidate's output (together
less memory than one kernel) rather than recomputing candidates and rebuilding kernels, which there
cost more than the convolutions themselves: forward + backward of a dints edge (five candidates) at
(1, 256, 4^3) took 26-31 ms fused and 15-17 ms plain (the README gives the command); a dints supernet
step at channel_mul 0.5 runs 24 such edges.

Under ``torch.compile`` every edge compiles and equals eager. The plain path (``keeps_outputs``) with
dense weights is one graph (``fullgraph=True`` works). The memory-efficient path breaks the graph around each edge, by
design: it is a ``torch.autograd.Function`` whose forward takes the candidate modules as arguments and
records the InstanceNorm statistics (a ``ContextVar`` in ``nn.norm``) for the backward's recompute to
replay, and the compiler can neither pass modules into an autograd function's graph nor trace that
mutation (the per_op placement also reads modules it mutates). The edge then runs eagerly between
graphs, at its eager speed and memory; what surrounds it compiles. Sampled paths break the graph too:
the indices decide which candidates run (one host sync per edge), data-dependent control flow that a
graph cannot hold. The path taken depends on shapes only (a recompile when they change).

Sampled paths (SCNAS, GDAS): pass the ``(weights, indices)`` that ``ops.gumbel_topk`` returns for this
edge; only the candidates in ``indices`` are computed, the others receive no gradient (their weight
gradient is 0; in the gumbel op it is multiplied by a zero Jacobian anyway).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops.mixed import weight_grads
from .candidates import Candidate, make_candidate, out_size
from .conv import conv3d, conv3d_grads
from .norm import InstanceNorm3d, record_statistics, replay_statistics

NORMS = ("shared", "per_op")
KEEP_OUTPUTS_RATIO = 16  # kernel values (C_out * C_in * 27) per output value from which keeps_outputs
LEAKY_SLOPE = 0.01
ACTS = ("relu", "leaky_relu")


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    return F.relu(x) if act == "relu" else F.leaky_relu(x, LEAKY_SLOPE)


def activation_backward_(grad: torch.Tensor, x: torch.Tensor, act: str) -> torch.Tensor:
    """grad *= activation'(x) in place (relu: 0 where x <= 0; leaky_relu: the slope there), with
    autograd's own threshold/leaky_relu backward kernels writing into grad: one pass, no temporary
    (a byte mask and masked_fill_ took 5x as long). Returns grad."""
    if act == "relu":
        return torch.ops.aten.threshold_backward.grad_input(grad, x, 0, grad_input=grad)
    return torch.ops.aten.leaky_relu_backward.grad_input(grad, x, LEAKY_SLOPE, False, grad_input=grad)


class MixedEdge3d(nn.Module):
    """A supernet edge over ``candidates`` (names from ``nas3d_fast.nn.CANDIDATES``).

    Args:
        in_channels, out_channels: channels of x and of the output.
        candidates: the K candidate names, in the order of the architecture weights.
        stride: 1, or 2 for reduction edges (spatial sizes (n - 1) // 2 + 1).
        norm: "shared" or "per_op" (see the module docstring).
        act: "relu" or "leaky_relu" (negative slope 0.01).

    ``forward(x, weights)``: x (N, C_in, X, Y, Z) floating; weights either a dense (K,) tensor (e.g. the
    softmax of the edge's architecture logits) or the pair (weights (K,), indices (k,) int64) of a
    gumbel sample for this edge (a row of each of ``ops.gumbel_topk``'s outputs). Returns
    (N, C_out, X', Y', Z'), differentiable in x, every candidate's parameters and the weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        candidates: Sequence[str],
        stride: int = 1,
        norm: str = "shared",
        act: str = "relu",
    ):
        super().__init__()
        if isinstance(candidates, str) or not len(candidates):
            raise ValueError(f"candidates must be a non-empty sequence of candidate names, got {candidates!r}")
        if len(set(candidates)) != len(candidates):
            raise ValueError(f"candidates must not repeat a name, got {list(candidates)}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if act not in ACTS:
            raise ValueError(f"act must be one of {ACTS}, got {act!r}")
        self.candidates = tuple(candidates)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.norm_placement, self.act = norm, act
        self.ops = nn.ModuleList(make_candidate(n, in_channels, out_channels, stride) for n in candidates)
        if norm == "shared":
            self.norm = InstanceNorm3d(out_channels)
        else:  # one norm per candidate with weights (see has_norm)
            self.norms = nn.ModuleDict(
                {str(k): InstanceNorm3d(out_channels) for k, op in enumerate(self.ops) if has_norm(op)}
            )

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, norm={self.norm_placement!r}, act={self.act!r}"

    def forward(self, x: torch.Tensor, weights, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``scale``: an optional scalar tensor multiplying the output (e.g. a DiNTS path probability),
        folded into the shared norm's affine parameters or into the per_op weights, so that it costs no
        activation-sized tensor; differentiable in scale."""
        w, active = self._parse_weights(x, weights)
        if self.norm_placement == "per_op" and scale is not None:
            w, scale = w * scale.to(w.dtype), None  # folded into the candidate weights
        if self.keeps_outputs(x):
            return self._plain(x, w, active, scale)
        if self.norm_placement == "shared":
            return self._shared(x, w, active, scale)
        return self._per_op(x, w, active)

    def keeps_outputs(self, x: torch.Tensor) -> bool:
        """Whether this edge runs plain autograd on x: a 3x3x3 kernel of it (C_out * C_in * 27 values)
        holds at least ``KEEP_OUTPUTS_RATIO`` times as many values as its output (N * C_out * X' *
        Y' * Z')."""
        return self.in_channels * 27 >= KEEP_OUTPUTS_RATIO * self._out_voxels(x)

    def _out_voxels(self, x: torch.Tensor) -> int:
        """N * X' * Y' * Z': the output's voxels over the batch."""
        return x.shape[0] * math.prod([out_size(n, self.stride) for n in x.shape[2:]])  # a list: torch.compile cannot pass a generator

    def _per_op_fns(self, live: list[int]) -> list[nn.Module]:
        """The per_op candidates ``live`` with their activation and norm (``_PerOp``)."""
        return [_PerOp(self.ops[k], self.norms[str(k)] if str(k) in self.norms else None, self.act) for k in live]  # noqa: SIM401 (ModuleDict has no .get)

    # -- the two placements --------------------------------------------------------------------

    def _plain(self, x: torch.Tensor, w: torch.Tensor, active: list[int], scale) -> torch.Tensor:
        """Either placement as plain autograd: every candidate's output is kept for backward (per_op:
        scale is None, already in w)."""
        shared = self.norm_placement == "shared"
        live = [k for k in active if self.ops[k].name != "zero"]
        if not live:
            y = self.ops[active[0]](x)
        else:
            a = activation(x, self.act) if shared else x
            fns = [self.ops[k] for k in live] if shared else self._per_op_fns(live)
            y = None
            for k, fn in zip(live, fns):
                term = fn(a) * w[k]
                y = term if y is None else y + term
        return self.norm(y, scale) if shared else y

    def _shared(self, x: torch.Tensor, w: torch.Tensor, active: list[int], scale=None) -> torch.Tensor:
        voxels = self._out_voxels(x)
        live = [k for k in active if self.ops[k].name != "zero"]
        merged = [k for k in live if self.ops[k].merges_at(voxels)]
        others = [k for k in live if k not in merged]
        y = None
        if merged:
            y = merged_act_conv([self.ops[k] for k in merged], x, _take(w, merged), self.stride, self.act)
        if others:
            y = recompute_sum([self.ops[k] for k in others], x, _take(w, others), y, self.act)
        if y is None:  # only zero was chosen
            y = self.ops[active[0]](x)
        return self.norm(y, scale)

    def _per_op(self, x: torch.Tensor, w: torch.Tensor, active: list[int]) -> torch.Tensor:
        live = [k for k in active if self.ops[k].name != "zero"]
        if not live:
            return self.ops[active[0]](x)
        return recompute_sum(self._per_op_fns(live), x, _take(w, live), None, None)

    # -- weights ---------------------------------------------------------------------------------

    def _parse_weights(self, x: torch.Tensor, weights) -> tuple[torch.Tensor, list[int]]:
        K = len(self.ops)
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or not x.is_floating_point():
            raise ValueError(f"x must be a floating (N, C, X, Y, Z) tensor, got {_describe(x)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (in_channels), got shape {tuple(x.shape)}")
        indices = None
        if isinstance(weights, (tuple, list)):
            if len(weights) != 2:
                raise ValueError("weights must be a (K,) tensor or a (weights, indices) pair from gumbel_topk")
            weights, indices = weights
        if not isinstance(weights, torch.Tensor) or weights.shape != (K,) or not weights.is_floating_point():
            raise ValueError(
                f"weights must be a floating tensor of shape ({K},), one per candidate, got {_describe(weights)}"
            )
        if weights.device != x.device:
            raise ValueError(f"weights must be on the device of x ({x.device}), got {weights.device}")
        if weights.dtype != x.dtype:
            weights = weights.to(x.dtype)  # e.g. float32 architecture weights under autocast
        if indices is None:
            return weights, list(range(K))
        if (
            not isinstance(indices, torch.Tensor)
            or indices.dim() != 1
            or indices.dtype != torch.int64
            or not len(indices)
        ):
            raise ValueError(f"indices must be a non-empty (k,) int64 tensor, got {_describe(indices)}")
        active = sorted(set(indices.tolist()))  # one host sync per edge: it decides what runs
        if active[0] < 0 or active[-1] >= K:
            raise ValueError(f"indices must lie in [0, {K}), got {indices.tolist()}")
        return weights, active


def has_norm(op: Candidate) -> bool:
    """Whether a per_op edge normalises this candidate: the ones with weights (convolutions)."""
    return any(True for _ in op.parameters())


class _PerOp(nn.Module):
    """A per_op candidate: activation, op, InstanceNorm for candidates with weights; the op alone else."""

    def __init__(self, op: Candidate, norm: nn.Module | None, act: str):
        super().__init__()
        self.op, self.norm, self.act = op, norm, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return self.op(x)
        return self.norm(self.op(activation(x, self.act)))


def _take(w: torch.Tensor, idx: list[int]) -> torch.Tensor:
    return w if idx == list(range(w.shape[0])) else w[idx]


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


# -- the memory-efficient weighted sum ---------------------------------------------------------------


def recompute_sum(
    fns: Sequence[nn.Module], x: torch.Tensor, w: torch.Tensor, base: torch.Tensor | None, act: str | None
) -> torch.Tensor:
    """base + sum_j w[j] * fns[j](act(x)), keeping neither act(x) nor any fns[j](...) for backward:
    the backward recomputes them, one candidate at a time.

    act: "relu", "leaky_relu" or None (identity). base (or None) is updated in place when given (it
    must not be needed by its own backward, as a convolution's output is not). Gradients flow to x,
    w, base and every parameter of fns.
    """
    flat = [p for f in fns for p in f.parameters()]
    return _RecomputeSum.apply(fns, act, x, w, base, *flat)


def _releasable(fn: nn.Module) -> bool:
    """Whether fn's output may lose its storage once its weight gradient is reduced: its own backward
    does not read it (convolutions, pooling, instance norm read their inputs, not their outputs)."""
    op = fn.op if isinstance(fn, _PerOp) else fn
    return op.name not in ("identity", "zero")


class _RecomputeSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fns, act, x, w, base, *params):
        stats: list[list] = []  # per candidate, its instance norms' statistics, for the recomputation
        with torch.no_grad():
            a = activation(x, act) if act else x
            out = base
            for j, fn in enumerate(fns):
                stats.append([])
                with record_statistics(stats[-1]):
                    y = fn(a)
                out = y.mul(w[j]) if out is None else out.addcmul_(y, w[j])
                del y  # the candidate's output goes before the next one is computed
            del a
        ctx.stats = stats
        if base is not None:
            ctx.mark_dirty(base)
        ctx.fns, ctx.act, ctx.has_base = fns, act, base is not None
        # The parameter values of this forward (not whatever the modules hold at backward time, e.g.
        # under torch.func.functional_call) are the ones the backward recomputes with.
        ctx.names = [[n for n, _ in fn.named_parameters()] for fn in fns]
        ctx.save_for_backward(x, w, *params)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w, *saved_params = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        grad_w = torch.zeros_like(w) if need_w else None
        with torch.no_grad():
            a = activation(x, ctx.act) if ctx.act else x
        acc = None  # the gradient of a, summed over candidates (the first one's buffer, scaled in place)
        grad_params = []
        first = 0
        for j, (fn, names) in enumerate(zip(ctx.fns, ctx.names)):
            saved = saved_params[first : first + len(names)]
            first += len(names)
            own = list(fn.parameters())
            # Usually the saved parameters are the module's own (unchanged since forward: autograd
            # checks their versions), and fn runs as it is; functional_call, which swaps parameters
            # in and out on every call, only when they are not (called under functional_call, or
            # with frozen parameters).
            direct = len(own) == len(saved) and all(p is q and p.requires_grad for p, q in zip(own, saved))
            params = own if direct else [p.detach().requires_grad_() for p in saved]
            with torch.enable_grad(), replay_statistics(ctx.stats[j]):
                leaf = a.detach().requires_grad_(need_x)
                y = fn(leaf) if direct else torch.func.functional_call(fn, dict(zip(names, params)), (leaf,))
            if need_w:
                grad_w[j] = weight_grads(grad, [y])[0]
            if _releasable(fn) and y.grad_fn is not None:
                # Its data was only needed for the weight gradient; autograd.grad below reads its
                # shape. Releasing it now keeps one activation-sized buffer less alive.
                y.untyped_storage().resize_(0)
            inputs = ([leaf] if need_x else []) + params
            grads = (
                torch.autograd.grad(y, inputs, grad, allow_unused=True)
                if inputs and y.requires_grad
                else [None] * len(inputs)
            )
            del y
            if need_x:
                g = grads[0]
                if g is not None:
                    # g may be grad itself (identity): scale a copy then, never grad in place.
                    fresh = g.untyped_storage().data_ptr() != grad.untyped_storage().data_ptr()
                    acc = (g.mul_(w[j]) if fresh else g * w[j]) if acc is None else acc.addcmul_(g, w[j])
                grads = grads[1:]
            grad_params += [None if g is None else g.mul_(w[j]) for g in grads]
        grad_x = None
        if need_x:
            acc = torch.zeros_like(x) if acc is None else acc
            grad_x = activation_backward_(acc, x, ctx.act) if ctx.act else acc
        return (None, None, grad_x, grad_w, grad if ctx.has_base else None, *grad_params)


def merged_act_conv(
    cands: Sequence[Candidate], x: torch.Tensor, w: torch.Tensor, stride: int, act: str
) -> torch.Tensor:
    """conv3d(act(x), kernel_merge([c.kernel() for c in cands], w)) with "same" padding: the weighted sum
    of the mergeable candidates as ONE convolution.

    Keeps x, w and the candidates' parameters for backward, and the merged kernel only where forming it
    costs matrix products (a P3D pair among the candidates). Elsewhere the merged kernel (C_out * C_in
    * 27 values: 7 MiB at 256 channels, more than the activation on a coarse scale) and act(x) are
    rebuilt in backward and released as soon as they are used. The backward never differentiates
    through the kernels: each candidate's ``kernel_vjp`` gives its parameter gradients and its weight
    gradient <grad_kernel, kernel> (for P3D without composing its kernel).
    """
    params = [tuple(c.parameters()) for c in cands]
    flat = [p for ps in params for p in ps]
    return _MergedActConv.apply(tuple(cands), [len(ps) for ps in params], stride, act, x, w, *flat)


def _merged_kernel(cands, counts, params, w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """kernel_merge of each candidate's kernel rebuilt from ``params`` (theirs, concatenated; counts[j]
    belong to cands[j])."""
    kernels, first = [], 0
    for c, n in zip(cands, counts):
        kernels.append(c.kernel_from(params[first : first + n], like))
        first += n
    size = tuple(max(k.shape[2 + d] for k in kernels) for d in range(3))
    return ops.kernel_merge(kernels, w, size)


def _centre(kernel: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centred (.., *size) part of a (.., k0, k1, k2) kernel (kernel_merge's zero padding undone)."""
    k = kernel.shape[2:]
    return kernel[(slice(None), slice(None), *(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(k, size)))]


class _MergedActConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cands, counts, stride, act, x, w, *params):
        with torch.no_grad():
            kernel = _merged_kernel(cands, counts, params, w, x)
            y = conv3d(activation(x, act), kernel, stride, tuple(n // 2 for n in kernel.shape[2:]))
        ctx.cands, ctx.counts, ctx.stride, ctx.act = cands, counts, stride, act
        ctx.keeps_kernel = any(c.composes for c in cands)
        ctx.save_for_backward(x, w, *params, *([kernel] if ctx.keeps_kernel else []))
        return y

    @staticmethod
    def backward(ctx, grad):
        x, w, *params = ctx.saved_tensors
        if ctx.keeps_kernel:
            *params, kernel = params
        else:
            with torch.no_grad():
                kernel = _merged_kernel(ctx.cands, ctx.counts, params, w, x)
        need_x, need_w = ctx.needs_input_grad[4], ctx.needs_input_grad[5]
        need_params = ctx.needs_input_grad[6:]
        padding = tuple(n // 2 for n in kernel.shape[2:])
        grad_w, grad_params = None, [None] * len(params)
        if need_w or any(need_params):
            with torch.no_grad():
                a = activation(x, ctx.act)
            grad_kernel = conv3d_grads(a, kernel, grad, ctx.stride, padding, False, True)[1]
            del a  # released before the input gradient is formed (which reads only x's shape)
            grad_w = torch.zeros_like(w) if need_w else None
            first = 0
            for j, (c, n) in enumerate(zip(ctx.cands, ctx.counts)):
                own = slice(first, first + n)
                first += n
                grads, inner = c.kernel_vjp(params[own], _centre(grad_kernel, c.kernel_size))
                if need_w:
                    grad_w[j] = inner
                grad_params[own] = [g * w[j] if need else None for g, need in zip(grads, need_params[own])]
        grad_x = None
        if need_x:
            grad_a = conv3d_grads(x, kernel, grad, ctx.stride, padding, True, False)[0]
            grad_x = activation_backward_(grad_a, x, ctx.act)
        return (None, None, None, None, grad_x, grad_w, *grad_params)
