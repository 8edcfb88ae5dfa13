"""`nas3d infer`: label maps for NIfTI images with a checkpoint (see checkpoint.py for the format)."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..data.preprocess import Preprocessing, preprocess_case, restore_labels, restore_probabilities
from .checkpoint import InferSettings, load_model, load_settings, preprocess
from .nifti import NIFTI_SUFFIXES, is_nifti_name, read_image, write_labels
from .sliding_window import sliding_window_inference


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def refuse_overwriting_inputs(pairs: list[tuple[str, str]]) -> None:
    """ValueError if any output file resolves (links, ``..``, hard links) to any input of the run: a label
    map written over an image destroys the user's data."""
    inputs = [src for src, _ in pairs]
    for _, dst in pairs:
        for src in inputs:
            if _same_file(dst, src):
                raise ValueError(
                    f"--output {dst} is the input {src}: nas3d infer never writes over its inputs; "
                    "choose another output file or folder"
                )


def plan(input_path: str, output_path: str) -> list[tuple[str, str]]:
    """(input file, output file) pairs: one file to a file (or into a folder), or a folder to a folder.
    ValueError when an output would replace an input (:func:`refuse_overwriting_inputs`)."""
    pairs = _pairs(input_path, output_path)
    refuse_overwriting_inputs(pairs)
    return pairs


def _pairs(input_path: str, output_path: str) -> list[tuple[str, str]]:
    if os.path.isdir(input_path):
        names = sorted(n for n in os.listdir(input_path) if is_nifti_name(n))
        if not names:
            raise ValueError(f"--input folder {input_path} holds no .nii/.nii.gz files")
        if os.path.exists(output_path) and not os.path.isdir(output_path):
            raise ValueError(f"--output {output_path} must be a folder when --input is a folder")
        return [(os.path.join(input_path, n), os.path.join(output_path, n)) for n in names]
    if not os.path.exists(input_path):
        raise ValueError(f"--input {input_path} does not exist")
    if os.path.isdir(output_path):
        name = os.path.basename(input_path)
        if not is_nifti_name(name):
            raise ValueError(f"input {input_path} is not a NIfTI file (expected a name ending in .nii or .nii.gz)")
        return [(input_path, os.path.join(output_path, name))]
    if not is_nifti_name(output_path):
        raise ValueError(f"--output {output_path} must be a folder or a name ending in {' or '.join(NIFTI_SUFFIXES)}")
    return [(input_path, output_path)]


def predict_volume(
    image,
    affine,
    model: torch.nn.Module,
    settings: InferSettings,
    *,
    roi_size=None,
    overlap=None,
    tta: bool = False,
    device: str | torch.device | None = None,
    resample_probabilities: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """The (X, Y, Z) int64 label map of one image on its own grid: ``image`` (C, X, Y, Z) numpy array or
    tensor, ``affine`` its 4 x 4 voxel-to-mm matrix, ``model`` mapping (N, C, *roi) to (N, K, *roi)
    logits, ``settings`` the checkpoint's (``load_settings``): with ``settings.preprocessing`` the image is
    cropped, resampled and normalised as in training and the labels brought back (module
    ``checkpoint``'s docstring); else only ``settings.intensity`` is applied. ``roi_size``/``overlap``
    override the settings'; ``tta`` averages over ``settings.tta_flips``."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    image = torch.as_tensor(np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, np.float32))
    if image.dim() != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {tuple(image.shape)}")
    roi = tuple(roi_size) if roi_size else settings.roi_size
    ov = overlap if overlap is not None else settings.overlap
    prepared = None
    if settings.preprocessing is not None:  # the training's crop, spacing and intensity
        prepared = preprocess_case(image.numpy(), np.asarray(affine), None, Preprocessing.from_dict(settings.preprocessing))
        x = torch.from_numpy(prepared.image)[None].to(dev)
    else:
        x = preprocess(image[None], settings.intensity).to(dev)

    def predict(batch):
        with torch.no_grad():
            out = model(batch)
        # sliding_window_inference would stitch another size at MONAI's zoom scale; a segmentation model
        # for `nas3d infer` must label every voxel of its window
        if not isinstance(out, torch.Tensor) or out.shape[2:] != batch.shape[2:]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"predictor must return shape (N, C_out, *roi) = (N, C_out, "
                             f"{', '.join(map(str, batch.shape[2:]))}) for windows {tuple(batch.shape)}, got {got}")
        return out

    result = sliding_window_inference(
        x,
        roi,
        settings.sw_batch_size,
        predict,
        overlap=ov,
        mode=settings.mode,
        progress=progress,
        nas3d_output="probs" if prepared is not None and resample_probabilities else "labels",
        nas3d_tta_flips=settings.tta_flips if tta else (),
    )
    if prepared is None:
        return result[0, 0].cpu().numpy().astype(np.int64)
    if resample_probabilities:
        return restore_probabilities(result[0].cpu().numpy(), prepared.meta).astype(np.int64)
    return restore_labels(result[0, 0].cpu().numpy(), prepared.meta).astype(np.int64)


def infer(
    model_path: str,
    input_path: str,
    output_path: str,
    roi_size=None,
    overlap=None,
    tta: bool = False,
    device: str | None = None,
    progress: bool = True,
    trust_pickle: bool = False,
    resample_probabilities: bool = False,
) -> list[str]:
    """Write one label map per input image; returns the written paths. Raises ValueError with the file's
    name for unreadable inputs, settings that do not fit the image or the model, or a model whose output
    has the wrong shape; a failed image leaves no output file."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = load_settings(model_path)
    model = load_model(model_path, dev, trust_pickle)
    pairs = plan(input_path, output_path)
    roi, ov = roi_size, overlap
    written = []
    bar = None
    if progress and len(pairs) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), unit="image", desc="nas3d infer")
    for src, dst in pairs:
        image, nifti = read_image(src)
        if image.shape[1] != settings.in_channels:
            raise ValueError(
                f"input {src} has {image.shape[1]} channel(s), "
                f"the checkpoint expects in_channels={settings.in_channels}"
            )
        try:
            out = predict_volume(image[0], nifti.affine, model, settings, roi_size=roi, overlap=ov, tta=tta,
                                 device=dev, resample_probabilities=resample_probabilities, progress=progress)
        except ValueError as exc:
            raise ValueError(f"input {src}: {exc}") from exc
        write_labels(out.astype(np.uint8 if out.max(initial=0) < 256 else np.int16), nifti, dst)
        written.append(dst)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return written
