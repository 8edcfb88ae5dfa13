"""Backend availability, forcing, and the import fallback when nas3d_fast._C is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import nas3d_fast
from nas3d_fast import dispatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=full_env,
        timeout=300,
    )


def test_backends_table_lists_every_backend_with_reasons():
    table = nas3d_fast.backends()
    assert list(table) == ["reference", "cpu", "cuda", "triton"]
    assert table["reference"].usable
    for status in table.values():
        assert status.usable == (status.reason == "")


def test_cpu_backend_usable_when_extension_built():
    if not nas3d_fast._extension.available():
        pytest.skip(f"_C not built: {nas3d_fast._extension.load_error}")
    assert nas3d_fast.backends()["cpu"].usable


def test_set_backend_validates_name():
    with pytest.raises(ValueError, match="set_backend\\(name\\) must be one of"):
        nas3d_fast.set_backend("fast")


def test_forced_backend_that_cannot_run_lists_its_reasons():
    if torch.cuda.is_available():
        pytest.skip("cuda can run here")
    nas3d_fast.set_backend("cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' \\(forced by set_backend\\(\\)\\) cannot run"):
        nas3d_fast.ops.gumbel_topk(torch.randn(4, 3), 1.0)


def test_automatic_choice_for_cpu_tensors():
    expected = "cpu" if nas3d_fast.backends()["cpu"].usable else "reference"
    assert dispatch.choose("op", torch.device("cpu"), ("cuda", "triton")) == expected


def test_no_backend_error_lists_every_reason(monkeypatch):
    monkeypatch.setitem(dispatch._STATUS_CACHE, "reference", dispatch.BackendStatus("reference", False, "broken"))
    monkeypatch.setitem(dispatch._STATUS_CACHE, "cpu", dispatch.BackendStatus("cpu", False, "not built"))
    monkeypatch.setattr(dispatch, "_CHOICE_CACHE", {})
    with pytest.raises(RuntimeError, match="no backend can run.*cpu: not built.*reference: broken"):
        dispatch.choose("op", torch.device("cpu"), ("cuda", "triton"))


def test_env_variable_forces_backend():
    done = run_python(
        """
        import torch, nas3d_fast
        assert nas3d_fast.get_backend() == "reference", nas3d_fast.get_backend()
        w, i = nas3d_fast.ops.gumbel_topk(torch.randn(5, 4), 0.5)
        print("ok")
    """,
        env={"NAS3D_BACKEND": "reference"},
    )
    assert done.returncode == 0, done.stderr
    bad = run_python("import nas3d_fast", env={"NAS3D_BACKEND": "gpu"})
    assert bad.returncode != 0 and "NAS3D_BACKEND must be one of" in bad.stderr


def test_import_without_extension_warns_once_and_falls_back():
    done = run_python(
        """
        import sys, warnings
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "nas3d_fast._C":
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import nas3d_fast
            import nas3d_fast.ops
        ours = [w for w in caught if "nas3d_fast._C" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        assert "make install" in str(ours[0].message)
        table = nas3d_fast.backends()
        assert not table["cpu"].usable and "could not be loaded" in table["cpu"].reason
        import torch
        w, i = nas3d_fast.ops.gumbel_topk(torch.randn(6, 5, requires_grad=True), 0.5)
        w.sum().backward()
        assert i.shape == (6, 2)
        print("ok")
    """,
        env={"TRITON_INTERPRET": "0"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
