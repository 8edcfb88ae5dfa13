"""The CPU workspace model of oneDNN's strided convolution backward (profile/workspace.py) against the
allocator's measurement, for kernels that overhang the input and pointwise ones, on 1 and 2 threads."""

import copy

import pytest
import torch
from profile_models import StridedConvNet

from nas3d_fast.profile import measure_training_memory, predict_training_memory
from nas3d_fast.profile.workspace import _conv_backend


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize(
    "c_in,c_out,kernel",
    [(32, 256, (3, 3, 3)), (40, 48, (3, 3, 3)), (64, 64, (3, 3, 1)), (32, 32, (1, 1, 1))],
    ids=["wide", "uneven", "p3d", "pointwise"],
)
def test_strided_conv_backward_on_onednn(threads, c_in, c_out, kernel):
    size = 32
    torch.manual_seed(0)
    model = StridedConvNet(c_in, c_out, kernel)
    x = torch.empty(1, c_in, size, size, size)
    padding = model.conv.padding
    backend = _conv_backend(x, model.conv.weight, (2, 2, 2), padding, (1, 1, 1), False, (0, 0, 0), 1)
    if backend != "Mkldnn":
        pytest.skip(f"torch picks {backend} here, not oneDNN")
    shape = (1, size, size, size)
    predicted = predict_training_memory(model, shape, batch_size=1, num_classes=2, target="cpu")
    measured = measure_training_memory(copy.deepcopy(model), shape, batch_size=1, num_classes=2, device="cpu")
    error = abs(predicted.peak_bytes - measured.peak_bytes) / measured.peak_bytes
    assert error < 0.03, (threads, predicted, measured)


@pytest.mark.parametrize("capability,forward,backward_8ch,backward_16ch", [("AVX2", 8, 8, 8), ("AVX512", 16, 8, 16)])
def test_onednn_channel_blocks_follow_the_cpu(monkeypatch, capability, forward, backward_8ch, backward_16ch):
    """Blocks of 8 channels with AVX2; with AVX-512, 16, except in backward kernels whose input
    channels do not fill blocks of 16 (oneDNN then runs its AVX2 kernels)."""
    from nas3d_fast.profile import workspace

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert workspace._channel_block() == forward
    assert workspace._backward_block(torch.empty(1, 8, 2, 2, 2)) == backward_8ch
    assert workspace._backward_block(torch.empty(1, 32, 2, 2, 2)) == backward_16ch
    assert workspace._blocked(torch.empty(1, 3, 2, 2, 2)) == forward * 8 * 4
