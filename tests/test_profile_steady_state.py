"""The optimiser's state made without a training step: torch's own lazy initialisation for Adam/AdamW
(``init_optimizer_state``), the traced steady-state step built on it, and ``measure_training_memory(...,
steady_state=True)``, which measures the peak of two steps with one."""

import copy

import pytest
import torch
from profile_models import SmallUNet
from torch import nn

from nas3d_fast.profile import measure_training_memory, predict_training_memory
from nas3d_fast.profile.step import init_optimizer_state


class SteppedAdam(torch.optim.Adam):
    """Adam that init_optimizer_state does not recognise: its state comes from a real step."""


def _with_grads(model):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    return list(model.parameters())


@pytest.mark.parametrize("make", [torch.optim.Adam, torch.optim.AdamW, lambda ps: torch.optim.Adam(ps, amsgrad=True)])
def test_init_gives_the_state_of_a_step(make):
    model = nn.Sequential(nn.Conv3d(1, 4, 3), nn.Conv3d(4, 2, 1))
    made, stepped = make(_with_grads(model)), make(list(model.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    assert init_optimizer_state(made)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # no arithmetic ran
    stepped.step()
    for p in model.parameters():
        a, b = made.state[p], stepped.state[p]
        assert list(a) == list(b)  # the same tensors, made in the same order
        for key in a:
            assert (a[key].shape, a[key].dtype, a[key].device) == (b[key].shape, b[key].dtype, b[key].device)


def test_init_declines_other_optimizers():
    model = nn.Conv3d(1, 2, 1)
    assert not init_optimizer_state(torch.optim.SGD(_with_grads(model), lr=0.1, momentum=0.9))
    assert not init_optimizer_state(SteppedAdam(_with_grads(model)))


@pytest.mark.parametrize("target,foreach", [("cpu", None), ("cuda", True)])
def test_prediction_same_with_initialised_or_stepped_state(target, foreach):
    model = SmallUNet(4)
    kwargs = {"batch_size": 1, "num_classes": 2, "target": target, "steps": 2}
    initialised = predict_training_memory(model, (1, 16, 16, 16), optimizer="adam", **kwargs)
    stepped = predict_training_memory(
        model, (1, 16, 16, 16), optimizer=lambda ps: SteppedAdam(ps, lr=1e-3, foreach=foreach), **kwargs
    )
    assert initialised.peak_bytes == stepped.peak_bytes
    assert initialised.reserved_bytes == stepped.reserved_bytes
    assert initialised.breakdown == stepped.breakdown


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_one_steady_state_step_measures_the_peak_of_two(optimizer):
    torch.manual_seed(0)
    model = SmallUNet(4)
    shape, kwargs = (1, 16, 16, 16), {"batch_size": 1, "num_classes": 2, "device": "cpu", "optimizer": optimizer}
    two = measure_training_memory(copy.deepcopy(model), shape, steps=2, **kwargs)
    one = measure_training_memory(copy.deepcopy(model), shape, steps=1, steady_state=True, **kwargs)
    first = measure_training_memory(copy.deepcopy(model), shape, steps=1, **kwargs)
    assert one.peak_bytes == two.peak_bytes
    assert one.breakdown["optimizer_state"] == two.breakdown["optimizer_state"] > 0
    assert first.peak_bytes < two.peak_bytes  # without the state made first, one step measures less
