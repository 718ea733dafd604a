"""The local executor: the embedded default, one machine, no extra service.

Worker processes stand in for nodes of the placed instance types. Each worker runs its jobs
through the API with the backend that matches its type's accelerator when this machine has
it (``cuda`` for GPU types, ``fpga`` for FPGA types), and otherwise on ``cpu``; the result
records which backend ran and whether the accelerator was simulated.

The scheduling itself is the shared loop (:mod:`.loop`); this module supplies only what a
local node does: start a worker process, send it a job, collect results and deaths,
cancel, stop. A worker is the leader of its own process group and dies with the
scheduler (``PR_SET_PDEATHSIG``); a cancelled job, or the job of a worker that died, has
every process of its attempt killed (:mod:`.procs`) before the job is recorded or retried.
"""
from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait

from ..perf import PerfModel
from . import procs
from .catalog import Catalog, load_catalog
from .elastic import ElasticPolicy
from .loop import Finished, Lost, NodeInfo, Nodes, Run, SchedulerError, SchedulingLoop
from .metrics import SchedulerMetrics
from .runner import backend_for
from .store import JobStore


# ---- the worker process ------------------------------------------------------------------
def _parent_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def worker_main(conn, node_id: str, kind: str, scheduler_pid: int, allow_shell: bool, roots=None,
                env_names=(), artifacts: str | None = None) -> None:
    """Run jobs sent over ``conn`` until told to stop or the scheduler is gone. The worker
    finds its backend itself (the node kind's native one when this machine has it), so
    the scheduler does not wait for the backends' availability checks."""
    try:
        os.setpgid(0, 0)          # the leader of a group the scheduler can kill as a whole
    except OSError:
        pass
    procs.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .runner import execute

    backend = backend_for(kind)

    gone = lambda: _parent_gone(scheduler_pid)   # noqa: E731
    todo: collections.deque = collections.deque()
    while True:
        if not todo and not conn.poll(0.5):
            if gone():
                return
            continue
        try:
            while conn.poll(0):      # take everything sent so far: the scheduler never waits on a full pipe
                msg = conn.recv()
                if msg is None:
                    return
                todo.extend(msg)
        except EOFError:
            return
        if not todo:
            continue
        job_id, attempt, job, workers = todo.popleft()
        result = execute(job, backend, allow_shell=allow_shell, roots=roots, env_names=env_names,
                         mark=procs.marker(job_id, attempt), abandon=gone, job_id=job_id, attempt=attempt,
                         artifacts=artifacts, workers=workers)
        result["pid"] = os.getpid()
        try:
            conn.send((job_id, attempt, result))
        except (BrokenPipeError, EOFError, OSError):
            return


@dataclass
class Worker:
    node_id: str
    itype: str
    kind: str
    proc: mp.process.BaseProcess
    conn: object
    pgid: int = 0                 # its process group: the worker leads it
    pg_start: int | None = None
    cores: set = field(default_factory=set)
    jobs: dict = field(default_factory=dict)    # job id -> attempt, in the order sent
    outbox: list = field(default_factory=list)  # started this pass, not sent yet

    @property
    def job(self) -> str | None:
        """The job it runs now (the first of those sent)."""
        return next(iter(self.jobs), None)

    @property
    def busy(self) -> bool:
        return bool(self.jobs)


class LocalExecutor(Nodes):
    """Runs the store's jobs on local worker processes standing in for instance types."""

    def __init__(self, store: JobStore, catalog: Catalog | None = None, *,
                 elastic: ElasticPolicy | None = None, max_workers: int = 4, max_attempts: int = 3,
                 allow_shell: bool = False, metrics: SchedulerMetrics | None = None,
                 model: PerfModel | None = None, poll_s: float = 0.02, start_method: str | None = None,
                 log=None, test_roots=None, job_env=(), lookahead: int = 256, prefetch: int = 32):
        self.store = store
        self.catalog = catalog or load_catalog()
        self.max_nodes_total = max_workers
        self.allow_shell = allow_shell
        self.roots = test_roots
        self.env_names = tuple(job_env)
        self.prefetch = prefetch
        #: train jobs' checkpoints and models: <store>.artifacts/<job id>/, next to the store
        self.artifacts = str(store.path.parent / (store.path.name + ".artifacts"))
        self.log = log or (lambda msg: None)
        method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        self._ctx = mp.get_context(method)
        if method == "forkserver":
            self._ctx.set_forkserver_preload(["lepton_accel.scheduler.runner", "lepton_accel.backends"])
            from multiprocessing import forkserver

            forkserver.ensure_running()   # its imports overlap ours: the first worker starts sooner
        self.workers: dict[str, Worker] = {}
        self._ids = itertools.count(1)
        self._spawn_failures = 0
        self._events: list = []
        from .jobs import test_roots as _roots

        self.loop = SchedulingLoop(store, self.catalog, self, elastic=elastic or ElasticPolicy(),
                                   max_attempts=max_attempts, model=model, metrics=metrics, log=self.log,
                                   poll_s=poll_s, lookahead=lookahead, trusted=allow_shell,
                                   roots=_roots(test_roots or ()))

    @property
    def max_workers(self) -> int:
        return self.max_nodes_total

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, *, batch: str | None = None, until_idle: bool = True, timeout: float | None = None,
            on_finish=None) -> None:
        """Process jobs (of ``batch``, or all) until none is unfinished (or forever)."""
        self.loop.on_finish = on_finish
        self.loop.run(batch=batch, until_idle=until_idle, timeout=timeout)

    def step(self) -> None:
        self.loop.open(self.loop.batch)
        self.loop.step()

    def close(self) -> None:
        self.loop.close()

    # ---- Nodes: what a local node does ---------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(w.node_id, w.itype, 1, frozenset(w.cores), self.prefetch) for w in self.workers.values()]

    def node_pids(self) -> dict[str, tuple[str, int]]:
        """node -> (instance type, worker pid): what the metrics sample."""
        return {w.node_id: (w.itype, w.proc.pid) for w in self.workers.values()}

    def attempt_fields(self, node_id: str) -> dict:
        w = self.workers[node_id]
        return {"pgid": w.pgid, "pg_start": w.pg_start}

    def start(self, run: Run, node_id: str | None) -> None:
        w = self.workers.get(node_id)
        if w is None:
            self._events.append(Lost(run.job_id, run.attempt, f"node {node_id} was gone before the job started"))
            return
        w.jobs[run.job_id] = run.attempt
        if w.kind == "fpga" and run.job.core:
            w.cores.add(run.job.core)
        w.outbox.append((run.job_id, run.attempt, run.job, run.workers))

    def flush(self) -> None:
        """Send each worker the jobs started for it this pass, in one message."""
        for w in list(self.workers.values()):
            if w.outbox:
                batch, w.outbox = w.outbox, []
                try:
                    w.conn.send(batch)
                except (BrokenPipeError, OSError):
                    self._died(w)

    def poll(self, timeout: float) -> list:
        out, self._events = self._events, []
        conns = {w.conn: w for w in self.workers.values() if w.busy}
        if out:
            timeout = 0
        ready = mp_wait(list(conns), timeout=timeout) if conns else (time.sleep(timeout) or [])
        for conn in ready:
            w = conns[conn]
            try:
                while True:    # every result waiting on this pipe
                    job_id, attempt, result = conn.recv()
                    w.jobs.pop(job_id, None)
                    if result.get("lost"):   # a train job lost a process: retried from its checkpoint
                        out.append(Lost(job_id, attempt, result.get("error", "a training process was lost")))
                    else:
                        out.append(Finished(job_id, attempt, result))
                    if not w.jobs or not conn.poll(0):
                        break
            except (EOFError, OSError):
                self._died(w)
        for w in list(self.workers.values()):   # idle workers that died
            if not w.busy and w.proc.exitcode is not None:
                self.workers.pop(w.node_id, None)
                w.conn.close()
        out, self._events = out + self._events, []
        return out

    def _died(self, w: Worker) -> None:
        w.proc.join(timeout=1)
        code = w.proc.exitcode
        self.workers.pop(w.node_id, None)
        w.conn.close()
        for job_id, attempt in w.jobs.items():
            gone = procs.kill_attempt(w.pgid, w.pg_start, procs.marker(job_id, attempt), timeout=10.0)
            self._events.append(Lost(job_id, attempt, f"node {w.node_id} died (exit code {code}) while running "
                                     "the job", gone=gone, pgid=w.pgid, pg_start=w.pg_start))
        w.jobs.clear()

    def cancel(self, job_id: str) -> None:
        for w in list(self.workers.values()):
            if job_id in w.jobs:
                attempt = w.jobs.pop(job_id)
                procs.kill_attempt(w.pgid, w.pg_start, procs.marker(job_id, attempt), timeout=10.0)
                self._died(w)     # the jobs queued behind it are lost with the worker

    def attempt_gone(self, job_id, attempt, pgid, pg_start, timeout) -> bool:
        return procs.kill_attempt(pgid, pg_start, procs.marker(job_id, attempt), timeout=timeout)

    def scale(self, targets: dict[str, int], stop: list[str]) -> None:
        for nid in stop:
            w = self.workers.get(nid)
            if w is not None and not w.busy:
                self.log(f"scale in: stopping {nid}")
                self._stop(w)
        for t, want in targets.items():
            have = sum(1 for w in self.workers.values() if w.itype == t)
            for _ in range(want - have):
                if len(self.workers) >= self.max_nodes_total:
                    break
                self._spawn(t)

    # ---- the pool ------------------------------------------------------------------------------
    def _spawn(self, itype: str) -> Worker | None:
        t = self.catalog[itype]
        node_id = f"{itype}#{next(self._ids)}"
        try:
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=worker_main, name=f"lepton-worker {node_id}",
                                     args=(child, node_id, t.kind, os.getpid(), self.allow_shell,
                                           self.loop.roots, self.env_names, self.artifacts), daemon=True)
            proc.start()
        except Exception as exc:   # e.g. the forkserver was killed: say so once, try again later
            self._spawn_failures += 1
            msg = f"cannot start a worker for {itype}: {type(exc).__name__}: {exc}"
            self.log(msg)
            if self._spawn_failures >= 5:
                raise SchedulerError(msg) from None
            return None
        self._spawn_failures = 0
        child.close()
        w = Worker(node_id, itype, t.kind, proc, parent, proc.pid, procs.start_time(proc.pid))
        self.workers[node_id] = w
        self.log(f"scale out: started {node_id} ({t.kind} node)")
        return w

    def _stop(self, w: Worker, kill: bool = False) -> None:
        self.workers.pop(w.node_id, None)
        try:
            if kill:
                w.proc.kill()
            else:
                w.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        w.proc.join(timeout=5)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(timeout=5)
        w.conn.close()

    def shutdown(self) -> None:
        for w in list(self.workers.values()):
            if w.busy:
                self.workers.pop(w.node_id, None)
                for job_id, attempt in list(w.jobs.items()):
                    procs.kill_attempt(w.pgid, w.pg_start, procs.marker(job_id, attempt), timeout=10.0)
                w.proc.join(timeout=5)
                w.conn.close()
            else:
                self._stop(w)
