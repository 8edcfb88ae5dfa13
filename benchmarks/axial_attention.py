"""Suite ``axial_attention``: 3D axial attention along X, Y, Z in turn, forward + backward, on CPU.

Every case runs the chain of T-AutoML's axial-attention block (``nas3d_fast.nn.AxialAttention3d``
without its projections): q, k, v are three channel slices of one (B, 3C, X, Y, Z) tensor (a qkv
convolution's output), and the values pass through the three axes, v <- attention(q, k, v, axis).

Sides: ``nas3d`` (``nas3d_fast.ops.axial_attention``, cpu backend), ``eager`` (the permute / matmul /
softmax / matmul / permute-back code users write, relative terms through an (L, L, D) gathered table), and
``sdpa`` (``F.scaled_dot_product_attention`` on permuted contiguous copies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import nas3d_fast
from nas3d_fast.ops import axial_attention

from .core import Case, Ratio, Suite

XYZ = dict(shape=(1, 32, 32, 32, 32), heads=4, axes=(2, 3, 4))
LONG = dict(shape=(1, 16, 8, 8, 512), heads=2, axes=(4,))


def _to_lines(t: torch.Tensor, axis: int, heads: int) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, heads, S1, S2, L, D) view."""
    B, C = t.shape[:2]
    others = [d for d in (2, 3, 4) if d != axis]
    t = t.reshape(B, heads, C // heads, *t.shape[2:])
    return t.permute(0, 1, others[0] + 1, others[1] + 1, axis + 1, 2)


def _from_lines(t: torch.Tensor, axis: int, shape) -> torch.Tensor:
    others = [d for d in (2, 3, 4) if d != axis]
    perm = [0, 1, 5, 0, 0, 0]
    perm[others[0] + 1], perm[others[1] + 1], perm[axis + 1] = 2, 3, 4
    return t.permute(*perm).reshape(shape)


def _rel_table(rel: torch.Tensor, L: int) -> torch.Tensor:
    idx = torch.arange(L)
    return rel[idx[None, :] - idx[:, None] + L - 1]


def eager_axial(q, k, v, axis, heads, rel=None):
    """Axial attention as users write it: permute, matmul, softmax, matmul, permute back."""
    L = q.shape[axis]
    ql, kl, vl = (_to_lines(t, axis, heads) for t in (q, k, v))
    s = ql @ kl.transpose(-1, -2)
    if rel is not None:
        rq, rk, rv = (_rel_table(r, L) for r in rel)
        s = s + torch.einsum("...id,ijd->...ij", ql, rq) + torch.einsum("...jd,ijd->...ij", kl, rk)
    p = torch.softmax(s * (ql.shape[-1] ** -0.5), dim=-1)
    out = p @ vl
    if rel is not None:
        out = out + torch.einsum("...ij,ijd->...id", p, rv)
    return _from_lines(out, axis, q.shape)


def sdpa_axial(q, k, v, axis, heads, rel=None):
    """scaled_dot_product_attention on permuted contiguous copies (no relative terms)."""
    ql, kl, vl = (_to_lines(t, axis, heads).contiguous() for t in (q, k, v))
    out = F.scaled_dot_product_attention(ql, kl, vl)
    return _from_lines(out, axis, q.shape)


def nas3d_axial(q, k, v, axis, heads, rel=None):
    rq, rk, rv = rel if rel is not None else (None, None, None)
    return axial_attention(q, k, v, axis, heads, rel_q=rq, rel_k=rk, rel_v=rv)


def _step(attend, shape, heads, axes, positional=False):
    def build(device: str):
        gen = torch.Generator().manual_seed(0)
        B, C, *spatial = shape
        qkv = torch.randn(B, 3 * C, *spatial, generator=gen).to(device).requires_grad_(True)
        rels = None
        if positional:
            assert len(set(spatial)) == 1, "one set of embeddings serves every axis of a cube"
            L = spatial[0]
            rels = [
                (0.1 * torch.randn(2 * L - 1, C // heads, generator=gen)).to(device).requires_grad_(True)
                for _ in range(3)
            ]
        cot = torch.randn(B, C, *spatial, generator=gen).to(device)

        def step():
            qkv.grad = None
            if rels is not None:
                for r in rels:
                    r.grad = None
            q, k, v = qkv.split(C, dim=1)
            for axis in axes:
                v = attend(q, k, v, axis, heads, rels)
            v.backward(cot)

        return step

    return build


def _nas3d_skip(device: str) -> str | None:
    wanted = "cuda" if device == "cuda" else "cpu"
    status = nas3d_fast.backends()[wanted]
    return None if status.usable else f"{wanted} backend: {status.reason}"


def _case(name, side, attend, cfg, positional=False):
    skip = _nas3d_skip if side == "nas3d" else (lambda device: None)
    return Case(name, _step(attend, positional=positional, **cfg), side, skip_reason=skip)


CASES = (
    _case("nas3d_xyz", "nas3d", nas3d_axial, XYZ),
    _case("eager_xyz", "eager", eager_axial, XYZ),
    _case("sdpa_xyz", "sdpa", sdpa_axial, XYZ),
    _case("nas3d_xyz_positional", "nas3d", nas3d_axial, XYZ, positional=True),
    _case("eager_xyz_positional", "eager", eager_axial, XYZ, positional=True),
    _case("nas3d_long_axis", "nas3d", nas3d_axial, LONG),
    _case("eager_long_axis", "eager", eager_axial, LONG),
)

SUITE = Suite(
    name="axial_attention",
    description=(
        "axial attention forward + backward on CPU: x (1,32,32,32,32), 4 heads, along X, Y, Z; "
        "long_axis (1,16,8,8,512), 2 heads, along Z"
    ),
    cases=CASES,
    ratios=(
        Ratio("xyz.speedup_vs_eager", "nas3d_xyz", "eager_xyz"),
        Ratio("xyz.speedup_vs_sdpa", "nas3d_xyz", "sdpa_xyz"),
        Ratio("xyz.memory_vs_sdpa", "nas3d_xyz", "sdpa_xyz", kind="memory"),
        Ratio("xyz_positional.speedup_vs_eager", "nas3d_xyz_positional", "eager_xyz_positional"),
        Ratio("long_axis.memory_vs_eager", "nas3d_long_axis", "eager_long_axis", kind="memory"),
    ),
    quick_cases=("nas3d_xyz", "eager_xyz", "sdpa_xyz"),
)
