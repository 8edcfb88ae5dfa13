"""AxialAttention3d and AxialAttentionBlock3d: the axis order, positional embeddings, training, bad input."""

from __future__ import annotations

import pytest
import torch

from nas3d_fast.nn import AxialAttention3d, AxialAttentionBlock3d
from nas3d_fast.ops import axial_attention


def _by_hand(module: AxialAttention3d, x: torch.Tensor, axes) -> torch.Tensor:
    q, k, v = module.qkv(x).split(module.channels, dim=1)
    for axis in axes:
        L, m = x.shape[axis], module.max_length
        rel = [module.rel[axis - 2, t, m - L : m + L - 1] for t in range(3)] if module.positional else [None] * 3
        v = axial_attention(q, k, v, axis, module.num_heads, rel_q=rel[0], rel_k=rel[1], rel_v=rel[2])
    return module.proj(v)


@pytest.mark.parametrize("positional", [True, False])
def test_order_xyz_is_three_op_calls_and_yxz_differs_only_by_order(positional):
    torch.manual_seed(0)
    xyz = AxialAttention3d(8, 2, "xyz", positional, max_length=8).double()
    yxz = AxialAttention3d(8, 2, "yxz", positional, max_length=8).double()
    yxz.load_state_dict(xyz.state_dict())
    x = torch.randn(2, 8, 5, 6, 7, dtype=torch.float64)
    out_xyz, out_yxz = xyz(x), yxz(x)
    torch.testing.assert_close(out_xyz, _by_hand(xyz, x, (2, 3, 4)), rtol=0, atol=0)
    torch.testing.assert_close(out_yxz, _by_hand(xyz, x, (3, 2, 4)), rtol=0, atol=0)
    assert xyz.axes == (2, 3, 4) and yxz.axes == (3, 2, 4)
    assert (out_xyz - out_yxz).abs().max() > 1e-3, "the two orders should give different results"


def test_attention_reaches_the_whole_volume():
    """Through the three axes, every output voxel depends on every input voxel."""
    torch.manual_seed(0)
    module = AxialAttention3d(4, 1, positional=False).double()
    x = torch.randn(1, 4, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(module(x)[0, :, 0, 0, 0].sum(), x)
    assert (g.abs().sum(1) > 0).all()


def test_positional_gradients_reach_the_embeddings():
    torch.manual_seed(0)
    module = AxialAttention3d(8, 2, max_length=10)
    module(torch.randn(1, 8, 4, 6, 10)).square().sum().backward()
    g = module.rel.grad  # (axis, q/k/v, offset, head_dim)
    assert g is not None and torch.isfinite(g).all()
    for axis, L in zip(range(3), (4, 6, 10)):
        used = slice(10 - L, 10 + L - 1)
        assert g[axis, :, used].abs().sum() > 0
        assert g[axis, :, : 10 - L].abs().sum() == 0 and g[axis, :, 10 + L - 1 :].abs().sum() == 0


def test_block_trains_on_a_toy_task():
    """The residual block learns a non-local target (each voxel's value replaced by the mean of its
    X line): the loss falls to under half of where it starts."""
    torch.manual_seed(0)
    block = AxialAttentionBlock3d(8, num_heads=2, order="yxz", max_length=8)
    head = torch.nn.Conv3d(8, 1, 1)
    params = list(block.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, 6, 6, 6, generator=gen)
    target = x[:, :1].mean(dim=2, keepdim=True).expand(-1, -1, 6, -1, -1)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(head(block(x)), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"loss went from {losses[0]:.4f} to {losses[-1]:.4f}"


def test_block_shapes_and_repr():
    block = AxialAttentionBlock3d(16, num_heads=4, order="xyz", positional=False, reduction=2, norm="batch")
    out = block(torch.randn(2, 16, 4, 5, 6))
    assert out.shape == (2, 16, 4, 5, 6) and (out >= 0).all()
    assert "order='xyz'" in repr(block.attention)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads must be a positive integer dividing channels = 6"):
        AxialAttention3d(6, 4)
    with pytest.raises(ValueError, match="order must be one of"):
        AxialAttention3d(8, 2, order="zyx")
    with pytest.raises(ValueError, match="num_heads must divide the bottleneck channels"):
        AxialAttentionBlock3d(8, num_heads=3)
    with pytest.raises(ValueError, match="reduction must be a positive integer dividing channels"):
        AxialAttentionBlock3d(8, reduction=3)
    with pytest.raises(ValueError, match="norm must be one of"):
        AxialAttentionBlock3d(8, num_heads=2, norm="layer")
    module = AxialAttention3d(8, 2, max_length=4)
    with pytest.raises(ValueError, match="axis 4 has length 5 > max_length = 4"):
        module(torch.randn(1, 8, 4, 4, 5))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 8, X, Y, Z\)"):
        module(torch.randn(1, 6, 4, 4, 4))
