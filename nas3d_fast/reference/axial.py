"""Reference 3D axial attention (Axial-DeepLab's position-sensitive attention along one axis) in plain
PyTorch: permute, matmul, softmax, matmul, permute back."""

from __future__ import annotations

import torch


def _lines(t: torch.Tensor, axis: int, num_heads: int) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, heads, S1, S2, L, D): one row per line, the attention axis second to last."""
    B, C = t.shape[:2]
    others = [d for d in (2, 3, 4) if d != axis]
    t = t.reshape(B, num_heads, C // num_heads, *t.shape[2:])  # (B, h, D, X, Y, Z)
    return t.permute(0, 1, others[0] + 1, others[1] + 1, axis + 1, 2)


def _unlines(t: torch.Tensor, axis: int, shape: torch.Size) -> torch.Tensor:
    """Inverse of _lines: (B, heads, S1, S2, L, D) -> (B, C, X, Y, Z), contiguous."""
    others = [d for d in (2, 3, 4) if d != axis]
    perm = [0, 1, 5, 0, 0, 0]  # (B, h, D, X, Y, Z) from (B, h, S1, S2, L, D)
    perm[others[0] + 1] = 2
    perm[others[1] + 1] = 3
    perm[axis + 1] = 4
    return t.permute(*perm).reshape(shape).contiguous()


def relative_table(rel: torch.Tensor, L: int) -> torch.Tensor:
    """(2L-1, D) embeddings indexed by offset j - i -> the (L, L, D) table T[i, j] = rel[j - i + L - 1]."""
    idx = torch.arange(L, device=rel.device)
    return rel[idx[None, :] - idx[:, None] + L - 1]


def axial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    axis: int,
    num_heads: int,
    scale: float,
    rel_q: torch.Tensor | None = None,
    rel_k: torch.Tensor | None = None,
    rel_v: torch.Tensor | None = None,
) -> torch.Tensor:
    """out_i = sum_j softmax_j(s_ij) (v_j + rel_v[j-i]) with
    s_ij = scale * (q_i.k_j + q_i.rel_q[j-i] + k_j.rel_k[j-i]), along ``axis`` for every line and head.

    q, k, v: (B, C, X, Y, Z), C = num_heads * head_dim; rel_*: (2L-1, head_dim) or None. Returns out of
    q's shape, contiguous."""
    return axial_attention_and_lse(q, k, v, axis, num_heads, scale, rel_q, rel_k, rel_v)[0]


def axial_attention_and_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    axis: int,
    num_heads: int,
    scale: float,
    rel_q: torch.Tensor | None = None,
    rel_k: torch.Tensor | None = None,
    rel_v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """axial_attention and the log-sum-exp of each line's scaled logits, (B, heads, S1, S2, L) in float32
    (float64 for float64 inputs): the two outputs of the nas3d::axial_attention op."""
    L = q.shape[axis]
    ql, kl, vl = (_lines(t, axis, num_heads) for t in (q, k, v))  # (B, h, S1, S2, L, D)
    s = ql @ kl.transpose(-1, -2)
    if rel_q is not None:
        s = s + torch.einsum("...id,ijd->...ij", ql, relative_table(rel_q, L))
    if rel_k is not None:
        s = s + torch.einsum("...jd,ijd->...ij", kl, relative_table(rel_k, L))
    s = s * scale
    p = torch.softmax(s, dim=-1)
    out = p @ vl
    if rel_v is not None:
        out = out + torch.einsum("...ij,ijd->...id", p, relative_table(rel_v, L))
    lse = torch.logsumexp(s.to(torch.float64 if q.dtype == torch.float64 else torch.float32), dim=-1)
    return _unlines(out, axis, q.shape), lse
