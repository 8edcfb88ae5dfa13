"""
1. Fast ops in your own training code
=====================================

The ops of :mod:`nas3d_fast.ops` are ordinary differentiable PyTorch functions: they take and return
tensors, work with autograd, and run on the CPU (C++ kernels), CUDA (CUDA C++ or Triton) or a plain-PyTorch
reference, whichever fits the tensors. This tutorial puts them into a training step you already have:

- :func:`~nas3d_fast.ops.gumbel_topk`, the sampling of SCNAS and other sampled-path supernets;
- :class:`~nas3d_fast.nn.AxialAttentionBlock3d`, T-AutoML's axial attention as a module;
- the backends, and how to check one against the reference.

Everything runs on the CPU in a few seconds.
"""

# %%
# Which backends can run here
# ---------------------------
# ``backends()`` says which implementations are usable on this machine. CPU tensors go to the ``cpu``
# backend when the compiled extension is present, else to ``reference``.
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import nas3d_fast
from nas3d_fast.nn import AxialAttentionBlock3d
from nas3d_fast.ops import gumbel_topk

torch.manual_seed(0)
for name, status in nas3d_fast.backends().items():
    print(f"{name:10s} usable={status.usable}")

# %%
# Gumbel top-k sampling of supernet edges
# ---------------------------------------
# A supernet holds architecture logits, one row of K candidate ops per edge. SCNAS samples two ops
# per edge with the Gumbel-softmax trick and trains only those. ``gumbel_topk`` does it for all edges
# in one call; the weights are differentiable in the logits.
alpha = torch.zeros(14, 8, requires_grad=True)  # 14 edges, 8 candidate ops
weights, indices = gumbel_topk(alpha, tau=1.0, k=2)
print("weights of edge 0:", weights[0].detach().numpy().round(3))
print("chosen ops of edge 0:", indices[0].tolist())
(weights * torch.arange(8.0)).sum().backward()  # any loss of the weights
print("gradient reaches the logits:", alpha.grad.abs().sum().item() > 0)

# %%
# Pass ``noise`` (uniform in (0, 1)) to get the same sample on every backend: here the cpu kernel
# against the plain-PyTorch reference.
noise = torch.rand(14, 8)
w_cpu, i_cpu = gumbel_topk(alpha.detach(), 0.5, k=2, noise=noise)
nas3d_fast.set_backend("reference")
w_ref, i_ref = gumbel_topk(alpha.detach(), 0.5, k=2, noise=noise)
nas3d_fast.set_backend(None)  # automatic choice again
print("same indices:", torch.equal(i_cpu, i_ref), " max weight difference:", (w_cpu - w_ref).abs().max().item())

# %%
# The reason to use it: a training step samples all edges every step, forward and backward, and the
# kernel does it in one pass where the eager composition (noise, softmax, top-k, renormalise, scatter)
# runs a dozen ops. The ``gumbel`` benchmark suite measures the difference (:doc:`/benchmarks/gumbel`).
#
# %%
# Axial attention inside your own model
# -------------------------------------
# ``AxialAttentionBlock3d`` is multi-head self-attention along X, then Y, then Z of a (B, C, X, Y, Z)
# volume (or Y, X, Z with ``order="yxz"``); the kernel reads q, k and v in place and never forms the
# L x L matrix. It drops into an ``nn.Sequential`` like any layer. A toy task: segment a bright ball.


def ball_batch(n, size=16):
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    centre = torch.randint(5, size - 5, (n, 3, 1, 1, 1)).float()
    label = (((grid[None] - centre) ** 2).sum(1) < 16).long()
    image = label[:, None].float() + 0.5 * torch.randn(n, 1, size, size, size)
    return image, label


model = torch.nn.Sequential(
    torch.nn.Conv3d(1, 8, 3, padding=1),
    torch.nn.InstanceNorm3d(8),
    torch.nn.LeakyReLU(0.01),
    AxialAttentionBlock3d(8, num_heads=2),
    torch.nn.Conv3d(8, 2, 1),
)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
losses = []
for step in range(30):
    image, label = ball_batch(2)
    loss = F.cross_entropy(model(image), label)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")

# %%
# The loss falls as with any other layer; the prediction of a fresh batch:
image, label = ball_batch(1)
with torch.no_grad():
    pred = model(image).argmax(1)
fig, axes = plt.subplots(1, 4, figsize=(11, 2.8))
axes[0].plot(losses)
axes[0].set_title("training loss")
axes[0].set_xlabel("step")
for ax, volume, title in zip(axes[1:], (image[0, 0], label[0], pred[0]), ("image", "label", "prediction")):
    ax.imshow(volume[:, :, volume.shape[2] // 2].T, cmap="gray", origin="lower")
    ax.set_title(title)
    ax.axis("off")
fig.tight_layout()

# %%
# What else composes
# ------------------
# - ``torch.compile(model, fullgraph=True)``: every op has a fake kernel, so compiled graphs do not
#   break at them (the test suite compiles each op).
# - autocast and float16/bfloat16 inputs: the attention accumulates in float32.
# - ``torch.distributed``: the ops are per-sample, so data-parallel training needs nothing special.
# - ``NAS3D_BACKEND=reference`` (or ``nas3d_fast.set_backend``) forces one backend for a whole run, e.g.
#   to compare results when debugging.
