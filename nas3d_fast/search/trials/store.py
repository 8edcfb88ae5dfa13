"""The trial store: every trial of a search, and the searcher's state, in one SQLite file (``RUN/trials.db``).

SQLite in WAL mode (readers such as ``nas3d search status`` never block the search) and one transaction per
state change, so a search killed at any moment leaves a consistent store:

- a trial is ``queued`` -> ``running`` -> ``done`` (or ``failed``, and maybe ``queued`` again for a retry);
- a done trial is never changed again, and never re-run;
- the searcher's state is written in the same transaction as the trial change it produced (a suggestion,
  an observation), so the two never disagree;
- on resume :meth:`TrialStore.requeue_running` puts the trials that were running back in the queue (their
  own run folders let them continue from their checkpoints);
- one (encoding, rung) pair is one trial: an architecture seen before is not trained again.

The settings of the search (space, its options, data, trial budget, searcher...) are stored when the
store is created; opening it with other settings raises ValueError naming each one. Readers that must not
change the store (``nas3d search status``, ``nas3d search rank``) open it with :meth:`TrialStore.read_only`.
"""

from __future__ import annotations

import json
import os
import pathlib
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence

from ..._resume import check_resume
from ...spaces.base import Arch, SearchSpace
from .searcher import TRIAL_STATES, Trial

STORE_FORMAT = "nas3d-trials-1"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY,
    encoding TEXT NOT NULL,
    rung INTEGER NOT NULL DEFAULT 0,
    arch TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in TRIAL_STATES)})),
    budget INTEGER NOT NULL,
    parent INTEGER REFERENCES trials (id),
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    score REAL,
    metrics TEXT,
    params INTEGER,
    flops INTEGER,
    predicted_memory INTEGER,
    measured_memory INTEGER,
    seconds REAL,
    error TEXT,
    created REAL,
    started REAL,
    finished REAL,
    UNIQUE (encoding, rung)
);
CREATE TABLE IF NOT EXISTS searcher (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL, updated REAL);
"""

#: the result fields a finished trial records (:meth:`TrialStore.finish`).
RESULT_FIELDS = ("score", "metrics", "params", "flops", "predicted_memory", "measured_memory", "seconds")


def _code(encoding: Sequence[int]) -> str:
    return json.dumps([int(v) for v in encoding], separators=(",", ":"))


class TrialStore:
    """The store of one search (module docstring).

    Args:
        path: the database file (created with its folder when missing).
        space: the search space (the trials' architectures are decoded with it).
        settings: what the search runs with (JSON-able); stored on creation and compared on every open.
            None opens an existing store without comparing anything (FileNotFoundError when it is missing).
        timeout: seconds a writer waits for another's lock before sqlite3.OperationalError.

    :meth:`read_only` opens an existing store that this connection cannot change.
    """

    def __init__(self, path: str, space: SearchSpace, settings: Mapping | None = None, timeout: float = 30.0):
        self.path, self.space, self.writable = path, space, True
        exists = os.path.exists(path)
        if settings is None and not exists:
            raise FileNotFoundError(f"no trial store at {path}")
        if not exists:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.db = sqlite3.connect(path, timeout=timeout, isolation_level=None)  # transactions by hand
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
        self.db.execute("PRAGMA foreign_keys=ON")
        if not exists:
            self.db.executescript(_SCHEMA)
            with self.transaction():
                self._set_meta("format", STORE_FORMAT)
                self._set_meta("settings", settings)
        fmt = self.meta("format")
        if fmt != STORE_FORMAT:
            raise ValueError(f"{path} is not a trial store of this version (format {fmt!r}, expected {STORE_FORMAT!r})")
        if settings is not None:
            check_resume(self.meta("settings"), settings, path, "trial search")

    @classmethod
    def read_only(cls, path: str, space: SearchSpace | None = None, timeout: float = 30.0) -> TrialStore:
        """An existing store opened read-only (sqlite ``mode=ro``; WAL: it never blocks a search writing it).

        ``space`` decodes the trials' architectures (:meth:`trials`, :meth:`get`); without one only the
        methods that return no :class:`Trial` work (``meta``, ``counts``, ``count``, ``ids``, ``scored``...),
        and a space may be set later (``store.space = ...``, e.g. from ``store.meta("settings")``). Every
        change raises sqlite3.OperationalError. FileNotFoundError when ``path`` is no file; ValueError when
        it is not a trial store (of this version).
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no trial store at {path}")
        self = cls.__new__(cls)
        self.path, self.space, self.writable = path, space, False
        uri = pathlib.Path(path).absolute().as_uri() + "?mode=ro"  # as_uri quotes '?', '#', '%' in the path
        self.db = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA query_only=ON")
            fmt = self.meta("format")
        except sqlite3.DatabaseError as exc:  # not a database, or one without the meta table
            self.db.close()
            raise ValueError(f"{path} is not a trial store ({exc})") from None
        if fmt != STORE_FORMAT:
            self.db.close()
            raise ValueError(f"{path} is not a trial store of this version (format {fmt!r}, expected {STORE_FORMAT!r})")
        return self

    # -- plumbing ------------------------------------------------------------------------------------

    def transaction(self):
        """``with store.transaction():`` one atomic change (BEGIN IMMEDIATE: writers queue, readers don't)."""
        if not self.writable:
            raise sqlite3.OperationalError(f"trial store {self.path} is open read-only")
        return _Transaction(self.db)

    def _set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _save_searcher(self, state: Mapping | None) -> None:
        if state is not None:
            self.db.execute(
                "INSERT OR REPLACE INTO searcher (id, state, updated) VALUES (1, ?, ?)",
                (json.dumps(state), time.time()),
            )

    def _trial(self, row: sqlite3.Row) -> Trial:
        if self.space is None:
            raise ValueError(f"trial store {self.path} was opened without a search space: it cannot decode trials")
        encoding = tuple(json.loads(row["encoding"]))
        return Trial(
            id=row["id"],
            arch=self.space.arch_from_json(row["arch"]),
            encoding=encoding,
            status=row["status"],
            rung=row["rung"],
            budget=row["budget"],
            parent=row["parent"],
            score=row["score"],
            metrics=json.loads(row["metrics"]) if row["metrics"] else {},
            params=row["params"],
            flops=row["flops"],
            predicted_memory=row["predicted_memory"],
            measured_memory=row["measured_memory"],
            seconds=row["seconds"],
            attempts=row["attempts"],
            worker=row["worker"],
            error=row["error"],
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
        )

    # -- reading -------------------------------------------------------------------------------------

    def searcher_state(self) -> dict | None:
        row = self.db.execute("SELECT state FROM searcher WHERE id = 1").fetchone()
        return None if row is None else json.loads(row["state"])

    @staticmethod
    def _where(status: str | Iterable[str] | None, rung: int | None, *more: str) -> tuple[str, list]:
        """The WHERE clause ('' when none) and its arguments selecting some states and one rung."""
        where, args = list(more), []
        if status is not None:
            states = list(status) if isinstance(status, Iterable) and not isinstance(status, str) else [status]
            bad = [s for s in states if s not in TRIAL_STATES]
            if bad:
                raise ValueError(f"status must be among {TRIAL_STATES}, got {bad}")
            where.append(f"status IN ({', '.join('?' * len(states))})")
            args += states
        if rung is not None:
            where.append("rung = ?")
            args.append(int(rung))
        return (" WHERE " + " AND ".join(where) if where else ""), args

    def trials(self, status: str | Iterable[str] | None = None, rung: int | None = None) -> list[Trial]:
        """Trials in id order, optionally of some states and one rung."""
        where, args = self._where(status, rung)
        return [self._trial(r) for r in self.db.execute("SELECT * FROM trials" + where + " ORDER BY id", args)]

    def get(self, trial_id: int) -> Trial:
        row = self.db.execute("SELECT * FROM trials WHERE id = ?", (int(trial_id),)).fetchone()
        if row is None:
            raise KeyError(f"no trial {trial_id} in {self.path}")
        return self._trial(row)

    def counts(self) -> dict[str, int]:
        """{state: trials in it}, every state present."""
        out = dict.fromkeys(TRIAL_STATES, 0)
        for row in self.db.execute("SELECT status, COUNT(*) AS n FROM trials GROUP BY status"):
            out[row["status"]] = row["n"]
        return out

    def count(self, status: str | Iterable[str] | None = None, rung: int | None = None) -> int:
        """How many trials :meth:`trials` would return (one SQL count, nothing decoded)."""
        where, args = self._where(status, rung)
        return self.db.execute("SELECT COUNT(*) FROM trials" + where, args).fetchone()[0]

    def ids(self, status: str | Iterable[str] | None = None, rung: int | None = None,
            limit: int | None = None) -> list[int]:
        """The ids of the trials :meth:`trials` would return, in id order; the first ``limit`` only when given."""
        where, args = self._where(status, rung)
        sql = "SELECT id FROM trials" + where + " ORDER BY id" + ("" if limit is None else " LIMIT ?")
        return [r[0] for r in self.db.execute(sql, args if limit is None else [*args, int(limit)])]

    def parents(self, rung: int | None = None) -> set[int]:
        """The parents of the trials (of ``rung``) that have one: the trials promoted from the rung below."""
        where, args = self._where(None, rung, "parent IS NOT NULL")
        return {r[0] for r in self.db.execute("SELECT parent FROM trials" + where, args)}

    def scored(self, rung: int | None = None) -> list[tuple[int, tuple[int, ...], int, float]]:
        """(id, encoding, rung, score) of the done trials (of ``rung``) with a score, in id order."""
        where, args = self._where("done", rung, "score IS NOT NULL")
        sql = "SELECT id, encoding, rung, score FROM trials" + where + " ORDER BY id"
        return [(r[0], tuple(json.loads(r[1])), r[2], r[3]) for r in self.db.execute(sql, args)]

    def best(self) -> Trial | None:
        """``driver.best_trial(store.trials())`` with one trial decoded: the highest rung's best score among
        done trials (ties: the earlier trial)."""
        row = self.db.execute(
            "SELECT * FROM trials WHERE status = 'done' AND score IS NOT NULL ORDER BY rung DESC, score DESC, id "
            "LIMIT 1"
        ).fetchone()
        return None if row is None else self._trial(row)

    def encodings(self, rung: int = 0) -> list[tuple[int, ...]]:
        return [tuple(json.loads(r[0])) for r in self.db.execute("SELECT encoding FROM trials WHERE rung = ?", (rung,))]

    def has(self, encoding: Sequence[int], rung: int = 0) -> bool:
        row = self.db.execute("SELECT 1 FROM trials WHERE encoding = ? AND rung = ?", (_code(encoding), rung))
        return row.fetchone() is not None

    # -- changes (one transaction each) --------------------------------------------------------------

    def add(
        self,
        arch: Arch,
        budget: int,
        rung: int = 0,
        parent: int | None = None,
        searcher_state: Mapping | None = None,
    ) -> int | None:
        """Queue ``arch`` with a training budget of ``budget`` steps; returns its id, or None when its
        encoding is already in the store at that rung (nothing is added, the searcher state still saved)."""
        encoding = self.space.encode(arch)
        with self.transaction():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO trials (encoding, rung, arch, status, budget, parent, created) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                (_code(encoding), int(rung), arch.to_json(), int(budget), parent, time.time()),
            )
            self._save_searcher(searcher_state)
            return cur.lastrowid if cur.rowcount else None

    def start(self, trial_id: int, worker: str) -> Trial:
        """queued -> running (attempts + 1); ValueError if the trial is not queued."""
        with self.transaction():
            cur = self.db.execute(
                "UPDATE trials SET status = 'running', attempts = attempts + 1, worker = ?, started = ?, error = NULL "
                "WHERE id = ? AND status = 'queued'",
                (worker, time.time(), int(trial_id)),
            )
            if cur.rowcount != 1:
                raise ValueError(f"trial {trial_id} is not queued ({self.get(trial_id).status})")
        return self.get(trial_id)

    def finish(self, trial_id: int, result: Mapping, searcher_state: Mapping | None = None,
               worker: str | None = None) -> Trial:
        """running -> done with ``result`` (keys of ``RESULT_FIELDS``) and, when given, the ``worker`` that
        ran it (host:pid; else the one :meth:`start` recorded stays). A trial that is done already is left
        as it is (a duplicate report of a retried task): returns it unchanged."""
        unknown = sorted(set(result) - set(RESULT_FIELDS))
        if unknown:
            raise ValueError(f"unknown result fields {unknown}; known: {RESULT_FIELDS}")
        values = {k: result.get(k) for k in RESULT_FIELDS}
        values["metrics"] = json.dumps(values["metrics"]) if values["metrics"] is not None else None
        with self.transaction():
            cur = self.db.execute(
                "UPDATE trials SET status = 'done', finished = ?, worker = COALESCE(?, worker), "
                + ", ".join(f"{k} = ?" for k in RESULT_FIELDS)
                + " WHERE id = ? AND status != 'done'",
                (time.time(), worker or None, *values.values(), int(trial_id)),
            )
            if cur.rowcount:
                self._save_searcher(searcher_state)
        return self.get(trial_id)

    def fail(self, trial_id: int, error: str, retry: bool, searcher_state: Mapping | None = None) -> Trial:
        """running -> queued again (``retry``) or failed, with the error's text."""
        status = "queued" if retry else "failed"
        with self.transaction():
            self.db.execute(
                "UPDATE trials SET status = ?, error = ?, finished = ? WHERE id = ? AND status = 'running'",
                (status, str(error)[-4000:], None if retry else time.time(), int(trial_id)),
            )
            if not retry:
                self._save_searcher(searcher_state)
        return self.get(trial_id)

    def requeue_running(self) -> list[int]:
        """Every running trial back to queued (their driver died); returns their ids."""
        with self.transaction():
            ids = [r[0] for r in self.db.execute("SELECT id FROM trials WHERE status = 'running' ORDER BY id")]
            self.db.execute("UPDATE trials SET status = 'queued' WHERE status = 'running'")
        return ids

    def save_searcher(self, state: Mapping) -> None:
        with self.transaction():
            self._save_searcher(state)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False
