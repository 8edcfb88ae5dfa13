"""T-AutoML augmentations: image and label stay aligned, intensity ops do what they say, seeds reproduce."""

import pytest
import torch

from nas3d_fast.data import Augmentations
from nas3d_fast.data.augment import OPS, SPATIAL

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def labelled_shape(shape=(16, 16, 16)):
    """An asymmetric labelled shape (no flip or rotation maps it onto itself): an L of class 1 with a
    class-2 block at one end. Image channel 0 = the label as float, channel 1 = a smooth ramp."""
    label = torch.zeros(shape, dtype=torch.int64)
    label[3:13, 3:6, 4:11] = 1
    label[3:6, 6:12, 4:11] = 1
    label[10:13, 3:6, 4:8] = 2
    ramp = torch.linspace(0, 1, shape[0])[:, None, None].expand(shape)
    image = torch.stack([label.float(), ramp])
    return image, label[None]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "op,zoom",
    [pytest.param(op, (0.9, 1.1), id=op) for op in sorted(SPATIAL - {"zoom"})]
    + [pytest.param("zoom", (0.7, 0.8), id="zoom_out"), pytest.param("zoom", (1.2, 1.3), id="zoom_in")],
)
def test_spatial_ops_keep_image_and_label_aligned(op, zoom, device):
    image, label = labelled_shape()
    image, label = image.to(device), label.to(device)
    aug = Augmentations(p=1.0, ops=[op], zoom=zoom)  # zooms near 1 may leave a small shape as it is
    changed = 0
    for seed in range(6):
        out, lab = aug(image, label, torch.Generator().manual_seed(seed))
        assert out.shape == image.shape and lab.shape == label.shape and lab.dtype == label.dtype
        assert set(lab.unique().tolist()) <= {0, 1, 2}
        as_label = out[0].round().long()
        if op == "zoom":
            # trilinear image vs nearest label: equal except for a thin boundary layer
            agree = (as_label == lab[0]).float().mean().item()
            assert agree > 0.97
            fg = lab[0] > 0
            dice = 2 * (fg & (out[0] > 0.5)).sum() / (fg.sum() + (out[0] > 0.5).sum())
            assert dice > 0.9
        else:
            assert torch.equal(as_label, lab[0])  # exactly aligned
            assert torch.equal(out[0], lab[0].float())
        changed += not torch.equal(lab, label)
    assert changed == 6  # p=1: the op really moves the shape


@pytest.mark.parametrize("shape", [(12, 16, 10), (16, 12, 8)])
def test_rotation_keeps_non_square_shapes(shape):
    image, label = labelled_shape(shape)
    out, lab = Augmentations(p=1.0, ops=["rotate90"])(image, label, torch.Generator().manual_seed(0))
    assert out.shape == image.shape and torch.equal(out[0].round().long(), lab[0])
    assert torch.equal(lab[0], label[0].flip(0).flip(1))  # k = 2 when X != Y


def test_intensity_ops_change_only_the_image_as_documented():
    image, label = labelled_shape()
    gen = torch.Generator().manual_seed(1)
    out, lab = Augmentations(p=1.0, ops=["shift"])(image, label, gen)
    delta = out - image
    assert torch.equal(lab, label) and torch.allclose(delta, delta.flatten()[0]) and abs(delta.flatten()[0]) <= 0.1
    out, lab = Augmentations(p=1.0, ops=["scale_shift"])(image, label, gen)
    # out = image * (1 + a) + b: fit a, b from two voxels, check everywhere
    a = (out[1, -1, 0, 0] - out[1, 0, 0, 0]) / (image[1, -1, 0, 0] - image[1, 0, 0, 0]) - 1
    b = out[1, 0, 0, 0] - image[1, 0, 0, 0] * (1 + a)
    assert torch.allclose(out, image * (1 + a) + b, atol=1e-5) and abs(a) <= 0.1 and abs(b) <= 0.1
    out, lab = Augmentations(p=1.0, ops=["noise"], noise_std=0.2)(image, label, gen)
    assert torch.equal(lab, label) and (out - image).std().item() == pytest.approx(0.2, rel=0.05)
    assert abs((out - image).mean().item()) < 0.01


def test_probabilities_and_identity():
    image, label = labelled_shape((6, 6, 6))
    out, lab = Augmentations(p=0.0)(image, label, torch.Generator().manual_seed(0))
    assert torch.equal(out, image) and torch.equal(lab, label)
    gen = torch.Generator().manual_seed(0)
    n = 600
    for op in ("flip_y", "shift"):
        aug = Augmentations(ops=[op])  # p = 0.15 default
        hits = sum(not torch.equal(aug(image, label, gen)[0], image) for _ in range(n))
        assert abs(hits / n - 0.15) < 0.045
    with pytest.raises(ValueError, match="unknown ops"):
        Augmentations(ops=["elastic"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Augmentations(p=1.5)


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_and_per_sample_in_batches(device):
    image, label = labelled_shape()
    batch = image[None].repeat(4, 1, 1, 1, 1).to(device)
    labels = label[None].repeat(4, 1, 1, 1, 1).to(device)
    aug = Augmentations(p=0.5)
    a = aug(batch, labels, torch.Generator().manual_seed(42))
    b = aug(batch, labels, torch.Generator().manual_seed(42))
    c = aug(batch, labels, torch.Generator().manual_seed(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert len({tuple(x.flatten().tolist()) for x in a[1]}) > 1  # samples drew differently
    if device == "cuda":
        cpu = aug(batch.cpu(), labels.cpu(), torch.Generator().manual_seed(42))
        assert torch.equal(cpu[1], a[1].cpu()) and torch.allclose(cpu[0], a[0].cpu(), atol=1e-5)


def test_all_ops_listed_and_label_optional():
    assert set(OPS) == SPATIAL | {"noise", "shift", "scale_shift"}
    image, _ = labelled_shape()
    out, lab = Augmentations(p=1.0)(image, None, torch.Generator().manual_seed(0))
    assert lab is None and out.shape == image.shape
    with pytest.raises(ValueError, match="one channel"):
        Augmentations()(image, image, torch.Generator())
