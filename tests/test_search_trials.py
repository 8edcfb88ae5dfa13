"""Trial searches (issue 21): the SQLite trial store, the driver and successive halving, executors (local,
worker processes, Ray), crash-safe resume of `nas3d search` and its bad-input errors."""

from __future__ import annotations

import json
import os
import re
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
from nas3d_fast.search.trials.driver import best_trial, pareto_front
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


def _mixed_store(path, space):
    """A store holding trials in every state at rungs 0 to 2, some promoted, one done without a score."""
    store = TrialStore(path, space, {"space": "c2fnas", "seed": 0})
    ids = [store.add(space.sample(i), 10) for i in range(8)]
    for tid, score in zip(ids[:5], (0.3, 0.7, 0.5, None, 0.7)):
        store.start(tid, "w0")
        store.finish(tid, {"score": score})
    store.start(ids[5], "w0")
    store.fail(ids[5], "diverged", retry=False)
    store.start(ids[6], "w1")  # running; ids[7] stays queued
    up = [store.add(store.get(t).arch, 30, rung=1, parent=t) for t in (ids[1], ids[4])]
    store.start(up[0], "w0")
    store.finish(up[0], {"score": 0.6})
    top = store.add(store.get(up[0]).arch, 90, rung=2, parent=up[0])
    store.start(top, "w0")
    store.finish(top, {"score": 0.2})
    return store


def test_store_queries_agree_with_its_trials(tmp_path):
    space = _space()
    store = _mixed_store(str(tmp_path / "trials.db"), space)
    selections = [None, "queued", "running", "done", "failed", ("done", "failed"), ["queued", "running"]]
    for status_ in selections:
        for rung in (None, 0, 1, 2, 3):
            trials = store.trials(status_, rung=rung)
            assert store.count(status_, rung=rung) == len(trials), (status_, rung)
            assert store.ids(status_, rung=rung) == [t.id for t in trials], (status_, rung)
            assert store.ids(status_, rung=rung, limit=1) == [t.id for t in trials][:1], (status_, rung)
    assert store.count() == 11 and store.count(rung=0) == 8 and store.count("done", rung=0) == 5
    assert store.counts() == {s: store.count(s) for s in ("queued", "running", "done", "failed")}
    for rung in (None, 0, 1, 2, 3):
        trials = store.trials(rung=rung)
        assert store.parents(rung) == {t.parent for t in trials if t.parent is not None}, rung
        assert store.scored(rung) == [(t.id, t.encoding, t.rung, t.score) for t in trials
                                      if t.status == "done" and t.score is not None], rung
    best = store.best()
    assert best == best_trial(store.trials()) and best.rung == 2
    tie = TrialStore(str(tmp_path / "tie.db"), space, {"space": "c2fnas", "seed": 0})
    assert tie.best() is None
    for i in range(3):  # equal scores: the earlier trial, as best_trial
        tie.start(tie.add(space.sample(i), 10), "w")
        tie.finish(i + 1, {"score": 0.5})
    assert tie.best() == best_trial(tie.trials()) and tie.best().id == 1
    tie.close()
    with pytest.raises(ValueError, match="status must be among"):
        store.count("finished")
    with pytest.raises(ValueError, match="status must be among"):
        store.count(0)  # the rung is a keyword
    store.close()


def test_finish_records_the_worker_in_its_transaction(tmp_path):
    space = _space()
    store = TrialStore(str(tmp_path / "trials.db"), space, {"space": "c2fnas", "seed": 0})
    a, b = store.add(space.sample(0), 10), store.add(space.sample(1), 10)
    store.start(a, "local")
    store.start(b, "local")
    changes = store.db.total_changes
    assert store.finish(a, {"score": 0.5}, worker="host:123").worker == "host:123"
    assert store.db.total_changes == changes + 1  # one UPDATE: the result and the worker together
    assert store.finish(b, {"score": 0.5}).worker == "local"  # no worker reported: start's stays
    assert store.finish(a, {"score": 0.1}, worker="host:456").worker == "host:123"  # a done trial never changes
    store.close()
    # the driver passes the evaluator's worker through
    class WithWorker(KnownScore):
        def __call__(self, job):
            return {**super().__call__(job), "worker": f"host:{job.trial_id}"}

    _fake_search(tmp_path / "run", trials=3, evaluator=WithWorker())
    with TrialStore(str(tmp_path / "run" / "trials.db"), space) as store:
        assert [t.worker for t in store.trials()] == ["host:1", "host:2", "host:3"]


def test_read_only_store_reads_refuses_writes_and_errors_clearly(tmp_path):
    space = _space()
    folder = tmp_path / "odd ?#% name"  # the sqlite URI quotes these
    folder.mkdir()
    path = str(folder / "trials.db")
    _mixed_store(path, space).close()
    before = open(path, "rb").read()
    with TrialStore.read_only(path, space) as ro:
        assert not ro.writable and ro.meta("format") == "nas3d-trials-1"
        assert [t.id for t in ro.trials()] == list(range(1, 12)) and ro.get(2).score == 0.7
        for change in (lambda: ro.add(space.sample(20), 10), lambda: ro.start(8, "w"),
                       lambda: ro.finish(7, {"score": 1.0}), lambda: ro.fail(7, "x", retry=False),
                       lambda: ro.requeue_running(), lambda: ro.save_searcher({"n": 1})):
            with pytest.raises(sqlite3.OperationalError, match="read-only"):
                change()
        with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only"):
            ro.db.execute("UPDATE trials SET score = 1.0")  # refused by sqlite too, not only by the store
        assert ro.get(7).status == "running" and ro.count("done") == 7
    assert open(path, "rb").read() == before
    # no space: the queries that decode nothing work; a space may be set afterwards
    with TrialStore.read_only(path) as ro:
        assert ro.meta("settings") == {"space": "c2fnas", "seed": 0} and ro.count(rung=0) == 8
        with pytest.raises(ValueError, match="without a search space"):
            ro.trials()
        ro.space = space
        assert len(ro.trials()) == 11
    # a reader opens while a writer holds a write transaction (WAL: neither blocks)
    with TrialStore(path, space) as rw, rw.transaction():
        rw.db.execute("UPDATE trials SET worker = 'w9' WHERE id = 7")
        with TrialStore.read_only(path, space, timeout=0.1) as ro:
            assert ro.get(7).worker == "w1"
    missing = str(tmp_path / "nothing" / "trials.db")
    with pytest.raises(FileNotFoundError, match="no trial store at .*nothing"):
        TrialStore.read_only(missing, space)
    assert not os.path.exists(os.path.dirname(missing))  # nothing created
    with pytest.raises(ValueError, match="no trial search"):
        status(str(tmp_path / "nothing"))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match=re.escape(f"{junk} is not a trial store")):
        TrialStore.read_only(str(junk), space)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ValueError, match=re.escape(f"{other} is not a trial store")):
        TrialStore.read_only(str(other), space)


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
