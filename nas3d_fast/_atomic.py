"""Files written whole or not at all: written under a temporary name beside the target, then renamed
over it (``os.replace`` is atomic on POSIX), so a crash or a kill never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def atomic_path(path: str, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a fresh temporary file name in ``path``'s folder (created if missing), ending in ``suffix``
    (nibabel and numpy choose the format from it). When the block ends without an error the file is
    renamed to ``path``; otherwise it is deleted and the error propagates."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(obj, path: str, indent: int | None = 2) -> None:
    """``obj`` as JSON at ``path``, atomically."""
    with atomic_path(path, ".json") as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
