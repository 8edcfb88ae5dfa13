"""The ENAS controller (Pham et al., "Efficient Neural Architecture Search via Parameter Sharing", 2018),
trained with REINFORCE, as RONASMIS searches its space (``papers/ronasmis.md``, "Training": "a parameter
sharing based reinforcement learning proposed by ENAS"; the controller samples 20 child networks and
observes their validation patient-wise Dice scores).

**Controller.** An architecture is a space's integer encoding, ``L = len(choices)`` positions with
``choices[p] = space.vector_choices()[p]`` options each. One ``LSTMCell(hidden, hidden)`` step per
position p; its input is a learned start vector at p = 0 and, at p > 0, position p's own embedding of
decision p-1 (``Embedding(choices[p-1], hidden)``); position p's own head ``Linear(hidden, choices[p])``
maps the hidden state to logits, which are shaped as in ENAS (§3.1) to avoid premature convergence::

    logits = head_p(h_p)
    logits = logits / temperature                         # if temperature is not None
    logits = tanh_constant * tanh(logits)                 # if tanh_constant is not None
    pi_p   = softmax(logits),  a_p ~ Categorical(pi_p)

The defaults are ENAS's (§3.1, Penn Treebank training details): temperature 5.0, tanh constant 2.5;
``None`` turns either off. A position with a single choice has no head: it emits 0 with log-prob 0 and
entropy 0 (its embedding is still the next step's input). Parameters start uniform in [-0.1, 0.1] (the
ENAS code). ``log_prob`` of an encoding is the sum over positions of log pi_p(a_p), its entropy the sum of
the positions' entropies (nats).

Shapes: ``sample(g)`` -> codes LongTensor (L,), log_prob and entropy scalar tensors (differentiable);
``sample(g, num=B)`` -> (B, L), (B,), (B,). ``log_prob(codes)`` takes (L,) or (B, L) the same way.
All randomness comes from the ``torch.Generator`` passed (``torch.multinomial(..., generator=g)``): the
same controller weights and the same generator state give the same samples, on every process of a
distributed search. The generator must be on the controller's device. ``sample(g, num=B)`` draws the
batch in one pass, so it consumes the generator differently from B calls of ``sample(g)``.

**REINFORCE** (ENAS §2.2, Williams 1992). For a batch of B sampled architectures with rewards R_i,
log-probs log p_i and entropies H_i, with the moving-average baseline b::

    b    <- R_mean (first update),  then  b <- decay * b + (1 - decay) * R_mean        (decay 0.95)
    A_i  = R_i - b
    loss = -mean_i(A_i * log p_i) - entropy_weight * mean_i(H_i)

then one Adam step (ENAS §3.1: learning rate 3.5e-4; entropy weight 1e-4, which ENAS adds to the reward
and here is the equivalent entropy bonus in the loss), with optional gradient-norm clipping. ``ronasmis.md``
(presentation slides) gives no controller hyperparameters, so these are ENAS's.

**Resource reward** (:func:`resource_reward`). ``ronasmis.md`` names the resource goal but gives no reward
formula, so the forms are MnasNet's (Tan et al., 2019, §3, Eq. 2) and a hinge penalty; ``cost`` and
``target`` are in the same unit (predicted bytes of memory or FLOPs):

- ``"ratio"``   (MnasNet soft constraint): R = acc * (cost / target) ** w, w = -0.07 by default;
- ``"hard"``    (MnasNet hard constraint, alpha = 0, beta = w): R = acc if cost <= target, else
  acc * (cost / target) ** w, w = -1 by default;
- ``"penalty"``: R = acc - w * max(0, cost / target - 1), w = 1 by default.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

REWARD_KINDS = {"ratio": -0.07, "hard": -1.0, "penalty": 1.0}  # kind -> default weight


def _int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive_or_none(value, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be None or a finite number > 0, got {value!r}")
    return float(value)


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


class Controller(nn.Module):
    """The ENAS LSTM controller over an encoding with ``choices[p]`` options at position p (module docstring)."""

    def __init__(self, choices: Sequence[int], hidden: int = 64, temperature: float | None = 5.0,
                 tanh_constant: float | None = 2.5):
        super().__init__()
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or len(choices) == 0:
            raise ValueError(f"choices must be a non-empty sequence of integers >= 1, got {choices!r}")
        self.choices = [_int(n, f"choices[{p}]", 1) for p, n in enumerate(choices)]
        self.hidden = _int(hidden, "hidden", 1)
        self.temperature = _positive_or_none(temperature, "temperature")
        self.tanh_constant = _positive_or_none(tanh_constant, "tanh_constant")
        self.start = nn.Parameter(torch.empty(1, self.hidden))
        self.lstm = nn.LSTMCell(self.hidden, self.hidden)
        # embeds[p - 1] embeds decision p - 1 as the input of step p; heads[p] gives position p's logits
        self.embeds = nn.ModuleList(nn.Embedding(n, self.hidden) for n in self.choices[:-1])
        self.heads = nn.ModuleList(nn.Linear(self.hidden, n) if n > 1 else nn.Identity() for n in self.choices)
        for param in self.parameters():
            nn.init.uniform_(param, -0.1, 0.1)

    def _logits(self, p: int, h: torch.Tensor) -> torch.Tensor:
        logits = self.heads[p](h)
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def _run(self, batch: int, mode: str, codes: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step through the positions for ``batch`` encodings; ``mode`` picks each decision: "sample"
        (from ``generator``), "greedy" (argmax) or "force" (``codes[:, p]``). Returns (B, L), (B,), (B,)."""
        x = self.start.expand(batch, -1)
        state = None
        out, log_prob, entropy = [], x.new_zeros(batch), x.new_zeros(batch)
        for p, n in enumerate(self.choices):
            state = self.lstm(x, state)
            if n == 1:
                a = torch.zeros(batch, dtype=torch.long, device=x.device)
            else:
                logp = torch.log_softmax(self._logits(p, state[0]), dim=-1)
                if mode == "sample":
                    a = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
                elif mode == "greedy":
                    a = logp.argmax(dim=-1)
                else:
                    a = codes[:, p]
                log_prob = log_prob + logp.gather(1, a[:, None]).squeeze(1)
                entropy = entropy - (logp.exp() * logp).sum(dim=-1)
            out.append(a)
            if p + 1 < len(self.choices):
                x = self.embeds[p](a)
        return torch.stack(out, dim=1), log_prob, entropy

    def sample(self, generator: torch.Generator, num: int | None = None):
        """Sample encodings: codes (L,), log_prob, entropy (scalars) or, with ``num``, (num, L), (num,), (num,)."""
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        batch = 1 if num is None else _int(num, "num", 1)
        codes, log_prob, entropy = self._run(batch, "sample", generator=generator)
        return (codes[0], log_prob[0], entropy[0]) if num is None else (codes, log_prob, entropy)

    def log_prob(self, codes) -> tuple[torch.Tensor, torch.Tensor]:
        """(log_prob, entropy) of given encodings, teacher-forced: scalars for (L,) codes, (B,) for (B, L)."""
        codes = torch.as_tensor(codes, device=self.start.device)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must hold integers, got dtype {codes.dtype}")
        single = codes.dim() == 1
        codes = codes.long().reshape(1, -1) if single else codes.long()
        if codes.dim() != 2 or codes.shape[1] != len(self.choices):
            raise ValueError(f"codes must have shape (L,) or (B, L) with L = {len(self.choices)}, "
                             f"got {tuple(codes.shape)}")
        limits = torch.tensor(self.choices, device=codes.device)
        if bool(((codes < 0) | (codes >= limits)).any()):
            p = int(((codes < 0) | (codes >= limits)).any(dim=0).nonzero()[0])
            raise ValueError(f"codes: position {p}: value outside 0..{self.choices[p] - 1}")
        _, log_prob, entropy = self._run(codes.shape[0], "force", codes=codes)
        return (log_prob[0], entropy[0]) if single else (log_prob, entropy)

    @torch.no_grad()
    def greedy(self) -> torch.Tensor:
        """The most probable decision at each position, in order (each fed back as the next input): (L,)."""
        return self._run(1, "greedy")[0][0]


class Reinforce:
    """REINFORCE with a moving-average baseline and an entropy bonus for a :class:`Controller` (module docstring)."""

    def __init__(self, controller: Controller, lr: float = 3.5e-4, baseline_decay: float = 0.95,
                 entropy_weight: float = 1e-4, grad_clip: float | None = None):
        if not isinstance(controller, Controller):
            raise ValueError(f"controller must be a Controller, got {type(controller).__name__}")
        self.controller = controller
        self.lr = _positive_or_none(lr, "lr")
        if self.lr is None:
            raise ValueError("lr must be a finite number > 0, got None")
        self.baseline_decay = _real(baseline_decay, "baseline_decay")
        if not 0 <= self.baseline_decay < 1:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay!r}")
        self.entropy_weight = _real(entropy_weight, "entropy_weight")
        if self.entropy_weight < 0:
            raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight!r}")
        self.grad_clip = _positive_or_none(grad_clip, "grad_clip")
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=self.lr)
        self.baseline: float | None = None
        self.steps = 0

    def update(self, log_probs, entropies, rewards: Sequence[float]) -> dict[str, float]:
        """One REINFORCE step for B sampled architectures: ``log_probs`` and ``entropies`` B scalar tensors
        (a list or a (B,) tensor, from ``Controller.sample``), ``rewards`` B floats.
        Returns floats: loss, baseline (after its update), mean_reward, advantage (mean of R_i - b)."""
        log_probs = torch.stack(list(log_probs)) if not torch.is_tensor(log_probs) else log_probs.reshape(-1)
        entropies = torch.stack(list(entropies)) if not torch.is_tensor(entropies) else entropies.reshape(-1)
        rewards = [_real(r, f"rewards[{i}]") for i, r in enumerate(rewards)]
        if not rewards or len(rewards) != len(log_probs) or len(rewards) != len(entropies):
            raise ValueError(f"log_probs, entropies and rewards must have the same length >= 1, "
                             f"got {len(log_probs)}, {len(entropies)}, {len(rewards)}")
        mean_reward = sum(rewards) / len(rewards)
        d = self.baseline_decay
        self.baseline = mean_reward if self.baseline is None else d * self.baseline + (1 - d) * mean_reward
        advantage = torch.tensor(rewards, dtype=log_probs.dtype, device=log_probs.device) - self.baseline
        loss = -(advantage * log_probs).mean() - self.entropy_weight * entropies.mean()
        if loss.requires_grad:  # not when every position has a single choice
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.controller.parameters(), self.grad_clip)
            self.optimizer.step()
        self.steps += 1
        return {"loss": float(loss.detach()), "baseline": float(self.baseline), "mean_reward": mean_reward,
                "advantage": float(advantage.mean())}

    def state_dict(self) -> dict:
        """The controller's weights, Adam's state, the baseline and the step count (``torch.save``-able)."""
        return {"controller": self.controller.state_dict(), "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.steps = int(state["steps"])


def resource_reward(accuracy: float, cost: float, target: float, weight: float | None = None,
                    kind: str = "ratio") -> float:
    """The reward of an architecture with validation ``accuracy`` (e.g. Dice, >= 0) and resource ``cost``
    against ``target`` (same unit: bytes or FLOPs, both > 0); ``kind`` and ``weight`` as in the module
    docstring (``weight=None``: the kind's default; <= 0 for "ratio" and "hard", >= 0 for "penalty")."""
    if kind not in REWARD_KINDS:
        raise ValueError(f"kind must be one of {sorted(REWARD_KINDS)}, got {kind!r}")
    accuracy, cost, target = _real(accuracy, "accuracy"), _real(cost, "cost"), _real(target, "target")
    if accuracy < 0:
        raise ValueError(f"accuracy must be >= 0, got {accuracy!r}")
    for name, value in (("cost", cost), ("target", target)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    w = REWARD_KINDS[kind] if weight is None else _real(weight, "weight")
    if (w < 0) if kind == "penalty" else (w > 0):
        raise ValueError(f"weight must be {'>= 0' if kind == 'penalty' else '<= 0'} for kind {kind!r}, got {w!r}")
    ratio = cost / target
    if kind == "penalty":
        return accuracy - w * max(0.0, ratio - 1.0)
    if kind == "hard" and ratio <= 1:
        return accuracy
    return accuracy * ratio**w
