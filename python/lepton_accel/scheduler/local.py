"""The local executor: the embedded default, one machine, no extra service.

Worker processes stand in for nodes of the placed instance types. Each worker runs its jobs
through the public API with the backend that matches its type's accelerator when this
machine has it (``cuda`` for GPU types, ``fpga`` for FPGA types), and otherwise on ``cpu``;
the result records which backend ran and whether the accelerator was simulated.

One scheduling loop (:meth:`LocalExecutor.run`):

1. results and deaths: each worker talks over its own pipe; a closed pipe means the worker
   died, and its job is recorded ``retried`` (or ``failed`` after ``max_attempts``);
2. pending jobs are placed, in queue order, against the pool as it is (warm workers, the
   FPGA cores they hold) and recorded ``placed`` with the estimate and the explanation;
3. placed jobs start on an idle worker of their type, preferring the node placement chose
   and then a node already holding the job's core;
4. the elastic rule (:mod:`.elastic`) adds workers where queued work per type is high and
   stops idle ones where utilisation stayed low, within per-type min/max and a total cap.

Every change goes through the store first; a restarted executor resumes from it.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait

from ..perf import MODEL, NATIVE_BACKEND, PerfModel
from .catalog import Catalog, load_catalog
from .elastic import ElasticPolicy, UtilisationWindow, should_scale_in
from .jobs import JobError, parse_job
from .metrics import SchedulerMetrics
from .placement import ClusterState, NodeView, place
from .store import PENDING, UNFINISHED, JobStore



def local_backends() -> set[str]:
    import lepton_accel as la

    return {b["name"] for b in la.backends() if b["available"]}


def backend_for(kind: str, available: set[str]) -> str:
    native = NATIVE_BACKEND[kind]
    return native if native in available else "cpu"


# ---- the worker process ------------------------------------------------------------------
def _parent_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _die_with_parent() -> None:
    try:  # Linux: SIGKILL this worker when its parent goes away
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_main(conn, node_id: str, backend: str, scheduler_pid: int, allow_shell: bool) -> None:
    """Run jobs sent over ``conn`` until told to stop or the scheduler is gone."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .runner import execute

    while True:
        if not conn.poll(0.5):
            if _parent_gone(scheduler_pid):
                return
            continue
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        job_id, attempt, doc, base_dir = msg
        result = execute(doc, base_dir, backend, allow_shell)
        result["pid"] = os.getpid()
        try:
            conn.send((job_id, attempt, result))
        except (BrokenPipeError, EOFError):
            return


@dataclass
class Worker:
    node_id: str
    itype: str
    kind: str
    backend: str
    proc: mp.process.BaseProcess
    conn: object
    cores: set = field(default_factory=set)
    job: str | None = None
    attempt: int | None = None
    started: float = 0.0
    est_s: float = 0.0

    @property
    def busy(self) -> bool:
        return self.job is not None


class LocalExecutor:
    """Runs the store's jobs on local worker processes standing in for instance types."""

    def __init__(self, store: JobStore, catalog: Catalog | None = None, *,
                 elastic: ElasticPolicy | None = None, max_workers: int = 4, max_attempts: int = 3,
                 allow_shell: bool = False, metrics: SchedulerMetrics | None = None,
                 model: PerfModel = MODEL, poll_s: float = 0.02, start_method: str | None = None,
                 log=None):
        self.store = store
        self.catalog = catalog or load_catalog()
        self.elastic = elastic or ElasticPolicy()
        self.max_workers = max_workers
        self.max_attempts = max_attempts
        self.allow_shell = allow_shell
        self.metrics = metrics
        self.model = model
        self.poll_s = poll_s
        self.log = log or (lambda msg: None)
        method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        self._ctx = mp.get_context(method)
        if method == "forkserver":
            self._ctx.set_forkserver_preload(["lepton_accel.scheduler.runner"])
        self._available = local_backends()
        self.workers: dict[str, Worker] = {}
        self._ids = itertools.count(1)
        self._hint: dict[str, str] = {}          # job -> node placement chose
        self._util: dict[str, UtilisationWindow] = {}
        self._last_counts = 0.0
        self._last_cancel_check = 0.0
        self._locked = False
        self._placed: list = []
        self._batch: str | None = None
        self._on_finish = None
        self._cores: dict[str, str | None] = {}   # job -> FPGA core it needs

    # ---- pool ------------------------------------------------------------------------------
    def _spawn(self, itype: str) -> Worker:
        t = self.catalog[itype]
        node_id = f"{itype}#{next(self._ids)}"
        backend = backend_for(t.kind, self._available)
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=worker_main, name=f"lepton-worker {node_id}",
                                 args=(child, node_id, backend, os.getpid(), self.allow_shell), daemon=True)
        proc.start()
        child.close()
        w = Worker(node_id, itype, t.kind, backend, proc, parent)
        self.workers[node_id] = w
        self.log(f"scale out: started {node_id} (backend {backend})")
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

    def close(self) -> None:
        for w in list(self.workers.values()):
            self._stop(w, kill=w.busy)
        if self._locked:
            self.store.release_lock()
            self._locked = False

    def state(self, now: float | None = None) -> ClusterState:
        """The pool as placement sees it."""
        now = time.monotonic() if now is None else now
        queued = self._queued_by_type()
        nodes = []
        for w in self.workers.values():
            per = self._count_type(w.itype)
            backlog = sum(q[1] for q in queued.get(w.itype, [])) / max(per, 1)
            remaining = max(w.est_s - (now - w.started), 0.0) if w.busy else 0.0
            free = 0 if (w.busy or queued.get(w.itype)) else 1
            nodes.append(NodeView(w.node_id, w.itype, free, frozenset(w.cores), remaining + backlog))
        for itype, items in queued.items():   # nodes being launched for queued work
            if itype in self.catalog.types and not self._count_type(itype):
                t = self.catalog[itype]
                cores = frozenset(self._cores.get(jid) for jid, _ in items) - {None}
                nodes.append(NodeView(f"{itype}#launching", itype, 0, cores,
                                      t.startup_s + sum(e for _, e in items) / t.slots))
        caps = {t.name: self.elastic.limits(t.name)[1] for t in self.catalog}
        return ClusterState(nodes, caps)

    def _count_type(self, itype: str) -> int:
        return sum(1 for w in self.workers.values() if w.itype == itype)

    def _queued_by_type(self) -> dict[str, list[tuple[str, float]]]:
        out: dict[str, list[tuple[str, float]]] = {}
        for r in self._placed:
            out.setdefault(r.itype, []).append((r.id, r.est_run_s or 0.0))
        return out

    # ---- the loop --------------------------------------------------------------------------
    def run(self, *, batch: str | None = None, until_idle: bool = True, timeout: float | None = None,
            on_finish=None) -> None:
        """Process jobs (of ``batch``, or all) until none is unfinished (or forever)."""
        if not self._locked:
            self.store.scheduler_lock()
            self._locked = True
            for jid in self.store.recover():
                self._count("retried")
                self.log(f"recovered {jid}: was running when the scheduler stopped")
        self._batch = batch
        self._on_finish = on_finish
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.step()
            if until_idle and not self._unfinished(batch):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"jobs still unfinished after {timeout} s")

    def step(self) -> None:
        """One pass of the loop: results, cancellations, placement, dispatch, scaling."""
        self._collect()
        self._check_cancelled()
        self._place_pending()
        self._placed = self.store.jobs(["placed"], batch=self._batch)
        self._dispatch()
        self._scale()
        self._publish()

    def _unfinished(self, batch) -> bool:
        if batch is None:
            return self.store.unfinished() > 0
        return bool(self.store.jobs(UNFINISHED, batch=batch))

    def _count(self, state: str) -> None:
        if self.metrics:
            self.metrics.transition(state)

    def _collect(self) -> None:
        conns = {w.conn: w for w in self.workers.values() if w.busy}
        ready = mp_wait(list(conns), timeout=self.poll_s) if conns else (time.sleep(self.poll_s) or [])
        for conn in ready:
            w = conns[conn]
            try:
                job_id, attempt, result = conn.recv()
            except (EOFError, OSError):
                self._worker_died(w)
                continue
            self._finish(w, job_id, attempt, result)
        for w in list(self.workers.values()):   # idle workers that died
            if not w.busy and w.proc.exitcode is not None:
                self.workers.pop(w.node_id, None)
                w.conn.close()

    def _finish(self, w: Worker, job_id: str, attempt: int, result: dict) -> None:
        w.job, w.attempt = None, None
        rec = self.store.get(job_id)
        if result.get("ok") and result.get("verified", True) is not False:
            changed = self.store.transition(
                job_id, "done", from_states=("running",), attempt=attempt,
                measured_s=result.get("measured_s"), backend=result.get("backend"),
                verified=result.get("verified"), result=result,
                detail=f"measured {result.get('measured_s', 0):.4g} s on backend {result.get('backend')}")
            state = "done"
        else:
            err = result.get("error") or (f"verification failed: relative error {result.get('rel_err')}"
                                          f" (tolerance {result.get('tolerance')})")
            changed = self.store.transition(job_id, "failed", from_states=("running",), attempt=attempt,
                                            measured_s=result.get("measured_s"), backend=result.get("backend"),
                                            verified=result.get("verified"), result=result, error=err,
                                            detail=err)
            state = "failed"
        if changed:
            self._count(state)
            if self.metrics:
                self.metrics.finished(rec.itype, rec.est_run_s, result.get("measured_s"), rec.est_cost)
            self.log(f"{state}: {rec.name} ({job_id}) on {w.node_id}")
            if self._on_finish:
                self._on_finish(self.store.get(job_id))

    def _worker_died(self, w: Worker) -> None:
        w.proc.join(timeout=1)
        code = w.proc.exitcode
        self.workers.pop(w.node_id, None)
        w.conn.close()
        if w.job is None:
            return
        rec = self.store.get(w.job)
        why = f"node {w.node_id} died (exit code {code}) while running the job"
        if rec.attempts < self.max_attempts:
            if self.store.transition(w.job, "retried", from_states=("running",), attempt=w.attempt, detail=why):
                self._count("retried")
                self.log(f"retried: {rec.name} ({rec.id}): {why}")
        elif self.store.transition(w.job, "failed", from_states=("running",), attempt=w.attempt,
                                   error=f"{why}; gave up after {rec.attempts} attempts", detail=why):
            self._count("failed")
        w.job = None

    def _check_cancelled(self) -> None:
        now = time.monotonic()
        if now - self._last_cancel_check < 0.25:
            return
        self._last_cancel_check = now
        busy = {w.job: w for w in self.workers.values() if w.busy}
        if not busy:
            return
        for rec in self.store.jobs(["cancelled"], ids=list(busy)):
            w = busy[rec.id]
            self.log(f"cancelled: {rec.name} ({rec.id}); stopping {w.node_id}")
            w.job = None
            self._stop(w, kill=True)

    def _place_pending(self) -> None:
        pending = self.store.jobs(PENDING, batch=self._batch)
        if not pending:
            return
        now = time.time()
        self._placed = self.store.jobs(["placed"], batch=self._batch)
        for rec in pending:
            try:
                job = parse_job(rec.doc, "", rec.base_dir)
            except JobError as exc:
                if self.store.transition(rec.id, "failed", from_states=PENDING, error=str(exc), detail=str(exc)):
                    self._count("failed")
                continue
            p = place(job, self.catalog, self.state(), model=self.model, elapsed_s=now - rec.submitted_at)
            if p.winner is None:
                if self.store.transition(rec.id, "failed", from_states=PENDING, error=p.reason, detail=p.reason):
                    self._count("failed")
                continue
            win = p.winner
            ok = self.store.transition(rec.id, "placed", from_states=PENDING, itype=win.itype.name,
                                       node=win.node, est_run_s=win.run_s, est_total_s=win.time_s,
                                       est_cost=win.cost, explain=p.explain(), detail=p.reason)
            if ok:
                self._count("placed")
                if win.node and not win.node.endswith("#launching"):
                    self._hint[rec.id] = win.node
                self._cores[rec.id] = job.core
                # later placements in this pass see this job in the type's queue
                self._placed.append(self.store.get(rec.id))

    def _dispatch(self) -> None:
        for rec in self._placed:
            idle = [w for w in self.workers.values() if w.itype == rec.itype and not w.busy
                    and w.proc.exitcode is None]
            if not idle:
                continue
            job = parse_job(rec.doc, "", rec.base_dir)
            hint = self._hint.get(rec.id)
            idle.sort(key=lambda w: (w.node_id != hint, job.core not in w.cores, w.node_id))
            w = idle[0]
            attempt = self.store.start(rec.id, w.node_id, w.itype)
            if attempt is None:
                continue
            self._count("running")
            try:
                w.conn.send((rec.id, attempt, rec.doc, rec.base_dir))
            except (BrokenPipeError, OSError):
                w.job, w.attempt = rec.id, attempt
                self._worker_died(w)
                continue
            w.job, w.attempt, w.started, w.est_s = rec.id, attempt, time.monotonic(), rec.est_run_s or 0.0
            if w.kind == "fpga" and job.core:
                w.cores.add(job.core)
            self._hint.pop(rec.id, None)
            self._cores.pop(rec.id, None)
        self._placed = [r for r in self._placed if not any(w.job == r.id for w in self.workers.values())]

    def _scale(self) -> None:
        queued = {t: len(v) for t, v in self._queued_by_type().items()}
        now = time.monotonic()
        types = set(queued) | {w.itype for w in self.workers.values()}
        for t in sorted(types, key=lambda t: -queued.get(t, 0)):
            ws = [w for w in self.workers.values() if w.itype == t]
            busy = sum(w.busy for w in ws)
            win = self._util.setdefault(t, UtilisationWindow(self.elastic.window_s))
            win.add(busy, len(ws), now)
            want = self.elastic.target(t, len(ws), busy, queued.get(t, 0))
            for _ in range(want - len(ws)):
                if len(self.workers) >= self.max_workers and not self._make_room(t, queued):
                    break
                self._spawn(t)
                win.reset()
            if len(ws) > 0 and should_scale_in(self.elastic, t, len(ws), queued.get(t, 0), win, now):
                idle = [w for w in ws if not w.busy]
                if idle:
                    self.log(f"scale in: stopping {idle[-1].node_id} (utilisation under "
                             f"{self.elastic.scale_in_at:.0%} for {self.elastic.window_s:g} s)")
                    self._stop(idle[-1])
                    win.reset()

    def _make_room(self, itype: str, queued: dict[str, int]) -> bool:
        """At the total cap: stop an idle worker of a type with nothing queued."""
        for w in list(self.workers.values()):
            if w.itype != itype and not w.busy and not queued.get(w.itype) \
                    and self._count_type(w.itype) > self.elastic.limits(w.itype)[0]:
                self.log(f"scale in: stopping {w.node_id} to make room for {itype}")
                self._stop(w)
                return True
        return False

    def _publish(self) -> None:
        if not self.metrics:
            return
        now = time.monotonic()
        if now - self._last_counts < 0.2:
            return
        self._last_counts = now
        self.metrics.set_counts(self.store.counts())
        nodes: dict[str, int] = {}
        for w in self.workers.values():
            nodes[w.itype] = nodes.get(w.itype, 0) + 1
        self.metrics.set_pool(nodes, {t: len(v) for t, v in self._queued_by_type().items()})
