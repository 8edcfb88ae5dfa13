"""Training-step memory predicted on meta tensors against the CPU allocator's measurement, the
breakdown, and argument checks. Networks: tests/profile_models.py."""

import copy

import pytest
import torch
from profile_models import EdgeNet, SmallUNet
from torch import nn

from nas3d_fast import spaces
from nas3d_fast.profile import CATEGORIES, measure_training_memory, predict_training_memory


def _param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )


@pytest.mark.parametrize(
    "make,size,batch", [(lambda: EdgeNet(8), 16, 1), (lambda: SmallUNet(8), 24, 2)], ids=["nas3d_ops", "unet"]
)
def test_prediction_matches_cpu_measurement(make, size, batch):
    torch.manual_seed(0)
    model = make()
    shape = (1, size, size, size)
    predicted = predict_training_memory(model, shape, batch_size=batch, num_classes=3, target="cpu")
    measured = measure_training_memory(copy.deepcopy(model), shape, batch_size=batch, num_classes=3, device="cpu")
    error = abs(predicted.peak_bytes - measured.peak_bytes) / measured.peak_bytes
    assert error < 0.02, (predicted, measured)
    for report in (predicted, measured):
        assert set(report.breakdown) == set(CATEGORIES)
        assert sum(report.breakdown.values()) == report.peak_bytes
        assert report.breakdown["parameters"] == _param_bytes(model)
    # the peak is reached with Adam's state allocated (two moments per parameter, a 4-byte step each)
    n = len(list(model.parameters()))
    params = sum(p.numel() * 4 for p in model.parameters())
    assert predicted.breakdown["optimizer_state"] == 2 * params + 4 * n
    assert predicted.method == "predicted" and measured.method == "measured"


def test_cuda_target_rounds_blocks_and_reserves_segments():
    model = SmallUNet(4)
    report = predict_training_memory(model, (1, 16, 16, 16), batch_size=1, num_classes=2, target="cuda")
    assert report.device == "cuda"
    assert report.peak_bytes % 512 == 0
    assert report.reserved_bytes % (2 * 2**20) == 0 and report.reserved_bytes >= report.peak_bytes
    assert sum(report.breakdown.values()) == report.peak_bytes
    assert report.breakdown["workspace"] == 0  # cuDNN workspaces are not modelled
    # Adam's step counters stay on the host: the state is the two moments, each in 512-byte blocks
    moments = sum(2 * -(-p.numel() * 4 // 512) * 512 for p in model.parameters())
    assert report.breakdown["optimizer_state"] == moments
    cpu = predict_training_memory(model, (1, 16, 16, 16), batch_size=1, num_classes=2, target="cpu")
    assert report.peak_bytes >= cpu.peak_bytes - cpu.breakdown["workspace"]


def test_meta_models_and_models_left_alone():
    torch.manual_seed(0)
    real = EdgeNet(4)
    before = {k: v.clone() for k, v in real.state_dict().items()}
    with torch.device("meta"):
        meta = EdgeNet(4)
    a = predict_training_memory(real, (1, 8, 8, 8), batch_size=1, num_classes=3, target="cuda")
    b = predict_training_memory(meta, (1, 8, 8, 8), batch_size=1, num_classes=3, target="cuda")
    assert a.peak_bytes == b.peak_bytes and a.breakdown == b.breakdown
    assert all(torch.equal(before[k], v) for k, v in real.state_dict().items())
    assert all(p.grad is None for p in real.parameters())


def test_optimizer_state_by_optimizer():
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Conv3d(4, 2, 1))
    params = sum(p.numel() * 4 for p in model.parameters())
    kwargs = {"batch_size": 1, "num_classes": 2, "target": "cpu"}
    sgd = predict_training_memory(model, (1, 8, 8, 8), optimizer="sgd", **kwargs)
    adam = predict_training_memory(model, (1, 8, 8, 8), optimizer="adam", steps=1, **kwargs)
    adam2 = predict_training_memory(model, (1, 8, 8, 8), optimizer="adam", steps=2, **kwargs)
    assert sgd.breakdown["optimizer_state"] == params  # the momentum buffers
    assert adam2.breakdown["optimizer_state"] >= 2 * params
    assert adam2.peak_bytes >= adam.peak_bytes


def test_bad_arguments_name_the_problem():
    model = nn.Conv3d(1, 2, 1)
    ok = {"batch_size": 1, "num_classes": 2}
    with pytest.raises(ValueError, match="target must be one of"):
        predict_training_memory(model, (1, 4, 4, 4), target="tpu", **ok)
    with pytest.raises(ValueError, match=r"input_shape must be \(C, X, Y, Z\)"):
        predict_training_memory(model, (4, 4, 4), **ok)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        predict_training_memory(model, (1, 4, 4, 4), batch_size=0, num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        predict_training_memory(model, (1, 4, 4, 4), batch_size=1, num_classes=1)
    with pytest.raises(ValueError, match="loss must be one of"):
        predict_training_memory(model, (1, 4, 4, 4), loss="l2", **ok)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        predict_training_memory(model, (1, 4, 4, 4), optimizer="lion", **ok)
    with pytest.raises(ValueError, match="logits"):
        predict_training_memory(nn.Conv3d(1, 2, 2, stride=2), (1, 4, 4, 4), **ok)
    with pytest.raises(NotImplementedError, match="amp"):
        predict_training_memory(model, (1, 4, 4, 4), amp=True, **ok)
    with pytest.raises(ValueError, match="device must be 'cpu' or a CUDA device"):
        measure_training_memory(model, (1, 4, 4, 4), device="meta", **ok)


def test_callable_loss_and_optimizer():
    model = nn.Conv3d(1, 2, 1)
    calls = []

    def loss(logits, target):
        calls.append(logits.shape)
        return logits.mean()

    report = predict_training_memory(
        model,
        (1, 4, 4, 4),
        batch_size=2,
        num_classes=2,
        loss=loss,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
        target="cpu",
        steps=1,
    )
    assert calls == [torch.Size([2, 2, 4, 4, 4])]
    assert report.breakdown["optimizer_state"] == 0  # plain SGD keeps no state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_prediction_against_max_memory_allocated():
    torch.manual_seed(0)
    model = SmallUNet(8)
    shape = (1, 32, 32, 32)
    predicted = predict_training_memory(model, shape, batch_size=2, num_classes=3, target="cuda")
    measured = measure_training_memory(copy.deepcopy(model), shape, batch_size=2, num_classes=3, device="cuda")
    assert abs(predicted.peak_bytes - measured.peak_bytes) / measured.peak_bytes < 0.10, (predicted, measured)


class _Supernet(nn.Module):
    """A space's supernet with its architecture logits as parameters, dense softmax weights (DARTS,
    DiNTS): the model a weight-sharing search trains."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.logits = nn.ParameterDict({k: nn.Parameter(torch.zeros(s)) for k, s in net.arch_shapes().items()})

    def forward(self, x):
        return self.net(x, {k: logits.softmax(-1) for k, logits in self.logits.items()})


SUPERNETS = {
    "dints_shared": lambda: spaces.get("dints", num_blocks=2, num_depths=3, channel_mul=0.25).supernet(1, 2),
    "dints_per_op": lambda: spaces.get("dints", num_blocks=2, num_depths=3, channel_mul=0.25, p3d=True).supernet(
        1, 2, norm="per_op"
    ),
    "scnas": lambda: spaces.get("scnas", base_channels=4).supernet(1, 2),
    "ronasmis": lambda: spaces.get("ronasmis").supernet(1, 2),
}


@pytest.mark.parametrize("name", list(SUPERNETS))
def test_supernet_prediction_matches_cpu_measurement(name):
    torch.manual_seed(0)
    model = _Supernet(SUPERNETS[name]())
    side = 32 if name.startswith("dints") else 2 * spaces.get(name).stride
    shape = (1, side, side, side)
    predicted = predict_training_memory(model, shape, batch_size=1, num_classes=2, target="cpu")
    # one step after making Adam's state: the steady state's peak at a third of the profiled steps
    measured = measure_training_memory(
        copy.deepcopy(model), shape, batch_size=1, num_classes=2, device="cpu", steps=1, steady_state=True
    )
    assert abs(predicted.peak_bytes - measured.peak_bytes) / measured.peak_bytes < 0.02, (predicted, measured)


def test_forward_reading_tensor_values_is_refused_clearly():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 1)

        def forward(self, x):
            keep = (self.conv.weight.flatten() > 0).tolist()  # values a meta tensor does not have
            return self.conv(x)[:, [i for i, k in enumerate(keep) if k or i == 0]]

    with pytest.raises(ValueError, match="copies tensor values to the host"):
        predict_training_memory(Branchy(), (1, 4, 4, 4), batch_size=1, num_classes=2, target="cpu")
