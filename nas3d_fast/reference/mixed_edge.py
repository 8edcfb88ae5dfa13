"""The eager DARTS-style computation of a ``MixedEdge3d``, with its parameters and torch built-ins only:
every candidate computed and kept for backward, a Python loop summing w_k * op_k. It is the ground
truth the fused edge must equal, and the ``eager`` side of the ``mixed_edge`` benchmark."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn.candidates import Candidate


def candidate(op: Candidate, x: torch.Tensor) -> torch.Tensor:
    """One candidate written with torch built-ins (the way users write it)."""
    s = op.stride
    if op.name == "zero":
        return x.mul(0.0)[:, :1].expand(-1, op.out_channels, -1, -1, -1)[:, :, ::s, ::s, ::s]
    if op.name == "identity":
        return x[:, :, ::s, ::s, ::s]
    if op.name == "max_pool3":
        return F.max_pool3d(x, 3, s, 1)
    if op.name == "avg_pool3":
        return F.avg_pool3d(x, 3, s, 1, count_include_pad=True)
    if op.name.startswith("conv"):
        return F.conv3d(x, op.weight, stride=s, padding=tuple(k // 2 for k in op.weight.shape[2:]))
    if op.name.startswith("p3d"):
        k1, k2 = op.first.shape[2:], op.second.shape[2:]
        y = F.conv3d(x, op.first, stride=tuple(s if k == 3 else 1 for k in k1), padding=tuple(k // 2 for k in k1))
        return F.conv3d(y, op.second, stride=tuple(s if k == 3 else 1 for k in k2), padding=tuple(k // 2 for k in k2))
    r = op.dilation
    y = F.conv3d(x, op.depthwise, stride=s, padding=r, dilation=r, groups=x.shape[1])
    return F.conv3d(y, op.pointwise)


def _act(x: torch.Tensor, act: str) -> torch.Tensor:
    return F.relu(x) if act == "relu" else F.leaky_relu(x, 0.01)


def _norm(x: torch.Tensor, norm) -> torch.Tensor:
    return F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps)


def mixed_edge(edge, x: torch.Tensor, weights) -> torch.Tensor:
    """sum_k w_k op_k(x) as DARTS and MONAI's DiNTS write it, for the edge's norm placement.

    ``weights`` is dense (K,) or a (weights, indices) pair; with a pair only the chosen candidates
    are computed (the eager sampled path)."""
    if isinstance(weights, (tuple, list)):
        weights, indices = weights
        active = sorted(set(indices.tolist()))
    else:
        active = range(len(edge.ops))
    if edge.norm_placement == "shared":
        a = _act(x, edge.act)
        return _norm(sum(weights[k] * candidate(edge.ops[k], a) for k in active), edge.norm)
    total = 0
    for k in active:
        op = edge.ops[k]
        if str(k) in edge.norms:
            y = _norm(candidate(op, _act(x, edge.act)), edge.norms[str(k)])
        else:
            y = candidate(op, x)
        total = total + weights[k] * y
    return total
