"""Reference Gumbel top-k sampling (SCNAS Algorithm 1) in plain PyTorch."""

from __future__ import annotations

import torch


def gumbel_topk(logits: torch.Tensor, noise: torch.Tensor, tau: float, k: int, hard: bool):
    """Gumbel-perturbed softmax, its top-k per row, and their weights renormalised to sum to one.

    logits, noise: (E, K); noise uniform in (0, 1); tau in [1e-4, 1e4] (checked by ops.gumbel_topk).
    Returns weights (E, K) of logits' dtype (zero except at the chosen entries) and indices (E, k)
    int64, ties to the lower index. ``hard`` (k = 1): one-hot forward with the gradient of the softmax
    (straight-through). Computed in float32 (float64 for float64), like the kernels: z = (l + g) / tau
    would overflow float16 at tau = 1e-4.
    """
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    # times 1 / tau rounded to acc, as the kernels do (so that the ranks of z agree to the last bit)
    z = (logits.to(acc) - torch.log(-torch.log(noise.to(acc)))) * (1.0 / tau)
    y = torch.softmax(z, dim=-1)
    # Top-k of y is top-k of z (softmax is monotone); z never rounds two entries into a tie that y
    # would, and a stable descending sort keeps the lower index first on exact ties.
    indices = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k]
    if hard:
        one_hot = torch.zeros_like(y).scatter_(-1, indices, 1.0)
        return (one_hot - y.detach() + y).to(logits.dtype), indices
    chosen = y.gather(-1, indices)
    weights = torch.zeros_like(y).scatter(-1, indices, chosen / chosen.sum(-1, keepdim=True))
    return weights.to(logits.dtype), indices
