import json
import os
import subprocess
import sys

from nas3d_fast import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_info_prints_versions_and_backend_table(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "triton", "torch CUDA", "reference", "cpu", "cuda"):
        assert word in out
    assert "usable" in out


def test_bench_quick_writes_json(tmp_path):
    path = tmp_path / "gumbel.json"
    done = subprocess.run(
        [sys.executable, "-m", "nas3d_fast.cli", "bench", "gumbel", "--quick", "--json", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(path.read_text())
    assert doc["suite"] == "gumbel"
    assert "speedup_vs_eager" in doc["ratios"] and doc["ratios"]["speedup_vs_eager"] > 0
    for case in doc["cases"].values():
        assert case["median_s"] > 0 and (case["peak_mib"] is None or case["peak_mib"] >= 0)
    assert "speedup_vs_eager" in done.stdout
