"""reuse_freed_pages: large blocks come from glibc's heap while it is active (where freed pages stay
mapped for the next block), and exit restores the thresholds and trims the heap (needs glibc)."""

import ctypes

import pytest
import torch

from nas3d_fast.inference import heap, sliding_window_inference

pytestmark = pytest.mark.skipif(not heap.enabled(), reason="needs glibc malloc (mallopt, malloc_trim)")

BIG = (48 << 20) // 4  # float32 elements in 48 MiB: above glibc's largest dynamic mmap threshold (32 MiB)


def _is_mmapped_chunk(address: int) -> bool:
    """glibc's IS_MMAPPED bit (0x2) in the size field just before a malloc'ed block: set for blocks
    served by their own mmap (unmapped on free), clear for blocks of an arena's heap."""
    return bool(ctypes.c_size_t.from_address(address - ctypes.sizeof(ctypes.c_size_t)).value & 0x2)


def test_large_blocks_come_from_the_heap_inside():
    with heap.reuse_freed_pages():
        block = torch.empty(BIG)
        assert not _is_mmapped_chunk(block.data_ptr())
        with heap.reuse_freed_pages():  # nested: the inner exit does not restore
            pass
        again = torch.empty(BIG)
        assert not _is_mmapped_chunk(again.data_ptr())


def test_large_blocks_are_mapped_on_their_own_outside():
    """The check above means something: a 1 GiB block (beyond any free heap space here) outside it."""
    block = torch.empty(1 << 28)
    assert _is_mmapped_chunk(block.data_ptr())


class _RecordingLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, option, value):
        self.calls.append(("mallopt", option, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_exit_restores_the_environment_thresholds(monkeypatch):
    libc = _RecordingLibc()
    monkeypatch.setattr(heap, "_libc", libc)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with heap.reuse_freed_pages():
        with heap.reuse_freed_pages():
            pass
        assert libc.calls == [("mallopt", -3, 1 << 30), ("mallopt", -1, 1 << 30)]
    assert libc.calls[2:] == [("mallopt", -3, 65536), ("mallopt", -1, 131072), ("malloc_trim", 0)]


def test_sliding_window_uses_it_only_when_asked(monkeypatch):
    x = torch.randn(1, 1, 40, 36, 30, generator=torch.Generator().manual_seed(0))

    def predictor(t):
        return torch.cat([t, t * 2 - 1], dim=1)

    off = sliding_window_inference(x, (24, 24, 24), 3, predictor, overlap=0.5, mode="gaussian")
    libc = _RecordingLibc()
    monkeypatch.setattr(heap, "_libc", libc)
    off_again = sliding_window_inference(x, (24, 24, 24), 3, predictor, overlap=0.5, mode="gaussian")
    assert libc.calls == []
    monkeypatch.undo()
    on = sliding_window_inference(x, (24, 24, 24), 3, predictor, overlap=0.5, mode="gaussian",
                                  nas3d_reuse_freed_pages=True)
    assert torch.equal(on, off) and torch.equal(off_again, off)
    monkeypatch.setattr(heap, "_libc", libc)
    sliding_window_inference(x, (24, 24, 24), 3, predictor, nas3d_reuse_freed_pages=True)
    assert [c[0] for c in libc.calls] == ["mallopt", "mallopt", "mallopt", "mallopt", "malloc_trim"]
    labels = sliding_window_inference(x, (24, 24, 24), 3, predictor, nas3d_output="labels",
                                      nas3d_reuse_freed_pages=True)
    assert len(libc.calls) == 5, "the streamed path (bounded memory) must not use it"
    assert labels.shape == (1, 1, 40, 36, 30)


def test_sliding_window_rejects_a_non_bool():
    with pytest.raises(ValueError, match="nas3d_reuse_freed_pages must be True or False"):
        sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), 4, 1, lambda t: t, nas3d_reuse_freed_pages="yes")
