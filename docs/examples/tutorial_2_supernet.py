"""
2. A supernet and its edges
===========================

A supernet holds every candidate architecture of a search space at once: each searchable edge computes
``sum_k w_k op_k(x)`` over its candidate ops, and architecture weights ``w`` (the softmax of logits, or a
Gumbel sample) say how much each candidate counts. In 3D this is where memory runs out: written the DARTS
way, an edge keeps K candidate activations for backward. This tutorial shows

- :class:`~nas3d_fast.nn.MixedEdge3d`, one edge on the fused kernels, dense and sampled, and that it
  computes exactly what the eager edge computes;
- a search space's supernet: architecture logits, a forward pass, the derived architecture and the
  discrete network that inherits the supernet's weights.

How the edge saves memory is on :doc:`/how_it_works/mixed_edge`.
"""

# %%
# One edge
# --------
# The candidate vocabulary is shared by every space (``nas3d_fast.nn.CANDIDATES``). SCNAS's eight:
import matplotlib.pyplot as plt
import torch

from nas3d_fast import spaces
from nas3d_fast.nn import CANDIDATES, MixedEdge3d
from nas3d_fast.ops import gumbel_topk
from nas3d_fast.reference.mixed_edge import mixed_edge as eager_edge

torch.manual_seed(0)
print(CANDIDATES)
ops = ["conv3x3x3", "sep_dil3x3x3_r2", "sep_dil3x3x3_r3", "sep_dil3x3x3_r4",
       "max_pool3", "avg_pool3", "identity", "zero"]
edge = MixedEdge3d(8, 8, ops, stride=1, norm="per_op", act="leaky_relu")
print(edge)

# %%
# Dense weights (DARTS, DiNTS) run every candidate. The result equals the eager DARTS-style edge on the
# same parameters (``nas3d_fast.reference.mixed_edge``), and so do the gradients.
alpha = torch.randn(len(ops), requires_grad=True)
x = torch.randn(1, 8, 16, 16, 16, requires_grad=True)
y = edge(x, torch.softmax(alpha, 0))
y_eager = eager_edge(edge, x, torch.softmax(alpha, 0))
print("max |fused - eager|:", (y - y_eager).abs().max().item())
g_fused = torch.autograd.grad(y.square().sum(), alpha)[0]
g_eager = torch.autograd.grad(y_eager.square().sum(), alpha)[0]
print("largest relative difference of d loss / d alpha:",
      ((g_fused - g_eager).abs().max() / g_eager.abs().max()).item())

# %%
# A Gumbel sample (SCNAS) is a ``(weights, indices)`` pair; only the chosen candidates run and get
# gradients.
w, idx = gumbel_topk(alpha[None], tau=1.0, k=2)
y = edge(x, (w[0], idx[0]))
y.mean().backward()
print("sampled:", [ops[i] for i in idx[0].tolist()])
print("candidates with a weight gradient:", [ops[i] for i in alpha.grad.nonzero().flatten().tolist()])

# %%
# ``norm="shared"`` normalises once after the sum (DiNTS's choice in HyperSegNAS). Then every
# candidate that is linear up to that norm (zero, identity, the convolutions, P3D pairs, average
# pooling) is merged into one convolution whose kernel is the weighted sum of the candidates' kernels.
shared = MixedEdge3d(8, 8, ["identity", "conv3x3x3", "p3d_3x3x1_1x1x3", "avg_pool3", "zero"], norm="shared")
weights = torch.softmax(torch.randn(5), 0)
print("max |merged - eager|:", (shared(x, weights) - eager_edge(shared, x, weights)).abs().max().item())

# %%
# A space's supernet
# ------------------
# Every space with a supernet builds it with ``space.supernet(in_channels, num_classes)``. Its edges are
# grouped; ``arch_logits()`` makes one (E, K) logit tensor per group. Here RONASMIS's U-Net space at a
# toy size: one "op" edge and one "skip" edge per searchable layer.
space = spaces.get("ronasmis", base_channels=4, depth=2, layers_per_stage=1)
supernet = space.supernet(1, 2)
logits = supernet.arch_logits()
print({group: tuple(t.shape) for group, t in logits.items()})
x = torch.randn(1, 1, 32, 32, 32)
dense = {group: torch.softmax(t, -1) for group, t in logits.items()}
print("dense output:", tuple(supernet(x, dense).shape))
sampled = {group: gumbel_topk(t, 1.0, k=2) for group, t in logits.items()}
print("sampled output:", tuple(supernet(x, sampled).shape))

# %%
# A search ends by ``space.derive(logits)``: the architecture the logits favour (each space documents
# its rule). ``supernet.extract(arch)`` is the discrete network holding the supernet's weights: it
# computes what the supernet computes under the one-hot weights of that architecture.
with torch.no_grad():
    logits["op"][:, 1] += 2.0  # pretend the search favoured the second op everywhere
arch = space.derive(logits)
print(arch)
print("encoding:", space.encode(arch))
net = supernet.extract(arch)
with torch.no_grad():
    print("max |extract(arch)(x) - supernet(x, one_hot(arch))|:",
          (net(x) - supernet(x, supernet.one_hot(arch))).abs().max().item())
cost = space.cost(arch, (1, 32, 32, 32))
print(f"{cost.params} parameters, {cost.flops / 1e6:.1f} MFLOPs at 32^3")

# %%
# The op probabilities a search reports are the softmax of each group's logits:
probs = torch.softmax(logits["op"].detach(), -1)
fig, ax = plt.subplots(figsize=(7, 2.6))
im = ax.imshow(probs.T, cmap="viridis", aspect="auto")
ax.set_yticks(range(len(space.ops)), space.ops, fontsize=7)
ax.set_xlabel("searchable layer")
ax.set_title("op probabilities per layer")
fig.colorbar(im)
fig.tight_layout()

# %%
# The other spaces work the same way: ``spaces.names()`` lists them, and ``dints`` (MONAI's DiNTS
# multi-scale search space) adds ``supernet.monai_weights(log_alpha_a, log_alpha_c)`` to take MONAI's
# own logits.
print(spaces.names())
dints = spaces.get("dints", num_blocks=2, num_depths=2, channel_mul=0.25)
dints_supernet = dints.supernet(1, 2)
print({group: tuple(s) for group, s in dints_supernet.arch_shapes().items()})
