"""Trial searches (issue 21): the SQLite trial store, the driver and successive halving, executors (local,
worker processes, Ray), crash-safe resume of `nas3d search` and its bad-input errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from nas3d_fast import cli
from nas3d_fast.search.trials import (
    RandomSearch,
    TrialSearch,
    TrialSearchConfig,
    TrialStore,
    make_executor,
    status,
    trial_search,
)
from nas3d_fast.search.trials.driver import pareto_front
from nas3d_fast.spaces import base
from nas3d_fast.train.run import DataSettings

sys.path.insert(0, os.path.dirname(__file__))
from search_fixtures import CLI_SPACE, SPACE, SPACE_OPTIONS, synthetic_dataset  # noqa: E402
from trial_fakes import KnownScore  # noqa: E402



@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory, train=4)


def _space():
    return base.get("c2fnas")


def _fake_search(out, trials=8, evaluator=None, **kw):
    space = _space()
    cfg = TrialSearchConfig(trials=trials, trial_steps=4, progress=False, **kw)
    return TrialSearch(space, RandomSearch(space, seed=0), evaluator or KnownScore(), str(out), cfg).run()


# -- the store ---------------------------------------------------------------------------------------


def test_store_states_wal_and_consistency(tmp_path):
    space = _space()
    path = str(tmp_path / "trials.db")
    store = TrialStore(path, space, {"space": "c2fnas", "seed": 0})
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    a, b = space.sample(0), space.sample(1)
    first = store.add(a, 10, searcher_state={"n": 1})
    assert store.add(a, 10) is None  # one encoding, one trial
    second = store.add(b, 10)
    assert store.searcher_state() == {"n": 1}
    t = store.start(first, "w0")
    assert (t.status, t.attempts, t.worker) == ("running", 1, "w0")
    with pytest.raises(ValueError, match="not queued"):
        store.start(first, "w1")
    done = store.finish(first, {"score": 0.5, "metrics": {"mean_dice": 0.5}, "seconds": 1.0}, {"n": 2})
    assert done.status == "done" and done.score == 0.5 and store.searcher_state() == {"n": 2}
    # a done trial never changes (a second report of a retried task)
    again = store.finish(first, {"score": 0.1}, {"n": 3})
    assert again.score == 0.5 and store.searcher_state() == {"n": 2}
    store.start(second, "w0")
    # another process reads while this one holds a write transaction (WAL)
    with store.transaction():
        store.db.execute("UPDATE trials SET worker = 'w9' WHERE id = ?", (second,))
        reader = sqlite3.connect(path, timeout=0.1)
        assert reader.execute("SELECT status FROM trials ORDER BY id").fetchall() == [("done",), ("running",)]
        reader.close()
    assert store.requeue_running() == [second]
    assert store.counts() == {"queued": 1, "running": 0, "done": 1, "failed": 0}
    store.close()
    with pytest.raises(ValueError) as err:
        TrialStore(path, space, {"space": "dints", "seed": 3})
    assert "space: checkpoint 'c2fnas', now 'dints'" in str(err.value) and "seed: checkpoint 0, now 3" in str(err.value)


def test_pareto_front():
    points = [(0.5, 10.0), (0.6, 20.0), (0.55, 30.0), (0.4, 5.0), (0.6, 25.0)]
    assert pareto_front(points) == [3, 0, 1]


# -- the driver --------------------------------------------------------------------------------------


def test_driver_runs_distinct_trials_and_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    summary = _fake_search(out, trials=8)
    assert summary["trials"] == {"queued": 0, "running": 0, "done": 8, "failed": 0}
    assert sorted(os.listdir(out)) == ["arch.json", "report.png", "summary.json", "trials.csv", "trials.db"]
    with TrialStore(str(out / "trials.db"), _space()) as store:
        trials = store.trials()
    assert len({t.encoding for t in trials}) == 8
    best = max(trials, key=lambda t: t.score)
    assert summary["best"]["id"] == best.id
    assert json.loads((out / "arch.json").read_text()) == json.loads(best.arch.to_json())
    info = status(str(out))
    assert info["trials"]["done"] == 8 and info["best"]["id"] == best.id and info["pareto_front"]
    # a rerun with more trials extends the search; done trials are kept
    more = _fake_search(out, trials=10)
    assert more["trials"]["done"] == 10
    with TrialStore(str(out / "trials.db"), _space()) as store:
        assert [t.finished for t in store.trials()[:8]] == [t.finished for t in trials]


def test_successive_halving_promotes_the_top_fraction(tmp_path):
    summary = _fake_search(tmp_path / "run", trials=9, halving_eta=3, halving_rungs=3)
    with TrialStore(str(tmp_path / "run" / "trials.db"), _space()) as store:
        rung0, rung1 = store.trials(rung=0), store.trials(rung=1)
        rung2 = store.trials(rung=2)
    assert len(rung0) == 9 and [t.budget for t in rung1] == [12] * len(rung1) and len(rung1) >= 3
    top3 = sorted(rung0, key=lambda t: (-t.score, t.id))[:3]
    assert {t.id for t in top3} <= {t.parent for t in rung1}  # the top third is always promoted
    assert len(rung2) >= 1 and rung2[0].budget == 36
    assert summary["best"]["rung"] == 2


def test_failed_trials_are_recorded_and_not_retried(tmp_path):
    summary = _fake_search(tmp_path / "run", trials=4, evaluator=KnownScore(fail_ids=(2,)))
    assert summary["trials"]["failed"] == 1 and summary["trials"]["done"] == 3
    with TrialStore(str(tmp_path / "run" / "trials.db"), _space()) as store:
        failed = store.trials("failed")[0]
    assert failed.id == 2 and failed.attempts == 1 and "diverged" in failed.error


def test_a_dead_worker_process_loses_its_trial_which_is_retried(tmp_path):
    pids = tmp_path / "pids"
    space = _space()
    cfg = TrialSearchConfig(trials=4, trial_steps=4, progress=False, workers=2, max_retries=2)
    search = TrialSearch(space, RandomSearch(space, seed=0), KnownScore(sleep=2.0, pid_dir=str(pids)),
                         str(tmp_path / "run"), cfg)
    import threading

    def kill_first_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            names = os.listdir(pids) if pids.exists() else []
            first = [n for n in names if n.startswith("1.1.")]
            if first:
                os.kill(int(first[0].split(".")[2]), signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    summary = search.run()
    killer.join()
    assert summary["trials"]["done"] == 4
    with TrialStore(str(tmp_path / "run" / "trials.db"), space) as store:
        assert store.get(1).attempts == 2 and store.get(1).status == "done"


# -- crash-safe resume with real training ------------------------------------------------------------

DRIVER = r"""
import os, signal, sys
from nas3d_fast.search.trials import TrialSearchConfig, trial_search
from nas3d_fast.train.run import DataSettings
dataset, out, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
def on_trial(trial):
    if kill_after and trial.id == kill_after:  # between two trials: after this one's end is stored
        os.kill(os.getpid(), signal.SIGKILL)
trial_search("ronasmis", "random", dataset, out, TrialSearchConfig(trials=6, trial_steps=6, progress=False),
             DataSettings(patch=(16, 16, 16), batch_size=1, augment=0.0),
             {"device": "cpu", "checkpoint_every": 1, "progress": False},
             space_options={"base_channels": 2, "depth": 2, "layers_per_stage": 1}, on_trial=on_trial)
"""


def _train_rows(out, trial_id):
    path = out / "trials" / f"{trial_id:05d}" / "train.csv"
    return path.read_text().splitlines()[1:] if path.exists() else []


def test_a_killed_local_search_resumes_without_training_a_trial_twice(dataset, tmp_path):
    out = tmp_path / "run"
    # 1. killed in the middle of trial 2 (its training has logged 3 of 6 steps)
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, dataset, str(out), "0"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(_train_rows(out, 2)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -9, proc.stderr.read()[-2000:]
    before = _train_rows(out, 2)
    assert 3 <= len(before) < 6
    # 2. killed between trials 4 and 5
    proc = subprocess.run([sys.executable, "-c", DRIVER, dataset, str(out), "4"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with TrialStore(str(out / "trials.db"), base.get(SPACE, **SPACE_OPTIONS)) as store:
        assert store.counts()["done"] == 4
        rows2 = _train_rows(out, 2)
    # trial 2 continued from its checkpoint: the steps it had logged were not trained again
    assert len(rows2) == 6 and rows2[: len(before) - 1] == before[: len(before) - 1]
    # 3. the rerun ends the search
    proc = subprocess.run([sys.executable, "-c", DRIVER, dataset, str(out), "0"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with TrialStore(str(out / "trials.db"), base.get(SPACE, **SPACE_OPTIONS)) as store:
        trials = store.trials()
    assert [t.status for t in trials] == ["done"] * 6 and len({t.encoding for t in trials}) == 6
    assert [t.attempts for t in trials] == [1, 2, 1, 1, 1, 1]
    for t in trials:
        steps = [int(r.split(",")[0]) for r in _train_rows(out, t.id)]
        assert steps == [1, 2, 3, 4, 5, 6], (t.id, steps)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["done"] == 6 and summary["best"]["id"] in [t.id for t in trials]


def test_cli_trial_search_status_and_the_result_trains(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["search", *CLI_SPACE, "--searcher", "random", "--data", dataset, "--out", str(out), "--trials", "2",
            "--trial-steps", "2", "--patch", "16", "16", "16", "--batch-size", "1", "--device", "cpu", "--quiet"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "trials: 2 done, 0 failed" in text and "nas3d train --arch" in text
    assert cli.main(["search", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "0 queued, 0 running, 2 done, 0 failed" in text and "Pareto front" in text
    assert cli.main(["search", "status", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trials"]["done"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["predicted_memory"] > 0 and summary["best"]["params"] > 0
    assert "dice_per_class" in summary["best"]["metrics"]
    train = ["train", *CLI_SPACE, "--arch", str(out / "arch.json"), "--data", dataset, "--out", str(tmp_path / "t"),
             "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16", "16", "16", "--quiet", "--device", "cpu"]
    assert cli.main(train) == 0


def test_a_tautoml_trial_trains_with_its_own_recipe(dataset, tmp_path):
    from nas3d_fast.search.trials import TrainEvaluator, TrialJob

    space = base.get("tautoml", base_channels=4, num_heads=2)
    arch = space.sample(3)
    evaluator = TrainEvaluator("tautoml", {"base_channels": 4, "num_heads": 2}, dataset,
                               DataSettings(patch=(16, 16, 16), batch_size=1, max_val_cases=1),
                               {"device": "cpu", "progress": False}, measure_memory=True)
    result = evaluator(TrialJob(1, arch.to_json(), 2, str(tmp_path / "t1")))
    recipe = space.training_config(arch)
    assert result["metrics"]["recipe"] == recipe
    first = (tmp_path / "t1" / "train.csv").read_text().splitlines()[1].split(",")
    assert float(first[3]) == pytest.approx(recipe["learning_rate"])  # the recipe's lr, not TrainConfig's 1e-3
    assert result["params"] > 0 and result["predicted_memory"] > 0 and result["metrics"]["steps"] == 2
    assert result["measured_memory"] > 0  # --measure-memory: measured on the trial's device too


def test_random_search_inside_a_memory_budget():
    from nas3d_fast.profile import predict_training_memory
    from nas3d_fast.search.trials import MemoryBudgetSampler

    space = base.get(SPACE, base_channels=4, depth=3, layers_per_stage=2)
    peaks = sorted(predict_training_memory(space.build(space.sample(i), 1, 2), (1, 16, 16, 16), batch_size=2,
                                           num_classes=2, target="cpu").peak_bytes for i in range(12))
    budget = peaks[len(peaks) // 2]  # about half the candidates fit
    sampler = MemoryBudgetSampler(space, budget, (1, 16, 16, 16), 2, 2, target="cpu")
    for arch in RandomSearch(space, seed=0, sampler=sampler).suggest(4):
        peak = predict_training_memory(space.build(arch, 1, 2), (1, 16, 16, 16), batch_size=2, num_classes=2,
                                       target="cpu").peak_bytes
        assert peak <= budget


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (["--executor", "dask"], "invalid choice: 'dask'"),
        (["--trial-steps", "0"], "trial_steps must be an int >= 1"),
        (["--trials", "0"], "trials must be an int >= 1"),
        (["--memory-limit", "0.001"], "below the smallest"),
        (["--trial-validations", "0"], "--trial-validations must be >= 1"),
    ],
)
def test_cli_bad_input_is_a_clear_error_and_writes_nothing(dataset, tmp_path, capsys, change, message):
    out = tmp_path / "run"
    argv = ["search", *CLI_SPACE, "--searcher", "random", "--data", dataset, "--out", str(out), "--trials", "1",
            "--trial-steps", "1", "--patch", "16", "16", "16", "--device", "cpu", "--quiet", *change]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_store_of_other_settings_is_refused(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["search", "--searcher", "random", "--data", dataset, "--out", str(out), "--trials", "1",
              "--trial-steps", "1", "--patch", "16", "16", "16", "--device", "cpu", "--quiet"]
    assert cli.main([*common, *CLI_SPACE]) == 0
    capsys.readouterr()
    other = ["--space", SPACE, "--space-option", "base_channels=4", "--space-option", "depth=2",
             "--space-option", "layers_per_stage=1"]
    assert cli.main([*common, *other, "--trial-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "space_options.base_channels: checkpoint 2, now 4" in err and "trial_steps: checkpoint 1, now 2" in err


def test_ray_missing_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ValueError, match=r"pip install 'nas3d_fast\[ray\]'"):
        make_executor("ray", KnownScore())
    with pytest.raises(ValueError, match="executor must be one of"):
        make_executor("dask", KnownScore())


def test_importing_the_package_does_not_import_ray():
    code = "import nas3d_fast, nas3d_fast.search.trials, sys; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- Ray -----------------------------------------------------------------------------------------------

RAY_DRIVER = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from trial_fakes import KnownScore
from nas3d_fast.search.trials import RandomSearch, TrialSearch, TrialSearchConfig
from nas3d_fast.spaces import base
out, kill_after = sys.argv[1], int(sys.argv[2])
def on_trial(trial):
    if kill_after and trial.id == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
space = base.get("c2fnas")
cfg = TrialSearchConfig(trials=5, trial_steps=4, progress=False, executor="ray", workers=2, max_retries=2)
TrialSearch(space, RandomSearch(space, seed=0), KnownScore(sleep=0.2), out, cfg, on_trial=on_trial).run()
"""


def test_ray_retries_a_trial_whose_worker_died_and_a_killed_driver_resumes(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import threading

    here = os.path.dirname(__file__)  # Ray's workers import the fake evaluator from tests/
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))

    pids = tmp_path / "pids"
    space = _space()
    cfg = TrialSearchConfig(trials=4, trial_steps=4, progress=False, executor="ray", workers=2, max_retries=2)
    search = TrialSearch(space, RandomSearch(space, seed=0), KnownScore(sleep=1.5, pid_dir=str(pids)),
                         str(tmp_path / "run"), cfg)

    def kill_first_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not stop.is_set():
            names = os.listdir(pids) if pids.exists() else []
            first = [n for n in names if n.startswith("1.")]
            if first:
                os.kill(int(first[0].split(".")[2]), signal.SIGKILL)
                return
            time.sleep(0.05)

    stop = threading.Event()
    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    try:
        summary = search.run()
    finally:
        stop.set()
        killer.join()
    with TrialStore(str(tmp_path / "run" / "trials.db"), space) as store:
        errors = [t.error for t in store.trials("failed")]
    assert summary["trials"]["done"] == 4, errors
    assert len([n for n in os.listdir(pids) if n.startswith("1.")]) == 2  # trial 1 ran twice (Ray's retry)
    # the driver killed between trials, then rerun: the search resumes from the store
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", RAY_DRIVER, str(out), "2", here], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-c", RAY_DRIVER, str(out), "0", here], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with TrialStore(str(out / "trials.db"), space) as store:
        trials = store.trials()
    assert [t.status for t in trials] == ["done"] * 5 and len({t.encoding for t in trials}) == 5


class _Stop(Exception):
    pass


@pytest.mark.parametrize("searcher", ["random", "evolution", "predictor"])
def test_an_interrupted_search_resumes_to_the_uninterrupted_trials(tmp_path, searcher):
    """Stopped after trial 5 and rerun, a search proposes exactly the trials an uninterrupted one does:
    the searcher's state comes back from the store."""
    from nas3d_fast.search.trials import searcher_class

    options = {"evolution": {"clusters": 3, "initial": 4, "pool": 40},
               "predictor": {"initial": 4, "min_trials": 4, "epochs": 5, "pool": 32}}.get(searcher, {})
    cls = searcher_class(searcher)
    space = _space()

    def run(out, on_trial=None):
        cfg = TrialSearchConfig(trials=10, trial_steps=4, progress=False)
        return TrialSearch(space, cls(space, seed=1, **options), KnownScore(), str(out), cfg, on_trial=on_trial).run()

    run(tmp_path / "whole")

    def stop(trial):
        if trial.id == 5:
            raise _Stop

    with pytest.raises(_Stop):
        run(tmp_path / "cut", stop)
    run(tmp_path / "cut")
    with TrialStore(str(tmp_path / "whole" / "trials.db"), space) as a, \
            TrialStore(str(tmp_path / "cut" / "trials.db"), space) as b:
        want, got = a.trials(), b.trials()
    assert [t.encoding for t in got] == [t.encoding for t in want] and len({t.encoding for t in got}) == 10
    assert [t.score for t in got] == [t.score for t in want]
