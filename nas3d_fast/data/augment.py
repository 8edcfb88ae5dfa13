"""The data augmentations of T-AutoML §3.2, on CPU or GPU tensors, reproducible from a torch.Generator.

Operations, in the order they are applied (each with its own probability, 0.15 by default as in the
paper, which follows nnU-Net):

==============  ==============================================================================
``flip_x/y/z``  mirror along array axis 0 / 1 / 2 (image and label)
``rotate90``    rotate by k * 90 degrees in the X-Y plane (axes 0, 1), k uniform in {1, 2, 3};
                k = 2 only when X != Y so the shape is kept (image and label)
``zoom``        scale by f uniform in ``zoom`` (default [0.9, 1.1]) about the centre, same grid size:
                trilinear for the image, nearest for the label, edge values beyond the border
``noise``       add Gaussian noise of standard deviation ``noise_std`` (default 0.1; image only)
``shift``       add o uniform in [-``shift``, ``shift``] (default 0.1; image only)
``scale_shift`` multiply by 1 + a and add b, a and b uniform in [-``scale_shift``, ``scale_shift``]
                (default 0.1; image only)
==============  ==============================================================================

The defaults are MONAI's (RandZoom, RandGaussianNoise, RandShiftIntensity, RandScaleIntensity), which
T-AutoML's implementation uses. Images are (C, X, Y, Z) or (N, C, X, Y, Z) float tensors; labels the same
with C = 1 (any dtype; returned in the input dtype), or None. Batches draw independently per sample.
Every random number comes from the ``generator`` argument (a CPU generator also drives GPU tensors: the
random values are made on the generator's device and moved), so a seed gives the same result on every
device and in every DataLoader worker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OPS = ("flip_x", "flip_y", "flip_z", "rotate90", "zoom", "noise", "shift", "scale_shift")
SPATIAL = {"flip_x", "flip_y", "flip_z", "rotate90", "zoom"}


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen, device=gen.device))


def zoom(image: torch.Tensor, label: torch.Tensor | None, factor: float):
    """Scale (N, C, X, Y, Z) tensors by ``factor`` about the centre, keeping the grid (factor > 1 zooms in)."""
    n = image.shape[0]
    theta = torch.zeros(n, 3, 4, dtype=torch.float32, device=image.device)
    theta[:, 0, 0] = theta[:, 1, 1] = theta[:, 2, 2] = 1.0 / factor
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    out = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.to(image.dtype)
    if label is not None:
        lab = F.grid_sample(label.float(), grid, mode="nearest", padding_mode="border", align_corners=False)
        label = lab.round().to(label.dtype)
    return out, label


class Augmentations:
    """Callable ``(image, label, generator) -> (image, label)`` applying the module's operations.

    ``p``: probability of each operation (a float, or a dict name -> probability; names not in the dict
    get 0.15); ``ops``: which operations to use (default all of ``OPS``, applied in that order).
    """

    def __init__(
        self, p=0.15, ops=OPS, zoom=(0.9, 1.1), noise_std: float = 0.1, shift: float = 0.1, scale_shift: float = 0.1
    ):
        unknown = [o for o in ops if o not in OPS]
        if unknown:
            raise ValueError(f"Augmentations: unknown ops {unknown}; known: {list(OPS)}")
        probs = p if isinstance(p, dict) else {o: p for o in OPS}
        unknown = [o for o in probs if o not in OPS]
        if unknown:
            raise ValueError(f"Augmentations: p names unknown ops {unknown}; known: {list(OPS)}")
        self.p = {o: float(probs.get(o, 0.15)) for o in ops}
        bad = {o: v for o, v in self.p.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"Augmentations: probabilities must be in [0, 1], got {bad}")
        if not (0 < zoom[0] <= zoom[1]):
            raise ValueError(f"Augmentations: zoom must be (low, high) with 0 < low <= high, got {zoom}")
        self.ops = tuple(ops)
        self.zoom = (float(zoom[0]), float(zoom[1]))
        self.noise_std, self.shift, self.scale_shift = float(noise_std), float(shift), float(scale_shift)

    def __repr__(self) -> str:
        return (
            f"Augmentations(p={self.p}, zoom={self.zoom}, noise_std={self.noise_std}, shift={self.shift}, "
            f"scale_shift={self.scale_shift})"
        )

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None = None, generator: torch.Generator | None = None
    ):
        if image.dim() not in (4, 5):
            raise ValueError(f"image must be (C, X, Y, Z) or (N, C, X, Y, Z), got shape {tuple(image.shape)}")
        if label is not None and (
            label.dim() != image.dim()
            or label.shape[-3:] != image.shape[-3:]
            or label.shape[-4] != 1
            or label.shape[0] != image.shape[0]
        ):
            raise ValueError(
                f"label shape {tuple(label.shape)} must be the image's {tuple(image.shape)} with one channel"
            )
        gen = generator if generator is not None else torch.Generator().manual_seed(torch.seed() % 2**62)
        if image.dim() == 4:
            out, lab = self._one(image[None], None if label is None else label[None], gen)
            return out[0], (None if lab is None else lab[0])
        outs, labs = [], []
        for i in range(image.shape[0]):
            o, lb = self._one(image[i : i + 1], None if label is None else label[i : i + 1], gen)
            outs.append(o)
            labs.append(lb)
        return torch.cat(outs), (None if label is None else torch.cat(labs))

    def _one(self, image, label, gen):
        """One sample, (1, C, X, Y, Z). Every op draws its decision (and parameters) in a fixed order."""
        for op in self.ops:
            if float(torch.rand((), generator=gen, device=gen.device)) >= self.p[op]:
                continue
            if op.startswith("flip_"):
                dim = 2 + "xyz".index(op[-1])
                image = image.flip(dim)
                label = None if label is None else label.flip(dim)
            elif op == "rotate90":
                k = 1 + int(torch.randint(0, 3, (), generator=gen, device=gen.device))
                if image.shape[2] != image.shape[3]:
                    k = 2
                image = torch.rot90(image, k, dims=(2, 3))
                label = None if label is None else torch.rot90(label, k, dims=(2, 3))
            elif op == "zoom":
                image, label = zoom(image, label, _uniform(gen, *self.zoom))
            elif op == "noise":
                noise = torch.randn(image.shape, generator=gen, device=gen.device, dtype=torch.float32)
                image = image + (self.noise_std * noise).to(device=image.device, dtype=image.dtype)
            elif op == "shift":
                image = image + _uniform(gen, -self.shift, self.shift)
            elif op == "scale_shift":
                a = _uniform(gen, -self.scale_shift, self.scale_shift)
                b = _uniform(gen, -self.scale_shift, self.scale_shift)
                image = image * (1.0 + a) + b
        return image.contiguous(), (None if label is None else label.contiguous())
