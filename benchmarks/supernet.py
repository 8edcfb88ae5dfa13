"""Suite ``supernet``: the dints supernet against MONAI 1.6.1's DiNTS, CPU, on MONAI's tutorial setting.

Setting (both sides): TopologySearch num_blocks=12, num_depths=4, use_downsample=True,
channel_mul=0.5, the five DiNTS ops (skip, 3x3x3, three P3D), input (1, 1, 64, 64, 64), 2 classes,
MONAI's DiceCELoss (one-hot labels, softmax). One training step = forward, loss, backward into the
network weights and the architecture logits (log_alpha_a (12, 10), log_alpha_c (12, 10, 5)).

Cases:
- ``monai_step``: ``DiNTS(TopologySearch(...))``; MONAI computes the path probabilities and op softmax
  inside its forward.
- ``dints_per_op_step``: ``nas3d_fast`` dints supernet, norm "per_op" (MONAI's ReLU-Conv-Norm per
  op), dense weights from the same logits (``DintsSupernet.monai_weights``).
- ``dints_shared_step``: the same, norm "shared" (candidates merged into one convolution per edge).
- ``dints_sampled_step``: norm "shared", a sampled path: each edge on with probability
  sigmoid(log_alpha_a) (``ops.gumbel_topk`` k=1, hard, over the logits (0, log_alpha_a): a
  straight-through weight), and on each edge that runs two of the five ops sampled by
  ``ops.gumbel_topk`` (k=2, tau=1) from log_alpha_c.
- ``monai_decode`` / ``dints_decode``: MONAI's ``TopologySearch.decode()`` and
  ``DintsSpace.decode_logits`` on the same random logits (the nas3d side checks, once, that both pick
  the same architecture).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from nas3d_fast import spaces
from nas3d_fast.ops import gumbel_topk

from .core import Case, Ratio, Suite

BLOCKS, DEPTHS, CHANNEL_MUL, CLASSES = 12, 4, 0.5, 2
SHAPE = (1, 1, 64, 64, 64)


def _space():
    return spaces.get("dints", num_blocks=BLOCKS, num_depths=DEPTHS, channel_mul=CHANNEL_MUL, p3d=True)


def _monai_search():
    from monai.networks.nets.dints import TopologySearch

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a patch-size recommendation
        return TopologySearch(channel_mul=CHANNEL_MUL, num_blocks=BLOCKS, num_depths=DEPTHS, use_downsample=True)


def _data(device: str):
    torch.manual_seed(0)
    x = torch.randn(*SHAPE, device=device)
    label = (torch.rand(1, 1, *SHAPE[2:], device=device) > 0.5).float()
    return x, label


def _loss():
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


def _monai_step(device: str):
    from monai.networks.nets.dints import DiNTS

    torch.manual_seed(0)
    model = DiNTS(_monai_search(), in_channels=1, num_classes=CLASSES, use_downsample=True).to(device)
    x, label = _data(device)
    loss_fn = _loss()

    def step():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), label).backward()

    return step


def _dints_step(norm: str, sampled: bool):
    def build(device: str):
        torch.manual_seed(0)
        supernet = _space().supernet(1, CLASSES, norm=norm).to(device)
        log_alpha_a = torch.nn.Parameter(torch.zeros(BLOCKS, 3 * DEPTHS - 2, device=device).normal_(0, 0.01))
        log_alpha_c = torch.nn.Parameter(torch.zeros(BLOCKS, 3 * DEPTHS - 2, 5, device=device).normal_(1, 0.01))
        x, label = _data(device)
        loss_fn = _loss()
        generator = torch.Generator(device=device).manual_seed(0)

        def step():
            supernet.zero_grad(set_to_none=True)
            log_alpha_a.grad = log_alpha_c.grad = None
            weights = supernet.monai_weights(log_alpha_a, log_alpha_c)
            if sampled:  # paths: on with probability sigmoid(log_alpha_a), straight-through weight
                path_logits = torch.stack([torch.zeros_like(log_alpha_a), log_alpha_a], -1).reshape(-1, 2)
                weights["paths"] = gumbel_topk(path_logits, 1.0, k=1, hard=True, generator=generator)
                weights["ops"] = gumbel_topk(log_alpha_c.reshape(-1, 5), 1.0, k=2, generator=generator)
            loss_fn(supernet(x, weights), label).backward()

        return step

    return build


def _random_logits():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(0, 1.5, size=(BLOCKS, 3 * DEPTHS - 2))).float()
    c = torch.from_numpy(rng.normal(0, 1, size=(BLOCKS, 3 * DEPTHS - 2, 5))).float()
    return a, c


def _monai_decode(device: str):
    search = _monai_search()
    a, c = _random_logits()
    with torch.no_grad():
        search.log_alpha_a.copy_(a)
        search.log_alpha_c.copy_(c)
    return search.decode


def _dints_decode(device: str):
    space = _space()
    a, c = _random_logits()
    arch = space.decode_logits(a, c)
    _check_against_monai(space, arch, a, c)
    return lambda: space.decode_logits(a, c)


_checked: list[bool] = []


def _check_against_monai(space, arch, a, c) -> None:
    """Once per process: MONAI's decode of the same logits gives the same architecture."""
    if _checked:
        return
    node_a, code_a, code_c, _ = _monai_decode("cpu")()
    ours_node_a, ours_a, ours_c = space.monai_codes(arch)
    if not (
        np.array_equal(ours_a, code_a)
        and np.array_equal(ours_node_a, node_a)
        and np.array_equal(ours_c[ours_a > 0], code_c[code_a > 0])
    ):
        raise AssertionError("dints decode_logits and MONAI's TopologySearch.decode() disagree")
    _checked.append(True)


CASES = (
    Case("monai_step", _monai_step, "monai"),
    Case("dints_per_op_step", _dints_step("per_op", False), "nas3d"),
    Case("dints_shared_step", _dints_step("shared", False), "nas3d"),
    Case("dints_sampled_step", _dints_step("shared", True), "nas3d"),
    Case("monai_decode", _monai_decode, "monai"),
    Case("dints_decode", _dints_decode, "nas3d"),
)

SUITE = Suite(
    name="supernet",
    description="dints supernet training step and decode vs MONAI 1.6.1 DiNTS (12 x 4, channel_mul 0.5, 64^3, DiceCE)",
    cases=CASES,
    ratios=tuple(
        r
        for name in ("dints_per_op_step", "dints_shared_step", "dints_sampled_step")
        for r in (
            Ratio(f"{name}.speedup_vs_monai", name, "monai_step"),
            Ratio(f"{name}.memory_vs_monai", name, "monai_step", kind="memory"),
        )
    )
    + (Ratio("dints_decode.speedup_vs_monai", "dints_decode", "monai_decode"),),
    quick_cases=("dints_decode", "monai_decode"),
)
