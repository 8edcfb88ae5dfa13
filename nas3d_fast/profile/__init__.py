"""Memory profiling of training steps (SPEC §7): measured on CUDA and CPU, predicted without the device.

- ``measure_training_memory(model, input_shape, *, batch_size, num_classes, device, ...)``: runs the
  steps and reads the allocator (``measure``).
- ``predict_training_memory(model, input_shape, *, batch_size, num_classes, target, ...)``: traces the
  steps on meta tensors and replays their allocations through a model of the target's allocator
  (``predict``, ``trace``, ``allocators``, ``workspace``).
- ``sample_within(space, budget_bytes, input_shape, batch_size, rng, ...)``: rejection sampling of a
  space's architectures inside a memory budget (``sample``).

Both return a :class:`MemoryReport`: the peak in bytes and its breakdown into parameters, gradients,
optimiser state, activations and workspace.
"""

from .allocators import CpuAllocator, CudaCachingAllocator, replay, round_size, segment_size
from .loss import dice_ce
from .measure import measure_training_memory
from .predict import predict_training_memory, trace_training
from .report import CATEGORIES, MemoryReport
from .sample import BudgetError, sample_within

__all__ = [
    "CATEGORIES",
    "BudgetError",
    "CpuAllocator",
    "CudaCachingAllocator",
    "MemoryReport",
    "dice_ce",
    "measure_training_memory",
    "predict_training_memory",
    "replay",
    "round_size",
    "sample_within",
    "segment_size",
    "trace_training",
]
