"""torch.export and ONNX export of every space's built network (issue 24 item 1), equal to eager.

torch.export keeps the fast ops as nas3d custom ops; nas3d_fast.nn.export.portable_program rewrites them
into torch's own operators, and export_onnx hands that to torch.onnx (dynamo), checked with onnxruntime.
The results sum in other orders (the traced graph's convolution routes, torch's or ONNX Runtime's
kernels), so they are judged against the float64 result of the same network: at most twice eager float32's own error plus
1e-5 of the output's scale (c2fnas's networks, through many instance norms, are off 5e-4 in eager)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.compile import SPACES  # small options per space (the compile suite's)

from nas3d_fast import ops, spaces
from nas3d_fast.nn import export_onnx, portable_program

SEEDS = {"dints": 0, "scnas": 1, "c2fnas": 0, "ronasmis": 0, "tautoml": 3}  # every space's nas3d ops, small graphs
SHAPE = (1, 1, 32, 32, 32)  # batch 1: conv3d's oneDNN route, the custom op nas3d::onednn_conv3d


def _network(name):
    space = spaces.get(name, **SPACES[name])
    torch.manual_seed(0)
    return space.build(space.sample(SEEDS[name]), 1, 2).eval()


def _eager(net, x):
    with torch.no_grad():
        y = net(x)
        y64 = net.double()(x.double())
        net.float()
    return y, y64


def _assert_as_accurate(got, eager, exact, what):
    got = torch.as_tensor(got).double()
    bound = 2 * (eager.double() - exact).abs().max().item() + 1e-5 * max(1.0, exact.abs().max().item())
    err = (got - exact).abs().max().item()
    assert err <= bound, f"{what}: error {err:.3g} against float64 > {bound:.3g} (eager float32 twice, plus 1e-5)"


def _nas3d_ops(program):
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function" and "nas3d" in str(n.target)}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_torch_export_keeps_the_fast_ops_and_equals_eager(name):
    net, x = _network(name), torch.randn(SHAPE)
    y, y64 = _eager(net, x)
    program = torch.export.export(net, (x,))
    with torch.no_grad():
        _assert_as_accurate(program.module()(x), y, y64, f"{name} exported program")
    if name in ("scnas", "ronasmis", "tautoml"):  # their candidates run on the fused ops
        assert _nas3d_ops(program), "the exported program lost the fast ops"


@pytest.mark.parametrize("name", sorted(SPACES))
def test_portable_program_holds_only_torch_ops_and_equals_eager(name):
    net, x = _network(name), torch.randn(SHAPE)
    y, y64 = _eager(net, x)
    portable = portable_program(torch.export.export(net, (x,)))
    assert not _nas3d_ops(portable)
    with torch.no_grad():
        _assert_as_accurate(portable.module()(x), y, y64, f"{name} portable program")


@pytest.mark.parametrize("name", sorted(SPACES))
def test_onnx_export_runs_in_onnxruntime_and_equals_eager(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    net, x = _network(name), torch.randn(SHAPE)
    y, y64 = _eager(net, x)
    path = tmp_path / f"{name}.onnx"
    export_onnx(net, (x,), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    _assert_as_accurate(torch.from_numpy(got), y, y64, f"{name} in onnxruntime")
    assert not list(tmp_path.glob("*.tmp-*")), "the temporary file was left behind"


def test_export_refuses_what_it_cannot_export(tmp_path):
    net = _network("ronasmis")
    with pytest.raises(ValueError, match="eval mode"):
        export_onnx(net.train(), (torch.randn(SHAPE),), tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="args must be a tuple"):
        export_onnx(net.eval(), torch.randn(SHAPE), tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="program must be"):
        portable_program(net)

    class Windows(torch.nn.Module):  # a supernet-only op (no portable form)
        def forward(self, x):
            return ops.window_gather(x, torch.tensor([[0, 0, 0, 0]]), [2, 2, 2])

    program = torch.export.export(Windows(), (torch.randn(1, 1, 4, 4, 4),))
    with pytest.raises(ValueError, match="window_gather"):
        portable_program(program)
