"""Atomic writers (issue 26 defect 10): the mode an ordinary open() would give, fsync of the file and its
folder, and nothing left behind on failure."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from nas3d_fast import _atomic
from nas3d_fast.train import checkpoint as ck


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


WRITERS = {
    "json": lambda p: _atomic.write_json({"a": 1}, str(p)),
    "text": lambda p: _atomic.atomic_write(str(p), lambda f: f.write("x\n"), mode="w"),
    "torch": lambda p: ck.atomic_save({"w": torch.ones(2)}, str(p)),
    "numpy": lambda p: _numpy_write(p),
}


def _numpy_write(path):
    with _atomic.atomic_path(str(path), ".npy") as tmp:
        np.save(tmp, np.arange(3))


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("mask,want", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_new_files_follow_the_umask(tmp_path, umask, writer, mask, want):
    """mkstemp made every file 0600 whatever the umask: colleagues could not read checkpoints."""
    umask(mask)
    target = tmp_path / "out.bin"
    WRITERS[writer](target)
    assert _mode(target) == want
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_replaced_file_keeps_its_mode(tmp_path, umask, writer):
    umask(0o022)
    target = tmp_path / "out.bin"
    target.write_text("old")
    os.chmod(target, 0o600)
    WRITERS[writer](target)
    assert _mode(target) == 0o600 and target.read_bytes() != b"old"


def test_the_file_and_its_folder_are_fsynced(tmp_path, monkeypatch):
    """Only the training checkpoint was fsynced; the docstring promised whole files to every writer."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _atomic.write_json({"a": 1}, str(tmp_path / "sub" / "x.json"))
    folder = str(tmp_path / "sub")
    assert len(synced) == 2
    assert os.path.dirname(synced[0]) == folder and os.path.basename(synced[0]).startswith(".tmp-")  # before the rename
    assert synced[1] == folder


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    _atomic.write_json({"v": 1}, str(target))

    def boom(f):
        f.write("{half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _atomic.atomic_write(str(target), boom, mode="w")
    assert target.read_text() == '{\n  "v": 1\n}\n' and os.listdir(tmp_path) == ["x.json"]
