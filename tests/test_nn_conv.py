"""nn.conv: the oneDNN route for batch-1 CPU volumes equals F.conv3d, forward and backward, and is
taken exactly where torch would run its slow im2col kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nas3d_fast.nn.conv import Conv3d, conv3d, is_pointwise, takes_slow_path

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize(
    ("shape", "kernel", "stride"),
    [
        ((1, 8, 16, 16, 16), (3, 3, 3), 1),  # weight gradient through the two halves
        ((1, 8, 16, 12, 10), (3, 3, 1), 1),
        ((1, 8, 16, 16, 16), (1, 1, 3), 1),
        ((1, 16, 8, 8, 8), (3, 3, 3), 1),  # 8^3, 27 taps: the halves
        ((1, 64, 8, 8, 8), (1, 1, 3), 1),  # 8^3, 3 taps: torch's weight gradient
        ((1, 8, 17, 9, 10), (3, 3, 3), 1),  # odd X: torch's weight gradient
        ((1, 8, 16, 16, 16), (3, 3, 3), 2),
        ((1, 8, 15, 16, 9), (3, 1, 3), (2, 1, 2)),
    ],
)
def test_equals_f_conv3d(shape, kernel, stride):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).requires_grad_()
    w = torch.randn(6, shape[1], *kernel, generator=g).requires_grad_()
    padding = tuple(k // 2 for k in kernel)
    assert takes_slow_path(x, w)
    got, want = conv3d(x, w, stride, padding), F.conv3d(x, w, stride=stride, padding=padding)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    cot = torch.randn(want.shape, generator=g)
    for a, b in zip(torch.autograd.grad(got, (x, w), cot), torch.autograd.grad(want, (x, w), cot)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_only_x_or_only_weight_gradient():
    x = torch.randn(1, 4, 16, 16, 16, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, 3)
    (gx,) = torch.autograd.grad(conv3d(x, w, 1, 1).sum(), x)
    torch.testing.assert_close(gx, torch.autograd.grad(F.conv3d(x, w, padding=1).sum(), x)[0], rtol=1e-4, atol=1e-4)
    w.requires_grad_()
    (gw,) = torch.autograd.grad(conv3d(x.detach(), w, 1, 1).sum(), w)
    torch.testing.assert_close(
        gw, torch.autograd.grad(F.conv3d(x.detach(), w, padding=1).sum(), w)[0], rtol=1e-4, atol=1e-3
    )


def test_leaves_torchs_choice_elsewhere():
    w = torch.randn(4, 4, 3, 3, 3)
    assert not takes_slow_path(torch.randn(2, 4, 8, 8, 8), w)  # a batch: torch already uses oneDNN
    assert not takes_slow_path(torch.randn(1, 32, 32, 32, 8), torch.randn(4, 32, 3, 3, 3))  # N*C*X*Y > 20480
    assert not takes_slow_path(torch.randn(1, 4, 8, 8, 8, dtype=torch.float64), w.double())
    assert not takes_slow_path(torch.randn(1, 4, 8, 8, 8), torch.randn(4, 4, 1, 1, 1))  # 1x1x1: torch's own choice
    assert not takes_slow_path(torch.randn(1, 4, 4, 4, 4), w)  # under 8^3 voxels: no gain
    assert not takes_slow_path(torch.empty(1, 4, 8, 8, 8, device="meta"), w.to("meta"))
    out = conv3d(torch.empty(1, 4, 8, 8, 8, device="meta"), w.to("meta"), 2, 1)
    assert out.shape == (1, 4, 4, 4, 4) and out.device.type == "meta"


def test_module_matches_torch_conv3d():
    torch.manual_seed(0)
    ours = Conv3d(4, 6, 3, stride=2, padding=1, bias=False)
    theirs = torch.nn.Conv3d(4, 6, 3, stride=2, padding=1, bias=False)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 4, 16, 16, 16)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)
    with_bias = Conv3d(4, 6, 3, padding=1)  # torch's path
    assert with_bias(x).shape == (1, 6, 16, 16, 16)


def test_meta_as_cpu_follows_the_cpu_route():
    """A CPU-target memory prediction traces on meta tensors: there they must take the CPU's route."""
    from nas3d_fast.nn.conv import meta_as_cpu

    x, w = torch.empty(1, 4, 8, 8, 8, device="meta"), torch.empty(4, 4, 3, 3, 3, device="meta")
    with meta_as_cpu():
        assert takes_slow_path(x, w)
    assert not takes_slow_path(x, w)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((1, 8, 9, 7, 5), torch.float32), ((3, 5, 4, 6, 7), torch.float32), ((2, 4, 3, 5, 4), torch.float64)],
)
def test_pointwise_equals_f_conv3d(shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(6, shape[1], 1, 1, 1, generator=g, dtype=dtype).requires_grad_()
    assert is_pointwise(x, w, 1, 0)
    got, want = conv3d(x, w), F.conv3d(x, w)
    assert got.grad_fn.name() == "_PointwiseConv3dBackward" and got._base is None  # may be updated in place
    torch.testing.assert_close(got, want)
    cot = torch.randn(want.shape, generator=g, dtype=dtype)
    for a, b in zip(torch.autograd.grad(got, (x, w), cot), torch.autograd.grad(want, (x, w), cot)):
        torch.testing.assert_close(a, b)


def test_pointwise_gradcheck_and_layouts():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 1, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv3d, (x, w))
    # channels-last input and a non-contiguous gradient; only one of the two gradients wanted
    xc = x.detach().float().contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    wf = w.detach().float()
    cot = torch.randn(2, 3, 5, 4, 2, generator=g).transpose(1, 2)
    (gx,) = torch.autograd.grad(conv3d(xc, wf), xc, cot)
    torch.testing.assert_close(gx, torch.autograd.grad(F.conv3d(xc, wf), xc, cot)[0])
    wr = wf.clone().requires_grad_()
    (gw,) = torch.autograd.grad(conv3d(xc.detach(), wr), wr, cot)
    torch.testing.assert_close(gw, torch.autograd.grad(F.conv3d(xc.detach(), wr), wr, cot)[0])


def test_pointwise_route_only_where_it_is_a_matrix_product():
    x, w = torch.randn(1, 4, 6, 6, 6), torch.randn(3, 4, 1, 1, 1)
    assert is_pointwise(x, w, 1, 0) and is_pointwise(x, w, (1, 1, 1), (0, 0, 0))
    assert not is_pointwise(x, w, 2, 0)  # strided
    assert not is_pointwise(x, w, 1, 1)  # padded
    assert not is_pointwise(x, torch.randn(3, 4, 3, 3, 3), 1, 0)
    assert not is_pointwise(x.half(), w.half(), 1, 0)
    assert not is_pointwise(x, w.double(), 1, 0)
    assert not is_pointwise(x.to("meta"), w.to("meta"), 1, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not is_pointwise(x, w, 1, 0)
    from nas3d_fast.nn.conv import meta_as_cpu

    with meta_as_cpu():
        out = conv3d(x.to("meta"), w.to("meta"))
    assert out.shape == (1, 3, 6, 6, 6) and out.device.type == "meta"
    torch.testing.assert_close(conv3d(x, w, 2, 0), F.conv3d(x, w, stride=2))  # torch's route


def test_weight_gradient_in_halves_where_it_pays():
    from nas3d_fast.nn.conv import halves_pay

    def pays(size, kernel):
        return halves_pay(torch.zeros(1, 8, *size), torch.zeros(8, 8, *kernel))

    assert pays((16, 4, 4), (1, 1, 3)) and pays((8, 8, 8), (3, 3, 1)) and pays((8, 8, 8), (3, 3, 3))
    assert not pays((8, 8, 8), (1, 1, 3)) and not pays((4, 4, 4), (3, 3, 3))
