"""The tracer's shape rules (nas3d_fast.profile.meta_shapes) against torch's own meta kernels: same
shapes, dtypes and strides, and no answer where the rule does not hold."""

import pytest
import torch

from nas3d_fast.profile.meta_shapes import RULES, broadcast_shape, fast_output

aten = torch.ops.aten


def meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def _same(fast, ref):
    if isinstance(ref, torch.Tensor):
        assert isinstance(fast, torch.Tensor)
        assert (fast.shape, fast.dtype, fast.stride(), fast.device) == (ref.shape, ref.dtype, ref.stride(), ref.device)
    else:
        assert len(fast) == len(ref)
        for f, r in zip(fast, ref):
            if r is None:
                assert f is None
            else:
                _same(f, r)


def _check(func, *args, **kwargs):
    fast = fast_output(func, args, kwargs)
    assert fast is not None, f"no rule answered {func}"
    _same(fast, func(*args, **kwargs))
    return fast


x = meta(2, 6, 5, 4, 3)
per_channel = meta(1, 6, 1, 1, 1)
wrapped = torch.tensor(2.0, dtype=torch.float64)  # what a Python number becomes in a Tensor overload

ELEMENTWISE = [
    (aten.add.Tensor, (x, per_channel), {"alpha": 2}),
    (aten.add.Tensor, (x, wrapped), {}),
    (aten.mul.Tensor, (per_channel, x), {}),
    (aten.sub.Tensor, (x, meta(3)), {}),
    (aten.div.Scalar, (x, 3.0), {}),
    (aten.rsub.Scalar, (x, 1.0), {}),
    (aten.addcmul.default, (per_channel, x, per_channel), {"value": 0.5}),
    (aten.addcdiv.default, (x, x, x), {}),
    (aten.rsqrt.default, (per_channel,), {}),
    (aten.leaky_relu.default, (x, 0.01), {}),
    (aten.threshold_backward.default, (x, x, 0.0), {}),
    (aten.lerp.Scalar, (x, x, 0.1), {}),
    (aten.sum.dim_IntList, (x, [2, 3, 4], True), {}),
    (aten.sum.dim_IntList, (x, [0]), {}),
    (aten.mean.dim, (x, [-1, -2]), {}),
    (aten.var_mean.correction, (x, [2, 3, 4]), {"correction": 0, "keepdim": True}),
    (aten.zeros_like.default, (x,), {"dtype": torch.float32}),
    (aten.upsample_trilinear3d.default, (x, [10, 8, 6], False, None, None, None), {}),
]


@pytest.mark.parametrize("func,args,kwargs", ELEMENTWISE, ids=[str(e[0]) for e in ELEMENTWISE])
def test_out_of_place_rules_match_meta_kernels(func, args, kwargs):
    _check(func, *args, **kwargs)


@pytest.mark.parametrize(
    "func,other",
    [
        (aten.add_.Tensor, per_channel),
        (aten.mul_.Tensor, wrapped),
        (aten.addcmul_.default, None),
        (aten.copy_.default, per_channel),
    ],
)
def test_in_place_rules_return_their_first_argument(func, other):
    target = meta(2, 6, 5, 4, 3)
    args = (target, per_channel, per_channel) if other is None else (target, other)
    assert fast_output(func, args, {}) is target
    assert func(*args) is target


def test_sum_into_out():
    out = meta(2, 6, 1, 1, 1)
    assert _check(aten.sum.IntList_out, x, [2, 3, 4], True, out=out) is out
    assert fast_output(aten.sum.IntList_out, (x, [2, 3, 4], True), {"out": meta(2, 6)}) is None  # would resize


@pytest.mark.parametrize(
    "func,extra",
    [(aten.threshold_backward.grad_input, (0.0,)), (aten.leaky_relu_backward.grad_input, (0.01, False))],
    ids=["threshold", "leaky_relu"],
)
def test_activation_backward_into_grad_input(func, extra):
    grad, saved = meta(2, 6, 5, 4, 3), meta(2, 6, 5, 4, 3)
    assert _check(func, grad, saved, *extra, grad_input=grad) is grad
    assert fast_output(func, (grad, saved, *extra), {"grad_input": meta(2, 6)}) is None  # would resize
    half = meta(2, 6, 5, 4, 3, dtype=torch.float16)
    assert fast_output(func, (grad, saved, *extra), {"grad_input": half}) is None


def test_no_answer_where_the_rule_does_not_hold():
    half = meta(2, 6, 5, 4, 3, dtype=torch.float16)
    transposed = meta(2, 6, 5, 4, 3).transpose(2, 4)
    assert fast_output(aten.add.Tensor, (x, half), {}) is None  # type promotion
    assert fast_output(aten.add.Tensor, (transposed, x.transpose(2, 4)), {}) is None  # strides follow inputs
    assert fast_output(aten.add_.Tensor, (per_channel, x), {}) is None  # in-place result would grow
    assert fast_output(aten.add.Tensor, (x, meta(7)), {}) is None  # does not broadcast
    assert fast_output(aten.mul.Tensor, (torch.ones(3), torch.ones(3)), {}) is None  # real tensors run
    assert fast_output(aten.sum.dim_IntList, (x, [1]), {"dtype": torch.float64}) is None
    assert fast_output(aten._softmax.default, (half, 1, True), {}) is None
    assert fast_output(aten.cos.default, (x,), {}) is None  # no rule
    assert broadcast_shape((2, 1, 3), (4, 1)) == (2, 4, 3) and broadcast_shape((2, 3), (4, 3)) is None


CONVS = [
    # x, weight, stride, padding, dilation, transposed, output_padding, groups
    ((2, 4, 9, 8, 7), (8, 4, 3, 3, 3), [1, 1, 1], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 1),
    ((1, 4, 9, 8, 7), (6, 4, 1, 1, 1), [1, 1, 1], [0, 0, 0], [1, 1, 1], False, [0, 0, 0], 1),  # pointwise
    ((1, 1, 8, 8, 8), (4, 1, 3, 3, 3), [2, 2, 2], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 1),  # one channel
    ((1, 6, 8, 8, 8), (6, 1, 3, 3, 3), [1, 1, 1], [2, 2, 2], [2, 2, 2], False, [0, 0, 0], 6),  # depthwise
    ((1, 8, 4, 4, 4), (8, 4, 2, 2, 2), [2, 2, 2], [0, 0, 0], [1, 1, 1], True, [0, 0, 0], 1),  # transposed
    ((1, 3, 10, 9), (5, 3, 3, 3), [1, 2], [1, 0], [1, 1], False, [0, 0], 1),  # 2-D
]


@pytest.mark.parametrize("conv", CONVS)
def test_convolution_rules_match_meta_kernels(conv):
    xs, ws, stride, padding, dilation, transposed, output_padding, groups = conv
    inp, weight = meta(*xs), meta(*ws)
    rest = (stride, padding, dilation, transposed, output_padding, groups)
    out = _check(aten.convolution.default, inp, weight, None, *rest)
    for mask in ([True, True, True], [False, True, False]):
        _check(aten.convolution_backward.default, torch.empty_like(out), inp, weight, [out.shape[1]], *rest, mask)


def test_loss_rules_match_meta_kernels():
    logits, target = meta(2, 3, 4, 20), meta(2, 4, 20, dtype=torch.int64)  # cross_entropy's 4-D view
    logp = _check(aten._log_softmax.default, logits, 1, False)
    _check(aten._softmax.default, logits, 1, False)
    _loss, total = _check(aten.nll_loss2d_forward.default, logp, target, None, 1, -100)
    _check(aten.nll_loss2d_backward.default, meta(), logp, target, None, 1, -100, total)
    _check(aten._log_softmax_backward_data.default, logp, logp, 1, torch.float32)
    _check(aten._softmax_backward_data.default, logp, logp, 1, torch.float32)
    assert fast_output(aten.nll_loss2d_forward.default, (logp, target, None, 0, -100), {}) is None  # no reduction


def test_every_rule_is_an_op_overload():
    assert all(isinstance(op, torch._ops.OpOverload) for op in RULES)
