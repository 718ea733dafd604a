"""The durable job store: SQLite in WAL mode.

* :meth:`JobStore.submit` commits the job (state ``queued``) before it returns its id:
  an acknowledged job survives any crash of the submitter or the scheduler.
* Every state change is one transaction that updates the job row *and* appends an event
  (state, time, instance type, node, detail). Changes are conditional on the current state
  (and, for results, on the attempt number), so a job reaches ``done`` at most once and a
  late result from an abandoned attempt is ignored.
* :meth:`JobStore.recover` is what a restarted scheduler runs first: jobs that were
  ``running`` under the dead scheduler are recorded ``retried`` and queued again; ``placed``
  jobs keep their placement and wait for a worker.
* :meth:`JobStore.scheduler_lock` makes sure one scheduler at a time works on a store
  (an OS file lock, released when the process dies, even by SIGKILL).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

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
    explain      TEXT
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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "JobRecord":
        d = dict(row)
        d["doc"] = json.loads(d["doc"])
        d["result"] = json.loads(d["result"]) if d["result"] else None
        d["verified"] = None if d["verified"] is None else bool(d["verified"])
        return cls(**d)


class StoreLocked(RuntimeError):
    """Another scheduler already works on this store."""


class JobStore:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._mutex = threading.RLock()   # one connection, shared safely by threads
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")   # a commit is on disk when it returns
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.executescript(_SCHEMA)
        self._lock_fd: int | None = None

    def close(self) -> None:
        self.release_lock()
        self._conn.close()

    # ---- transactions -------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        c = self._conn
        with self._mutex:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def _query(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self._mutex:
            return self._conn.execute(sql, args).fetchall()

    @staticmethod
    def _event(c, job_id, state, at, itype=None, node=None, attempt=None, detail=None) -> None:
        c.execute("INSERT INTO events(job_id, state, at, itype, node, attempt, detail) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)", (job_id, state, at, itype, node, attempt, detail))

    # ---- one scheduler per store ----------------------------------------------------------
    def scheduler_lock(self, wait: bool = False) -> None:
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(f"another scheduler is running on {self.path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
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
        ids = []
        with self._tx() as c:
            for job in jobs:
                jid = uuid.uuid4().hex[:12]
                c.execute("INSERT INTO jobs(id, batch, name, doc, base_dir, priority, deadline_s, policy, "
                          "state, submitted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                          (jid, batch, job.name, json.dumps(job.doc), str(Path(job.base_dir).resolve()),
                           job.priority, job.deadline_s, job.policy, now, now))
                self._event(c, jid, "queued", now)
                ids.append(jid)
        return ids

    # ---- state changes --------------------------------------------------------------------
    def transition(self, job_id: str, state: str, *, from_states: Iterable[str],
                   attempt: int | None = None, itype: str | None = None, node: str | None = None,
                   detail: str | None = None, **fields: Any) -> bool:
        """Move a job to ``state`` if it is in ``from_states`` (and at ``attempt``, if given).

        Returns False (and records nothing) when the job was not in such a state: the
        change already happened, or the job was cancelled meanwhile.
        """
        if state not in STATES:
            raise ValueError(f"state: unknown state {state!r}")
        now = time.time()
        sets = {"state": state, "updated_at": now, **fields}
        if itype is not None:
            sets["itype"] = itype
        if node is not None:
            sets["node"] = node
        if state in FINISHED:
            sets["finished_at"] = now
        for k in ("result",):
            if k in sets and not isinstance(sets[k], (str, type(None))):
                sets[k] = json.dumps(sets[k])
        from_states = tuple(from_states)
        where = f"id = ? AND state IN ({','.join('?' * len(from_states))})"
        args: list[Any] = [job_id, *from_states]
        if attempt is not None:
            where += " AND attempts = ?"
            args.append(attempt)
        with self._tx() as c:
            cur = c.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE {where}",
                            [*sets.values(), *args])
            if cur.rowcount != 1:
                return False
            row = c.execute("SELECT itype, node, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            self._event(c, job_id, state, now, row["itype"], row["node"], row["attempts"], detail)
        return True

    def start(self, job_id: str, node: str, itype: str) -> int | None:
        """placed -> running on ``node``; returns the new attempt number (None if not placed)."""
        now = time.time()
        with self._tx() as c:
            cur = c.execute("UPDATE jobs SET state = 'running', node = ?, itype = ?, attempts = attempts + 1, "
                            "started_at = ?, updated_at = ? WHERE id = ? AND state = 'placed'",
                            (node, itype, now, now, job_id))
            if cur.rowcount != 1:
                return None
            attempt = c.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            self._event(c, job_id, "running", now, itype, node, attempt)
        return attempt

    def cancel(self, job_id: str) -> bool:
        return self.transition(job_id, "cancelled", from_states=UNFINISHED, detail="cancelled by user")

    def recover(self) -> list[str]:
        """After a scheduler restart: running jobs were lost with it; record them retried."""
        ids = [r["id"] for r in self._query("SELECT id FROM jobs WHERE state = 'running'")]
        out = []
        for jid in ids:
            if self.transition(jid, "retried", from_states=("running",),
                               detail="the scheduler stopped while the job ran; queued again"):
                out.append(jid)
        return out

    # ---- queries --------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        row = self._query("SELECT * FROM jobs WHERE id = ? OR id LIKE ? ORDER BY seq LIMIT 2",
                          (job_id, job_id + "%"))
        if not row:
            raise KeyError(f"no job {job_id!r} in {self.path}")
        if len(row) > 1 and row[0]["id"] != job_id:
            raise KeyError(f"job id prefix {job_id!r} is ambiguous")
        return JobRecord.from_row(row[0])

    def jobs(self, states: Iterable[str] | None = None, ids: Iterable[str] | None = None,
             batch: str | None = None) -> list[JobRecord]:
        """Jobs in queue order: priority (high first), then deadline, then submission."""
        q, args = "SELECT * FROM jobs WHERE 1=1", []
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
        q += " ORDER BY priority DESC, deadline_s IS NULL, deadline_s, seq"
        return [JobRecord.from_row(r) for r in self._query(q, args)]

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
