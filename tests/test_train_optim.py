"""Optimisers (NovoGrad against monai.optimizers.Novograd) and learning-rate schedules (C2FNAS §4.1)."""

import itertools

import pytest
import torch
from monai.optimizers import Novograd as MonaiNovograd

from nas3d_fast.train.optim import OPTIMIZERS, LRFactor, NovoGrad, make_optimizer, make_scheduler


def _run(opt_cls, steps=6, **kw):
    # float32: MONAI keeps the scalar second moment in float32 whatever the parameters' dtype
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = opt_cls(model.parameters(), **kw)
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "kw",
    [{}, {"weight_decay": 0.01}, {"grad_averaging": True}, {"amsgrad": True}, {"betas": (0.8, 0.5), "lr": 0.05}],
)
def test_novograd_matches_monai(kw):
    ours, ref = _run(NovoGrad, **kw), _run(MonaiNovograd, **kw)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_novograd_first_step_by_hand():
    # One step from m = 0: w -= lr * g / |g| (v = |g|^2 at the first step).
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = NovoGrad([w], lr=0.1, eps=0.0)
    w.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0 - 0.1 * 0.6, 4.0 - 0.1 * 0.8], dtype=torch.float64))


def test_make_optimizer():
    p = [torch.nn.Parameter(torch.zeros(3))]
    kinds = {name: make_optimizer(name, p, lr=0.01) for name in OPTIMIZERS}
    assert isinstance(kinds["adam"], torch.optim.Adam)
    assert kinds["sgd"].defaults["momentum"] == 0
    assert kinds["momentum"].defaults["momentum"] == 0.9 and not kinds["momentum"].defaults["nesterov"]
    assert kinds["nesterov"].defaults["nesterov"]
    assert isinstance(kinds["novograd"], NovoGrad)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("rmsprop", p, lr=0.01)
    with pytest.raises(ValueError, match="lr must be > 0"):
        make_optimizer("adam", p, lr=0)


def _lrs(kind, total, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    sched = make_scheduler(opt, kind, total, **kw)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_c2fnas_multistep_with_warmup():
    # C2FNAS §4.1 scaled by 1/100: warm-up 10 steps from 0.0025 to 0.02, halved at 80 and 160, 200 steps.
    lrs = _lrs("multistep", 200, warmup_steps=10, warmup_start=0.0025 / 0.02, milestones=(80, 160), gamma=0.5)
    assert lrs[0] == pytest.approx(0.0025)
    assert lrs[5] == pytest.approx(0.0025 + (0.02 - 0.0025) * 5 / 10)
    assert lrs[10] == pytest.approx(0.02) and lrs[79] == pytest.approx(0.02)
    assert lrs[80] == pytest.approx(0.01) and lrs[159] == pytest.approx(0.01)
    assert lrs[160] == pytest.approx(0.005) and lrs[199] == pytest.approx(0.005)


def test_poly_and_constant():
    lrs = _lrs("poly", 100, power=0.9)
    assert lrs[0] == pytest.approx(0.02)
    assert lrs[50] == pytest.approx(0.02 * 0.5**0.9)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert set(_lrs("constant", 20)) == {0.02}


def test_scheduler_state_resumes():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    sched = make_scheduler(opt, "poly", 50, warmup_steps=5)
    for _ in range(17):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    sched2 = make_scheduler(opt2, "poly", 50, warmup_steps=5)
    sched2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_bad_schedules():
    with pytest.raises(ValueError, match="schedule must be one of"):
        LRFactor("cosine", 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        LRFactor("poly", 10, warmup_steps=11)
    with pytest.raises(ValueError, match="milestones"):
        LRFactor("multistep", 10, milestones=(5, 3))
