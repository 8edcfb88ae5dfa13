"""DiNTS's search on the ``dints`` space (HyperSegNAS §3.1; MONAI's ``search_dints.py`` loop).

The architecture is MONAI's: path logits ``a`` (L, E) and op logits ``c`` (L, E, O), initialised as
``TopologySearch`` does (N(0, 0.01) and N(1, 0.01)). The supernet runs every edge, weighted densely by
``DintsSupernet.monai_weights(a, c)`` (MONAI's path probabilities and the ops' softmax); with
``sample_ops`` each edge runs only two ops drawn by ``ops.gumbel_topk`` from ``c`` instead.

The first ``warmup_epochs`` train the weights only (SGD, momentum 0.9, as MONAI). Then each step is a
weight step and an architecture step with the loss

    segmentation + ramp * (entropy(a) + entropy(c)) + |ram_cost_factor - usage / full| + 0.001 * topology

with ``ramp`` rising linearly from 0 after the warm-up to 1 at the last epoch, ``usage / full`` MONAI's
analytic memory estimate of the expected network over the whole supernet (``get_ram_cost_usage``), and
``topology`` MONAI's topology entropy (``get_topology_entropy``). With ``memory_model="predicted"``
``usage`` is instead the package's predicted training peak of the expected network
(``nas3d_fast.search.memory_model``, fitted once at the first architecture step and kept in the
checkpoint), and ``memory_budget_mib`` may replace ``ram_cost_factor`` by an absolute target: the term
is then |budget - usage| / full. search.csv logs ``usage_mib`` either way (MONAI's estimate or the
prediction). The terms are computed in float32
outside autocast, so the objective is the same with and without mixed precision (MONAI's tutorial
computes them differently on its two branches). One Adam optimises ``a`` and ``c`` (MONAI's two Adams
with equal settings are the same update: Adam's state is per parameter). The result is ``space.derive``
of the logits, i.e. ``decode_logits(a, c)``, also written as MONAI's search codes
(``RUN/arch_monai.pth``, ``DintsSpace.export_monai``) for MONAI's DiNTS and Auto3DSeg's dints template.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..ops import gumbel_topk
from .base import SupernetSearch
from .gumbel import uniform_noise
from .memory_model import PredictedMemory, calibrate

MEMORY_MODELS = ("analytic", "predicted")

# MONAI's per-output-voxel RAM costs (monai.networks.nets.dints: *WithRAMCost), for equal in/out channels
_OP_RAM = {"identity": 0.0, "conv3x3x3": 3.0}
_P3D_RAM = 4.0  # 2 + 2 * in / out
_MAX_DEPTHS = 6  # the topology terms enumerate the 2^(3D-2) - 1 path patterns of a layer


def _patterns(n: int) -> np.ndarray:
    """Every non-zero 0/1 vector of length n, (2^n - 1, n)."""
    return np.array(list(itertools.product((0, 1), repeat=n))[1:], dtype=np.float32)


class DintsCosts:
    """MONAI's memory and topology terms for a dints space's layout, vectorised.

    ``probs(a)``: (L, P) probability of each of the P path patterns per layer (MONAI ``get_prob_a(child=True)``);
    ``path_probs(a)``: (L, E) (``get_prob_a``); ``usage(a, c, shape, full)``: MiB (``get_ram_cost_usage``);
    ``topology(probs)``: MONAI's ``get_topology_entropy``.
    """

    def __init__(self, space):
        lay = space.layout
        if lay.num_depths > _MAX_DEPTHS:
            raise ValueError(
                f"the dints search's topology terms need num_depths <= {_MAX_DEPTHS}, got {lay.num_depths}"
            )
        self.reads, self.writes, self.resample = space.reads, space.writes, space.resample
        self.num_depths, self.use_downsample = lay.num_depths, lay.use_downsample
        self.channels = [int(c) for c in lay.channels[: lay.num_depths]]  # MONAI's filter_nums per scale
        E = len(self.reads)
        self.children = torch.from_numpy(_patterns(E))
        op_ram = np.array([_OP_RAM.get(op, _P3D_RAM) for op in lay.ops], dtype=np.float32)
        ram = np.zeros((E, len(lay.ops)), dtype=np.float32)
        for e in range(E):
            c_in, c_out = lay.scale_channels(self.reads[e]), lay.scale_channels(self.writes[e])
            pre = {-1: c_in / c_out * 8 + 3, 0: 0.0, 1: 2 * c_in / c_out + 2}[self.resample[e]]
            ram[e] = op_ram + pre
        self.ram = torch.from_numpy(ram)  # (E, O), the same on every layer
        nodes = [tuple(int(v) for v in p) for p in _patterns(self.num_depths)]
        node_index = {n: i for i, n in enumerate(nodes)}
        into = np.zeros((len(nodes), len(self.children)), dtype=np.float32)  # patterns writing exactly node set
        out_of = np.zeros_like(into)  # patterns reading exactly node set
        for k, child in enumerate(self.children.numpy()):
            written = tuple(int(any(child[e] for e in range(E) if self.writes[e] == d)) for d in range(self.num_depths))
            read = tuple(int(any(child[e] for e in range(E) if self.reads[e] == d)) for d in range(self.num_depths))
            into[node_index[written], k] = 1
            out_of[node_index[read], k] = 1
        self.into, self.out_of = torch.from_numpy(into), torch.from_numpy(out_of)

    def path_probs(self, a: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(a)
        return s / (1 - (1 - s).prod(-1, keepdim=True))

    def probs(self, a: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(a)
        norm = 1 - (1 - s).prod(-1, keepdim=True)  # (L, 1)
        ch = self.children.to(a.device, a.dtype)  # (P, E)
        # log of prod_e (c s + (1 - c)(1 - s)), for every pattern at once
        logp = ch @ torch.log(s).T + (1 - ch) @ torch.log1p(-s).T  # (P, L)
        return logp.T.exp() / norm

    def usage(self, a: torch.Tensor, c: torch.Tensor, shape, full: bool = False) -> torch.Tensor:
        batch, spatial = int(shape[0]), np.asarray(shape[-3:])
        sizes = torch.tensor(
            [batch * self.channels[d] * float(np.prod(spatial // 2**d)) for d in range(self.num_depths)],
            dtype=torch.float32,
            device=a.device,
        ) / 2 ** int(self.use_downsample)
        p = torch.ones_like(a) if full else self.path_probs(a)
        cell = F.softmax(c, -1)
        per_edge = 1 + (self.ram.to(a.device) * cell).sum(-1)  # (L, E)
        return (p * per_edge * sizes[list(self.writes)]).sum() * 32 / 8 / 1024**2

    def topology(self, probs: torch.Tensor) -> torch.Tensor:
        p = probs[:-1] @ self.into.to(probs.device, probs.dtype).T  # (L - 1, nodes): layer l writes exactly n
        q = probs[1:] @ self.out_of.to(probs.device, probs.dtype).T  # layer l + 1 reads exactly n
        return -(p * torch.log(q + 1e-5) + (1 - p) * torch.log(1 - q + 1e-5)).sum()


class DiNTSSearch(SupernetSearch):
    """MONAI's DiNTS search (module docstring). Options: ``warmup_epochs`` (weights only; default half the
    epochs), ``ram_cost_factor`` (0.8: the target fraction of the whole supernet's memory), ``sample_ops``
    (False: dense ops; True: two ops per edge by ``gumbel_topk``), ``momentum`` (0.9), ``memory_model``
    ("analytic": MONAI's formula; "predicted": fitted to ``predict_training_memory``), ``memory_samples``
    (24 architectures for that fit), ``memory_budget_mib`` (with "predicted": an absolute target in MiB
    instead of ``ram_cost_factor``), ``memory_target`` ("cuda" or "cpu": the allocator predicted; default
    the search's device type)."""

    name = "dints"
    term_names = ("entropy_a", "entropy_c", "ramp", "memory_term", "usage_fraction", "usage_mib", "topology")

    def __init__(self, space, config, *args, warmup_epochs: int | None = None, ram_cost_factor: float = 0.8,
                 sample_ops: bool = False, momentum: float = 0.9, memory_model: str = "analytic",
                 memory_samples: int = 24, memory_budget_mib: float | None = None, memory_target: str | None = None,
                 **kwargs):
        if space.name != "dints":
            raise ValueError(f"the dints searcher searches the dints space, got space {space.name!r}; use gumbel")
        warmup = config.epochs // 2 if warmup_epochs is None else warmup_epochs
        if not isinstance(warmup, int) or isinstance(warmup, bool) or not 0 <= warmup < config.epochs:
            raise ValueError(f"warmup_epochs must be an int in [0, epochs = {config.epochs}), got {warmup!r}")
        if not (isinstance(ram_cost_factor, (int, float)) and 0 <= ram_cost_factor <= 1):
            raise ValueError(f"ram_cost_factor must be in [0, 1], got {ram_cost_factor!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if memory_model not in MEMORY_MODELS:
            raise ValueError(f"memory_model must be one of {MEMORY_MODELS}, got {memory_model!r}")
        if memory_budget_mib is not None:
            if memory_model != "predicted":
                raise ValueError("memory_budget_mib needs memory_model='predicted' (MONAI's formula is not in MiB "
                                 "of a training step); use ram_cost_factor with the analytic model")
            if not (isinstance(memory_budget_mib, (int, float)) and not isinstance(memory_budget_mib, bool)
                    and np.isfinite(memory_budget_mib) and memory_budget_mib > 0):
                raise ValueError(f"memory_budget_mib must be a positive number of MiB, got {memory_budget_mib!r}")
        if memory_target not in (None, "cuda", "cpu"):
            raise ValueError(f"memory_target must be 'cuda', 'cpu' or None, got {memory_target!r}")
        if not isinstance(memory_samples, int) or isinstance(memory_samples, bool) or memory_samples < 8:
            raise ValueError(f"memory_samples must be an int >= 8, got {memory_samples!r}")
        self.warmup_epochs, self.ram_cost_factor = warmup, float(ram_cost_factor)
        self.sample_ops, self.momentum = bool(sample_ops), float(momentum)
        self.memory_model, self.memory_samples = memory_model, memory_samples
        self.memory_budget_mib = None if memory_budget_mib is None else float(memory_budget_mib)
        self.costs = DintsCosts(space)
        super().__init__(space, config, *args, **kwargs)
        self.memory_target = memory_target or self.device.type
        self.memory: PredictedMemory | None = None  # fitted at the first architecture step
        self._input_shape = None

    def options(self) -> dict:
        return {"warmup_epochs": self.warmup_epochs, "ram_cost_factor": self.ram_cost_factor,
                "sample_ops": self.sample_ops, "momentum": self.momentum, "memory_model": self.memory_model,
                "memory_samples": self.memory_samples, "memory_budget_mib": self.memory_budget_mib,
                "memory_target": self.memory_target}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["memory"] = None if self.memory is None else self.memory.state_dict()
        return state

    def load_extra(self, state: dict) -> None:
        saved = state.get("memory")
        self.memory = None if saved is None else PredictedMemory.from_state(saved)

    def _fit_memory(self) -> PredictedMemory:
        from ..train.losses import make_loss

        return calibrate(self.space, self.supernet, self._input_shape, num_classes=self.meta["num_classes"],
                         loss=make_loss(self.config.loss), target=self.memory_target, samples=self.memory_samples,
                         seed=self.config.seed, progress=self.config.progress and self.group.is_main)

    def init_logits(self) -> torch.nn.ParameterDict:
        lay = self.space.layout
        shape = (lay.num_blocks, lay.num_edges)
        return torch.nn.ParameterDict({
            "a": torch.nn.Parameter(torch.zeros(shape).normal_(0, 0.01)),
            "c": torch.nn.Parameter(torch.zeros(*shape, len(lay.ops)).normal_(1, 0.01)),
        })

    def make_weight_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        return torch.optim.SGD(self.supernet.parameters(), lr=cfg.weight_lr, momentum=self.momentum,
                               weight_decay=cfg.weight_decay)

    def arch_logits(self) -> dict[str, torch.Tensor]:
        a, c = self.logits["a"].detach(), self.logits["c"].detach()
        paths = torch.stack([torch.zeros_like(a), a], -1).reshape(-1, 2)  # on - off = a: derive's path logit
        return {"paths": paths, "ops": c.reshape(-1, c.shape[-1])}

    def arch_step_due(self, step: int) -> bool:
        return step >= self.warmup_epochs * self.config.steps_per_epoch

    def path_weights(self, step: int, for_arch: bool) -> dict:
        a, c = self.logits["a"], self.logits["c"]
        if not for_arch:
            a, c = a.detach(), c.detach()
        weights = self.supernet.monai_weights(a, c)
        if self.sample_ops:
            flat = c.reshape(-1, c.shape[-1])
            noise = uniform_noise(flat.shape, (self.config.seed, step, int(for_arch), 7), flat.dtype, flat.device)
            weights["ops"] = gumbel_topk(flat, 1.0, k=min(2, flat.shape[1]), noise=noise)
        return weights

    def _ramp(self, step: int) -> float:
        cfg = self.config
        epoch = step // cfg.steps_per_epoch
        return (epoch - self.warmup_epochs) / max(1, cfg.epochs - 1 - self.warmup_epochs) if cfg.epochs > 1 else 1.0

    def _forward_loss(self, x, y, weights):
        self._input_shape = tuple(x.shape)
        return super()._forward_loss(x, y, weights)

    def arch_objective(self, seg_loss: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        a, c = self.logits["a"].float(), self.logits["c"].float()
        probs = self.costs.probs(a)
        entropy_a = -(probs * torch.log(probs + 1e-5)).mean()
        entropy_c = -(F.softmax(c, -1) * F.log_softmax(c, -1)).mean()
        topology = self.costs.topology(probs)
        if self.memory_model == "predicted":
            if self.memory is None:
                self.memory = self._fit_memory()
            cell = F.softmax(c, -1)
            usage_bytes = self.memory.expected(self.costs.path_probs(a), cell)
            full = self.memory.expected(self.costs.path_probs(a), cell, full=True)
            target = full * self.ram_cost_factor if self.memory_budget_mib is None else self.memory_budget_mib * 2**20
            memory = (target - usage_bytes).abs() / full
            usage, usage_mib = usage_bytes / full, usage_bytes / 2**20
        else:
            usage_mib = self.costs.usage(a, c, self._input_shape)
            usage = usage_mib / self.costs.usage(a, c, self._input_shape, full=True)
            memory = (self.ram_cost_factor - usage).abs()
        ramp = min(1.0, max(0.0, self._ramp(step)))
        total = seg_loss + ramp * (entropy_a + entropy_c) + memory + 0.001 * topology
        terms = {"entropy_a": entropy_a, "entropy_c": entropy_c, "ramp": ramp, "memory_term": memory,
                 "usage_fraction": usage, "usage_mib": usage_mib, "topology": topology}
        return total, terms

    def finish_extra(self, arch) -> dict:
        """MONAI's search codes of the result (``arch_monai.pth``) and, with the predicted model, the fit and
        the result's modelled training peak."""
        path = os.path.join(self.out_dir, "arch_monai.pth")
        if self.group.is_main:
            epochs = self.step // self.config.steps_per_epoch
            self.space.export_monai(arch, path, self.arch_logits(), iter_num=self.step, epochs=epochs)
        extra = {"monai_codes": path, "memory_model": {"kind": self.memory_model}}
        if self.memory is not None:
            extra["memory_model"].update(
                target=self.memory_target, fit=self.memory.fit_stats,
                arch_peak_mib_modelled=self.memory.predict(arch.edges) / 2**20,
                budget_mib=self.memory_budget_mib,
            )
        return extra
