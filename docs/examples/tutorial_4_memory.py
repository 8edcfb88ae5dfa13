"""
4. Memory budgets: profile, predict, ``sample_within``
======================================================

In 3D NAS the training memory of a candidate decides whether it can be trained at all: a network that
fits a 16 GB V100 at batch 2 and 96^3 patches may need twice that at 128^3. HyperSegNAS samples its
candidates inside a memory budget. :mod:`nas3d_fast.profile` gives the peak memory of a full training
step (forward, loss, backward, optimiser step):

- **measured** on the device (CUDA: the caching allocator's peak; CPU: the allocator's events);
- **predicted** without the device: the step runs on meta tensors (no memory, no compute) and its
  allocations are replayed through a model of the target's allocator, so a laptop can tell what a
  candidate needs on a GPU;
- ``space.sample_within(budget, ...)``: random candidates whose predicted peak lies inside a budget.

How the prediction works is on :doc:`/how_it_works/memory_model`.
"""

# %%
# Predicted against measured, on the CPU
# --------------------------------------
# The CPU is the device this page can measure on, so the prediction targets the CPU allocator here
# (``target="cpu"``); on a GPU machine pass ``device="cuda"`` to measure and ``target="cuda"`` to predict.
import matplotlib.pyplot as plt
import numpy as np

from nas3d_fast import spaces
from nas3d_fast.profile import CATEGORIES, BudgetError, measure_training_memory, predict_training_memory

MiB = 2**20
space = spaces.get("ronasmis", base_channels=4, depth=2, layers_per_stage=1)
shape, batch = (1, 32, 32, 32), 1  # batch 1, as the memory_prediction suite checks the CPU model
rows = []
for seed in range(3):
    arch = space.sample(seed)
    net = space.build(arch, in_channels=1, num_classes=2)
    predicted = predict_training_memory(net, shape, batch_size=batch, num_classes=2, target="cpu", steps=2)
    measured = measure_training_memory(net, shape, batch_size=batch, num_classes=2, device="cpu", steps=1,
                                       steady_state=True)
    rows.append((seed, predicted.peak_bytes / MiB, measured.peak_bytes / MiB))
    print(f"candidate {seed}: predicted {rows[-1][1]:7.2f} MiB, measured {rows[-1][2]:7.2f} MiB "
          f"({100 * (rows[-1][1] / rows[-1][2] - 1):+.2f}%)  {arch.ops}")

# %%
# A report splits the peak into parameters, gradients, optimiser state, activations and workspace (what
# is live at the moment of the peak):
print(predicted.breakdown)
fig, ax = plt.subplots(figsize=(7, 2.4))
left = 0.0
for category in CATEGORIES:
    value = predicted.breakdown[category] / MiB
    ax.barh(0, value, left=left, label=category)
    left += value
ax.set_yticks([])
ax.set_xlabel("MiB at the peak")
ax.legend(ncol=3, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.45))
fig.tight_layout()

# %%
# Predicting for a GPU you do not have
# ------------------------------------
# ``target="cuda"`` replays the allocations through a model of PyTorch's CUDA caching allocator
# (512-byte blocks, the small and large pools, segment sizes, best fit, splitting and merging), so the
# figure is what ``torch.cuda.max_memory_allocated`` reports on the card. No GPU is needed, and a
# prediction takes a fraction of a second even at clinical patch sizes:
dints = spaces.get("dints", num_blocks=4, num_depths=3, channel_mul=0.25)
peaks = []
for seed in range(6):
    net = dints.build(dints.sample(seed), in_channels=1, num_classes=3)
    report = predict_training_memory(net, (1, 96, 96, 96), batch_size=2, num_classes=3, target="cuda")
    peaks.append(report.peak_bytes / MiB)
print("predicted CUDA peaks at 96^3, batch 2 (MiB):", np.round(peaks, 1))

# %%
# Sampling inside a budget
# ------------------------
# ``sample_within(budget_bytes, input_shape, batch_size, rng, tolerance=...)`` draws candidates until
# one's predicted peak lies in ``[budget - tolerance, budget]`` (HyperSegNAS keeps 300 MiB, the
# default). A budget below every candidate, or a window no draw hits, is a ``BudgetError`` that says
# which, with the range of peaks it saw.
budget = int(np.median(peaks) * MiB)
arch, report = dints.sample_within(budget, (1, 96, 96, 96), batch_size=2, rng=0, tolerance=budget // 4,
                                   num_classes=3, return_report=True)
print(f"budget {budget / MiB:.0f} MiB: found a candidate at {report.peak_bytes / MiB:.0f} MiB")
try:
    dints.sample_within(10 * MiB, (1, 96, 96, 96), batch_size=2, rng=0, max_tries=5, num_classes=3)
except BudgetError as exc:
    print("BudgetError:", exc)

fig, ax = plt.subplots(figsize=(7, 2.6))
ax.bar(range(len(peaks)), peaks, color="tab:gray", label="random candidates")
ax.axhspan((budget - budget // 4) / MiB, budget / MiB, color="tab:green", alpha=0.2, label="budget window")
ax.axhline(report.peak_bytes / MiB, color="tab:green", label="sample_within's pick")
ax.set_xlabel("candidate")
ax.set_ylabel("predicted CUDA peak (MiB)")
ax.legend(fontsize=7)
fig.tight_layout()

# %%
# From the shell, ``nas3d profile`` does the same for any space (``--mode predict|measure|both``)::
#
#     nas3d profile --space dints --sample 20 --patch 96 96 96 --batch 2 --target cuda --budget 8GiB
#     nas3d profile --space dints --arch search/arch.json --patch 128 128 128 --batch 2 --budget 16GiB
#     nas3d profile --space dints --sample 10 --patch 96 96 96 --batch 2 --calibrate   # on a CUDA machine
#
# ``--calibrate`` measures and predicts the same candidates on your card, so you can check the model
# before trusting it with a budget. The ``memory_prediction`` benchmark suite checks it on every space
# (:doc:`/benchmarks/memory_prediction`).

# %%
# A search inside a budget: HyperSegNAS
# -------------------------------------
# ``nas3d search --searcher hypernet`` is HyperSegNAS's search on the ``dints`` space. It trains one
# supernet, one uniformly sampled path per step. A Meta-Assistant Network reads the images and the path
# and gives each channel of the path's edges a weight in (0, 1). Over the last ninth of the steps those
# weights are annealed to a constant 0.5, after which the network is dropped. Then ``--candidates``
# architectures predicted inside ``[budget - tolerance, budget]`` are ranked on the shared weights, and
# the top ``--finetune-top`` are fine-tuned and scored again. The candidates are drawn *before* the
# supernet trains, so a budget no architecture fits fails at once with ``BudgetError``. Here is a small
# search on synthetic data with a CPU budget; ``--target cuda`` predicts for a GPU instead:
import json
import tempfile

from nas3d_fast.data import make_synthetic
from nas3d_fast.profile.sample import candidate_memory
from nas3d_fast.search import SearchConfig, search
from nas3d_fast.train.run import DataSettings

work = tempfile.mkdtemp()
make_synthetic(f"{work}/data", train=5, test=0, shape=(20, 20, 20), validation=1, seed=0)
small = spaces.get("dints", num_blocks=3, num_depths=2, channel_mul=0.125)
rng = np.random.default_rng(0)
small_peaks = sorted(candidate_memory(small, small.sample(rng), (1, 16, 16, 16), 1, target="cpu").peak_bytes
                     for _ in range(12))
budget = small_peaks[8]
summary = search("dints", "hypernet", f"{work}/data", f"{work}/run",
                 SearchConfig(epochs=2, steps_per_epoch=4, device="cpu", progress=False),
                 DataSettings(patch=(16, 16, 16), batch_size=1, augment=0.0),
                 space_options={"num_blocks": 3, "num_depths": 2, "channel_mul": 0.125},
                 searcher_options={"candidates": 4, "eval_batches": 1, "finetune_top": 2, "finetune_steps": 2,
                                   "memory_budget": budget, "tolerance": budget // 3, "target": "cpu",
                                   "encoder_width": 4, "image_dim": 32, "hidden": 32})
info = summary["memory_budget"]
print(f"window [{(budget - budget // 3) / MiB:.2f}, {budget / MiB:.2f}] MiB; the result's predicted peak "
      f"{info['predicted_peak_bytes'] / MiB:.2f} MiB; {info['candidates_found']} candidates ranked:")
print(json.dumps([{k: r[k] for k in ("inherited_dice", "predicted_memory")} for r in summary["ranking"]]))

# %%
# The same from the shell, for a GPU with 8 GiB (the architectures then train with ``nas3d train``)::
#
#     nas3d search --space dints --searcher hypernet --data Task07_Pancreas --out hyper \
#         --patch 96 96 96 --epochs 100 --steps-per-epoch 100 --candidates 200 --finetune-top 10 \
#         --finetune-steps 500 --memory-budget 8GiB --tolerance 300MiB --target cuda
#     nas3d search --space dints --searcher given --archs-from hyper --data Task07_Pancreas --out alone \
#         --trials 200 --trial-steps 2000      # the same candidates trained stand-alone
#     nas3d search rank hyper --against alone  # how well the shared weights ranked them (Kendall tau)
