"""sample_within (through SearchSpace.sample_within) and ``nas3d profile`` on a toy space."""

import json

import numpy as np
import pytest
import torch
from profile_models import WidthSpace

from nas3d_fast import cli, spaces
from nas3d_fast.profile import BudgetError, predict_training_memory, sample_within

MiB = 2**20
SHAPE = (1, 16, 16, 16)


def _peak(space, arch, target="cuda"):
    with torch.device("meta"):
        model = space.build(arch, 1, 2)
    return predict_training_memory(model, SHAPE, batch_size=1, num_classes=2, target=target).peak_bytes


def test_sampled_candidates_lie_inside_the_budget():
    space = spaces.get("toy_profile_test")
    peaks = sorted({_peak(space, space.decode([w, k])) for w in range(5) for k in range(2)})
    budget = peaks[len(peaks) // 2]
    tolerance = budget - peaks[1]
    rng = np.random.default_rng(0)
    for _ in range(4):
        arch, report = space.sample_within(budget, SHAPE, 1, rng, tolerance=tolerance, return_report=True)
        assert budget - tolerance <= report.peak_bytes <= budget
        assert report.peak_bytes == _peak(space, arch)


def test_infeasible_budget_and_missed_window_are_reported():
    space = spaces.get("toy_profile_test")
    smallest = min(_peak(space, space.decode([w, k])) for w in range(5) for k in range(2))
    with pytest.raises(BudgetError, match="below the smallest candidate found"):
        sample_within(space, smallest - 512, SHAPE, 1, 0, max_tries=20)
    with pytest.raises(BudgetError, match="no candidate within"):
        sample_within(space, 10**12, SHAPE, 1, 0, tolerance=0, max_tries=5)
    with pytest.raises(ValueError, match="multiples of 2"):
        sample_within(space, 10**9, (1, 16, 16, 15), 1, 0)
    with pytest.raises(ValueError, match="mode must be one of"):
        sample_within(space, 10**9, SHAPE, 1, 0, mode="guess")


def test_measure_mode_measures_on_the_cpu():
    space = spaces.get("toy_profile_test")
    _arch, report = sample_within(
        space, 64 * MiB, SHAPE, 1, 1, tolerance=64 * MiB, mode="measure", device="cpu", return_report=True
    )
    assert report.method == "measured" and report.peak_bytes <= 64 * MiB


def test_cli_table_and_json(tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = [
        "profile",
        "--space",
        "toy_profile_test",
        "--sample",
        "2",
        "--patch",
        "8",
        "8",
        "8",
        "--batch",
        "1",
        "--mode",
        "both",
        "--device",
        "cpu",
        "--json",
        str(out),
        "--quiet",
    ]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "predicted MiB" in text and "measured MiB" in text
    doc = json.loads(out.read_text())
    assert len(doc["rows"]) == 2 and doc["settings"]["target"] == "cpu"
    for row in doc["rows"]:
        assert row["params"] > 0 and row["flops"] > 0
        assert abs(row["error_pct"]) < 5
        assert row["predicted"]["peak_bytes"] > 0 and row["measured"]["peak_bytes"] > 0


def test_cli_one_architecture_and_budget(tmp_path, capsys):
    space = spaces.get("toy_profile_test")
    path = tmp_path / "arch.json"
    path.write_text(space.decode([4, 1]).to_json())
    assert (
        cli.main(
            [
                "profile",
                "--space",
                "toy_profile_test",
                "--arch",
                str(path),
                "--patch",
                "8",
                "8",
                "8",
                "--batch",
                "2",
                "--target",
                "cuda",
                "--quiet",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "predicted for cuda" in lines[0]
    assert (
        cli.main(
            [
                "profile",
                "--space",
                "toy_profile_test",
                "--sample",
                "2",
                "--patch",
                "8",
                "8",
                "8",
                "--batch",
                "1",
                "--budget",
                "1GiB",
                "--tolerance",
                "1GiB",
                "--quiet",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--space", "nope", "--sample", "1"], "unknown search space 'nope'"),
        (["--space", "toy_profile_test", "--sample", "1", "--patch", "8", "8", "7"], "multiples of 2"),
        (["--space", "toy_profile_test", "--sample", "1", "--budget", "4KiB"], "below the smallest candidate"),
        (["--space", "toy_profile_test", "--sample", "0"], "--sample must be >= 1"),
    ],
)
def test_cli_bad_arguments(argv, message, capsys):
    full = ["profile", "--patch", "8", "8", "8", "--batch", "1", "--quiet", *argv]
    assert cli.main(full) == 2
    assert message in capsys.readouterr().err


def test_cli_budget_needs_bytes(capsys):
    with pytest.raises(SystemExit):
        cli.main(
            [
                "profile",
                "--space",
                "toy_profile_test",
                "--sample",
                "1",
                "--patch",
                "8",
                "8",
                "8",
                "--batch",
                "1",
                "--budget",
                "lots",
            ]
        )
    assert "expected a number of bytes" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cli_calibrate_needs_cuda(capsys):
    argv = [
        "profile",
        "--space",
        "toy_profile_test",
        "--sample",
        "1",
        "--patch",
        "8",
        "8",
        "8",
        "--batch",
        "1",
        "--calibrate",
    ]
    assert cli.main(argv) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_space_registered():
    assert "toy_profile_test" in spaces.names() and WidthSpace.stride == 2


# --- regressions of issue 26 (defect 12) ------------------------------------------------------------------


def _profile_default_arch(tmp_path, budget):
    out = tmp_path / "rows.json"
    argv = ["profile", "--space", "ronasmis", "--space-option", "base_channels=2", "--space-option", "depth=3",
            "--space-option", "layers_per_stage=1", "--arch", "default", "--patch", "8", "8", "8", "--batch", "1",
            "--budget", budget, "--json", str(out), "--quiet"]
    assert cli.main(argv) == 0
    return json.loads(out.read_text())


def test_cli_profiles_the_default_arch_of_a_configured_space_against_a_budget(tmp_path, capsys):
    """nas3d profile had no --space-option and no --arch default (so the candidate nas3d train trains could
    not be profiled), and with --arch it recorded --budget but ignored it."""
    doc = _profile_default_arch(tmp_path, "64GiB")
    options = doc["settings"]["space_options"]  # the space's full options, defaults included
    assert (options["base_channels"], options["depth"], options["layers_per_stage"]) == (2, 3, 1)
    (row,) = doc["rows"]
    assert row["within_budget"] is True and "within the budget" in capsys.readouterr().out
    want = spaces.get("ronasmis", base_channels=2, depth=3, layers_per_stage=1).default_arch()
    assert row["arch"] == json.loads(want.to_json())["arch"]
    (row,) = _profile_default_arch(tmp_path, "1KiB")["rows"]
    assert row["within_budget"] is False and "OVER the budget" in capsys.readouterr().out


def test_cli_refuses_an_option_the_space_does_not_take(capsys):
    argv = ["profile", "--space", "ronasmis", "--space-option", "colour=blue", "--arch", "default", "--patch", "8",
            "8", "8", "--batch", "1", "--quiet"]
    assert cli.main(argv) == 2
    assert "--space-option" in capsys.readouterr().err


def test_measure_mode_error_says_where_it_measured():
    """The error read "peaks ... (measureed)"."""
    space = spaces.get("toy_profile_test")
    with pytest.raises(BudgetError, match=r"\(measured on cpu\)") as err:
        sample_within(space, 1024, SHAPE, 1, 0, mode="measure", device="cpu", max_tries=3)
    assert "measureed" not in str(err.value)
