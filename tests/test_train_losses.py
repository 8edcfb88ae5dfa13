"""Losses and metrics against hand-computed values, MONAI's DiceLoss/DiceMetric/compute_surface_dice, and
shapes whose surface distance is known."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss as MonaiDiceCE
from monai.losses import DiceLoss as MonaiDice
from monai.losses import FocalLoss as MonaiFocal
from monai.metrics import DiceMetric, compute_surface_dice

from nas3d_fast.train.losses import LOSSES, DiceCELoss, DiceFocalLoss, DiceLoss, focal, make_loss, soft_dice
from nas3d_fast.train.metrics import dice_per_class, nsd_per_class, surface

# MONAI 1.6 warns about a deprecated argument inside its own compute_surface_dice
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _case(seed, b=2, c=3, shape=(6, 5, 4)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, *shape, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, c, (b, 1, *shape), generator=g)
    return logits, target


def test_soft_dice_by_hand():
    # One item, two classes, two voxels; logits giving probabilities (0.5, 0.5) and (~1, ~0) for class 0.
    logits = torch.tensor([[[0.0, 50.0], [0.0, 0.0]]], dtype=torch.float64)  # (1, 2, 2)
    target = torch.tensor([[0, 1]])
    # class 0: p = (0.5, 1), g = (1, 0): 2 * 0.5 / 2.5 = 0.4; class 1: p = (0.5, 0), g = (0, 1): 0 / 1.5
    got = soft_dice(logits, target, smooth_nr=0, smooth_dr=0)
    assert abs(float(got[0, 0]) - 0.4) < 1e-12 and abs(float(got[0, 1])) < 1e-12
    sq = soft_dice(logits, target, squared=True, smooth_nr=0, smooth_dr=0)
    assert abs(float(sq[0, 0]) - 2 * 0.5 / (1.25 + 1)) < 1e-12
    jac = soft_dice(logits, target, jaccard=True, smooth_nr=0, smooth_dr=0)
    assert abs(float(jac[0, 0]) - 0.5 / (2.5 - 0.5)) < 1e-12


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "kw", [{}, {"squared": True}, {"jaccard": True}, {"include_background": False}, {"batch": True}]
)
def test_dice_loss_matches_monai(seed, kw):
    logits, target = _case(seed)
    ours = DiceLoss(**kw)(logits, target)
    monai_kw = {"squared_pred" if k == "squared" else k: v for k, v in kw.items()}
    ref = MonaiDice(softmax=True, to_onehot_y=True, **monai_kw)(logits, target)
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("seed", range(2))
def test_compound_losses_match_monai(seed):
    logits, target = _case(seed)
    torch.testing.assert_close(
        DiceCELoss()(logits, target), MonaiDiceCE(softmax=True, to_onehot_y=True)(logits, target), rtol=1e-6, atol=1e-8
    )
    # MONAI's softmax FocalLoss averages over classes as well as voxels: ours (Lin et al.) is C times it.
    c = logits.shape[1]
    ref_focal = MonaiFocal(use_softmax=True, to_onehot_y=True, gamma=2.0)(logits, target) * c
    torch.testing.assert_close(focal(logits, target), ref_focal.double(), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(
        DiceFocalLoss()(logits, target), DiceLoss()(logits, target) + focal(logits, target), rtol=1e-12, atol=0
    )


def test_focal_by_hand_and_gamma0_is_ce():
    logits, target = _case(5)
    torch.testing.assert_close(focal(logits, target, gamma=0.0), F.cross_entropy(logits, target[:, 0]))
    lg = torch.tensor([[[2.0], [0.0]]], dtype=torch.float64)  # (1, 2, 1); p(class 0) = e^2 / (e^2 + 1)
    p = float(torch.sigmoid(torch.tensor(2.0, dtype=torch.float64)))
    expected = -((1 - p) ** 2) * np.log(p)
    assert abs(float(focal(lg, torch.tensor([[0]]), gamma=2.0)) - expected) < 1e-12


def test_losses_backward_and_registry():
    logits, target = _case(1)
    for name in LOSSES:
        x = logits.clone().float().requires_grad_()
        loss = make_loss(name)(x, target)
        loss.backward()
        assert loss.ndim == 0 and torch.isfinite(loss) and x.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="loss must be one of"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="target must have shape"):
        DiceLoss()(logits, target[:, :, :3])


@pytest.mark.parametrize("seed", range(4))
def test_dice_per_class_matches_monai_metric(seed):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 4, (9, 8, 7))
    truth = rng.integers(0, 4, (9, 8, 7))
    truth[truth == 3] = 0  # class 3 absent from the truth: NaN (ignore_empty)
    ours = dice_per_class(pred, truth, 4)
    onehot = lambda a: F.one_hot(torch.as_tensor(a), 4).permute(3, 0, 1, 2)[None].float()
    ref = DiceMetric(include_background=False, reduction="none")(onehot(pred), onehot(truth))[0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6, equal_nan=True)
    assert np.isnan(ours[2])


def test_dice_by_hand():
    truth = np.zeros((4, 4, 4), int)
    truth[:2] = 1  # 32 voxels
    pred = np.zeros_like(truth)
    pred[1:3] = 1  # 32 voxels, 16 shared
    assert dice_per_class(pred, truth, 2)[0] == pytest.approx(2 * 16 / 64)
    with pytest.raises(ValueError, match="same shape"):
        dice_per_class(pred[:3], truth, 2)


def _cube(shape, lo, n):
    m = np.zeros(shape, bool)
    m[lo[0] : lo[0] + n, lo[1] : lo[1] + n, lo[2] : lo[2] + n] = True
    return m


def test_surface_of_a_cube():
    m = _cube((12, 12, 12), (2, 2, 2), 6)
    assert surface(m).sum() == 6**3 - 4**3


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_nsd_of_shifted_cubes(shift):
    # A cube of side n and the same cube moved `shift` voxels along X: every surface voxel of one is within
    # shift * dx of the other's surface, and the surfaces share exactly the side rings of the n - shift
    # overlapping X slices, (n - shift) * (n^2 - (n - 2)^2) voxels.
    n, dx = 8, 1.5
    truth = _cube((20, 14, 14), (3, 3, 3), n).astype(int)
    pred = _cube((20, 14, 14), (3 + shift, 3, 3), n).astype(int)
    spacing = (dx, 1.0, 1.0)
    assert nsd_per_class(pred, truth, 2, spacing, shift * dx)[0] == pytest.approx(1.0)
    assert nsd_per_class(pred, truth, 2, spacing, shift * dx - 0.01)[0] < 1.0
    shared = (n - shift) * (n**2 - (n - 2) ** 2)
    assert nsd_per_class(pred, truth, 2, spacing, 0.5)[0] == pytest.approx(2 * shared / (2 * (n**3 - (n - 2) ** 3)))


def test_nsd_of_concentric_spheres():
    # Spheres of radius 8 and 10 mm: surfaces 2 mm apart (up to voxelisation, under 1 voxel).
    g = np.indices((32, 32, 32)) - 15.5
    r = np.sqrt((g**2).sum(0))
    small, big = (r <= 8).astype(int), (r <= 10).astype(int)
    assert nsd_per_class(small, big, 2, (1, 1, 1), 3.0)[0] == 1.0
    assert nsd_per_class(small, big, 2, (1, 1, 1), 0.9)[0] < 0.1


@pytest.mark.parametrize("seed", range(3))
def test_nsd_matches_monai(seed):
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.standard_normal((3, 20, 18, 16)), 2)
    pred = np.digitize(noise[0], [-0.05, 0.05])
    truth = np.digitize(noise[1], [-0.05, 0.05])
    spacing = (1.0, 2.0, 1.5)
    ours = nsd_per_class(pred, truth, 3, spacing, [2.0, 3.0])
    onehot = lambda a: F.one_hot(torch.as_tensor(a), 3).permute(3, 0, 1, 2)[None].float()
    ref = compute_surface_dice(onehot(pred), onehot(truth), [2.0, 3.0], spacing=spacing)[0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_nsd_empty_and_bad_args():
    truth = _cube((10, 10, 10), (2, 2, 2), 4).astype(int)
    assert nsd_per_class(np.zeros_like(truth), truth, 2, (1, 1, 1), 1.0)[0] == 0.0
    assert np.isnan(nsd_per_class(truth, np.zeros_like(truth), 2, (1, 1, 1), 1.0)[0])
    with pytest.raises(ValueError, match="spacing"):
        nsd_per_class(truth, truth, 2, (1, 1), 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        nsd_per_class(truth, truth, 3, (1, 1, 1), [1.0])
