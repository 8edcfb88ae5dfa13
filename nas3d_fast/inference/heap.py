"""Reuse of freed CPU memory across predictor calls (glibc's malloc; a no-op elsewhere).

glibc serves every allocation above its mmap threshold (at most 32 MiB when left to itself) with a
fresh ``mmap`` and unmaps it on free. A predictor's output for a batch of windows is usually larger
than that: (4, 3, 96, 96, 96) float32 is 42 MiB, so each call touches 42 MiB of new pages, and the
kernel's page faults (zero-filling every 4 KiB page) cost more than the predictor's own arithmetic.
While it is active, ``reuse_freed_pages`` raises the mmap and trim thresholds so that freed blocks
stay in the heap and the next batch reuses pages that are already mapped; on exit it sets them back
and returns the freed heap to the system with ``malloc_trim``.

The price is the heap's fragmentation: small allocations split freed blocks, so some large ones are
placed afresh, and the peak resident set grows by an amount that varies from run to run. The ``unet``
and ``unet_reuse`` cases of ``python -m benchmarks.run sliding_window`` (a small U-Net, without and
with it) gave 405 and 499 MiB, and 0.98x and 1.50x MONAI's speed. Single runs of the ``unet_reuse``
peak (``--peak-of nas3d_unet_reuse``) gave up to 673 MiB. That is why it is opt-in
(``sliding_window_inference(..., nas3d_reuse_freed_pages=True)``, or this context manager around any code).

glibc offers no way to read the thresholds or to turn its dynamic threshold back on, so on exit they
are set to the values of ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` when the environment
gives them, else to the ceiling glibc's dynamic adjustment reaches (32 MiB mmap, 64 MiB trim on 64-bit).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_DURING = 1 << 30  # bytes: blocks up to 1 GiB come from (and return to) the heap
_DYNAMIC_MMAP_CEILING = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)

_lock = threading.Lock()
_depth = 0


def _glibc():
    """The C library if it is glibc (it has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (raises AttributeError on musl and others)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        return libc
    except (OSError, AttributeError):
        return None


_libc = _glibc()


def _restore_values() -> tuple[int, int]:
    """(mmap, trim) thresholds to set on exit: the environment's, else glibc's dynamic ceiling."""

    def env(name: str, default: int) -> int:
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            return default

    mmap_threshold = env("MALLOC_MMAP_THRESHOLD_", _DYNAMIC_MMAP_CEILING)
    return mmap_threshold, env("MALLOC_TRIM_THRESHOLD_", 2 * mmap_threshold)


def enabled() -> bool:
    """Whether ``reuse_freed_pages`` changes anything here (the C library is glibc)."""
    return _libc is not None


@contextlib.contextmanager
def reuse_freed_pages():
    """Keep freed blocks of up to 1 GiB in glibc's heap while the block runs (nests; thread-safe)."""
    global _depth
    if not enabled():
        yield
        return
    with _lock:
        if _depth == 0:
            _libc.mallopt(_M_MMAP_THRESHOLD, _DURING)
            _libc.mallopt(_M_TRIM_THRESHOLD, _DURING)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                mmap_threshold, trim_threshold = _restore_values()
                _libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
                _libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
                _libc.malloc_trim(0)
