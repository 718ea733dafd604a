"""The durable job store: SQLite in WAL mode.

* :meth:`JobStore.submit` commits the jobs (state ``queued``) before it returns their ids:
  an acknowledged job survives any crash of the submitter or the scheduler.
* Every state change updates the job row *and* appends an event (state, time, instance
  type, node, detail). Changes are conditional on the current state (and, for results, on
  the attempt number), so a job reaches ``done`` at most once and a late result from an
  abandoned attempt is ignored. :meth:`JobStore.apply` commits a batch of changes in one
  transaction (one fsync for a whole pass of the scheduling loop).
* Committed changes are emitted to subscribers (:meth:`JobStore.subscribe`): the metrics
  and the loop's log see every transition, whichever executor made it.
* :meth:`JobStore.recover` is what a restarted scheduler runs first (after making sure the
  previous attempts are gone): jobs that were ``running`` under the dead scheduler are
  recorded ``retried`` and queued again, or ``failed`` once they used ``max_attempts``.
* :meth:`JobStore.scheduler_lock` makes sure one scheduler at a time works on a store (an
  OS file lock beside the *resolved* path, released when the process dies, even by SIGKILL).
* The store, its WAL/SHM and lock files are created 0600, a directory it creates 0700.
  ``JobStore(path, readonly=True)`` reads a store it cannot write.
* SQLite's failures (full disk, corrupt or read-only file, a lock held too long) become
  one :class:`StoreError` with a one-line message.

States: queued -> placed -> running -> done | failed; running -> retried (-> placed ...);
any unfinished state -> cancelled.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote

STATES = ("queued", "placed", "running", "done", "failed", "retried", "cancelled")
PENDING = ("queued", "retried")            # waiting for placement
UNFINISHED = ("queued", "placed", "running", "retried")
FINISHED = ("done", "failed", "cancelled")
ENV_STORE = "LEPTON_ACCEL_STORE"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    batch        TEXT,
    name         TEXT NOT NULL,
    doc          TEXT NOT NULL,
    base_dir     TEXT NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    deadline_s   REAL,
    policy       TEXT NOT NULL,
    state        TEXT NOT NULL,
    itype        TEXT,
    node         TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    updated_at   REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    est_run_s    REAL,
    est_total_s  REAL,
    est_cost     REAL,
    measured_s   REAL,
    backend      TEXT,
    verified     INTEGER,
    error        TEXT,
    result       TEXT,
    explain      TEXT,
    pgid         INTEGER,
    pg_start     INTEGER,
    workers      INTEGER,
    market       TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL,
    state   TEXT NOT NULL,
    at      REAL NOT NULL,
    itype   TEXT,
    node    TEXT,
    attempt INTEGER,
    detail  TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
"""
#: columns added since the first stores were written (added to old stores on open)
_ADDED = {"pgid": "INTEGER", "pg_start": "INTEGER", "workers": "INTEGER", "market": "TEXT"}
#: the row without the job document and result: what the scheduling loop keeps in memory
LIGHT = ("seq", "id", "batch", "name", "priority", "deadline_s", "state", "itype", "node", "attempts",
         "submitted_at", "est_run_s", "pgid", "pg_start", "workers", "market")


def default_path() -> Path:
    if os.environ.get(ENV_STORE):
        return Path(os.environ[ENV_STORE])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "lepton_accel" / "jobs.sqlite"


@dataclass
class JobRecord:
    """One row of the jobs table."""

    seq: int
    id: str
    batch: str | None
    name: str
    doc: dict
    base_dir: str
    priority: int
    deadline_s: float | None
    policy: str
    state: str
    itype: str | None
    node: str | None
    attempts: int
    submitted_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    est_run_s: float | None
    est_total_s: float | None
    est_cost: float | None
    measured_s: float | None
    backend: str | None
    verified: bool | None
    error: str | None
    result: dict | None
    explain: str | None
    pgid: int | None = None
    pg_start: int | None = None
    workers: int | None = None      # a train job's data-parallel worker count, as placed
    market: str | None = None       # "spot" when placed on spot capacity

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "JobRecord":
        d = dict(row)
        d["doc"] = json.loads(d["doc"])
        d["result"] = json.loads(d["result"]) if d["result"] else None
        d["verified"] = None if d["verified"] is None else bool(d["verified"])
        return cls(**d)


@dataclass
class Change:
    """One conditional state change: ``job_id`` to ``state`` if it is in ``from_states``
    (and at ``attempt``, when given). ``start``: the change begins a new attempt."""

    job_id: str
    state: str
    from_states: tuple[str, ...]
    attempt: int | None = None
    detail: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    start: bool = False


@dataclass(frozen=True)
class Transition:
    """A committed state change, as subscribers see it."""

    job_id: str
    state: str
    at: float
    name: str
    batch: str | None
    itype: str | None
    node: str | None
    attempt: int
    detail: str | None
    est_run_s: float | None
    est_cost: float | None
    measured_s: float | None


class StoreError(RuntimeError):
    """The store cannot be read or written; the message is one line saying why."""


class StoreLocked(StoreError):
    """Another scheduler already works on this store."""


def _describe(path, exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    low = text.lower()
    if "disk is full" in low or "no space" in low:
        why = "the disk is full"
    elif "not a database" in low or "malformed" in low or "corrupt" in low:
        why = "the file is corrupt or not a job store"
    elif "readonly" in low or "read-only" in low:
        why = "the store is read-only"
    elif "locked" in low or "busy" in low:
        why = "the store stayed locked by another process"
    elif "unable to open" in low:
        why = "cannot open the file"
    else:
        why = text
    return f"job store {path}: {why}" + ("" if why == text else f" ({text})")


class JobStore:
    def __init__(self, path: str | os.PathLike | None = None, *, readonly: bool = False):
        self.path = Path(path) if path else default_path()
        self.readonly = readonly
        self._mutex = threading.RLock()   # one connection, shared safely by threads
        self._lock_fd: int | None = None
        self._subscribers: list[Callable[[list[Transition]], None]] = []
        try:
            self._conn = self._open()
        except sqlite3.Error as exc:
            raise StoreError(_describe(self.path, exc)) from None
        except OSError as exc:
            raise StoreError(f"job store {self.path}: {exc.strerror or exc}") from None

    def _open(self) -> sqlite3.Connection:
        if self.readonly:
            if not self.path.exists():
                raise StoreError(f"job store {self.path}: no such file")
            uri = "file:" + quote(str(self.path.resolve()))
            try:
                conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=30, check_same_thread=False)
                conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    raise
                # WAL needs its -shm file; a store nobody may write is read as immutable
                conn = sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
            return conn
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():   # SQLite gives the WAL and SHM files the database's mode
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")   # a commit is on disk when it returns
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(_SCHEMA)
        have = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
        for col, typ in _ADDED.items():
            if col not in have:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {col} {typ}")
        return conn

    def close(self) -> None:
        self.release_lock()
        self._conn.close()

    # ---- subscribers ------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[list[Transition]], None]) -> None:
        """Call ``fn(transitions)`` after every commit that changed a job's state."""
        self._subscribers.append(fn)

    def unsubscribe(self, fn) -> None:
        if fn in self._subscribers:
            self._subscribers.remove(fn)

    def _emit(self, transitions: list[Transition]) -> None:
        if transitions:
            for fn in list(self._subscribers):
                fn(transitions)

    # ---- transactions -------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise StoreError(f"job store {self.path}: opened read-only")
        c = self._conn
        with self._mutex:
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(_describe(self.path, exc)) from None
            try:
                yield c
                c.execute("COMMIT")
            except BaseException as exc:
                if c.in_transaction:      # SQLite rolls back by itself on some errors (a full disk)
                    try:
                        c.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(_describe(self.path, exc)) from None
                raise

    def _query(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self._mutex:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(_describe(self.path, exc)) from None

    # ---- one scheduler per store ----------------------------------------------------------
    def lock_path(self) -> str:
        """The lock file: beside the resolved path, so a symlink to the store shares it."""
        return os.path.realpath(self.path) + ".lock"

    def scheduler_lock(self, wait: bool = False) -> None:
        path = self.lock_path()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode().strip()
            except OSError:
                holder = ""
            os.close(fd)
            raise StoreLocked(f"job store {self.path}: another scheduler is running on it"
                              + (f" (pid {holder})" if holder.isdigit() else "")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- submission -----------------------------------------------------------------------
    def submit(self, jobs: Iterable, batch: str | None = None) -> list[str]:
        """Write jobs (state ``queued``) in one committed transaction; return their ids."""
        now = time.time()
        rows, events, out = [], [], []
        for job in jobs:
            jid = uuid.uuid4().hex[:12]
            rows.append((jid, batch, job.name, json.dumps(job.doc), str(Path(job.base_dir).resolve()),
                         job.priority, job.deadline_s, job.policy, now, now))
            events.append((jid, "queued", now, None, None, 0, None))
            out.append(Transition(jid, "queued", now, job.name, batch, None, None, 0, None, None, None, None))
        with self._tx() as c:
            c.executemany("INSERT INTO jobs(id, batch, name, doc, base_dir, priority, deadline_s, policy, "
                          "state, submitted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)", rows)
            c.executemany("INSERT INTO events(job_id, state, at, itype, node, attempt, detail) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)", events)
        self._emit(out)
        return [t.job_id for t in out]

    # ---- state changes --------------------------------------------------------------------
    def apply(self, changes: Iterable[Change]) -> list[Transition | None]:
        """Apply conditional changes in one transaction, in order; for each, the
        committed :class:`Transition` or None (the job was not in such a state)."""
        changes = list(changes)
        if not changes:
            return []
        now = time.time()
        out: list[Transition | None] = []
        events = []
        with self._tx() as c:
            for ch in changes:
                if ch.state not in STATES:
                    raise ValueError(f"state: unknown state {ch.state!r}")
                sets = {"state": ch.state, "updated_at": now}
                for k, v in ch.fields.items():
                    if v is None and k in ("itype", "node"):
                        continue
                    sets[k] = json.dumps(v, default=str) if k == "result" and not isinstance(v, (str, type(None))) else v
                if ch.state in FINISHED:
                    sets["finished_at"] = now
                if ch.start:
                    sets["started_at"] = now
                assign = ", ".join(f"{k} = ?" for k in sets) + (", attempts = attempts + 1" if ch.start else "")
                where = f"id = ? AND state IN ({','.join('?' * len(ch.from_states))})"
                args: list[Any] = [*sets.values(), ch.job_id, *ch.from_states]
                if ch.attempt is not None:
                    where += " AND attempts = ?"
                    args.append(ch.attempt)
                row = c.execute(f"UPDATE jobs SET {assign} WHERE {where} RETURNING name, batch, itype, node, "
                                "attempts, est_run_s, est_cost, measured_s", args).fetchone()
                if row is None:
                    out.append(None)
                    continue
                t = Transition(ch.job_id, ch.state, now, row[0], row[1], row[2], row[3], row[4], ch.detail,
                               row[5], row[6], row[7])
                events.append((ch.job_id, ch.state, now, t.itype, t.node, t.attempt, ch.detail))
                out.append(t)
            c.executemany("INSERT INTO events(job_id, state, at, itype, node, attempt, detail) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)", events)
        self._emit([t for t in out if t is not None])
        return out

    def transition(self, job_id: str, state: str, *, from_states: Iterable[str],
                   attempt: int | None = None, itype: str | None = None, node: str | None = None,
                   detail: str | None = None, **fields: Any) -> bool:
        """Move a job to ``state`` if it is in ``from_states`` (and at ``attempt``, if given).

        Returns False (and records nothing) when the job was not in such a state: the
        change already happened, or the job was cancelled meanwhile.
        """
        if state not in STATES:
            raise ValueError(f"state: unknown state {state!r}")
        ch = Change(job_id, state, tuple(from_states), attempt, detail, {"itype": itype, "node": node, **fields})
        return self.apply([ch])[0] is not None

    def start(self, job_id: str, node: str, itype: str, **fields: Any) -> int | None:
        """placed -> running on ``node``; returns the new attempt number (None if not placed)."""
        t = self.apply([Change(job_id, "running", ("placed",), fields={"node": node, "itype": itype, **fields},
                               start=True)])[0]
        return None if t is None else t.attempt

    def cancel(self, job_id: str) -> bool:
        return self.transition(job_id, "cancelled", from_states=UNFINISHED, detail="cancelled by user")

    def recover(self, max_attempts: int | None = None, exclude: Iterable[str] = ()) -> list[str]:
        """After a scheduler restart: running jobs were lost with it; record them retried
        (or failed, once they used ``max_attempts``). ``exclude``: jobs to leave running
        (their previous attempt may still be alive). Returns the ids queued again."""
        skip = set(exclude)
        rows = [r for r in self._query("SELECT id, attempts FROM jobs WHERE state = 'running'") if r[0] not in skip]
        why = "the scheduler stopped while the job ran"
        changes = []
        for jid, attempts in rows:
            if max_attempts is not None and attempts >= max_attempts:
                err = f"{why}; gave up after {attempts} attempts"
                changes.append(Change(jid, "failed", ("running",), attempts, err, {"error": err}))
            else:
                changes.append(Change(jid, "retried", ("running",), attempts, f"{why}; queued again"))
        done = self.apply(changes)
        return [t.job_id for t in done if t is not None and t.state == "retried"]

    # ---- queries --------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        """A job by id or unique id prefix (both through the id index)."""
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows and job_id:
            hi = job_id[:-1] + chr(ord(job_id[-1]) + 1)
            rows = self._query("SELECT * FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT 2", (job_id, hi))
            if len(rows) > 1:
                raise KeyError(f"job id prefix {job_id!r} is ambiguous")
        if not rows:
            raise KeyError(f"no job {job_id!r} in {self.path}")
        return JobRecord.from_row(rows[0])

    def jobs(self, states: Iterable[str] | None = None, ids: Iterable[str] | None = None,
             batch: str | None = None, limit: int | None = None) -> list[JobRecord]:
        """Jobs in queue order: priority (high first), then deadline, then submission."""
        q, args = self._where(states, ids, batch)
        q = "SELECT * FROM jobs" + q + " ORDER BY priority DESC, deadline_s IS NULL, deadline_s, seq"
        if limit is not None:
            q += f" LIMIT {int(limit)}"
        return [JobRecord.from_row(r) for r in self._query(q, args)]

    @staticmethod
    def _where(states, ids, batch) -> tuple[str, list]:
        q, args = " WHERE 1=1", []
        if states is not None:
            states = tuple(states)
            q += f" AND state IN ({','.join('?' * len(states))})"
            args += states
        if ids is not None:
            ids = tuple(ids)
            q += f" AND id IN ({','.join('?' * len(ids))})"
            args += ids
        if batch is not None:
            q += " AND batch = ?"
            args.append(batch)
        return q, args

    def light(self, states: Iterable[str] | None = None, *, after_seq: int = 0,
              batch: str | None = None) -> list[sqlite3.Row]:
        """Rows without document or result (:data:`LIGHT` columns), by submission."""
        q, args = self._where(states, None, batch)
        q = f"SELECT {', '.join(LIGHT)} FROM jobs" + q + " AND seq > ? ORDER BY seq"
        return self._query(q, [*args, after_seq])

    def light_snapshot(self, states: Iterable[str], batch: str | None = None) -> tuple[list, int]:
        """Light rows in ``states`` and the newest ``seq`` of the store, read in one
        snapshot: every job submitted later has a larger ``seq``."""
        q, args = self._where(states, None, batch)
        with self._mutex:
            c = self._conn
            own = not c.in_transaction
            try:
                if own:
                    c.execute("BEGIN")
                rows = c.execute(f"SELECT {', '.join(LIGHT)} FROM jobs" + q + " ORDER BY seq", args).fetchall()
                top = c.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0]
                if own:
                    c.execute("COMMIT")
            except sqlite3.Error as exc:
                if own and c.in_transaction:
                    c.execute("ROLLBACK")
                raise StoreError(_describe(self.path, exc)) from None
        return rows, top

    def docs(self, ids: Iterable[str]) -> dict[str, tuple[dict, str]]:
        """id -> (document, base_dir) for these jobs."""
        out = {}
        ids = list(ids)
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for r in self._query(f"SELECT id, doc, base_dir FROM jobs WHERE id IN ({','.join('?' * len(part))})",
                                 part):
                try:
                    out[r[0]] = (json.loads(r[1]), r[2])
                except ValueError:
                    out[r[0]] = (None, r[2])
        return out

    def last_event(self) -> int:
        return self._query("SELECT COALESCE(MAX(id), 0) FROM events")[0][0]

    def cancelled_since(self, event_id: int) -> tuple[list[str], int]:
        """Jobs cancelled by events after ``event_id``, and the newest event id."""
        rows = self._query("SELECT id, job_id, state FROM events WHERE id > ? ORDER BY id", (event_id,))
        if not rows:
            return [], event_id
        return [r[1] for r in rows if r[2] == "cancelled"], rows[-1][0]

    def events(self, job_id: str | None = None) -> list[dict]:
        if job_id is None:
            rows = self._query("SELECT * FROM events ORDER BY id")
        else:
            rows = self._query("SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,))
        return [dict(r) for r in rows]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for r in self._query("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            out[r[0]] = r[1]
        return out

    def unfinished(self) -> int:
        return self._query(f"SELECT COUNT(*) FROM jobs WHERE state IN ({','.join('?' * len(UNFINISHED))})",
                           UNFINISHED)[0][0]
