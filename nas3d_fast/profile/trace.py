"""Follows the lifetime of every tensor storage while a training step runs (on meta or real tensors).

:class:`LifetimeTracker` is a ``TorchDispatchMode``: every op's outputs whose storage it has not seen
are allocations; a weak reference on each storage (PyTorch keeps one Python object per storage while
the storage lives) reports its free the moment the last tensor on it dies. Storages resized in place
(``resize_`` of ops with ``out=``, ``untyped_storage().resize_``) are recorded as a free and a new
allocation. ``.item()`` on a meta tensor (e.g. torch.optim's step counter) answers 1.

The result is a trace: ``sizes[i]`` and ``categories[i]`` of allocation i, and ``events``, a list of
``i`` (allocate) and ``~i`` (free) in program order, that ``allocators.replay`` replays.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .meta_shapes import fast_output

_ITEM = torch.ops.aten._local_scalar_dense.default
_MKLDNN_CONV = torch.ops.aten.mkldnn_convolution.default


class LifetimeTracker(TorchDispatchMode):
    """Records allocations and frees of tensor storages.

    workspace: optional ``fn(func, args, out) -> (before, during)`` giving bytes an op holds
    internally (see ``workspace.cpu_workspace``); recorded as "workspace" allocations around its outputs.
    clock: when True, every event also records ``time.time_ns()`` (to line up with profiler events).
    host: optional ``fn(tensor) -> bool``; storages it accepts are filed as "host" (not device memory).
    """

    def __init__(self, workspace: Callable | None = None, clock: bool = False, host: Callable | None = None):
        super().__init__()
        self.sizes: list[int] = []
        self.categories: list[str] = []
        self.events: list[int] = []
        self.times: list[int] = []
        self.phase = "setup"
        self._live: dict[int, tuple[int, weakref.ref]] = {}
        self._workspace = workspace
        self._clock = clock
        self._resize = None
        self._host = host
        self.recording = True

    # -- recording ---------------------------------------------------------------------------------

    def _event(self, e: int) -> None:
        self.events.append(e)
        if self._clock:
            self.times.append(time.time_ns())

    def _new(self, nbytes: int, category: str) -> int:
        i = len(self.sizes)
        self.sizes.append(nbytes)
        self.categories.append(category)
        self._event(i)
        return i

    def _freed(self, key: int, _ref=None) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self._event(~entry[0])

    def track(self, t: torch.Tensor, category: str | None = None) -> int | None:
        """Record t's storage as allocated now (if new); returns its allocation id."""
        storage = t.untyped_storage()
        key = storage._cdata
        entry = self._live.get(key)
        nbytes = storage.nbytes()
        if entry is not None:
            i = entry[0]
            if self.sizes[i] == nbytes:
                return i
            self._live.pop(key)  # resized in place: the old block goes, a new one comes
            self._event(~i)
            category = category or self.categories[i]
        if self._host is not None and self._host(t):
            category = "host"
        i = self._new(nbytes, category or self._default_category())
        self._live[key] = (i, weakref.ref(storage, lambda ref, key=key: self._freed(key)))
        return i

    def _default_category(self) -> str:
        return "optimizer_state" if self.phase == "optimizer" else "activations"

    def allocation(self, t: torch.Tensor) -> int | None:
        """The id of the live allocation holding t's storage, or None."""
        entry = self._live.get(t.untyped_storage()._cdata)
        return None if entry is None else entry[0]

    def set_category(self, t: torch.Tensor, category: str) -> None:
        i = self.allocation(t)
        if i is not None:
            self.categories[i] = category

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    # -- the dispatch mode -------------------------------------------------------------------------

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in torch._disable_dynamo unless this says False: a
        # wrapper per op for a mode that never runs under torch.compile
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _ITEM and _is_fake(args[0]):  # .item() has no value to give
            return _placeholder(args[0].dtype)
        out = fast_output(func, args, kwargs)
        if out is None and func is _MKLDNN_CONV and args[0].device.type == "meta":
            out = _meta_mkldnn_convolution(*args)
        if out is None:
            out = func(*args, **kwargs)
        if not self.recording:
            return out
        before = during = 0
        if self._workspace is not None:
            before, during = self._workspace(func, args, out)
        if before:
            self._event(~self._new(before, "workspace"))
        ws = self._new(during, "workspace") if during else None
        if isinstance(out, torch.Tensor):
            self.track(out)
        elif isinstance(out, (tuple, list)):
            for o in out:
                if isinstance(o, torch.Tensor):
                    self.track(o)
                elif isinstance(o, (tuple, list)):
                    for p in o:
                        if isinstance(p, torch.Tensor):
                            self.track(p)
        if ws is not None:
            self._event(~ws)
        return out

    def __enter__(self):
        tracker = self
        original = torch.UntypedStorage.resize_

        def resize_(storage, size):
            result = original(storage, size)
            entry = tracker._live.get(storage._cdata) if tracker.recording else None
            if entry is not None and tracker.sizes[entry[0]] != storage.nbytes():
                tracker._live.pop(storage._cdata)
                tracker._event(~entry[0])
                i = tracker._new(storage.nbytes(), tracker.categories[entry[0]])
                key = storage._cdata
                tracker._live[key] = (i, weakref.ref(storage, lambda ref, key=key: tracker._freed(key)))
            return result

        self._resize = torch.UntypedStorage.__dict__.get("resize_")
        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *exc):
        if self._resize is None:
            del torch.UntypedStorage.resize_
        else:
            torch.UntypedStorage.resize_ = self._resize
        return super().__exit__(*exc)

    def close(self) -> None:
        """Stop following storages (their later frees are not part of the trace)."""
        self._live.clear()


def _is_fake(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def _placeholder(dtype: torch.dtype):
    if dtype == torch.bool:
        return True
    if dtype.is_floating_point or dtype.is_complex:
        return 1.0
    return 1


def _meta_mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups):
    """aten.mkldnn_convolution (``nas3d_fast.nn.conv``'s CPU route) has no meta kernel: its output is
    that of the convolution it computes."""
    return torch.ops.aten.convolution.default(
        x, weight, bias, stride, padding, dilation, False, [0] * len(stride), groups
    )
