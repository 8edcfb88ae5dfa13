"""MixedEdge3d: the fused edge equals the eager DARTS computation (forward and backward, both norm
placements, strides, channel changes), gradchecks, the sampled path computes only what was chosen, the
memory-efficient path saves no candidate output, and bad inputs raise clear errors."""

from __future__ import annotations

import pytest
import torch

from nas3d_fast.nn import CANDIDATES, MixedEdge3d, make_candidate
from nas3d_fast.nn.candidates import Candidate
from nas3d_fast.reference.mixed_edge import mixed_edge as eager

SAME_CHANNELS_ONLY = ("identity", "max_pool3", "avg_pool3")


def _edge(cin, cout, norm, stride, act="leaky_relu", names=None, dtype=torch.float64):
    torch.manual_seed(0)
    names = names or [n for n in CANDIDATES if cin == cout or n not in SAME_CHANNELS_ONLY]
    edge = MixedEdge3d(cin, cout, names, stride=stride, norm=norm, act=act).to(dtype)
    for p in edge.parameters():  # non-trivial norm affine parameters
        if p.dim() == 1:
            p.data.uniform_(0.5, 1.5)
    return edge


def _inputs(edge, dtype=torch.float64, shape=(2, 7, 6, 9)):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape[0], edge.in_channels, *shape[1:], generator=g, dtype=torch.float64).to(dtype)
    w = torch.softmax(torch.randn(len(edge.ops), generator=g, dtype=torch.float64), 0).to(dtype)
    return x.requires_grad_(), w.requires_grad_()


def _grads(out, leaves):
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(out)
    return torch.autograd.grad(out, leaves, cot, allow_unused=True)


def _assert_grads_close(got, want, **tol):
    for g, w in zip(got, want):
        if w is None:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("norm", ["shared", "per_op"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels", [(4, 4), (3, 5)])
@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_equals_eager_darts_edge(norm, stride, channels, act):
    """Random weights: the merged/recomputed edge equals every candidate run separately and summed
    (shared) and the eager per-candidate computation (per_op), forward and backward, in float64."""
    edge = _edge(*channels, norm, stride, act)
    x, w = _inputs(edge)
    leaves = [x, w, *edge.parameters()]
    got, want = edge(x, w), eager(edge, x, w)
    torch.testing.assert_close(got, want)
    _assert_grads_close(_grads(got, leaves), _grads(want, leaves))


@pytest.mark.parametrize("norm", ["shared", "per_op"])
def test_equals_eager_in_float32(norm):
    edge = _edge(4, 4, norm, 1, dtype=torch.float32)
    x, w = _inputs(edge, torch.float32)
    leaves = [x, w, *edge.parameters()]
    got, want = edge(x, w), eager(edge, x, w)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    _assert_grads_close(_grads(got, leaves), _grads(want, leaves), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("names", [("identity", "max_pool3"), ("identity", "sep_dil3x3x3_r3", "zero")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_edge_whose_merged_kernel_is_1x1x1(names, dtype):
    """Identity alone merges into a 1x1x1 kernel (a matrix product on CPU); the unmerged candidates
    are then added to that output in place, so it must not be a view."""
    edge = _edge(4, 4, "shared", 1, names=list(names), dtype=dtype)
    x, w = _inputs(edge, dtype)
    leaves = [x, w, *edge.parameters()]
    got, want = edge(x, w), eager(edge, x, w)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(got, want, **tol)
    _assert_grads_close(_grads(got, leaves), _grads(want, leaves), **tol)


@pytest.mark.parametrize("norm", ["shared", "per_op"])
def test_gradcheck(norm):
    """Finite differences for x, the weights and every candidate and norm parameter (small, float64)."""
    names = ["conv3x3x3", "p3d_3x1x3_1x3x1", "sep_dil3x3x3_r2", "max_pool3", "avg_pool3", "identity", "zero"]
    edge = _edge(2, 2, norm, 1, names=names)
    x, w = _inputs(edge, shape=(1, 4, 3, 5))
    param_names = [n for n, _ in edge.named_parameters()]
    values = [p.detach().clone().requires_grad_() for p in edge.parameters()]

    def f(x, w, *values):
        return torch.func.functional_call(edge, dict(zip(param_names, values)), (x, w))

    assert torch.autograd.gradcheck(f, (x, w, *values), atol=1e-6)


def _count_calls(edge):
    """Per candidate: how many times its forward ran or its kernel was taken."""
    calls = [0] * len(edge.ops)
    for k, op in enumerate(edge.ops):
        op.register_forward_pre_hook(lambda module, args, k=k: calls.__setitem__(k, calls[k] + 1))
        kernel = op.kernel
        op.kernel = lambda like, k=k, kernel=kernel: (calls.__setitem__(k, calls[k] + 1), kernel(like))[1]
    return calls


@pytest.mark.parametrize("norm", ["shared", "per_op"])
@pytest.mark.parametrize("chosen", [(0, 5), (3, 7), (2, 12)])
def test_sampled_path_runs_only_the_chosen(norm, chosen):
    edge = _edge(4, 4, norm, 1)
    x, _ = _inputs(edge)
    weights = torch.zeros(len(edge.ops), dtype=torch.float64)
    weights[list(chosen)] = torch.tensor([0.6, 0.4], dtype=torch.float64)
    weights.requires_grad_()
    indices = torch.tensor(chosen)
    calls = _count_calls(edge)
    out = edge(x, (weights, indices))
    out.backward(torch.randn_like(out))
    for k in range(len(edge.ops)):
        if k not in chosen:
            assert calls[k] == 0, f"candidate {edge.candidates[k]} ran but was not chosen"
            assert all(p.grad is None for p in edge.ops[k].parameters())
            assert weights.grad[k] == 0
    torch.testing.assert_close(out, eager(edge, x.detach(), (weights.detach(), indices)))


def test_sampled_path_matches_gumbel_topk_output():
    from nas3d_fast.ops import gumbel_topk

    edge = _edge(4, 4, "shared", 1)
    x, _ = _inputs(edge)
    logits = torch.randn(1, len(edge.ops), dtype=torch.float64, requires_grad=True)
    w, idx = gumbel_topk(logits, 1.0, k=2, generator=torch.Generator().manual_seed(0))
    out = edge(x, (w[0], idx[0]))
    out.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("norm", ["shared", "per_op"])
def test_no_candidate_output_is_saved_for_backward(norm):
    """Memory efficiency, checked on what autograd keeps: the fused edge saves a few activation-sized
    tensors whatever K (x, the norm's input), the eager edge one or more per candidate."""
    edge = _edge(4, 4, norm, 1, dtype=torch.float32)
    x, w = _inputs(edge, torch.float32)
    activation = x.numel()

    def saved_elements(fn):
        total = [0]

        def pack(t):
            if t.numel() >= activation:
                total[0] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return total[0]

    fused = saved_elements(lambda: edge(x, w))
    dense = saved_elements(lambda: eager(edge, x, w))
    assert fused <= 3, f"the fused edge saved {fused} activation-sized tensors"
    assert dense >= len(edge.ops)


def test_per_op_backward_reuses_the_forward_norm_statistics():
    """The per_op backward recomputes each candidate, but not its instance-norm statistics: one
    var_mean per normalised candidate in forward and backward together, and a retained graph's second
    backward (which replays them again) gives the same gradients."""
    from torch.utils._python_dispatch import TorchDispatchMode

    edge = _edge(4, 4, "per_op", 1)
    x, w = _inputs(edge)
    normed = len(edge.norms)

    class CountVarMean(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountVarMean.calls += func is torch.ops.aten.var_mean.correction
            return func(*args, **(kwargs or {}))

    leaves = [x, w, *edge.parameters()]
    cot = torch.randn(2, 4, 7, 6, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with CountVarMean():
        out = edge(x, w)
        first = torch.autograd.grad(out, leaves, cot, retain_graph=True)
    assert CountVarMean.calls == normed
    second = torch.autograd.grad(out, leaves, cot)
    _assert_grads_close(second, first, rtol=0, atol=0)
    want = torch.autograd.grad(eager(edge, x, w), leaves, cot, allow_unused=True)
    _assert_grads_close(first, want, rtol=1e-9, atol=1e-9)


def test_coarse_wide_scale_runs_p3d_unmerged():
    """Where composing a P3D kernel costs more than running the pair (few voxels, many channels) the
    shared edge runs the pair on the recompute path; the result still equals the eager edge."""
    names = ["conv3x3x3", "p3d_3x3x1_1x1x3", "p3d_1x3x3_3x1x1", "identity", "zero"]
    edge = _edge(16, 16, "shared", 1, names=names)
    assert not edge.ops[1].merges_at(30) and edge.ops[1].merges_at(4096)
    calls = _count_calls(edge)
    x, w = _inputs(edge, shape=(1, 2, 3, 5))  # 30 voxels: not few enough for keeps_outputs
    assert not edge.keeps_outputs(x)
    leaves = [x, w, *edge.parameters()]
    got, want = edge(x, w), eager(edge, x, w)
    assert calls[1] == 1 and calls[2] == 1  # each ran once (forward), not through its kernel as well
    torch.testing.assert_close(got, want)
    _assert_grads_close(_grads(got, leaves), _grads(want, leaves))


@pytest.mark.parametrize("norm", ["shared", "per_op"])
@pytest.mark.parametrize("sampled", [False, True])
def test_tiny_activation_runs_plain_autograd(norm, sampled):
    """Where a kernel holds KEEP_OUTPUTS_RATIO times the output's values, the edge keeps every
    candidate's output (plain autograd) and still equals the eager edge, path scale included."""
    edge = _edge(16, 16, norm, 1)
    x, w = _inputs(edge, shape=(1, 3, 3, 3))
    assert edge.keeps_outputs(x) and not edge.keeps_outputs(torch.zeros(1, 16, 4, 4, 4))
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    weights = w
    if sampled:
        chosen = torch.tensor([2, 5])
        w = torch.zeros_like(w).index_copy(0, chosen, w[chosen]).detach().requires_grad_()
        weights = (w, chosen)
    leaves = [x, w, scale, *edge.parameters()]
    got = edge(x, weights, scale=scale)
    want = eager(edge, x, weights) * scale
    torch.testing.assert_close(got, want)
    _assert_grads_close(_grads(got, leaves), _grads(want, leaves))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        edge(x, weights, scale=scale)
    assert sum(n >= x.numel() for n in saved) >= (2 if sampled else len(edge.ops) - 1)


@pytest.mark.parametrize(
    "names,kept",
    [
        (["conv3x3x3", "identity", "avg_pool3"], []),  # kernels that cost only copies: rebuilt in backward
        (["conv3x3x3", "p3d_3x3x1_1x1x3", "identity"], [(8, 8, 3, 3, 3)]),  # composed: the merged one kept
    ],
)
def test_shared_edge_keeps_at_most_the_merged_kernel(names, kept):
    """The per-candidate kernels (C_out * C_in * 27 values each, more than the activation on a coarse
    scale) are never kept for backward; the merged kernel is kept only where rebuilding it costs
    matrix products (a P3D pair among the merged candidates)."""
    edge = _edge(8, 8, "shared", 1, names=names, dtype=torch.float32)
    x, w = _inputs(edge, torch.float32, shape=(1, 4, 4, 4))
    params = {p.data_ptr() for p in edge.parameters()}
    kernel_sized = []

    def pack(t):
        if t.numel() >= 8 * 8 * 27 and t.data_ptr() not in params:
            kernel_sized.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = edge(x, w)
    assert kernel_sized == kept, f"the shared edge kept {kernel_sized} for backward"
    out.sum().backward()  # and the backward still runs from what was kept
    assert all(p.grad is not None for p in edge.ops.parameters())


@pytest.mark.parametrize("name", [n for n in CANDIDATES if make_candidate(n, 3, 3).mergeable and n != "zero"])
@pytest.mark.parametrize("channels", [(3, 3), (2, 5)])
def test_kernel_vjp_equals_differentiating_the_kernel(name, channels):
    """Each candidate's kernel_vjp (P3D's without composing its kernel) equals autograd through
    kernel_from: parameter gradients and <grad_kernel, kernel>, in float64."""
    if name in ("identity", "avg_pool3") and channels[0] != channels[1]:
        pytest.skip("keeps the channel count")
    torch.manual_seed(0)
    cand = make_candidate(name, *channels).double()
    params = tuple(cand.parameters())
    like = torch.empty((), dtype=torch.float64)
    grad_kernel = torch.randn_like(cand.kernel_from(params, like))
    assert tuple(grad_kernel.shape[2:]) == cand.kernel_size
    grads, inner = cand.kernel_vjp(params, grad_kernel)
    want_grads, want_inner = Candidate.kernel_vjp(cand, params, grad_kernel)
    assert len(grads) == len(want_grads) == len(params)
    for g, want in zip(grads, want_grads):
        torch.testing.assert_close(g, want)
    torch.testing.assert_close(inner, want_inner)
    torch.testing.assert_close(inner, (cand.kernel_from(params, like) * grad_kernel).sum())


def test_traces_on_meta_device():
    edge = _edge(4, 6, "shared", 2, dtype=torch.float32).to("meta")
    x = torch.empty(1, 4, 9, 8, 7, device="meta", requires_grad=True)
    w = torch.empty(len(edge.ops), device="meta")
    out = edge(x, w)
    assert out.shape == (1, 6, 5, 4, 4) and out.device.type == "meta"


def test_bad_inputs():
    edge = _edge(4, 4, "shared", 1, dtype=torch.float32)
    x, w = _inputs(edge, torch.float32)
    K = len(edge.ops)
    with pytest.raises(ValueError, match=f"weights must be a floating tensor of shape \\({K},\\)"):
        edge(x, w[:3])
    with pytest.raises(ValueError, match="indices must lie in"):
        edge(x, (w, torch.tensor([0, K])))
    with pytest.raises(ValueError, match="indices must be a non-empty \\(k,\\) int64"):
        edge(x, (w, torch.tensor([0.0, 1.0])))
    with pytest.raises(ValueError, match="x must have 4 channels"):
        edge(x[:, :3], w)
    with pytest.raises(ValueError, match="x must be a floating"):
        edge(x[0], w)
    with pytest.raises(ValueError, match="weights must be on the device of x"):
        edge(x, w.to("meta"))
    with pytest.raises(ValueError, match="unknown candidate 'conv5x5x5'"):
        MixedEdge3d(4, 4, ["conv3x3x3", "conv5x5x5"])
    with pytest.raises(ValueError, match="keeps the channel count"):
        MixedEdge3d(4, 8, ["conv3x3x3", "max_pool3"])
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        make_candidate("conv3x3x3", 4, 4, stride=3)
    with pytest.raises(ValueError, match="norm must be one of"):
        MixedEdge3d(4, 4, ["conv3x3x3"], norm="batch")
    with pytest.raises(ValueError, match="must not repeat"):
        MixedEdge3d(4, 4, ["conv3x3x3", "conv3x3x3"])
