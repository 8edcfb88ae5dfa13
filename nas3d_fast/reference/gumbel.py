"""Reference Gumbel top-k sampling (SCNAS Algorithm 1) in plain PyTorch."""

from __future__ import annotations

import torch


def gumbel_topk(logits: torch.Tensor, noise: torch.Tensor, tau: float, k: int, hard: bool):
    """Gumbel-perturbed softmax, its top-k per row, and their weights renormalised to sum to one.

    logits, noise: (E, K); noise uniform in (0, 1). Returns weights (E, K) (zero except at the chosen
    entries) and indices (E, k) int64, ties to the lower index. ``hard`` (k = 1): one-hot forward with
    the gradient of the softmax (straight-through).
    """
    z = (logits - torch.log(-torch.log(noise))) / tau
    y = torch.softmax(z, dim=-1)
    # Top-k of y is top-k of z (softmax is monotone); z never rounds two entries into a tie that y
    # would, and a stable descending sort keeps the lower index first on exact ties.
    indices = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k]
    if hard:
        one_hot = torch.zeros_like(y).scatter_(-1, indices, 1.0)
        return one_hot - y.detach() + y, indices
    chosen = y.gather(-1, indices)
    weights = torch.zeros_like(y).scatter(-1, indices, chosen / chosen.sum(-1, keepdim=True))
    return weights, indices
