"""nas3d_fast.nn.InstanceNorm3d against torch.nn.InstanceNorm3d(affine=True): outputs and all three
gradients, for channel counts that split into equal and unequal chunks and batches > 1 (the chunked
per-channel dot of the backward writes into strided views)."""

import pytest
import torch

from nas3d_fast.nn import norm as norm_module
from nas3d_fast.nn.norm import InstanceNorm3d


@pytest.mark.parametrize("backward", ["batch_norm", "formula"])
@pytest.mark.parametrize("n,c", [(1, 12), (3, 20), (2, 5), (2, 50)])
def test_matches_torch_instance_norm(n, c, backward, monkeypatch):
    """Both backwards: torch's batch-norm kernel (small CPU inputs) and the formula in torch ops."""
    monkeypatch.setattr(norm_module, "NATIVE_BACKWARD_MAX_NUMEL", 0 if backward == "formula" else 1 << 30)
    torch.manual_seed(0)
    x = torch.randn(n, c, 6, 5, 4, dtype=torch.float64, requires_grad=True)
    ours, ref = InstanceNorm3d(c).double(), torch.nn.InstanceNorm3d(c, affine=True).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    grad = torch.randn(n, c, 6, 5, 4, dtype=torch.float64)
    out, expected = ours(x), ref(x)
    torch.testing.assert_close(out, expected)
    got = torch.autograd.grad(out, (x, ours.weight, ours.bias), grad)
    want = torch.autograd.grad(expected, (x, ref.weight, ref.bias), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("spread,offset", [(0.01, 1000.0), (0.1, 100.0), (1.0, 0.0)])
def test_float32_error_at_most_twice_torchs(spread, offset):
    """float32, against a float64 reference: the two-pass statistics keep the error within twice that of
    torch's own float32 instance norm, also when the mean dwarfs the spread."""
    torch.manual_seed(0)
    x = torch.randn(2, 20, 16, 12, 10, dtype=torch.float64) * spread + offset
    norm = InstanceNorm3d(20)
    want = torch.nn.functional.instance_norm(x, eps=norm.eps)
    ours = (norm(x.float()).double() - want).abs().max()
    plain = (torch.nn.functional.instance_norm(x.float(), eps=norm.eps).double() - want).abs().max()
    assert ours <= 2 * plain


@pytest.mark.parametrize("shape", [(2, 20, 16, 12, 10), (1, 7, 40, 40, 41), (1, 3, 66, 64, 64)])
def test_two_pass_statistics_match_float64(shape):
    """The CPU float32 statistics (mean, then the sums of x - mean and of its squares in row chunks)
    against float64, with a mean that dwarfs the spread: the variance within twice the relative error
    of torch.var_mean in float32 (or 1e-6), the mean within 1e-7. The shapes give several rows a
    chunk, a short last chunk (7 rows) and one row a chunk."""
    from nas3d_fast.nn.norm import _var_mean

    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64) * 0.1 + 10.0
    want_var, want_mean = torch.var_mean(x, dim=(2, 3, 4), unbiased=False, keepdim=True)
    var, mean = _var_mean(x.float())
    plain_var, _ = torch.var_mean(x.float(), dim=(2, 3, 4), unbiased=False, keepdim=True)
    assert var.shape == mean.shape == (*shape[:2], 1, 1, 1)
    err = float(((var.double() - want_var) / want_var).abs().max())
    plain_err = float(((plain_var.double() - want_var) / want_var).abs().max())
    assert err <= max(2 * plain_err, 1e-6), (err, plain_err)
    torch.testing.assert_close(mean.double(), want_mean, rtol=1e-7, atol=0)


def test_two_pass_statistics_of_a_constant_volume():
    """A constant channel has variance 0, never a rounded negative (rsqrt(var + eps) stays finite)."""
    from nas3d_fast.nn.norm import _var_mean

    values = torch.tensor([3.7, -1234.567, 0.1, 1e-3])
    x = values.view(1, 4, 1, 1, 1).expand(1, 4, 30, 31, 32).contiguous()
    var, mean = _var_mean(x)
    assert torch.all(var >= 0) and var.max() < 1e-6 * values.abs().max() ** 2
    torch.testing.assert_close(mean.flatten(), values)
    assert torch.isfinite(InstanceNorm3d(4)(x)).all()
