"""Export of networks built on the fast ops: torch.export programs, portable (ATen-only) programs, ONNX.

``torch.export.export(model, args)`` works on every built network as it is: the fast ops stay custom ops
(``nas3d::depthwise_conv3``, ``nas3d::onednn_conv3d``, ...) with fake kernels, so the exported program
runs them at their eager speed where nas3d_fast is imported. Runtimes that do not know the ``nas3d``
namespace (ONNX, ExecuTorch, TensorRT, AOTInductor on a machine without the package) need the program
in torch's own operators: ``portable_program`` rewrites every nas3d op into the plain-PyTorch operators of
its reference, and ``export_onnx`` hands that program to ``torch.onnx.export`` (the dynamo exporter;
needs the ``onnx`` and ``onnxscript`` packages: ``pip install nas3d_fast[export]``).

The rewrite is exact for inference with finite weights. It differs from the fast ops only where their
documented rules go beyond torch's: ``depthwise_conv3`` skips out-of-volume taps where a weight is
non-finite (torch's zero padding gives 0 * inf = NaN at the border), and ``max_pool3``'s tap code (read
only by its backward) is not computed. Supernet-only ops (``gumbel_topk``, the window ops) have no
rewrite: export a built network (``space.build(arch, ...)``), not a supernet.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..reference import axial as reference_axial
from ..reference import mixed as reference_mixed

__all__ = ["export_onnx", "portable_decompositions", "portable_program"]


def _max_pool3(x, stride):
    out = F.max_pool3d(x, 3, stride, padding=1)
    return out, torch.zeros(out.shape, dtype=torch.uint8, device=x.device)


def _depthwise_conv3(x, weight, stride, dilation):
    return F.conv3d(x, weight, stride=stride, padding=dilation, dilation=dilation, groups=x.shape[1])


def _onednn_conv3d(x, weight, stride, padding):
    return F.conv3d(x, weight, stride=stride, padding=padding)


def portable_decompositions() -> dict[torch._ops.OpOverload, Callable]:
    """{nas3d op overload: a function of torch operators computing its forward}, for
    ``ExportedProgram.run_decompositions`` (on top of ``torch.export.default_decompositions()``)."""
    import nas3d_fast.ops  # noqa: F401  (registers the nas3d ops' fake kernels)
    from . import conv  # noqa: F401  (registers nas3d::onednn_conv3d)

    ops = torch.ops.nas3d
    return {
        ops.weighted_sum.default: reference_mixed.weighted_sum,
        ops.kernel_merge.default: reference_mixed.kernel_merge,
        ops.max_pool3.default: _max_pool3,
        ops.avg_pool3.default: reference_mixed.avg_pool3,
        ops.depthwise_conv3.default: _depthwise_conv3,
        ops.axial_attention.default: reference_axial.axial_attention_and_lse,
        ops.onednn_conv3d.default: _onednn_conv3d,
    }


def portable_program(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with every nas3d op rewritten into torch's own operators (see the module docstring).

    Raises:
        ValueError: a nas3d op without a rewrite is left (a supernet's), naming it.
    """
    if not isinstance(program, torch.export.ExportedProgram):
        raise TypeError(f"program must be a torch.export.ExportedProgram, got {type(program).__name__}")
    table = torch.export.default_decompositions()
    table.update(portable_decompositions())
    portable = program.run_decompositions(table)
    left = sorted({str(n.target) for n in portable.graph.nodes if n.op == "call_function" and _is_nas3d(n.target)})
    if left:
        raise ValueError(
            f"program holds nas3d ops with no portable form: {left} (export a built network, "
            "space.build(arch, ...), not a supernet)"
        )
    return portable


def _is_nas3d(target) -> bool:
    return isinstance(target, torch._ops.OpOverload) and target.namespace == "nas3d"


def export_onnx(
    model: torch.nn.Module | torch.export.ExportedProgram,
    args: tuple,
    path: str | os.PathLike,
    *,
    dynamic_shapes=None,
    **onnx_kwargs,
):
    """Export ``model`` (in eval mode; a module, or a program from torch.export) to the ONNX file ``path``.

    Args:
        model: the network, e.g. ``space.build(arch, in_channels, classes).eval()``.
        args: example inputs, e.g. ``(torch.randn(1, C, 96, 96, 96),)``.
        path: the .onnx file, written through a temporary name and renamed.
        dynamic_shapes: as for torch.export.export (e.g. a dynamic batch), for a module.
        onnx_kwargs: passed on to ``torch.onnx.export`` (e.g. ``opset_version``).

    Returns:
        The ``torch.onnx.ONNXProgram``.
    """
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple of example inputs, got {type(args).__name__}")
    if isinstance(model, torch.nn.Module):
        if model.training:
            raise ValueError("model must be in eval mode (model.eval()): ONNX export is for inference")
        program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    elif isinstance(model, torch.export.ExportedProgram):
        program = model
    else:
        raise TypeError(f"model must be a torch.nn.Module or an ExportedProgram, got {type(model).__name__}")
    onnx_program = torch.onnx.export(portable_program(program), args, dynamo=True, verbose=False, **onnx_kwargs)
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        onnx_program.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return onnx_program
