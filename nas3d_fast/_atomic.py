"""Files written whole or not at all: written under a temporary name beside the target, flushed to disk,
then renamed over it (``os.replace`` is atomic on POSIX) and the folder flushed too, so a crash, a kill
or a power cut leaves either the previous complete file or the new complete file, never a partial one.

The new file gets the mode an ordinary ``open(path, "w")`` would give it: the target's own mode when it
replaces an existing file, else 0o666 less the process umask (``tempfile.mkstemp`` alone makes every file
0600, which colleagues sharing a server cannot read)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def _umask() -> int:
    # The only portable way to read the umask is to set it; put it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. folders on some network file systems cannot be fsynced; the rename still happened
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a fresh temporary file name in ``path``'s folder (created if missing), ending in ``suffix``
    (nibabel and numpy choose the format from it). The caller writes the file and closes it inside the
    block. When the block ends without an error the file is fsynced, given the mode described in the
    module docstring, renamed to ``path``, and the folder is fsynced; otherwise it is deleted and the
    error propagates."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        _fsync_path(tmp, os.O_RDONLY)
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_path(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb", suffix: str = ".tmp") -> None:
    """Call ``write(file)`` on a temporary file opened with ``mode`` beside ``path``, then put it in place
    as :func:`atomic_path` does."""
    with atomic_path(path, suffix) as tmp:
        with open(tmp, mode) as f:
            write(f)


def write_json(obj, path: str, indent: int | None = 2) -> None:
    """``obj`` as JSON at ``path``, atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent) + "\n"), mode="w", suffix=".json")
