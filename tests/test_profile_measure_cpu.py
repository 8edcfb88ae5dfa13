"""The CPU measurement counts the allocations of its own session: a block allocated during an earlier
profiling session and freed during the measurement does not lower the measured peak."""

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from nas3d_fast.profile import measure_training_memory

SHAPE = (1, 16, 16, 16)


def _measure(model, loss):
    return measure_training_memory(
        copy.deepcopy(model), SHAPE, batch_size=1, num_classes=2, loss=loss, device="cpu", steps=2
    )


def test_free_of_an_earlier_sessions_block_is_not_counted():
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))
    held = {}

    def loss(logits, target):
        held.pop("old", None)  # e.g. a previous candidate's optimiser state, collected mid-step
        return F.cross_entropy(logits, target)

    baseline = _measure(model, loss)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
        held["old"] = torch.ones(64 * 2**20, dtype=torch.uint8)  # the allocator's reporter records its size
    freed_during = _measure(model, loss)
    assert "old" not in held
    assert freed_during.peak_bytes == baseline.peak_bytes
