"""ENAS on a supernet (RONASMIS; Pham et al. 2018): an LSTM controller over the space's encoding samples
child architectures, the children share the supernet's weights, and the controller learns by REINFORCE.

Each step:

1. **weight step**: one child sampled from the controller (generator seeded by (seed, step)) is trained
   on a weight batch through ``supernet.child_weights`` (only its path runs);
2. **controller step** (from ``warmup_epochs`` on): ``children`` children are sampled (seeded by
   (seed, step, 1)), each scored by its mean foreground Dice on the architecture batch (no gradient;
   RONASMIS rewards the children's validation Dice), times MnasNet's resource factor
   ``(cost / target) ** weight`` when ``resource`` is set (``controller.resource_reward``: predicted training
   memory in bytes or FLOPs of one patch), and the controller takes one REINFORCE step with a
   moving-average baseline and an entropy bonus (``controller.Reinforce``).

An encoding the space rejects (``decode`` raises) gets reward 0 and, as a weight-step child, is replaced by
a uniform sample. The result is the controller's most probable valid architecture. The controller, its
optimiser and baseline are part of the search checkpoint; the samples depend on (seed, step) only, so a
resumed search and every process of a distributed one sample the same children (rewards are averaged
over the processes). The controller is small and lives on the CPU whatever the supernet's device.
"""

from __future__ import annotations

import numpy as np
import torch

from ..spaces.base import ArchError
from .base import SupernetSearch
from .controller import Controller, Reinforce, resource_reward
from .oneshot import mean_dice

RESOURCES = (None, "memory", "flops")


def _generator(*words: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


class ENASSearch(SupernetSearch):
    """See the module docstring. Options: ``children`` per controller step (RONASMIS samples 20; default 4),
    ``warmup_epochs`` (0), ``controller_lr`` (3.5e-4, ENAS), ``entropy_weight`` (1e-4), ``baseline_decay``
    (0.95), ``hidden`` (64), ``resource`` (None, "memory" or "flops"), ``resource_target`` (bytes or FLOPs,
    required with a resource), ``resource_weight`` (MnasNet's -0.07), ``memory_target`` (the allocator the
    memory is predicted for, "cuda" or "cpu"; default the search's device)."""

    name = "enas"
    term_names = ("reward", "baseline")

    def __init__(self, *args, children: int = 4, warmup_epochs: int = 0, controller_lr: float = 3.5e-4,
                 entropy_weight: float = 1e-4, baseline_decay: float = 0.95, hidden: int = 64,
                 resource: str | None = None, resource_target: float | None = None, resource_weight: float = -0.07,
                 memory_target: str | None = None, **kwargs):
        for name, value, low in (("children", children, 1), ("warmup_epochs", warmup_epochs, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if resource not in RESOURCES:
            raise ValueError(f"resource must be one of {RESOURCES}, got {resource!r}")
        if resource is not None and not (isinstance(resource_target, (int, float)) and resource_target > 0):
            raise ValueError(f"resource={resource!r} needs resource_target > 0 (bytes or FLOPs), got {resource_target!r}")
        if memory_target not in (None, "cuda", "cpu"):
            raise ValueError(f"memory_target must be 'cuda', 'cpu' or None, got {memory_target!r}")
        if memory_target is not None and resource != "memory":
            raise ValueError(f"memory_target={memory_target!r} applies to resource='memory' only")
        self.memory_target = memory_target
        self.children, self.warmup_epochs = children, warmup_epochs
        self.resource, self.resource_target, self.resource_weight = resource, resource_target, float(resource_weight)
        self.controller_settings = {"controller_lr": float(controller_lr), "entropy_weight": float(entropy_weight),
                                    "baseline_decay": float(baseline_decay), "hidden": int(hidden)}
        super().__init__(*args, **kwargs)
        if not hasattr(self.supernet, "child_weights"):
            raise ValueError(f"ENAS needs a supernet with child_weights(arch); space {self.space.name!r} has none")
        torch.manual_seed(self.config.seed)
        self.controller = Controller(self.space.vector_choices(), hidden=int(hidden))
        self.reinforce = Reinforce(self.controller, lr=float(controller_lr), baseline_decay=float(baseline_decay),
                                   entropy_weight=float(entropy_weight))
        self.group.broadcast(list(self.controller.state_dict().values()))
        self._costs: dict[tuple, float] = {}

    def options(self) -> dict:
        out = {"children": self.children, "warmup_epochs": self.warmup_epochs, "resource": self.resource,
               "resource_target": self.resource_target, "resource_weight": self.resource_weight,
               **self.controller_settings}
        if self.memory_target is not None:
            out["memory_target"] = self.memory_target
        return out

    # -- children ------------------------------------------------------------------------------------

    def _decode(self, codes: torch.Tensor):
        try:
            return self.space.decode([int(v) for v in codes])
        except (ArchError, ValueError):
            return None

    def path_weights(self, step: int, for_arch: bool) -> dict:
        with torch.no_grad():
            codes, _, _ = self.controller.sample(_generator(self.config.seed, step, 0))
        arch = self._decode(codes)
        if arch is None:
            arch = self.space.sample(np.random.default_rng([self.config.seed, step, 2]))
        return self.supernet.child_weights(arch)

    def arch_step_due(self, step: int) -> bool:
        return step >= self.warmup_epochs * self.config.steps_per_epoch

    def cost(self, arch) -> float:
        """The child's resource (cached): predicted training-step peak (bytes) or FLOPs of one patch."""
        code = tuple(self.space.encode(arch))
        if code not in self._costs:
            patch = tuple(self.meta.get("data", {}).get("patch") or (32, 32, 32))
            shape = (self.meta["in_channels"], *patch)
            if self.resource == "flops":
                self._costs[code] = float(self.space.cost(arch, shape, self.meta["num_classes"]).flops)
            else:
                from ..profile import predict_training_memory

                with torch.device("meta"):
                    net = self.space.build(arch, self.meta["in_channels"], self.meta["num_classes"])
                batch = int(self.meta.get("data", {}).get("batch_size") or 1)
                target = self.memory_target or ("cuda" if self.device.type == "cuda" else "cpu")
                with torch.enable_grad():  # the rewards are computed under no_grad; the traced step needs autograd
                    self._costs[code] = float(predict_training_memory(
                        net, shape, batch_size=batch, num_classes=self.meta["num_classes"], target=target).peak_bytes)
        return self._costs[code]

    def _rewards(self, codes: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        rewards = []
        self.supernet.eval()
        with torch.no_grad():
            for row in codes:
                arch = self._decode(row)
                if arch is None:
                    rewards.append(0.0)
                    continue
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                    out = self.supernet(x, self.supernet.child_weights(arch))
                dice = mean_dice(out.float().cpu(), y)
                reward = 0.0 if np.isnan(dice) else dice
                if self.resource:
                    reward = resource_reward(reward, self.cost(arch), self.resource_target, self.resource_weight)
                rewards.append(self.group.mean(reward))
        self.supernet.train()
        return rewards

    def _arch_step(self, step: int, arch_batch) -> dict:
        x, y = arch_batch[0].to(self.device), arch_batch[1]
        codes, log_probs, entropies = self.controller.sample(_generator(self.config.seed, step, 1), self.children)
        out = self.reinforce.update(log_probs, entropies, self._rewards(codes, x, y))
        return {"arch_loss": out["loss"], "reward": out["mean_reward"], "baseline": out["baseline"]}

    # -- result and state ----------------------------------------------------------------------------

    def derive(self):
        """The controller's most probable valid architecture (greedy decoding; if the space rejects it, the
        most probable of 64 seeded samples that it accepts; else a uniform sample)."""
        with torch.no_grad():
            arch = self._decode(self.controller.greedy())
            if arch is not None:
                return arch
            codes, log_probs, _ = self.controller.sample(_generator(self.config.seed, 2**31 - 1, 3), 64)
            for i in torch.argsort(log_probs, descending=True):
                arch = self._decode(codes[i])
                if arch is not None:
                    return arch
        return self.space.sample(np.random.default_rng(self.config.seed))

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["controller"] = self.reinforce.state_dict()
        return state

    def load_extra(self, state: dict) -> None:
        self.reinforce.load_state_dict(state["controller"])
