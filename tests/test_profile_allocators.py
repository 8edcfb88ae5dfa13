"""The CUDA caching-allocator and CPU allocator models against hand-computed cases."""

import pytest

from nas3d_fast.profile import CpuAllocator, CudaCachingAllocator, replay, round_size, segment_size

KiB, MiB = 1024, 2**20


def test_rounding_to_512_byte_blocks():
    assert round_size(1) == 512
    assert round_size(512) == 512
    assert round_size(513) == 1024
    assert round_size(4 * 1000) == 4096  # 4000 bytes -> 8 blocks of 512
    assert round_size(3 * MiB + 1) == 3 * MiB + 512


def test_segment_sizes_by_pool():
    assert segment_size(512) == 2 * MiB  # small pool: 2 MiB segments
    assert segment_size(1 * MiB) == 2 * MiB
    assert segment_size(1 * MiB + 512) == 20 * MiB  # large, below 10 MiB: 20 MiB segments
    assert segment_size(10 * MiB - 512) == 20 * MiB
    assert segment_size(10 * MiB) == 10 * MiB  # from 10 MiB on: rounded up to 2 MiB
    assert segment_size(11 * MiB) == 12 * MiB


def test_small_requests_share_one_segment_and_reuse_freed_blocks():
    a = CudaCachingAllocator()
    blocks = [a.malloc(700) for _ in range(3)]
    assert a.allocated == 3 * 1024 and a.reserved == 2 * MiB and a.segments == [2 * MiB]
    a.free(blocks[1])
    assert a.allocated == 2 * 1024
    again = a.malloc(1000)  # best fit: the freed 1024-byte block, not the tail of the segment
    assert again.addr == blocks[1].addr and a.reserved == 2 * MiB
    a.malloc(1 * MiB)  # the rest of the segment, in two small requests
    a.malloc(1 * MiB - 3 * 1024)
    assert a.reserved == 2 * MiB
    a.malloc(1)  # no room: a second small segment
    assert a.reserved == 4 * MiB and a.allocated == 2 * MiB + 512


def test_large_block_not_split_when_remainder_is_at_most_1mib():
    a = CudaCachingAllocator()
    a.malloc(3 * MiB)  # opens a 20 MiB segment, split: 3 MiB used, 17 MiB free
    assert (a.allocated, a.reserved) == (3 * MiB, 20 * MiB)
    a.malloc(16 * MiB + 512 * KiB)  # fits the 17 MiB block; the 0.5 MiB rest is not split off
    assert (a.allocated, a.reserved) == (20 * MiB, 20 * MiB)


def test_freed_neighbours_merge_back():
    a = CudaCachingAllocator()
    x, y = a.malloc(4 * MiB), a.malloc(4 * MiB)  # both from one 20 MiB segment
    assert a.reserved == 20 * MiB
    a.free(x)
    a.malloc(15 * MiB)  # x's 4 MiB and the 12 MiB tail are not neighbours: a new 16 MiB segment
    assert a.reserved == 36 * MiB
    b = CudaCachingAllocator()
    x, y = b.malloc(4 * MiB), b.malloc(4 * MiB)
    b.free(x)
    b.free(y)  # merges with x and with the tail: one free 20 MiB block
    b.malloc(15 * MiB)
    assert (b.allocated, b.reserved) == (15 * MiB, 20 * MiB)


def test_pools_are_separate():
    a = CudaCachingAllocator()
    a.free(a.malloc(2 * MiB))  # large pool: 20 MiB segment, now all free
    a.malloc(100)  # small requests never take large-pool blocks
    assert a.reserved == 22 * MiB and a.allocated == 512


def test_big_requests_get_their_own_rounded_segment():
    a = CudaCachingAllocator()
    a.malloc(30 * MiB + 1)
    assert a.reserved == 32 * MiB and a.allocated == 30 * MiB + 512


def test_zero_byte_requests_hold_nothing():
    a = CudaCachingAllocator()
    a.free(a.malloc(0))
    assert a.allocated == 0 and a.reserved == 0


def test_cpu_allocator_counts_requested_bytes():
    a = CpuAllocator()
    h = a.malloc(700)
    a.malloc(300)
    assert a.allocated == 1000 == a.reserved
    a.free(h)
    assert a.allocated == 300


def test_replay_peak_breakdown_and_host_allocations():
    sizes = [3 * MiB, 700, 5 * MiB, 64]
    categories = ["parameters", "activations", "activations", "host"]
    events = [0, 1, 3, ~1, 2, ~2, ~3]
    peak, reserved, at_peak = replay(events, sizes, categories, "cuda")
    assert peak == 8 * MiB  # 3 MiB + 5 MiB (the 700-byte block was freed first; host is not device memory)
    assert reserved == 22 * MiB  # a 20 MiB segment holds both large blocks, a 2 MiB one the small
    assert at_peak == {"parameters": 3 * MiB, "activations": 5 * MiB}
    peak, reserved, at_peak = replay(events, sizes, categories, "cpu")
    assert peak == 8 * MiB and reserved == peak
    with pytest.raises(ValueError, match="target must be 'cuda' or 'cpu'"):
        replay(events, sizes, categories, "tpu")
