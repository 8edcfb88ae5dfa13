"""
3. Searching on your own MSD-format dataset
===========================================

A search takes a dataset, a search space and a budget, trains the space's supernet and its architecture
logits, and writes the architecture it ends with as ``arch.json``, which ``nas3d train`` then trains.
This tutorial goes through the four steps a user takes:

1. **prepare** a dataset in the Medical Segmentation Decathlon layout (here a tiny synthetic one);
2. **search** it, from Python or with ``nas3d search``;
3. **resume** a search that was interrupted;
4. run it **distributed** under ``torchrun``;
5. search by **trials** instead: each candidate trained on its own, kept in a crash-safe store.

The sizes are toy sizes so that the page builds in seconds on a CPU; the commands are the ones you run
on real data with real budgets.
"""

# %%
# 1. Prepare: the MSD layout
# --------------------------
# A dataset is a folder with ``dataset.json``, ``imagesTr/`` and ``labelsTr/`` (NIfTI, one file per
# case; 4D images for several channels) and optionally ``imagesTs/``. Your own data goes into the same
# layout. :func:`nas3d_fast.data.make_synthetic` writes one of random blobs in noise, so this page has data:
import json
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

from nas3d_fast import data
from nas3d_fast.search import SearchConfig, search
from nas3d_fast.train.run import DataSettings

work = tempfile.mkdtemp(prefix="nas3d_tutorial_search_")
root = data.make_synthetic(os.path.join(work, "blobs"), train=5, test=1, shape=(24, 24, 24), validation=1, seed=0)
print(sorted(os.listdir(root)), sorted(os.listdir(os.path.join(root, "imagesTr"))))
description = json.load(open(os.path.join(root, "dataset.json")))
print({key: description[key] for key in ("modality", "labels", "numTraining", "validation")})
print("first case:", description["training"][0])

# %%
# Indexing the folder checks it (missing files, shapes and affines of images against labels, channels
# against ``modality``, label values against ``labels``) and names the file at fault:
index = data.MSDIndex(root)
train_ids, val_ids = data.split(index)  # dataset.json's 'validation' list, else fold 0 of 5
print("train:", train_ids, " validate:", val_ids)
image, affine = data.read_image(os.path.join(root, "imagesTr", train_ids[0] + ".nii.gz"))
label, _ = data.read_label(os.path.join(root, "labelsTr", train_ids[0] + ".nii.gz"))
print("image", image.shape, "label", label.shape, "spacing (mm)", data.spacing_of(affine))

# %%
# 2. Search
# ---------
# ``search(space, searcher, data_dir, out_dir, config, data_settings, space_options=...)`` is what
# ``nas3d search`` calls. ``gumbel`` is SCNAS's searcher (two ops sampled per edge, temperature
# annealed); ``dints`` is MONAI's DiNTS loop on the ``dints`` space. The training cases are split 4:1
# into cases for the weights and cases for the architecture.
space_options = {"base_channels": 2, "depth": 2, "layers_per_stage": 1}
settings = DataSettings(patch=(16, 16, 16), batch_size=2, augment=0.0)
config = SearchConfig(epochs=2, steps_per_epoch=3, device="cpu", progress=False, checkpoint_every=2)
run = os.path.join(work, "search")


class Interrupted(Exception):
    """Stands in for a kill: the search stops after step 4 (checkpointed every 2 steps and at epoch ends)."""


def stop_after_4(step):
    if step == 4:
        raise Interrupted


try:
    search("ronasmis", "gumbel", root, run, config, settings, space_options=space_options, on_step=stop_after_4)
except Interrupted:
    print("interrupted; the run folder holds:", sorted(os.listdir(run)))

# %%
# 3. Resume
# ---------
# Rerunning the same search continues from ``RUN/checkpoint.pt``: the weights, logits, both optimisers,
# the temperature, the RNG states and the data position are all in it, so on the CPU the resumed search
# ends exactly where an uninterrupted one would (``tests/test_search.py`` kills one with SIGKILL at
# every step to check). Changing a setting that alters the search is refused, naming the setting.
summary = search("ronasmis", "gumbel", root, run, config, settings, space_options=space_options)
print(f"steps {summary['steps']}/{summary['total_steps']}, entropy {summary['entropy']:.3f} nats")
print("architecture:", summary["arch"])

try:
    search("ronasmis", "gumbel", root, run, SearchConfig(epochs=2, steps_per_epoch=3, device="cpu",
           progress=False, arch_lr=0.01), settings, space_options=space_options)
except ValueError as exc:
    print("refused:", str(exc).split(": ", 1)[1])

# %%
# The run folder: ``arch.json`` (the result), ``search.csv`` (one row per step), ``history.jsonl`` (the
# derived architecture after every epoch), ``report.png`` and ``summary.json``.
rows = np.genfromtxt(os.path.join(run, "search.csv"), delimiter=",", names=True)
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].plot(rows["step"], rows["weight_loss"], label="weight loss")
axes[0].plot(rows["step"], rows["arch_loss"], label="architecture loss")
axes[0].set_xlabel("step")
axes[0].legend()
axes[1].plot(rows["step"], rows["tau"], color="tab:red")
axes[1].set_xlabel("step")
axes[1].set_title("Gumbel temperature")
fig.tight_layout()
print(open(os.path.join(run, "arch.json")).read())

# %%
# ``report.png`` is written by the search itself:
fig, ax = plt.subplots(figsize=(9, 5))
ax.imshow(plt.imread(os.path.join(run, "report.png")))
ax.axis("off")

# %%
# The same from the command line (rerunning it resumes; ``--no-resume`` starts afresh)::
#
#     nas3d data synthetic --out blobs --train 5                # or your own MSD folder
#     nas3d search --space ronasmis --space-option base_channels=8 --searcher gumbel \
#         --data blobs --out search --patch 32 32 32 --epochs 20 --steps-per-epoch 50 --time-budget 60
#     nas3d train --space ronasmis --space-option base_channels=8 --arch search/arch.json \
#         --data blobs --out trained --patch 32 32 32
#
# ``nas3d search --help`` lists every option: the temperature schedule (``--tau-start``, ``--tau-end``),
# learning rates, ``--checkpoint-every`` steps, and the DiNTS searcher's ``--warmup-epochs``,
# ``--ram-cost-factor`` and ``--memory-model predicted --memory-budget MIB`` (a memory term fitted to the
# package's predicted training peak, see :doc:`tutorial_4_memory`).
#
# 4. Distributed
# --------------
# Supernet searches run data-parallel under ``torchrun`` (gloo on CPUs, NCCL on GPUs): every process
# takes its share of each step's samples, the gradients are averaged, the Gumbel noise comes from one
# shared seed so the sampled paths are the same on every rank, only rank 0 writes the run folder, and
# a killed run resumes as above. The command is the same search started by ``torchrun``::
#
#     torchrun --nproc_per_node 4 -m nas3d_fast.cli search --space dints --searcher dints \
#         --data Task09_Spleen --out search --patch 96 96 96 --epochs 100 --steps-per-epoch 100
#
# (``tests/test_search_distributed.py`` runs two gloo processes, kills them and resumes.)

# %%
# 5. Trial searches
# -----------------
# Instead of a supernet, a trial searcher proposes candidates and trains each on its own for a short
# budget: ``random``, ``evolution`` (C2FNAS's K-means over topology codes) or ``predictor`` (T-AutoML's
# relation predictor). Every trial is a row of a SQLite store, ``RUN/trials.db``: a rerun after a kill
# keeps the done trials and continues the running ones from their checkpoints
# (:doc:`/how_it_works/trial_search`). Three random trials of four steps each:
from nas3d_fast.search.trials import TrialSearchConfig, status, trial_search  # noqa: E402

trials_run = os.path.join(work, "trials")
summary = trial_search("ronasmis", "random", root, trials_run, TrialSearchConfig(trials=3, trial_steps=4,
                       progress=False), settings, {"device": "cpu", "progress": False}, space_options=space_options)
info = status(trials_run)  # what ``nas3d search status RUN`` prints; it reads the store while a search runs
print("trials:", info["trials"])
print(f"best: trial {info['best']['id']}, mean Dice {info['best']['score']:.3f}, "
      f"predicted training peak {info['best']['predicted_memory'] / 2**20:.1f} MiB")
print(sorted(os.listdir(trials_run)))

# %%
# From the command line, with worker processes or Ray (``pip install 'nas3d_fast[ray]'``)::
#
#     nas3d search --space c2fnas --searcher evolution --data blobs --out evo --trials 40 \
#         --trial-steps 200 --patch 32 32 32 --trial-workers 2
#     nas3d search status evo
#     nas3d search ... --executor ray --gpus-per-trial 0.25 --ray-address auto
