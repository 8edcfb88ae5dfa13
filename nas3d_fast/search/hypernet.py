"""HyperSegNAS (Peng et al. 2022, §3.2-3.3 and §4): one-shot search whose supernet trains with a
Meta-Assistant Network, then a memory-constrained ranking.

1. **Supernet training with the MAN.** Each step samples one architecture uniformly among the feasible
   ones (``space.sample``: every layer has at least one edge; seeded by (seed, step), so a resumed search
   and every process of a distributed one sample the same) and trains its path
   (``supernet.child_weights``). The Meta-Assistant Network (:class:`MetaAssistant`) reads the batch's
   images and the architecture and gives channel-wise weights in (0, 1) for every (edge, candidate,
   channel) of the supernet (c_tot of them: 27,648 in the paper's space); the path's edges are scaled by
   the weights of the candidate each runs (``channel_scales``), one row per sample. The weights of
   everything the architecture does not run are masked off, so no gradient reaches them (§4).
2. **Annealing.** Over the last ``anneal_steps`` steps (default a ninth of them: the paper's 20,000 of
   180,000 iterations) the scales move linearly from the MAN's to the constant ``w_fixed`` = 0.5 (Eq. 5,
   lambda from 0 to 1). After the last step the MAN is removed: the supernet with every edge scaled by
   ``w_fixed`` ranks the candidates, and the networks fine-tuned are extracted with that constant folded in
   (``extract(arch, edge_scale=w_fixed)``), so they start from exactly the supernet's function.
3. **Constrained search** (``OneShotSearch``'s ranking): M = ``candidates`` architectures inside the memory
   window [memory_budget - tolerance, memory_budget] (with a budget; the paper: 2,000 within 300 MB),
   ranked by the mean foreground Dice of their path on the architecture cases, the top N =
   ``finetune_top`` (paper: 10) fine-tuned for ``finetune_steps`` (paper: 5,000) and scored again; the
   best is the result.

Choices the paper leaves open, and what this module does:
- Where the weights act: the paper multiplies every convolution kernel channel by its weight (Fig. 2b).
  In this space each convolution is followed by an InstanceNorm, which would undo a per-channel scale of
  its kernel, so the weights scale each edge's normalised output instead (the same per-channel factor on
  what the edge adds to its scale; skip connections, which have no kernel, are scaled alike, as c_tot
  counts a slot for every candidate of every edge).
- The image encoder: six 3x3x3 convolutions with InstanceNorm and ReLU, the first five of stride 2 (while
  every side has at least 4 voxels), widths ``encoder_width`` x (1, 2, 4, 8, 16) then ``image_dim`` (256),
  global average pooled to l_image.
- The HyperNet: five fully connected layers of ``hidden`` units (ReLU between, sigmoid at the end) on
  l_arch ⊕ l_image, l_arch the architecture's 0/1 L x E x O matrix flattened (the one-hot of its encoding
  without the "off" value). Its last layer starts at zero, so the MAN starts at 0.5 = ``w_fixed``.
- The MAN is trained with the supernet weights by the weight optimiser (Eq. 4: minimised over omega and
  theta together), in a parameter group of its own with learning rate ``man_lr`` (1e-3): at the supernet's
  SCNAS rate (0.025, Adam's beta2 0.001: steps of about the learning rate on every weight) the HyperNet's
  sigmoid saturates within a few steps and switches channels off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .oneshot import OneShotSearch


class _EncoderLayer(nn.Module):
    """3x3x3 convolution, InstanceNorm, ReLU; stride 2 (``down``) while every side is at least 4 voxels, so
    that small patches keep more than one voxel for the norm (96^3 goes 48, 24, 12, 6, 3)."""

    def __init__(self, c_in: int, c_out: int, down: bool):
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, 3, padding=1, bias=False)
        self.norm = nn.InstanceNorm3d(c_out, affine=True)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = 2 if self.down and min(x.shape[2:]) >= 4 else 1
        return torch.relu(self.norm(F.conv3d(x, self.conv.weight, stride=stride, padding=1)))


class MetaAssistant(nn.Module):
    """HyperSegNAS's Meta-Assistant Network: images (N, C, X, Y, Z) and architecture vectors (N, A) ->
    channel weights (N, out_features) in (0, 1) (module docstring for the layers)."""

    def __init__(self, in_channels: int, arch_features: int, out_features: int, encoder_width: int = 16,
                 image_dim: int = 256, hidden: int = 256):
        super().__init__()
        widths = [encoder_width * m for m in (1, 2, 4, 8, 16)] + [image_dim]
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers.append(_EncoderLayer(c, w, down=i < 5))
            c = w
        self.encoder = nn.Sequential(*layers)
        sizes = [arch_features + image_dim] + [hidden] * 4 + [out_features]
        fcs = []
        for i in range(5):
            fcs.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < 4:
                fcs.append(nn.ReLU(inplace=True))
        self.hypernet = nn.Sequential(*fcs)
        nn.init.zeros_(self.hypernet[-1].weight)
        nn.init.zeros_(self.hypernet[-1].bias)

    def image_vector(self, images: torch.Tensor) -> torch.Tensor:
        """l_image (N, image_dim)."""
        return self.encoder(images).mean(dim=(2, 3, 4))

    def forward(self, images: torch.Tensor, arch_vector: torch.Tensor) -> torch.Tensor:
        l_image = self.image_vector(images)
        l_arch = arch_vector.to(l_image.dtype).expand(l_image.shape[0], -1)
        return torch.sigmoid(self.hypernet(torch.cat([l_arch, l_image], dim=1)))


class HyperNetSearch(OneShotSearch):
    """See the module docstring. Options beyond :class:`~nas3d_fast.search.oneshot.OneShotSearch`'s:
    ``w_fixed`` (0.5), ``anneal_steps`` (None: a ninth of the steps, at least 1), ``man_lr`` (1e-3), ``encoder_width``
    (16), ``image_dim`` (256), ``hidden`` (256). The space's supernet must support channel modulation
    (``modulation_slots``, ``active_slots``, ``channel_scales``: the dints space, HyperSegNAS's)."""

    name = "hypernet"
    extra_names = ("anneal",)

    def __init__(self, *args, w_fixed: float = 0.5, anneal_steps: int | None = None, man_lr: float = 1e-3,
                 encoder_width: int = 16, image_dim: int = 256, hidden: int = 256, **kwargs):
        if not (isinstance(w_fixed, (int, float)) and not isinstance(w_fixed, bool) and 0 < w_fixed <= 1):
            raise ValueError(f"w_fixed must be a number in (0, 1], got {w_fixed!r}")
        for name, value in (("encoder_width", encoder_width), ("image_dim", image_dim), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(man_lr, bool) or not isinstance(man_lr, (int, float)) or not man_lr > 0:
            raise ValueError(f"man_lr must be a number > 0, got {man_lr!r}")
        self.w_fixed, self.man_lr = float(w_fixed), float(man_lr)
        self.man_sizes = {"encoder_width": encoder_width, "image_dim": image_dim, "hidden": hidden}
        self._anneal_option = anneal_steps
        self.man: MetaAssistant | None = None
        super().__init__(*args, **kwargs)
        total = self.config.total_steps
        if anneal_steps is None:
            anneal_steps = max(1, total // 9)
        if isinstance(anneal_steps, bool) or not isinstance(anneal_steps, int) or not 1 <= anneal_steps <= total:
            raise ValueError(f"anneal_steps must be an int in [1, {total}] (the search's steps), got {anneal_steps!r}")
        self.anneal_steps = anneal_steps

    # the MAN is built inside SupernetSearch.__init__, between the supernet and its optimiser
    def make_weight_optimizer(self) -> torch.optim.Optimizer:
        sn = self.supernet
        if not all(hasattr(sn, m) for m in ("modulation_slots", "active_slots")):
            raise ValueError(f"HyperNetSearch needs a supernet with channel modulation (modulation_slots, "
                             f"active_slots); space {self.space.name!r} has none (HyperSegNAS's space is 'dints')")
        self.slots = sn.modulation_slots()
        self.offsets, start = {}, 0
        for key, (channels, candidates) in self.slots.items():
            self.offsets[key] = start
            start += channels * candidates
        self.total_channels = start  #: c_tot
        self.arch_features = sum(c - 1 for c in self.space.vector_choices())
        torch.manual_seed(self.config.seed + 1)
        self.man = MetaAssistant(int(self.meta["in_channels"]), self.arch_features, self.total_channels,
                                 **self.man_sizes).to(self.device)
        self.group.broadcast(list(self.man.state_dict().values()))
        cfg = self.config
        return torch.optim.Adam([{"params": list(sn.parameters())},
                                 {"params": list(self.man.parameters()), "lr": self.man_lr}],
                                lr=cfg.weight_lr, betas=cfg.weight_betas, weight_decay=cfg.weight_decay)

    def options(self) -> dict:
        return {**super().options(), "w_fixed": self.w_fixed, "anneal_steps": self._anneal_option,
                "man_lr": self.man_lr, **self.man_sizes}

    # -- the MAN ---------------------------------------------------------------------------------------

    def arch_vector(self, arch) -> torch.Tensor:
        """l_arch (A,): the one-hot of each encoding position without its value 0 ("off" in dints: the
        paper's L x E x O matrix, flattened)."""
        parts = []
        for value, choices in zip(self.space.encode(arch), self.space.vector_choices()):
            row = torch.zeros(choices - 1)
            if value:
                row[value - 1] = 1.0
            parts.append(row)
        return torch.cat(parts).to(self.device)

    def slot_mask(self, arch) -> torch.Tensor:
        """(c_tot,) 1 on the channels of the candidate each of ``arch``'s edges runs, 0 elsewhere."""
        mask = torch.zeros(self.total_channels, device=self.device)
        for key, k in self.supernet.active_slots(arch).items():
            channels = self.slots[key][0]
            start = self.offsets[key] + k * channels
            mask[start:start + channels] = 1.0
        return mask

    def man_weights(self, images: torch.Tensor, arch) -> torch.Tensor:
        """The MAN's channel weights (N, c_tot) for ``arch``, its inactive part masked off (zero, and no
        gradient reaches the HyperNet through it)."""
        return self.man(images, self.arch_vector(arch)) * self.slot_mask(arch)

    def anneal(self, step: int) -> float:
        """lambda of Eq. 5 at ``step`` (0-based): 0 before the annealing, rising linearly to 1 at the last step."""
        first = self.config.total_steps - self.anneal_steps
        return float(min(1.0, max(0.0, (step - first + 1) / self.anneal_steps)))

    def channel_scales(self, images: torch.Tensor, arch, lam: float) -> dict:
        """The supernet's ``channel_scales`` for ``arch``: lam * w_fixed + (1 - lam) * MAN (Eq. 5)."""
        active = self.supernet.active_slots(arch)
        if lam >= 1.0:
            return dict.fromkeys(active, self.w_fixed)
        weights = self.man_weights(images, arch)
        out = {}
        for key, k in active.items():
            channels = self.slots[key][0]
            start = self.offsets[key] + k * channels
            out[key] = lam * self.w_fixed + (1.0 - lam) * weights[:, start:start + channels]
        return out

    # -- training --------------------------------------------------------------------------------------

    def extra_row(self, step: int) -> dict:
        return {"anneal": self.anneal(step)}

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor, weights: dict) -> torch.Tensor:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.man.train()
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            scales = self.channel_scales(x, self.last_arch, self.anneal(self.step))
            return self.loss_fn(self.supernet(x, weights, channel_scales=scales), y)

    # -- after annealing: the supernet alone, every edge scaled by w_fixed ------------------------------

    def supernet_output(self, x: torch.Tensor, weights) -> torch.Tensor:
        # every edge's scale is w_fixed; the edges that do not run ignore theirs
        return self.supernet(x, weights, channel_scales=dict.fromkeys(self.slots, self.w_fixed))

    def extract(self, arch) -> torch.nn.Module:
        return self.supernet.extract(arch, edge_scale=self.w_fixed)

    # -- state -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["man"] = self.man.state_dict()
        return state

    def load_extra(self, state: dict) -> None:
        self.man.load_state_dict(state["man"])

    def finish_extra(self, arch) -> dict:
        out = super().finish_extra(arch)
        out["hypernet"] = {"channel_weights": self.total_channels, "anneal_steps": self.anneal_steps,
                           "w_fixed": self.w_fixed,
                           "man_parameters": int(sum(p.numel() for p in self.man.parameters()))}
        return out

