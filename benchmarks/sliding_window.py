"""Suite ``sliding_window``: whole-volume sliding-window inference, nas3d vs MONAI 1.6.1 with the same
arguments (``monai.inferers.sliding_window_inference``).

- ``cheap_gaussian``: (1, 1, 192, 192, 160), roi 96^3, sw_batch_size 4, overlap 0.5, gaussian, a
  predictor that only repeats the input to 3 channels: the cost of the inference machinery itself.
- ``labels_large``: (1, 1, 384, 384, 256), the same cheap 3-class predictor, label map out (MONAI: its
  output, then argmax over channels, device="cpu"; nas3d: nas3d_output="labels", streamed slab by slab).
- ``unet``: MONAI's UNet(3, 1 -> 3, channels (8, 16, 32, 64), strides (2, 2, 2), num_res_units=1) in
  eval mode under no_grad, (1, 1, 192, 192, 160), gaussian, overlap 0.5.
- ``cheap_predictor_only`` (a diagnostic, not a result): the cheap predictor alone on the windows of
  ``cheap_gaussian`` (27 windows in batches of 4), with no gathering or stitching. MONAI's time over
  its time, ``cheap_gaussian.speedup_ceiling``, bounds what any inference machinery can reach with
  that predictor on the machine.
- ``unet_reuse``: the ``unet`` case with ``nas3d_reuse_freed_pages=True`` (not a MONAI argument: nas3d's
  opt-in trade of peak memory for speed), against the same MONAI call.
MONAI is a benchmark dependency (the ``bench`` extra); without it the MONAI cases are skipped.
"""

from __future__ import annotations

import importlib.util

import torch

from nas3d_fast.inference import sliding_window_inference

from .core import Case, Ratio, Suite

ROI = (96, 96, 96)
SW_BATCH = 4


def _monai_skip(device: str) -> str | None:
    return None if importlib.util.find_spec("monai") is not None else "monai is not installed (pip install monai)"


def _cheap(t: torch.Tensor) -> torch.Tensor:
    return t.repeat(1, 3, 1, 1, 1)


def _input(shape, device):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)


def _unet(device):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 3, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1).to(device).eval()

    def predict(t):
        with torch.no_grad():
            return net(t)

    return predict


def _make(side: str, case: str):
    def build(device: str):
        from monai.inferers import sliding_window_inference as monai_swi  # noqa: F401 (imported lazily)

        if case == "labels_large":
            x = _input((1, 1, 384, 384, 256), device)
            if side == "nas3d":
                return lambda: sliding_window_inference(x, ROI, SW_BATCH, _cheap, nas3d_output="labels")
            return lambda: monai_swi(x, ROI, SW_BATCH, _cheap, device="cpu").argmax(dim=1)
        x = _input((1, 1, 192, 192, 160), device)
        predictor = _cheap if case == "cheap_gaussian" else _unet(device)
        kw = dict(overlap=0.5, mode="gaussian")
        if side == "nas3d":
            reuse = case == "unet_reuse"
            return lambda: sliding_window_inference(x, ROI, SW_BATCH, predictor, nas3d_reuse_freed_pages=reuse, **kw)
        return lambda: monai_swi(x, ROI, SW_BATCH, predictor, **kw)

    return build


def _cheap_predictor_only(device: str):
    """The cheap predictor on cheap_gaussian's 27 windows (3 x 3 x 3 positions), batches of 4."""
    sizes = [SW_BATCH] * (27 // SW_BATCH) + [27 % SW_BATCH]
    batches = [_input((n, 1, *ROI), device) for n in sizes if n]

    def run():
        for batch in batches:
            _cheap(batch)

    return run


CASE_NAMES = ("cheap_gaussian", "labels_large", "unet")
CASES = tuple(
    Case(f"{side}_{name}", _make(side, name), side, devices=("cpu", "cuda"), skip_reason=_monai_skip)
    for name in CASE_NAMES
    for side in ("nas3d", "monai")
) + (
    Case("nas3d_unet_reuse", _make("nas3d", "unet_reuse"), "nas3d", devices=("cpu",), skip_reason=_monai_skip),
    Case("cheap_predictor_only", _cheap_predictor_only, "floor", devices=("cpu", "cuda")),
)

SUITE = Suite(
    name="sliding_window",
    description="sliding-window inference vs MONAI 1.6.1 sliding_window_inference, same arguments",
    cases=CASES,
    ratios=(
        Ratio("cheap_gaussian.speedup_vs_monai", "nas3d_cheap_gaussian", "monai_cheap_gaussian"),
        Ratio("cheap_gaussian.memory_vs_monai", "nas3d_cheap_gaussian", "monai_cheap_gaussian", kind="memory"),
        Ratio("cheap_gaussian.speedup_ceiling", "cheap_predictor_only", "monai_cheap_gaussian"),
        Ratio("labels_large.speedup_vs_monai", "nas3d_labels_large", "monai_labels_large"),
        Ratio("labels_large.memory_vs_monai", "nas3d_labels_large", "monai_labels_large", kind="memory"),
        Ratio("unet.speedup_vs_monai", "nas3d_unet", "monai_unet"),
        Ratio("unet_reuse.speedup_vs_monai", "nas3d_unet_reuse", "monai_unet"),
        Ratio("unet_reuse.memory_vs_monai", "nas3d_unet_reuse", "monai_unet", kind="memory"),
    ),
    quick_cases=("nas3d_cheap_gaussian", "monai_cheap_gaussian"),
)
