"""The result of a memory measurement or prediction: a peak and what it is made of."""

from __future__ import annotations

import dataclasses

#: the parts of a training step's memory, in the order tables print them.
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "workspace")


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Peak memory of training steps, in bytes.

    ``peak_bytes``: the most memory held by tensors at once (CUDA: ``max_memory_allocated``, i.e. with
    the caching allocator's block rounding; CPU: bytes requested from the CPU allocator).
    ``reserved_bytes``: CUDA only, the most memory the caching allocator held from the driver
    (``max_memory_reserved``); equal to ``peak_bytes`` on CPU.
    ``breakdown``: ``peak_bytes`` split into :data:`CATEGORIES` at the moment of the peak:
    parameters (and buffers), gradients (the ``.grad`` of parameters), optimizer_state (the optimiser's
    state and its step's temporaries), activations (inputs, saved tensors, autograd temporaries, the
    loss) and workspace (memory that kernels allocate internally, e.g. im2col columns of a CPU
    convolution; in measurements, whatever the peak holds beyond the tensors that Python sees).
    ``device``: where it was measured, or the target of a prediction. ``method``: "measured" or
    "predicted". ``seconds``: wall time the measurement or prediction took.
    """

    peak_bytes: int
    reserved_bytes: int
    breakdown: dict
    device: str
    method: str
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {self.breakdown.get(k, 0) / 2**20:.1f}" for k in CATEGORIES)
        return f"{self.method} peak on {self.device}: {self.peak_bytes / 2**20:.1f} MiB ({parts} MiB)"
