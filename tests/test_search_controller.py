"""The ENAS controller, its REINFORCE trainer and the resource reward (nas3d_fast.search.controller)."""

import io
import math
import os
import sys

import pytest
import torch

from nas3d_fast.search.controller import Controller, Reinforce, resource_reward
from nas3d_fast.spaces import get as get_space

sys.path.insert(0, os.path.dirname(__file__))
from search_fixtures import one_torch_thread  # noqa: E402

one_torch_thread = pytest.fixture(autouse=True)(one_torch_thread)  # one torch thread in this module's tests

CHOICES = [2, 3, 4, 2, 3, 4, 2, 3]
TARGET = [1, 2, 3, 0, 1, 0, 1, 2]


def _rewards(codes: torch.Tensor) -> list[float]:
    """Fraction of positions equal to TARGET, per sampled encoding."""
    return (codes == torch.tensor(TARGET)).float().mean(dim=1).tolist()


def _train(controller, trainer, generator, steps, batch=8):
    out = []
    for _ in range(steps):
        codes, log_probs, entropies = controller.sample(generator, num=batch)
        out.append((codes.clone(), trainer.update(log_probs, entropies, _rewards(codes))))
    return out


@pytest.mark.parametrize("shaping", [{}, {"temperature": None, "tanh_constant": None}], ids=["enas", "plain"])
def test_controller_learns_synthetic_reward(shaping):
    torch.manual_seed(0)
    controller = Controller(CHOICES, hidden=32, **shaping)
    trainer = Reinforce(controller, lr=0.02)
    with torch.no_grad():
        before = controller.log_prob(TARGET)[0].exp().item()
    log = _train(controller, trainer, torch.Generator().manual_seed(1), steps=300)
    with torch.no_grad():
        after = controller.log_prob(TARGET)[0].exp().item()
    assert before < 1e-2 and after > 0.5, (before, after)
    assert controller.greedy().tolist() == TARGET
    assert log[-1][1]["mean_reward"] > 0.8 and log[-1][1]["baseline"] > 0.8
    assert set(log[-1][1]) == {"loss", "baseline", "mean_reward", "advantage"}


def test_sample_shapes_and_consistency_with_log_prob():
    controller = Controller(CHOICES)
    codes, log_prob, entropy = controller.sample(torch.Generator().manual_seed(0))
    assert codes.dtype == torch.long and codes.shape == (len(CHOICES),)
    assert log_prob.shape == () and entropy.shape == () and log_prob.requires_grad
    assert all(0 <= int(c) < n for c, n in zip(codes, CHOICES))
    forced_lp, forced_ent = controller.log_prob(codes)
    torch.testing.assert_close(forced_lp, log_prob)
    torch.testing.assert_close(forced_ent, entropy)
    assert 0 < entropy.item() <= sum(math.log(n) for n in CHOICES) + 1e-6
    batch, lps, ents = controller.sample(torch.Generator().manual_seed(0), num=5)
    assert batch.shape == (5, len(CHOICES)) and lps.shape == (5,) and ents.shape == (5,)
    torch.testing.assert_close(controller.log_prob(batch)[0], lps)
    assert controller.greedy().shape == (len(CHOICES),)


def test_sampling_reproducible_with_seed():
    torch.manual_seed(0)
    controller = Controller(CHOICES, temperature=None, tanh_constant=None)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.stack([controller.sample(g)[0] for _ in range(20)])

    torch.manual_seed(123)  # the global RNG plays no part
    first = draw(7)
    torch.manual_seed(456)
    assert torch.equal(first, draw(7))
    assert not torch.equal(first, draw(8))


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    controller = Controller(CHOICES, hidden=16)
    trainer = Reinforce(controller, lr=0.01, grad_clip=1.0)
    generator = torch.Generator().manual_seed(3)
    _train(controller, trainer, generator, steps=5)
    buffer = io.BytesIO()
    torch.save({"search": trainer.state_dict(), "generator": generator.get_state()}, buffer)
    expected = _train(controller, trainer, generator, steps=5)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    torch.manual_seed(99)  # a fresh process: other initial weights
    fresh = Controller(CHOICES, hidden=16)
    resumed = Reinforce(fresh, lr=0.01, grad_clip=1.0)
    resumed.load_state_dict(saved["search"])
    g = torch.Generator()
    g.set_state(saved["generator"])
    assert resumed.steps == 5 and resumed.baseline == saved["search"]["baseline"]
    got = _train(fresh, resumed, g, steps=5)
    for (codes_a, stats_a), (codes_b, stats_b) in zip(expected, got):
        assert torch.equal(codes_a, codes_b) and stats_a == stats_b
    for a, b in zip(controller.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_single_choice_positions():
    controller = Controller([1, 3, 1, 1, 2, 1])
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        codes, _, _ = controller.sample(g)
        assert codes[[0, 2, 3, 5]].tolist() == [0, 0, 0, 0]
    lp_a, ent_a = controller.log_prob([0, 1, 0, 0, 1, 0])
    assert lp_a.item() < 0 and 0 < ent_a.item() < math.log(3) + math.log(2) + 1e-6
    with pytest.raises(ValueError, match="position 0"):
        controller.log_prob([1, 1, 0, 0, 1, 0])
    only_one = Controller([1, 1, 1])
    codes, log_prob, entropy = only_one.sample(g)
    assert codes.tolist() == [0, 0, 0] and log_prob.item() == 0 and entropy.item() == 0
    assert only_one.greedy().tolist() == [0, 0, 0]
    stats = Reinforce(only_one).update([log_prob], [entropy], [0.5])  # nothing to learn, no error
    assert stats["baseline"] == 0.5 and stats["advantage"] == 0


def test_controller_on_ronasmis_space():
    space = get_space("ronasmis")
    controller = Controller(space.vector_choices())
    codes, _, _ = controller.sample(torch.Generator().manual_seed(0))
    space.decode(codes.tolist())  # a valid architecture of the space


def test_resource_reward():
    assert resource_reward(0.8, 100, 100) == pytest.approx(0.8)
    assert resource_reward(0.8, 200, 100) == pytest.approx(0.8 * 2**-0.07)  # MnasNet soft
    assert resource_reward(0.8, 50, 100) > 0.8  # under the target: a small bonus
    assert resource_reward(0.8, 50, 100, kind="hard") == pytest.approx(0.8)
    assert resource_reward(0.8, 200, 100, kind="hard") == pytest.approx(0.4)  # MnasNet hard, w = -1
    assert resource_reward(0.8, 150, 100, kind="penalty", weight=0.5) == pytest.approx(0.55)
    assert resource_reward(0.8, 50, 100, kind="penalty") == pytest.approx(0.8)
    assert resource_reward(0.8, 2e9, 1e9, weight=0) == pytest.approx(0.8)
    rewards = [resource_reward(0.8, c, 1e9) for c in (0.5e9, 1e9, 2e9, 4e9)]
    assert rewards == sorted(rewards, reverse=True)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"accuracy": -0.1}, "accuracy"),
        ({"accuracy": float("nan")}, "accuracy"),
        ({"accuracy": "0.5"}, "accuracy"),
        ({"cost": 0}, "cost"),
        ({"cost": float("inf")}, "cost"),
        ({"target": -1}, "target"),
        ({"target": True}, "target"),
        ({"weight": 0.07}, "weight"),
        ({"weight": -1, "kind": "penalty"}, "weight"),
        ({"kind": "linear"}, "kind"),
    ],
)
def test_resource_reward_bad_inputs(kwargs, name):
    args = {"accuracy": 0.8, "cost": 1e9, "target": 1e9, **kwargs}
    with pytest.raises(ValueError, match=name):
        resource_reward(**args)


@pytest.mark.parametrize(
    "args, name",
    [
        (([],), "choices"),
        ((5,), "choices"),
        (("23",), "choices"),
        (([2, 0, 3],), r"choices\[1\]"),
        (([2, 2.0],), r"choices\[1\]"),
        (([True, 2],), r"choices\[0\]"),
        (([2, 3], 0), "hidden"),
        (([2, 3], 32, 0.0), "temperature"),
        (([2, 3], 32, None, -1.0), "tanh_constant"),
    ],
)
def test_controller_bad_args(args, name):
    with pytest.raises(ValueError, match=name):
        Controller(*args)


def test_bad_calls():
    controller = Controller([2, 3])
    with pytest.raises(ValueError, match="generator"):
        controller.sample(0)
    with pytest.raises(ValueError, match="num"):
        controller.sample(torch.Generator(), num=0)
    with pytest.raises(ValueError, match="codes"):
        controller.log_prob([0, 1, 1])
    with pytest.raises(ValueError, match="codes"):
        controller.log_prob([0.0, 1.0])
    with pytest.raises(ValueError, match="position 1"):
        controller.log_prob([0, 3])
    for kwargs, name in [({"lr": 0}, "lr"), ({"baseline_decay": 1.0}, "baseline_decay"),
                         ({"entropy_weight": -1}, "entropy_weight"), ({"grad_clip": 0}, "grad_clip")]:
        with pytest.raises(ValueError, match=name):
            Reinforce(controller, **kwargs)
    trainer = Reinforce(controller)
    _, lp, ent = controller.sample(torch.Generator())
    with pytest.raises(ValueError, match="same length"):
        trainer.update([lp], [ent], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"rewards\[0\]"):
        trainer.update([lp], [ent], [float("nan")])
