"""Models of the allocators that a traced training step's allocations are replayed through.

A trace is a sequence of events over allocations: ``alloc(id, nbytes)`` and ``free(id)``. An
allocator model turns each request into the bytes it really holds:

:class:`CpuAllocator`: PyTorch's default CPU allocator hands each tensor its own block from the
C library (64-byte aligned); the bytes it accounts (what the profiler reports) are the requested
sizes, so the model's total is the sum of live requests.

:class:`CudaCachingAllocator`: PyTorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp,
default settings), modelled as:

- rounding: a request of n bytes becomes max(512, n rounded up to a multiple of 512) (kMinBlockSize);
- two pools: blocks of <= 1 MiB (kSmallSize) come from the small pool, larger ones from the large pool;
- segments (cudaMalloc'd memory): a small request opens a 2 MiB segment (kSmallBuffer); a large
  request below 10 MiB (kMinLargeAlloc) opens a 20 MiB segment (kLargeBuffer); larger requests open a
  segment of their size rounded up to 2 MiB (kRoundLarge);
- best fit: a request takes the smallest free block of its pool that is large enough (lowest address
  among equals), opening a new segment only when none fits;
- splitting: the block is split when the remainder is >= 512 bytes (small pool) or > 1 MiB (large
  pool); otherwise the request holds (and is charged for) the whole block;
- freeing: a freed block merges with free neighbours of its segment; segments are never given back
  (no ``empty_cache``, no memory pressure), so reserved memory only grows.

``allocated`` (``torch.cuda.memory_allocated``) is the sum of live blocks' sizes and ``reserved``
(``memory_reserved``) the sum of segments. Not modelled: cuDNN/cuBLAS workspaces (allocated inside the
kernels, through the caching allocator, when the step runs), the CUDA context and the kernels' code
(outside the allocator: hundreds of MiB that nvidia-smi shows), other streams, ``max_split_size_mb``,
``roundup_power2_divisions``, ``expandable_segments`` and ``garbage_collection_threshold`` of
``PYTORCH_CUDA_ALLOC_CONF``, and freeing of cached segments when cudaMalloc fails.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

KB, MB = 1024, 1024 * 1024
MIN_BLOCK = 512
SMALL_SIZE = 1 * MB
SMALL_BUFFER = 2 * MB
LARGE_BUFFER = 20 * MB
MIN_LARGE_ALLOC = 10 * MB
ROUND_LARGE = 2 * MB


def round_size(nbytes: int) -> int:
    """The caching allocator's block size for a request of ``nbytes``."""
    if nbytes < MIN_BLOCK:
        return MIN_BLOCK
    return MIN_BLOCK * ((nbytes + MIN_BLOCK - 1) // MIN_BLOCK)


def segment_size(block: int) -> int:
    """The size of the segment opened for a (rounded) block that no free block can hold."""
    if block <= SMALL_SIZE:
        return SMALL_BUFFER
    if block < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * ((block + ROUND_LARGE - 1) // ROUND_LARGE)


class _Block:
    __slots__ = ("addr", "free", "next", "prev", "size", "small")

    def __init__(self, addr: int, size: int, small: bool):
        self.addr, self.size, self.small, self.free = addr, size, small, True
        self.prev: _Block | None = None
        self.next: _Block | None = None


class CudaCachingAllocator:
    """The model described in the module docstring. ``malloc(nbytes) -> handle``, ``free(handle)``;
    ``allocated`` and ``reserved`` are the current totals in bytes, ``segments`` the segment sizes."""

    def __init__(self):
        self._pools: dict[bool, list[tuple[int, int, _Block]]] = {True: [], False: []}  # small? -> sorted free
        self._next_addr = 0
        self.allocated = 0
        self.reserved = 0
        self.segments: list[int] = []

    def _insert(self, block: _Block) -> None:
        block.free = True
        bisect.insort(self._pools[block.small], (block.size, block.addr, block))

    def _remove(self, block: _Block) -> None:
        pool = self._pools[block.small]
        i = bisect.bisect_left(pool, (block.size, block.addr))
        del pool[i]

    def malloc(self, nbytes: int) -> _Block | None:
        if nbytes <= 0:
            return None  # a zero-size request gets no block
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self._pools[small]
        i = bisect.bisect_left(pool, (size, -1))
        if i < len(pool):
            block = pool.pop(i)[2]
        else:
            seg = segment_size(size)
            block = _Block(self._next_addr, seg, small)
            self._next_addr += seg + ROUND_LARGE  # a gap: blocks of two segments are never neighbours
            self.reserved += seg
            self.segments.append(seg)
        remaining = block.size - size
        if remaining >= MIN_BLOCK if small else remaining > SMALL_SIZE:
            rest = _Block(block.addr + size, remaining, small)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            self._insert(rest)
        block.free = False
        self.allocated += block.size
        return block

    def free(self, block: _Block | None) -> None:
        if block is None:
            return
        self.allocated -= block.size
        for neighbour in (block.prev, block.next):
            if neighbour is not None and neighbour.free:
                self._remove(neighbour)
                if neighbour is block.prev:
                    neighbour.size += block.size
                    neighbour.next = block.next
                    if block.next is not None:
                        block.next.prev = neighbour
                    block = neighbour
                else:
                    block.size += neighbour.size
                    block.next = neighbour.next
                    if neighbour.next is not None:
                        neighbour.next.prev = block
        self._insert(block)


class CpuAllocator:
    """The CPU allocator's accounting: every request holds exactly its size."""

    def __init__(self):
        self.allocated = 0

    @property
    def reserved(self) -> int:
        return self.allocated

    def malloc(self, nbytes: int) -> int:
        self.allocated += nbytes
        return nbytes

    def free(self, handle: int) -> None:
        self.allocated -= handle


def make_allocator(target: str):
    if target == "cuda":
        return CudaCachingAllocator()
    if target == "cpu":
        return CpuAllocator()
    raise ValueError(f"target must be 'cuda' or 'cpu', got {target!r}")


def replay(
    events: Iterable[int], sizes: Sequence[int], categories: Sequence[str], target: str
) -> tuple[int, int, dict[str, int]]:
    """Replay a trace through the ``target`` allocator model.

    events: allocation ids ``i >= 0`` (allocate ``sizes[i]`` bytes) and ``~i`` (free allocation i).
    categories: each allocation's category (its bytes count there in the breakdown), or "host" for
    allocations that live outside the target device (skipped).
    Returns (peak allocated, peak reserved, the allocated bytes per category at the allocated peak).
    """
    allocator = make_allocator(target)
    handles: dict[int, object] = {}
    held: dict[str, int] = {}
    peak, peak_reserved, at_peak = 0, 0, {}
    for e in events:
        if e >= 0:
            cat = categories[e]
            if cat == "host":
                continue
            before = allocator.allocated
            handles[e] = allocator.malloc(sizes[e])
            held[cat] = held.get(cat, 0) + allocator.allocated - before
            if allocator.allocated > peak:
                peak, at_peak = allocator.allocated, dict(held)
            peak_reserved = max(peak_reserved, allocator.reserved)
        else:
            i = ~e
            if i not in handles:
                continue
            before = allocator.allocated
            allocator.free(handles.pop(i))
            held[categories[i]] -= before - allocator.allocated
    return peak, peak_reserved, at_peak
