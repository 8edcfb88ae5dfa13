"""torch.compile of the networks users train (issue 24 item 1): every space's built network, forward and
backward, equal to eager with no graph break caused by nas3d code, and a compiled supernet step of each
space with a supernet. The compiler's own trace runs with backend "aot_eager" (the fake-tensor tracing
that crashed, without inductor's C++ build); one network also goes through inductor end to end."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from benchmarks.compile import SPACES  # small options per space (the compile suite's)

from nas3d_fast import spaces
from nas3d_fast.spaces.c2fnas import topologies

TOPOLOGY = list(topologies()[100])
SUPERNETS = {
    "dints": SPACES["dints"],
    "scnas": SPACES["scnas"],
    "c2fnas": {"channels": 4, "topology": TOPOLOGY},
    "ronasmis": SPACES["ronasmis"],
}
# batch 1 at 32^3: nas3d's conv3d takes its oneDNN route (the one that crashed); at 16^3 the coarsest
# scale is one voxel, whose instance norms make the gradients ill-conditioned noise
SHAPE = (1, 1, 32, 32, 32)


def _forward_backward(model, *args):
    for p in model.parameters():
        p.grad = None
    out = model(*args)
    (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    return out.detach(), [p.grad.clone() if p.grad is not None else None for p in model.parameters()]


def _close(got, want, what):
    """float32 tolerance relative to the tensor's scale: the compiled graph sums in another order, and
    through a dozen instance norms a weight gradient of magnitude 6e4 differs by a few units in eager
    vs compiled (5e-5 of its largest element)."""
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{what}: {m}")


def _assert_equal(eager, compiled):
    (y0, g0), (y1, g1) = eager, compiled
    _close(y1, y0, "output")
    assert len(g0) == len(g1)
    for i, (a, b) in enumerate(zip(g0, g1)):
        assert (a is None) == (b is None)
        if a is not None:
            _close(b, a, f"gradient of parameter {i}")


@pytest.mark.parametrize("name", sorted(SPACES))
def test_a_built_network_compiles_without_graph_breaks_and_equals_eager(name):
    space = spaces.get(name, **SPACES[name])
    torch.manual_seed(0)
    model = space.build(space.sample(0), 1, 2)
    x = torch.randn(SHAPE)
    eager = _forward_backward(model, x)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    compiled = _forward_backward(torch.compile(model, backend="aot_eager"), x)
    _assert_equal(eager, compiled)


def test_a_built_network_runs_through_inductor():
    space = spaces.get("ronasmis", **SPACES["ronasmis"])
    torch.manual_seed(0)
    model = space.build(space.sample(0), 1, 2)
    x = torch.randn(SHAPE)
    torch._dynamo.reset()
    _assert_equal(_forward_backward(model, x), _forward_backward(torch.compile(model), x))


@pytest.mark.parametrize("name", sorted(SUPERNETS))
def test_a_compiled_supernet_step_equals_eager(name):
    """Graph breaks are allowed here: a supernet's edges branch on their weights (which candidates run)."""
    space = spaces.get(name, **SUPERNETS[name])
    torch.manual_seed(0)
    supernet = space.supernet(1, 2)
    weights = {k: torch.softmax(v.detach(), -1) for k, v in supernet.arch_logits().items()}
    x = torch.randn(SHAPE)
    eager = _forward_backward(supernet, x, weights)
    torch._dynamo.reset()
    _assert_equal(eager, _forward_backward(torch.compile(supernet, backend="aot_eager"), x, weights))


EDGE_CANDIDATES = ["zero", "identity", "conv3x3x3", "p3d_3x3x1_1x1x3", "sep_dil3x3x3_r2", "max_pool3", "avg_pool3"]


@pytest.mark.parametrize("norm", ["shared", "per_op"])
@pytest.mark.parametrize("sampled", [False, True], ids=["dense", "sampled"])
@pytest.mark.parametrize("path", ["recompute", "plain"])
def test_mixed_edge_compiles_and_equals_eager(norm, sampled, path):
    """MixedEdge3d under torch.compile, dense and sampled weights: equal to eager; one graph on the plain
    path with dense weights (fullgraph=True), graph breaks around the memory-efficient path's autograd
    function and at the sampled indices (the module docstring says why)."""
    from nas3d_fast import ops
    from nas3d_fast.nn import MixedEdge3d

    C, S = (4, 12) if path == "recompute" else (64, 2)
    torch.manual_seed(0)
    edge = MixedEdge3d(C, C, EDGE_CANDIDATES, 1, norm=norm)
    x = torch.randn(1, C, S, S, S, requires_grad=True)
    assert edge.keeps_outputs(x) == (path == "plain")
    logits = torch.randn(len(EDGE_CANDIDATES), requires_grad=True)
    if sampled:
        w, idx = ops.gumbel_topk(logits[None], 1.0, k=2)
        weights = (w[0], idx[0])
    else:
        weights = torch.softmax(logits, 0)

    def step(fn):
        x.grad = logits.grad = None
        for p in edge.parameters():
            p.grad = None
        y = fn(x, weights)
        (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward(retain_graph=True)
        return y.detach(), [t.grad.clone() for t in (x, logits)] + [p.grad for p in edge.parameters()]

    eager = step(edge)
    torch._dynamo.reset()
    compiled = step(torch.compile(edge, backend="aot_eager", fullgraph=path == "plain" and not sampled))
    _close(compiled[0], eager[0], "output")
    for i, (a, b) in enumerate(zip(eager[1], compiled[1])):
        assert (a is None) == (b is None), f"gradient {i}"
        if a is not None:
            _close(b, a, f"gradient {i}")
