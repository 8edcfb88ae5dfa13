"""Patch sampler: foreground:background ratio, patches inside the volume, padding of small volumes."""

import numpy as np
import pytest

from nas3d_fast.data import sample_patch
from nas3d_fast.data.sampler import is_foreground_draw


def _volume():
    label = np.zeros((40, 30, 20), np.int16)
    label[30:34, 3:6, 15:18] = 1  # small foreground in a corner region
    image = np.stack([label.astype(np.float32) * 5, np.arange(label.size, dtype=np.float32).reshape(label.shape)])
    return image, label


def test_ratio_pattern():
    assert [is_foreground_draw(i) for i in range(4)] == [True, False, True, False]
    assert [is_foreground_draw(i, 1, 2) for i in range(6)] == [True, False, False, True, False, False]
    assert all(is_foreground_draw(i, 1, 0) for i in range(5))
    with pytest.raises(ValueError, match="0:0"):
        is_foreground_draw(0, 0, 0)


def test_foreground_patches_contain_foreground_and_match_the_volume():
    image, label = _volume()
    rng = np.random.default_rng(0)
    fg_hits = bg_hits = 0
    for _ in range(50):
        img, lab, start = sample_patch(image, label, (12, 10, 8), True, rng)
        assert img.shape == (2, 12, 10, 8) and lab.shape == (12, 10, 8)
        sl = tuple(slice(s, s + n) for s, n in zip(start, (12, 10, 8)))
        assert np.array_equal(img, image[(slice(None), *sl)]) and np.array_equal(lab, label[sl])
        fg_hits += lab.any()
        _, lab, start = sample_patch(image, label, (12, 10, 8), False, rng)
        assert all(0 <= s <= n - p for s, n, p in zip(start, label.shape, (12, 10, 8)))
        bg_hits += lab.any()
    assert fg_hits == 50
    assert bg_hits < 25  # the foreground is small: uniform patches mostly miss it


def test_small_volumes_are_padded_and_empty_labels_fall_back():
    image, label = np.ones((1, 6, 30, 4), np.float32), np.zeros((6, 30, 4), np.int16)
    img, lab, _ = sample_patch(image, label, (10, 10, 10), True, np.random.default_rng(1))
    assert img.shape == (1, 10, 10, 10) and not lab.any()
    assert img.sum() == 6 * 10 * 4  # the volume's voxels, the rest zero padding
    with pytest.raises(ValueError, match="patch size"):
        sample_patch(image, label, (10, 10), True, np.random.default_rng(1))
    with pytest.raises(ValueError, match="grid"):
        sample_patch(image, label[:5], (4, 4, 4), True, np.random.default_rng(1))
