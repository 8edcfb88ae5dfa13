"""The demo (``make demo``) end to end at a tiny size: search, train the found and the default network, infer,
and the summary and picture it writes; a rerun resumes (nothing searched or trained again)."""

from __future__ import annotations

import json

from nas3d_fast import demo

TINY = ["--subjects", "4", "--search-epochs", "1", "--search-steps-per-epoch", "2", "--search-patch", "16", "16",
        "16", "--epochs", "1", "--steps-per-epoch", "2", "--val-every", "1", "--patch", "32", "32", "32",
        "--batch-size", "1", "--base-channels", "2", "--quiet"]


def test_the_demo_searches_trains_both_networks_and_reports_them(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    search = summary["search"]
    assert search["searcher"] == "gumbel" and search["steps"] == 2
    assert json.loads((out / "search" / "arch.json").read_text()) == search["arch"]
    assert search["predicted_peak_mib"] > 0
    found, default = summary["networks"]["found"], summary["networks"]["default"]
    assert found["training"]["steps"] == default["training"]["steps"] == 2
    for net in (found, default):
        assert set(net["dice"]) == {"grey matter", "white matter"} and 0 <= net["mean_foreground_dice"] <= 1
        assert net["predicted_peak_mib"] > 0
    assert summary["mean_foreground_dice"] == found["mean_foreground_dice"]
    assert (out / "slices.png").stat().st_size > 0 and (out / "prediction.nii.gz").exists()
    text = capsys.readouterr().out
    assert "found network: mean foreground Dice" in text and "default U-Net at about the same" in text
    before = (out / "search" / "checkpoint.pt").stat().st_mtime_ns, (out / "run" / "best.pt").stat().st_mtime_ns
    assert demo.main(["--out", str(out), *TINY]) == 0  # resumes: searched and trained already
    assert json.loads((out / "summary.json").read_text())["search"]["arch"] == search["arch"]
    after = (out / "search" / "checkpoint.pt").stat().st_mtime_ns, (out / "run" / "best.pt").stat().st_mtime_ns
    assert after[1] == before[1]
