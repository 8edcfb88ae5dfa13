"""Optimisers of T-AutoML §3.2 (Adam, SGD, momentum, Nesterov, NovoGrad) and the learning-rate schedules
of the papers (constant, polynomial, multi-step with linear warm-up as in C2FNAS §4.1)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR


class NovoGrad(torch.optim.Optimizer):
    """NovoGrad (Ginsburg et al. 2019): Adam-like, with the second moment a scalar per parameter tensor.

    For each parameter tensor w with gradient g, at step t::

        v = |g|^2                                  while v is 0 (the first step)
        v = beta2 v + (1 - beta2) |g|^2            afterwards     (|g|^2: the sum of squares of g)
        d = g / (sqrt(v) + eps) + weight_decay w
        m = beta1 m + (1 - beta1 if grad_averaging else 1) d
        w = w - lr m

    ``amsgrad=True`` uses the running maximum of v in the denominator. The defaults and the update are
    those of ``monai.optimizers.Novograd``.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_averaging: bool = False,
        amsgrad: bool = False,
    ):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "grad_averaging": grad_averaging,
            "amsgrad": amsgrad,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("NovoGrad does not support sparse gradients")
                state = self.state[p]
                # the scalar moment in float32 at least (half-precision gradients would overflow)
                norm2 = g.to(torch.promote_types(g.dtype, torch.float32)).pow(2).sum()
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(norm2)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(norm2)
                if state["exp_avg_sq"] == 0:
                    state["exp_avg_sq"].copy_(norm2)
                else:
                    state["exp_avg_sq"].mul_(beta2).add_(norm2, alpha=1.0 - beta2)
                state["step"] += 1
                v = state["exp_avg_sq"]
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                    v = state["max_exp_avg_sq"]
                d = g / (v.sqrt() + group["eps"]).to(g.dtype)
                if group["weight_decay"]:
                    d = d.add(p, alpha=group["weight_decay"])
                if group["grad_averaging"]:
                    d = d.mul(1.0 - beta1)
                state["exp_avg"].mul_(beta1).add_(d)
                p.add_(state["exp_avg"], alpha=-group["lr"])
        return loss


#: optimiser names ``nas3d train --optimizer`` accepts.
OPTIMIZERS = ("adam", "sgd", "momentum", "nesterov", "novograd")


def make_optimizer(
    name: str, params: Iterable, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``adam``; ``sgd`` (no momentum); ``momentum`` (SGD, heavy ball); ``nesterov``; ``novograd``."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if name == "novograd":
        return NovoGrad(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


class LRFactor:
    """The factor on the base learning rate at a step (0-based): a linear warm-up from ``warmup_start``
    (a fraction of the base rate) to 1 over ``warmup_steps``, then the schedule:

    - ``constant``: 1
    - ``poly``: (1 - t / total_steps) ** power, t counted from the start of training (warm-up included)
    - ``multistep``: gamma ** (number of milestones <= t)

    A plain callable object so that ``LambdaLR.state_dict`` saves it (and checkpoints resume it).
    """

    def __init__(
        self,
        kind: str,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_start: float = 0.0,
        power: float = 0.9,
        milestones: Sequence[int] = (),
        gamma: float = 0.5,
    ):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
        if total_steps <= 0 or warmup_steps < 0 or warmup_steps > total_steps:
            raise ValueError(
                f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}) and total_steps > 0"
            )
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        self.kind, self.total_steps, self.warmup_steps = kind, int(total_steps), int(warmup_steps)
        self.warmup_start, self.power, self.gamma = float(warmup_start), float(power), float(gamma)
        self.milestones = [int(m) for m in milestones]

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        if self.kind == "poly":
            return max(0.0, 1.0 - step / self.total_steps) ** self.power
        if self.kind == "multistep":
            return self.gamma ** sum(step >= m for m in self.milestones)
        return 1.0


#: learning-rate schedule names ``make_scheduler`` and ``nas3d train --schedule`` accept.
SCHEDULES = ("constant", "poly", "multistep")


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, **kw) -> LambdaLR:
    """A LambdaLR stepping once per training step with :class:`LRFactor` (keyword arguments as there).

    C2FNAS §4.1: SGD lr 0.02, ``make_scheduler(opt, "multistep", 20000, warmup_steps=1000,
    warmup_start=0.0025 / 0.02, milestones=(8000, 16000), gamma=0.5)``.
    """
    return LambdaLR(optimizer, LRFactor(kind, total_steps, **kw))
