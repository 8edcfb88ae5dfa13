"""A real MRI segmentation dataset in MSD layout, built from the MNI152 template that nilearn ships.

Source: the ICBM 2009 (MNI152, nonlinear symmetric, version "a") T1 template and its grey- and
white-matter probability maps, skull-stripped, 1 mm isotropic, read from the files inside the
installed ``nilearn`` package by ``nilearn.datasets.load_mni152_template``,
``load_mni152_gm_template`` and ``load_mni152_wm_template`` (each rescaled to [0, 1]). Nothing is
downloaded: the builder checks that the three files exist in the package before reading them.

Labels (0 background, 1 grey matter, 2 white matter): each 1 mm voxel takes the most probable of
background (1 - p_GM - p_WM, which includes CSF), grey matter (p_GM) and white matter (p_WM); ties
go to the lower index. The T1 image is the template's intensity (the brain; outside it 0).

Subjects: subject ``k`` is the template seen through its own random (seeded by ``seed`` and ``k``)

- affine: rotations up to ±``rotate_deg`` about each axis, scaling in [1 - ``scale``, 1 + ``scale``]
  per axis and a shift up to ±``shift_mm`` mm, about the brain's centre;
- smooth deformation: a displacement field of Gaussian noise on a 5x5x5 grid, cubic-upsampled to the
  output grid and scaled to a largest displacement of ``deform_mm`` (times a random factor in [0.5, 1]);
- bias field: ``exp(b)`` with ``b`` cubic-upsampled from a 3x3x3 grid of N(0, ``bias``²);
- Rician noise of standard deviation ``noise`` times the mean brain intensity, inside the brain
  (the background of these skull-stripped volumes stays 0), and an overall intensity gain in [0.8, 1.2].

Image and labels are sampled through the same coordinates: the image with a cubic spline (after a
Gaussian blur of sigma = sqrt(spacing² - 1) / 2.355 mm, so coarser grids do not alias), the labels and
the brain mask with nearest neighbour. The output grid (shared by all subjects) covers the template's
brain bounding box plus 4 mm at ``spacing`` mm; its affine places it in MNI space.

Split, recorded in dataset.json: the first ``subjects - val`` cases (``mni152_000`` ...) train, the last
``val`` ones form 'validation'; ``test`` extra subjects go to imagesTs/ without labels. With the
defaults (8 subjects, 2 for validation, 2 mm) a build takes a few seconds.
"""

from __future__ import annotations

import os

import numpy as np

from .nifti import write_json, write_nifti

LABELS = {"0": "background", "1": "grey matter", "2": "white matter"}


TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def template_paths() -> dict[str, str]:
    """Paths of the three template files inside the installed nilearn package (``nilearn/datasets/data``,
    the files ``nilearn.datasets.load_mni152_template`` and its GM/WM twins read). Found without
    importing nilearn (its import takes seconds); raises RuntimeError when nilearn or a file is missing."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "nas3d data mni152 needs the nilearn package, which ships the MNI152 template "
            "(pip install 'nilearn>=0.10', or pip install 'nas3d_fast[demo]')"
        )
    data_dir = os.path.join(next(iter(spec.submodule_search_locations)), "datasets", "data")
    paths = {k: os.path.join(data_dir, v) for k, v in TEMPLATE_FILES.items()}
    for path in paths.values():
        if not os.path.isfile(path):
            raise RuntimeError(
                f"the installed nilearn does not ship the MNI152 template file {path}; "
                "nas3d data mni152 reads only files inside the package and downloads nothing"
            )
    return paths


def load_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(T1, GM, WM, affine): the three 1 mm templates as float32 arrays rescaled to [0, 1] by their
    maximum, exactly as nilearn's ``load_mni152_*template(resolution=1)`` return them, and their affine."""
    import nibabel as nib

    arrays, affine = [], None
    for path in template_paths().values():
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        arrays.append(data / data.max())
        affine = np.asarray(img.affine, dtype=np.float64)
    return arrays[0], arrays[1], arrays[2], affine


def template_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """(X, Y, Z) uint8 labels from GM and WM probability maps in [0, 1] (module docstring: most probable
    of background, grey matter, white matter)."""
    probs = np.stack([1.0 - gm - wm, gm, wm])
    return np.argmax(probs, axis=0).astype(np.uint8)


def _smooth_field(rng, coarse: int, shape, sigma: float) -> np.ndarray:
    """N(0, sigma²) noise on a coarse³ grid, cubic-upsampled to about an eighth of ``shape`` per axis
    (cheap), then trilinear to ``shape`` (float64 (X, Y, Z))."""
    import torch
    from scipy import ndimage

    field = rng.normal(0.0, sigma, size=(coarse,) * 3)
    mid = [max(coarse, n // 8) for n in shape]
    field = ndimage.zoom(field, [m / coarse for m in mid], order=3, mode="nearest", grid_mode=True)
    up = torch.nn.functional.interpolate(torch.from_numpy(field)[None, None], size=tuple(shape), mode="trilinear")
    return up[0, 0].numpy()


def _rotation(angles) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class _Template:
    """The 1 mm template arrays, cropped to the brain and prepared once for sampling at ``spacing`` mm."""

    def __init__(self, spacing: float, margin_mm: float = 4.0):
        from scipy import ndimage

        t1, gm, wm, affine = load_templates()
        labels = template_labels(gm, wm)
        brain = t1 > 0
        hit = np.argwhere(brain | (labels > 0))
        # Everything outside the brain's box is 0 (background): keep the box plus 2 voxels, so the
        # spline and Gaussian work on a third of the volume; points mapped outside read 0.
        lo0, hi0 = np.maximum(hit.min(0) - 2, 0), np.minimum(hit.max(0) + 3, t1.shape)
        box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lo0, hi0))
        shift = np.eye(4)
        shift[:3, 3] = lo0
        affine = affine @ shift
        t1, labels, brain, hit = t1[box], labels[box], brain[box], hit - lo0
        self.labels = labels
        self.brain = brain.astype(np.uint8)
        self.voxel_mm = float(np.sqrt((affine[:3, :3] ** 2).sum(0)).mean())
        sigma_mm = np.sqrt(max(spacing**2 - self.voxel_mm**2, 0.0)) / 2.355
        blurred = ndimage.gaussian_filter(t1, sigma_mm / self.voxel_mm) if sigma_mm > 0 else t1
        self.t1_coeffs = ndimage.spline_filter(blurred, order=3, output=np.float32)
        margin = margin_mm / self.voxel_mm
        lo, hi = hit.min(0) - margin, hit.max(0) + margin
        step = spacing / self.voxel_mm
        self.shape = tuple(int(np.ceil((h - l + 1) / step)) for l, h in zip(lo, hi))
        self.start = lo + (step - 1) / 2  # template voxel coordinate of output voxel 0's centre
        self.step = step
        grid = np.eye(4)
        grid[:3, :3] = np.diag([step] * 3)
        grid[:3, 3] = self.start
        self.affine = affine @ grid
        self.centre = hit.mean(0)
        self.mean_brain = float(t1[brain].mean())


def _subject(tpl: _Template, rng: np.random.Generator, rotate_deg, scale, shift_mm, deform_mm, bias, noise):
    """(image (X, Y, Z) float32, labels (X, Y, Z) uint8) of one random subject on the output grid."""
    from scipy import ndimage

    idx = np.indices(tpl.shape, dtype=np.float64).reshape(3, -1)
    points = tpl.start[:, None] + tpl.step * idx  # template voxel coordinates of the output voxels
    rot = _rotation(np.deg2rad(rng.uniform(-rotate_deg, rotate_deg, size=3)))
    lin = rot @ np.diag(rng.uniform(1 - scale, 1 + scale, size=3))
    shift = rng.uniform(-shift_mm, shift_mm, size=3) / tpl.voxel_mm
    coords = tpl.centre[:, None] + lin @ (points - tpl.centre[:, None]) + shift[:, None]
    disp = np.stack([_smooth_field(rng, 5, tpl.shape, 1.0) for _ in range(3)])
    disp *= deform_mm / tpl.voxel_mm * rng.uniform(0.5, 1.0) / max(np.abs(disp).max(), 1e-6)
    coords += disp.reshape(3, -1)
    image = ndimage.map_coordinates(tpl.t1_coeffs, coords, order=3, mode="constant", cval=0.0, prefilter=False)
    labels = ndimage.map_coordinates(tpl.labels, coords, order=0, mode="constant", cval=0)
    brain = ndimage.map_coordinates(tpl.brain, coords, order=0, mode="constant", cval=0).astype(bool)
    image = np.clip(image, 0, None).reshape(tpl.shape)
    labels, brain = labels.reshape(tpl.shape), brain.reshape(tpl.shape)
    image *= np.exp(_smooth_field(rng, 3, tpl.shape, bias))
    sd = noise * tpl.mean_brain
    image = np.sqrt((image + rng.normal(0, sd, tpl.shape)) ** 2 + rng.normal(0, sd, tpl.shape) ** 2)
    image *= rng.uniform(0.8, 1.2) * 1000.0  # MRI-like units; absolute scale differs per subject
    image[~brain] = 0
    labels[~brain] = 0
    return image.astype(np.float32), labels.astype(np.uint8)


def build_mni152(
    out: str,
    subjects: int = 8,
    val: int = 2,
    spacing: float = 2.0,
    seed: int = 0,
    test: int = 0,
    rotate_deg: float = 6.0,
    scale: float = 0.06,
    shift_mm: float = 3.0,
    deform_mm: float = 4.0,
    bias: float = 0.15,
    noise: float = 0.03,
    progress: bool = True,
) -> str:
    """Write the MNI152 dataset (module docstring) to ``out`` in MSD layout; returns ``out``."""
    if subjects < 2 or not 1 <= val < subjects:
        raise ValueError(f"need subjects >= 2 and 1 <= val < subjects, got subjects={subjects}, val={val}")
    if not 0.5 <= spacing <= 8:
        raise ValueError(f"spacing must be in [0.5, 8] mm, got {spacing}")
    if test < 0:
        raise ValueError(f"test must be >= 0, got {test}")
    tpl = _Template(float(spacing))
    training, tests, validation = [], [], []
    total = subjects + test
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="subject", desc="nas3d data mni152")
    for k in range(total):
        rng = np.random.default_rng([seed, k])
        image, labels = _subject(tpl, rng, rotate_deg, scale, shift_mm, deform_mm, bias, noise)
        name = f"mni152_{k:03d}"
        if k < subjects:
            write_nifti(image, tpl.affine, os.path.join(out, "imagesTr", name + ".nii.gz"))
            write_nifti(labels, tpl.affine, os.path.join(out, "labelsTr", name + ".nii.gz"))
            training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
            if k >= subjects - val:
                validation.append(name)
        else:
            write_nifti(image, tpl.affine, os.path.join(out, "imagesTs", name + ".nii.gz"))
            tests.append(f"./imagesTs/{name}.nii.gz")
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    meta = {
        "name": "MNI152-subjects",
        "description": "Brain tissue segmentation: random smooth deformations, bias fields and noise applied to the "
        "ICBM 2009a nonlinear symmetric MNI152 T1 template and its GM/WM probability maps (shipped with nilearn). "
        "Labels: most probable of background (incl. CSF), grey matter, white matter at 1 mm, then resampled.",
        "reference": "Fonov et al., NeuroImage 2011 and 2009 (ICBM 2009a nonlinear symmetric template)",
        "licence": "see the ICBM 2009 template's copyright notice (McConnell Brain Imaging Centre); shipped by nilearn",
        "tensorImageSize": "3D",
        "modality": {"0": "T1"},
        "labels": LABELS,
        "numTraining": subjects,
        "numTest": test,
        "training": training,
        "test": tests,
        "validation": validation,
        "split": f"the first {subjects - val} training cases train, the last {val} ('validation') validate",
        "generator": {
            "seed": seed,
            "spacing_mm": spacing,
            "rotate_deg": rotate_deg,
            "scale": scale,
            "shift_mm": shift_mm,
            "deform_mm": deform_mm,
            "bias": bias,
            "noise": noise,
        },
    }
    write_json(meta, os.path.join(out, "dataset.json"))
    return out
