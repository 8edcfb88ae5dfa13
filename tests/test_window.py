"""window_gather / window_stitch: every backend against the reference (through the op harness), and
stitching that is bit-identical from run to run."""

from __future__ import annotations

import pytest
import torch
from harness import OpSpec, OpTests, backend_params, forced_backend

from nas3d_fast.ops import window_gather, window_stitch

ROI = [4, 5, 6]


def _starts(B, shape, roi, n, gen):
    rows = [torch.randint(0, B, (n, 1), generator=gen)]
    for d in range(3):
        rows.append(torch.randint(0, shape[d] - roi[d] + 1, (n, 1), generator=gen))
    return torch.cat(rows, dim=1)


def gather_inputs(dtype, device, contiguous=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, C, shape = 2, 3, (9, 8, 11)
    volume = torch.randn(B, C, *shape, generator=gen, dtype=torch.float64)
    if not contiguous:  # every other voxel along the last axis of a channels-last buffer
        wide = torch.zeros(B, *shape[:2], 2 * shape[2], C, dtype=torch.float64)
        wide[..., ::2, :] = volume.permute(0, 2, 3, 4, 1)
        volume = wide.to(device=device, dtype=dtype)[..., ::2, :].permute(0, 4, 1, 2, 3)
    starts = _starts(B, shape, ROI, 7, gen)
    return {"volume": volume.to(device=device, dtype=dtype), "starts": starts.to(device), "roi": list(ROI)}


def stitch_inputs(dtype, device, contiguous=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, C, shape, N = 2, 3, (9, 8, 11), 7
    out = torch.randn(B, C, *shape, generator=gen, dtype=torch.float64)
    pred = torch.randn(N, C, *ROI, generator=gen, dtype=torch.float64)
    weight = torch.rand(*ROI, generator=gen, dtype=torch.float64) + 0.1
    if not contiguous:
        wide = torch.zeros(N, C, *ROI[:2], 2 * ROI[2], dtype=torch.float64)
        wide[..., ::2] = pred
        pred = wide.to(device=device, dtype=dtype)[..., ::2]
    starts = _starts(B, shape, ROI, N, gen)
    starts[1] = starts[0]  # two windows at the same place: order matters
    return {
        "out": out.to(device=device, dtype=dtype),
        "pred": pred.to(device=device, dtype=dtype),
        "weight": weight.to(device=device, dtype=dtype),
        "starts": starts.to(device),
    }


def call_gather(inputs):
    return window_gather(**inputs)


def call_stitch(inputs):
    return window_stitch(inputs["out"].clone(), inputs["pred"], inputs["weight"], inputs["starts"])


def gather_opchecks():
    def compiled(device):
        i = gather_inputs(torch.float32, device)
        return [(torch.ops.nas3d.window_gather.default, (i["volume"], i["starts"], i["roi"]))]

    def triton(device):
        import nas3d_fast.kernels.triton.window  # noqa: F401

        i = gather_inputs(torch.float32, device)
        return [(torch.ops.nas3d.window_gather_triton.default, (i["volume"], i["starts"], i["roi"]))]

    return {"cpu": compiled, "cuda": compiled, "triton": triton}


def stitch_opchecks():
    def compiled(device):
        i = stitch_inputs(torch.float32, device)
        return [(torch.ops.nas3d.window_stitch.default, (i["out"], i["pred"], i["weight"], i["starts"]))]

    def triton(device):
        import nas3d_fast.kernels.triton.window  # noqa: F401

        i = stitch_inputs(torch.float32, device)
        return [(torch.ops.nas3d.window_stitch_triton.default, (i["out"], i["pred"], i["weight"], i["starts"]))]

    return {"cpu": compiled, "cuda": compiled, "triton": triton}


def gather_bad_inputs(device):
    good = gather_inputs(torch.float32, device)
    v, s = good["volume"], good["starts"]
    far = s.clone()
    far[2, 3] = v.shape[4] - ROI[2] + 1
    neg = s.clone()
    neg[0, 1] = -1
    return [
        ("rank", {**good, "volume": v[0]}, ValueError, "volume must have 5 dimensions"),
        ("int volume", {**good, "volume": v.long()}, ValueError, "volume must have dtype"),
        ("starts cols", {**good, "starts": s[:, :3]}, ValueError, "starts must have shape \\(N, 4\\)"),
        ("starts dtype", {**good, "starts": s.float()}, ValueError, "starts must have dtype"),
        ("outside", {**good, "starts": far}, (ValueError, RuntimeError), "outside"),
        ("negative", {**good, "starts": neg}, (ValueError, RuntimeError), "outside"),
        ("roi rank", {**good, "roi": [4, 5]}, ValueError, "roi must be 3 ints"),
        ("roi large", {**good, "roi": [4, 5, 12]}, ValueError, "roi must lie in"),
    ]


def stitch_bad_inputs(device):
    good = stitch_inputs(torch.float32, device)
    o, p, w, s = good["out"], good["pred"], good["weight"], good["starts"]
    far = s.clone()
    far[1, 2] = o.shape[3]
    bad_batch = s.clone()
    bad_batch[0, 0] = o.shape[0]

    def call(**kw):
        return {**good, **kw}

    return [
        ("pred rank", call(pred=p[0]), ValueError, "pred must have 5 dimensions"),
        ("pred dtype", call(pred=p.double()), ValueError, "pred must have the dtype of out"),
        ("weight shape", call(weight=w[:, :, :2]), ValueError, "weight must have the window shape"),
        ("channels", call(pred=p[:, :2]), ValueError, "pred must have the channels of out"),
        ("starts rows", call(starts=s[:3]), ValueError, "one row per window"),
        ("outside", call(starts=far), (ValueError, RuntimeError), "outside"),
        ("batch", call(starts=bad_batch), (ValueError, RuntimeError), "outside"),
    ]


class TestWindowGather(OpTests):
    spec = OpSpec(
        name="window_gather",
        call=call_gather,
        make_inputs=gather_inputs,
        grad_inputs=(),
        float_outputs=(0,),  # a copy: compared with zero tolerance
        gradcheck_backends=(),
        tolerances={torch.float64: (0.0, 0.0), torch.float32: (0.0, 0.0)},
        opchecks=gather_opchecks(),
        bad_inputs=gather_bad_inputs,
    )


class TestWindowStitch(OpTests):
    spec = OpSpec(
        name="window_stitch",
        call=call_stitch,
        make_inputs=stitch_inputs,
        grad_inputs=(),
        float_outputs=(0,),
        gradcheck_backends=(),
        opchecks=stitch_opchecks(),
        bad_inputs=stitch_bad_inputs,
    )

    def test_noncontiguous_out_refused(self):
        good = stitch_inputs(torch.float32, "cpu")
        out = good["out"].transpose(3, 4).contiguous().transpose(3, 4)
        with pytest.raises(ValueError, match="out must be contiguous"):
            window_stitch(out, good["pred"], good["weight"], good["starts"])

    @pytest.mark.parametrize("backend,device", backend_params())
    def test_bit_identical_runs(self, backend, device):
        """Many overlapping windows: the same bits every run (no atomics, fixed order)."""
        gen = torch.Generator().manual_seed(3)
        out = torch.zeros(1, 2, 12, 12, 12, device=device)
        pred = torch.randn(40, 2, *ROI, generator=gen).to(device)
        weight = torch.rand(*ROI, generator=gen).to(device)
        starts = _starts(1, (12, 12, 12), ROI, 40, gen).to(device)
        with forced_backend(backend):
            first = window_stitch(out.clone(), pred, weight, starts)
            for _ in range(3):
                assert torch.equal(window_stitch(out.clone(), pred, weight, starts), first)
