"""The training step that is measured and predicted: the same code runs on real and on meta tensors.

One step: ``optimizer.zero_grad(set_to_none=True)``; logits = model(x) (under autocast when amp);
loss = loss_fn(logits.float(), y) (summed over the heads when the model returns a tuple of logits, as
deep supervision does); ``loss.backward()``; logits and loss are dropped; ``optimizer.step()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

OPTIMIZERS = ("adam", "adamw", "sgd")


def check_args(input_shape: Sequence[int], batch_size: int, num_classes: int, steps: int) -> tuple[int, ...]:
    """``input_shape`` as a tuple (C, X, Y, Z) after checking every argument."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, X, Y, Z) of positive sizes, got {tuple(input_shape)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shape


def make_optimizer(optimizer: str | Callable, params: list[torch.Tensor], foreach: bool | None):
    """torch.optim's Adam (lr 1e-3), AdamW (lr 1e-3, weight decay 0.01) or SGD (lr 0.01, momentum 0.9)
    by name, or ``optimizer(params)`` for a callable. ``foreach``: the implementation (None: torch's
    default, i.e. foreach on CUDA and one tensor at a time on CPU)."""
    if callable(optimizer):
        return optimizer(params)
    name = str(optimizer).lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3, foreach=foreach)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=foreach)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-2, momentum=0.9, foreach=foreach)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS} or a callable optimizer(params), got {optimizer!r}")


def init_optimizer_state(opt) -> bool:
    """Allocate torch.optim.Adam's or AdamW's state (step, exp_avg, exp_avg_sq[, max_exp_avg_sq] for
    each parameter whose ``grad`` is set, in parameter order) by torch's own lazy initialisation,
    ``_init_group``, which their first step runs before any arithmetic: the state a step would leave,
    without the step's arithmetic. Returns False (nothing done) for other optimisers, or when this
    private method does not fit the installed torch; the caller then runs a step instead."""
    if type(opt) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    try:
        for group in opt.param_groups:
            opt._init_group(group, [], [], [], [], [], [])
    except (TypeError, AttributeError):
        return False
    return True


def autocast(amp: bool, device_type: str):
    """float16 autocast on CUDA, bfloat16 on CPU, or nothing."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.float16 if device_type == "cuda" else torch.bfloat16)


def training_step(forward, optimizer, loss_fn, x, y, amp: bool, device_type: str, phase=None) -> None:
    """One training step. ``forward(x)`` gives logits; ``phase(name)``, when given, is told when the
    forward, backward and optimiser step begin (the tracker files allocations by phase)."""
    optimizer.zero_grad(set_to_none=True)
    if phase:
        phase("forward")
    with autocast(amp, device_type):
        logits = forward(x)
    heads = list(logits) if isinstance(logits, (tuple, list)) else [logits]  # deep supervision: several heads
    del logits
    for h in heads:
        if not isinstance(h, torch.Tensor) or h.shape[0] != x.shape[0] or h.shape[2:] != x.shape[2:]:
            got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(
                f"the model must map (N, C, X, Y, Z) to (N, num_classes, X, Y, Z) logits (or a tuple of them); "
                f"got {got} for an input of shape {tuple(x.shape)}"
            )
    loss = loss_fn(heads[0].float(), y)
    for h in heads[1:]:
        loss = loss + loss_fn(h.float(), y)
    del heads
    if phase:
        phase("backward")
    loss.backward()
    del loss
    if phase:
        phase("optimizer")
    optimizer.step()
    if phase:
        phase("idle")
