"""
5. Whole-volume inference and NIfTI in and out
==============================================

A trained network sees patches; a CT or MRI volume is far larger. Sliding-window inference predicts the
volume window by window and blends the overlapping windows with an importance map. This tutorial

- trains a tiny network with ``nas3d train``'s Python form, so there is a checkpoint to infer with;
- runs ``nas3d infer`` on a NIfTI file and checks that the label map keeps the input's grid and affine;
- does the same per image in Python with :func:`~nas3d_fast.inference.predict_volume`;
- uses :func:`~nas3d_fast.inference.sliding_window_inference` directly, MONAI's arguments and results
  plus label output streamed to bounded memory.

How the windows are stitched, deterministically and without atomics, is on
:doc:`/how_it_works/sliding_window`.
"""

# %%
# A checkpoint to infer with
# --------------------------
# ``nas3d_fast.train.run.train`` is what ``nas3d train`` runs. Its run folder holds ``best.pt`` (the
# space, options, architecture and weights as plain data, loaded with ``torch.load(weights_only=True)``)
# and ``best.json`` (the training's preprocessing and window settings).
import os
import tempfile

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import torch

from nas3d_fast import cli, data
from nas3d_fast.inference import load_model, load_settings, predict_volume, sliding_window_inference
from nas3d_fast.train import TrainConfig
from nas3d_fast.train.run import DataSettings, train

work = tempfile.mkdtemp(prefix="nas3d_tutorial_infer_")
root = data.make_synthetic(os.path.join(work, "blobs"), train=4, test=1, shape=(32, 32, 24), validation=1,
                           contrast=3.0, seed=0)
summary = train(
    "ronasmis", "default", root, os.path.join(work, "run"),
    TrainConfig(epochs=4, steps_per_epoch=15, lr=1e-2, roi_size=(16, 16, 16), device="cpu", progress=False),
    DataSettings(patch=(16, 16, 16), batch_size=2, augment=0.0),
    space_options={"base_channels": 4, "depth": 2, "layers_per_stage": 1},
)
print(sorted(os.listdir(os.path.join(work, "run"))))
print(f"{summary['steps']} steps, validation Dice {summary['last_validation']['mean_dice']:.2f}")

# %%
# ``nas3d infer``
# ---------------
# The command reads a ``.nii``/``.nii.gz`` file (or a folder of them), applies the training's
# preprocessing, predicts with streamed label output and writes uint8 labels (int16 above 255 classes)
# with the input's affine and header. It never writes over an input, and a failure leaves no partial
# file. Here through ``nas3d_fast.cli.main``, exactly as the shell runs it.
image_path = os.path.join(root, "imagesTs", sorted(os.listdir(os.path.join(root, "imagesTs")))[0])
out_path = os.path.join(work, "prediction.nii.gz")
status = cli.main(["infer", "--model", os.path.join(work, "run", "best.pt"), "--input", image_path,
                   "--output", out_path, "--overlap", "0.5", "--device", "cpu", "--quiet"])
print("exit status", status)

source, written = nib.load(image_path), nib.load(out_path)
print("input ", source.shape, source.get_data_dtype(), "\noutput", written.shape, written.get_data_dtype())
print("same affine:", np.allclose(source.affine, written.affine))

# %%
# In Python, per image
# --------------------
# ``predict_volume(image, affine, model, settings)`` is the step ``nas3d infer`` runs for each file:
# the (X, Y, Z) label map on the image's own grid.
model = load_model(os.path.join(work, "run", "best.pt"), torch.device("cpu"))
settings = load_settings(os.path.join(work, "run", "best.pt"))
print(settings)
image, affine = data.read_image(image_path)
labels = predict_volume(image, affine, model, settings, overlap=0.5, device="cpu")
print("labels", labels.shape, "classes", np.unique(labels).tolist())
print("same as the command's output:", np.array_equal(labels, np.asarray(written.dataobj)))
tta = predict_volume(image, affine, model, settings, overlap=0.5, tta=True, device="cpu")  # mirrored too
print(f"with test-time flips: {100 * (tta != labels).mean():.2f}% of voxels change")

z = image.shape[-1] // 2
fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
axes[0].imshow(image[0, :, :, z].T, cmap="gray", origin="lower")
axes[0].set_title("image (imagesTs)")
axes[1].imshow(image[0, :, :, z].T, cmap="gray", origin="lower")
axes[1].imshow(np.ma.masked_equal(labels[:, :, z].T, 0), cmap="autumn", alpha=0.6, origin="lower")
axes[1].set_title("predicted labels")
for ax in axes:
    ax.axis("off")
fig.tight_layout()

# %%
# ``sliding_window_inference``
# ----------------------------
# The function takes MONAI's arguments (``roi_size``, ``sw_batch_size``, ``predictor``, ``overlap``,
# ``mode``, ``sigma_scale``, ``padding_mode``, ``cval``, ``sw_device``, ``device``) with MONAI's defaults
# and gives MONAI's results. Beyond MONAI (keyword-only, prefixed ``nas3d_`` so that they never take a
# predictor's keyword): ``nas3d_output="probs"`` or ``"labels"``, ``nas3d_tta_flips`` and
# ``nas3d_max_memory``.
volume = torch.randn(1, 1, 64, 64, 48)
predictor = model.eval()
with torch.no_grad():
    raw = sliding_window_inference(volume, (16, 16, 16), 4, predictor, overlap=0.5, mode="gaussian")
    streamed = sliding_window_inference(volume, (16, 16, 16), 4, predictor, overlap=0.5, mode="gaussian",
                                        nas3d_output="labels")
print("raw", tuple(raw.shape), raw.dtype, "| labels", tuple(streamed.shape), streamed.dtype)
print("labels == argmax of the raw output:", torch.equal(streamed[:, 0].long(), raw.argmax(1)))

# %%
# With ``nas3d_output="labels"`` (or ``nas3d_max_memory``), windows are visited slab by slab and each finished slab
# is turned into labels at once, so memory holds one slab of class scores, not the whole volume times
# the classes: what makes 512 x 512 x 1000 CT volumes fit. Repeated runs give the same bits: every
# voxel's sum is formed in a fixed order.
with torch.no_grad():
    again = sliding_window_inference(volume, (16, 16, 16), 4, predictor, overlap=0.5, mode="gaussian")
print("bit-identical rerun:", torch.equal(raw, again))
