"""Suite ``search_step``: one full search step (a weight step, then an architecture step) against MONAI 1.6.1
running its DiNTS tutorial's step (``automl/DiNTS/search_dints.py``), CPU, on the ``supernet`` suite's setting.

Setting (every case): dints, num_blocks=12, num_depths=4, use_downsample=True, channel_mul=0.5, the five
DiNTS ops, input (1, 1, 64, 64, 64), 2 classes, DiceCE, the same batch for both halves of the step.

Cases:
- ``monai_search_step``: ``DiNTS(TopologySearch(...))``; the weight step (SGD, momentum 0.9, on the weights
  only), then the architecture step as the tutorial writes it: DiceCE + entropy of the path patterns and
  ops + |0.8 - usage / full| (``get_ram_cost_usage``) + 0.001 * ``get_topology_entropy``, two Adams.
- ``dints_search_step``: ``nas3d_fast.search.DiNTSSearch`` (norm "shared", dense weights), one
  ``_one_step`` after the warm-up: the same objective (entropy ramp at 1).
- ``gumbel_search_step``: ``nas3d_fast.search.GumbelSearch`` on the same dints supernet (norm "shared"),
  two ops and both path states per edge sampled by ``ops.gumbel_topk`` (k=2).
"""

from __future__ import annotations

import contextlib
import io
import tempfile

import torch
import torch.nn.functional as F

from nas3d_fast import spaces

from .core import Case, Ratio, Suite

BLOCKS, DEPTHS, CHANNEL_MUL, CLASSES = 12, 4, 0.5, 2
SHAPE = (1, 1, 64, 64, 64)


def _data(device: str):
    torch.manual_seed(0)
    x = torch.randn(*SHAPE, device=device)
    label = (torch.rand(1, 1, *SHAPE[2:], device=device) > 0.5).long()
    return x, label


def _monai_search_step(device: str):
    from monai.losses import DiceCELoss
    from monai.networks.nets.dints import DiNTS, TopologySearch

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a patch-size recommendation
        space = TopologySearch(channel_mul=CHANNEL_MUL, num_blocks=BLOCKS, num_depths=DEPTHS, use_downsample=True,
                               device=device)
    model = DiNTS(space, in_channels=1, num_classes=CLASSES, use_downsample=True).to(device)
    x, label = _data(device)
    label = label.float()  # as the supernet suite gives MONAI's DiceCE
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    weights = model.weight_parameters()
    opt = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=4e-5)
    opt_a = torch.optim.Adam([space.log_alpha_a], lr=0.001, betas=(0.5, 0.999))
    opt_c = torch.optim.Adam([space.log_alpha_c], lr=0.001, betas=(0.5, 0.999))

    def step():
        for p in weights:
            p.requires_grad = True
        space.log_alpha_a.requires_grad = space.log_alpha_c.requires_grad = False
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), label).backward()
        opt.step()
        for p in weights:
            p.requires_grad = False
        space.log_alpha_a.requires_grad = space.log_alpha_c.requires_grad = True
        probs_a, _ = space.get_prob_a(child=True)
        entropy_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
        entropy_c = -(F.softmax(space.log_alpha_c, -1) * F.log_softmax(space.log_alpha_c, -1)).mean()
        topology = space.get_topology_entropy(probs_a)
        ram = torch.abs(0.8 - space.get_ram_cost_usage(x.shape) / space.get_ram_cost_usage(x.shape, full=True))
        opt_a.zero_grad(set_to_none=True)
        opt_c.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), label) + (entropy_a + entropy_c) + ram + 0.001 * topology
        loss.backward()
        opt_a.step()
        opt_c.step()

    return step


def _nas3d_step(searcher: str):
    def build(device: str):
        from nas3d_fast.search import DiNTSSearch, GumbelSearch, SearchConfig

        space = spaces.get("dints", num_blocks=BLOCKS, num_depths=DEPTHS, channel_mul=CHANNEL_MUL, p3d=True)
        config = SearchConfig(epochs=2, steps_per_epoch=1, device=device, progress=False, amp=False)
        meta = {"in_channels": 1, "num_classes": CLASSES}
        out = tempfile.mkdtemp(prefix="nas3d-search-step-")
        common = dict(supernet_options={"norm": "shared"})
        if searcher == "dints":
            runner = DiNTSSearch(space, config, out, None, None, meta, warmup_epochs=0, **common)
        else:
            runner = GumbelSearch(space, config, out, None, None, meta, **common)
        runner.step = 1  # after the warm-up, at the last epoch: DiNTS's entropy ramp is 1, as MONAI's
        batch = _data(device)

        def step():
            runner._one_step(batch, batch)

        return step

    return build


CASES = (
    Case("monai_search_step", _monai_search_step, "monai"),
    Case("dints_search_step", _nas3d_step("dints"), "nas3d"),
    Case("gumbel_search_step", _nas3d_step("gumbel"), "nas3d"),
)

SUITE = Suite(
    name="search_step",
    description="one search step (weights + architecture) vs MONAI 1.6.1's DiNTS tutorial step (12 x 4, 0.5, 64^3)",
    cases=CASES,
    ratios=tuple(
        r
        for name in ("dints_search_step", "gumbel_search_step")
        for r in (
            Ratio(f"{name}.speedup_vs_monai", name, "monai_search_step"),
            Ratio(f"{name}.memory_vs_monai", name, "monai_search_step", kind="memory"),
        )
    ),
)
