"""nn.resample: trilinear up-sampling as three matrix products equals F.interpolate, and the factorized
reduction on matrix products equals torch's two strided convolutions, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas3d_fast.nn.conv import meta_as_cpu
from nas3d_fast.nn.resample import UpsampleTrilinear, factorized_reduce, interpolation_matrix, upsample_trilinear


def _torch(x, scale, align_corners):
    return F.interpolate(x, scale_factor=scale, mode="trilinear", align_corners=align_corners)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(
    ("shape", "scale"),
    [((1, 8, 4, 4, 4), 2), ((2, 3, 5, 1, 7), 2), ((1, 2, 3, 4, 2), 3), ((1, 4, 6, 5, 4), 1), ((1, 1, 1, 1, 1), 2)],
)
def test_equals_f_interpolate(shape, scale, align_corners):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    got, want = upsample_trilinear(x, scale, align_corners), _torch(x, scale, align_corners)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    cot = torch.randn(want.shape, generator=g, dtype=torch.float64)
    (a,) = torch.autograd.grad(got, x, cot)
    (b,) = torch.autograd.grad(want, x, cot)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_float32_within_rounding_of_torch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 8, 8, 8, generator=g)
    torch.testing.assert_close(upsample_trilinear(x, 2, True), _torch(x, 2, True), rtol=1e-5, atol=1e-5)


def test_non_contiguous_input():
    x = torch.randn(1, 6, 4, 5, 3, dtype=torch.float64).transpose(2, 4)
    torch.testing.assert_close(upsample_trilinear(x, 2, True), _torch(x, 2, True), rtol=1e-12, atol=1e-12)


def test_gradcheck():
    x = torch.randn(1, 2, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: upsample_trilinear(t, 2, True), (x,))


def test_rows_are_convex_weights():
    for align_corners in (True, False):
        m = interpolation_matrix(7, 2, align_corners, torch.float64)
        assert m.shape == (14, 7)
        torch.testing.assert_close(m.sum(1), torch.ones(14, dtype=torch.float64))
        assert ((m != 0).sum(1) <= 2).all() and (m >= 0).all()


def test_meta_tensors_take_torch_shapes():
    x = torch.empty(1, 4, 3, 5, 2, device="meta")
    assert upsample_trilinear(x, 2, True).shape == (1, 4, 6, 10, 4)


def test_module_replaces_nn_upsample_state_dict_and_all():
    ours, theirs = (
        UpsampleTrilinear(2, align_corners=True),
        nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True),
    )
    assert ours.state_dict() == theirs.state_dict() == {}
    x = torch.randn(1, 3, 4, 4, 4)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [0, 1.5, True, -2])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale must be a positive int"):
        upsample_trilinear(torch.zeros(1, 1, 2, 2, 2), scale)


def test_bad_rank():
    with pytest.raises(ValueError, match=r"x must be an \(N, C, D, H, W\) tensor"):
        upsample_trilinear(torch.zeros(1, 2, 2, 2), 2)


def _torch_reduce(x, w1, w2):
    a = F.relu(x)
    return torch.cat([F.conv3d(a, w1, stride=2), F.conv3d(a[:, :, 1:, 1:, 1:], w2, stride=2)], 1)


@pytest.mark.parametrize(("shape", "c_out"), [((1, 6, 4, 6, 8), 5), ((2, 3, 2, 2, 2), 4), ((1, 8, 8, 8, 8), 16)])
def test_factorized_reduce_equals_torch(shape, c_out):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    w1 = torch.randn(c_out // 2, shape[1], 1, 1, 1, generator=g, dtype=torch.float64).requires_grad_()
    w2 = torch.randn(c_out - c_out // 2, shape[1], 1, 1, 1, generator=g, dtype=torch.float64).requires_grad_()
    got, want = factorized_reduce(x, w1, w2), _torch_reduce(x, w1, w2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    cot = torch.randn(want.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (x, w1, w2), cot), torch.autograd.grad(want, (x, w1, w2), cot)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_factorized_reduce_gradcheck_and_partial_grads():
    x = torch.randn(1, 3, 2, 4, 2, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(2, 3, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(1, 3, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(factorized_reduce, (x, w1, w2))
    (gx,) = torch.autograd.grad(factorized_reduce(x, w1.detach(), w2.detach()).sum(), x)
    (gx_torch,) = torch.autograd.grad(_torch_reduce(x, w1, w2).sum(), x)
    torch.testing.assert_close(gx, gx_torch)


def test_factorized_reduce_meta_shapes_inside_and_outside_meta_as_cpu():
    x = torch.empty(1, 4, 6, 6, 6, device="meta")
    w1, w2 = torch.empty(3, 4, 1, 1, 1, device="meta"), torch.empty(2, 4, 1, 1, 1, device="meta")
    assert factorized_reduce(x, w1, w2).shape == (1, 5, 3, 3, 3)
    with meta_as_cpu():
        assert factorized_reduce(x, w1, w2).shape == (1, 5, 3, 3, 3)
        assert upsample_trilinear(x, 2, True).shape == (1, 4, 12, 12, 12)


def test_factorized_reduce_needs_even_sizes():
    with pytest.raises(ValueError, match="even D, H, W"):
        factorized_reduce(torch.zeros(1, 2, 4, 5, 4), torch.zeros(1, 2, 1, 1, 1), torch.zeros(1, 2, 1, 1, 1))
