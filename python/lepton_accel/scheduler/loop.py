"""The scheduling loop, shared by every executor.

An executor supplies only what differs between kinds of node (:class:`Nodes`): start a
job, poll for what happened, cancel a job, launch and stop nodes, and say whether an
earlier attempt's processes are gone. Everything else happens here, once:

* **queue order**: priority (high first), then deadline, then submission;
* **place**: :func:`schedule` is a pure function of the queue and the cluster state
  (nodes up, nodes being launched, the work already placed on them) that returns
  placements, starts, launch targets and nodes to stop; the cluster state placement sees
  counts nodes already promised to earlier jobs, so a promise never breaks a node limit;
* **start, collect, retry, cancel**: results become ``done`` / ``failed`` by one success
  rule (:func:`~.runner.succeeded`); a lost attempt is ``retried`` (``failed`` after
  ``max_attempts``) once its processes are gone; the run statistics workers send back
  are recorded in the loop's perf model, so placement sees what workers learn;
* **the elastic rule** (:mod:`.elastic`) for launch targets and scale-in.

Every change of a pass is committed in one transaction; the store emits the transitions
to its subscribers (metrics, the log). A job is parsed once, when the loop first loads
it, and the parsed :class:`~.jobs.Job` (with its spec) is what the executor sends to the
worker. A job that cannot be parsed or placed is marked failed with the reason; the loop
goes on.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..backends import RunStats
from ..perf import PerfModel
from .catalog import Catalog
from .elastic import ElasticPolicy, UtilisationWindow, should_scale_in
from .jobs import Job, JobError, clip, parse_job
from .placement import ClusterState, NodeView, Placement, place
from .runner import succeeded
from .store import PENDING, Change, JobStore, Transition
from .train import observe_run


class SchedulerError(RuntimeError):
    """The loop cannot go on (the message is one line saying why)."""


# ---- what executors report ------------------------------------------------------------------
@dataclass
class NodeInfo:
    node_id: str
    itype: str
    slots: int = 1
    cores: frozenset = frozenset()   # FPGA core images loaded on it
    depth: int = 0                   # jobs it takes at once when they are short (0: slots)


#: a job estimated shorter than this may queue on a node behind other short ones (it
#: keeps a worker fed while the loop commits; a long job never waits behind another)
SHORT_S = 0.05


@dataclass
class Started:
    """A job began running on ``node`` (executors that queue work themselves report it)."""
    job_id: str
    node: str


@dataclass
class Restarted:
    """The executor ran the job again elsewhere after it lost it (``why``)."""
    job_id: str
    node: str
    why: str


@dataclass
class Finished:
    job_id: str
    attempt: int | None
    result: dict


@dataclass
class Lost:
    """An attempt ended without a result (``why``). ``retry``: it may run again;
    ``gone``: its processes are known to be gone (else the loop waits for them)."""
    job_id: str
    attempt: int | None
    why: str
    retry: bool = True
    gone: bool = True
    pgid: int | None = None
    pg_start: int | None = None


@dataclass
class Run:
    """What an executor starts: the parsed job, its attempt (None: counted by the
    executor's start report) and the type it was placed on; ``workers``: the data-parallel
    worker count placement chose for a train job (None: not placed in this run of the loop)."""
    job_id: str
    attempt: int | None
    job: Job
    itype: str
    workers: int | None = None
    market: str | None = None        # "spot": placed on spot capacity (None: on demand)


class Nodes:
    """What an executor supplies for its kind of node."""

    #: True: the loop picks the node and records ``running`` before calling start();
    #: False: start() hands the job over and the executor reports Started later
    assigns_nodes = True
    #: how long an idle node is kept (and billed) by this kind of cluster
    idle_timeout_s = 0.0
    #: nodes in all (None: no limit of the executor's own)
    max_nodes_total: int | None = None
    #: whether placement may put a job on spot capacity for this executor
    offers_spot = True

    def nodes(self) -> list[NodeInfo]:
        raise NotImplementedError

    def slots_of(self, itype: str) -> int:
        """Jobs one node of this type runs at once."""
        return 1

    def launching(self) -> dict[str, int]:
        """Nodes asked for and not yet up, per type."""
        return {}

    def attempt_fields(self, node_id: str) -> dict[str, Any]:
        """Fields recorded with ``running`` on this node (e.g. the process group)."""
        return {}

    def start(self, run: Run, node_id: str | None) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list:
        raise NotImplementedError

    def flush(self) -> None:
        """The pass's starts are all made (an executor may send them together)."""

    def cancel(self, job_id: str) -> None:
        raise NotImplementedError

    def scale(self, targets: dict[str, int], stop: list[str]) -> None:
        """Reach ``targets`` nodes for the types named; stop the nodes listed."""

    def attempt_gone(self, job_id: str, attempt: int, pgid: int | None, pg_start: int | None,
                     timeout: float) -> bool:
        """Make sure an earlier attempt's processes are gone (kill them); True when they are."""
        return True

    def shutdown(self) -> None:
        """Stop every node (the loop is closing)."""


# ---- the queue in memory ---------------------------------------------------------------------
@dataclass(eq=False)
class Entry:
    id: str
    seq: int
    name: str
    priority: int
    deadline_s: float | None
    submitted_at: float
    state: str
    attempts: int = 0
    itype: str | None = None
    node: str | None = None
    est_run_s: float | None = None
    job: Job | None = None
    hint: str | None = None          # the node placement chose
    started: float = 0.0             # monotonic time of the current attempt's start
    handed: bool = False             # given to an executor that queues work itself
    workers: int | None = None       # a train job's worker count, as placed
    market: str | None = None        # "spot" when placed on spot capacity

    @property
    def key(self) -> tuple:
        return (-self.priority, self.deadline_s is None, self.deadline_s or 0.0, self.seq)


@dataclass
class Decision:
    placements: list = field(default_factory=list)   # (entry, Placement | error text)
    starts: list = field(default_factory=list)       # (entry, node id)
    targets: dict = field(default_factory=dict)      # type -> nodes wanted
    stop: list = field(default_factory=list)         # node ids


# ---- the cluster as placement sees it --------------------------------------------------------
class Snapshot:
    """Slot timelines per node: running work, placed work queued behind it, nodes being
    launched (asked for, or promised to a job placed on a new node). Updated per
    placement, never rebuilt within a pass."""

    def __init__(self, catalog: Catalog, nodes: list[NodeInfo], launching: dict[str, int],
                 running: list[Entry], placed: dict[str, list[Entry]], caps: dict[str, int],
                 idle_timeout_s: float, now: float, spot: bool = True):
        self.catalog = catalog
        self.slots: dict[str, list[float]] = {}
        self.meta: dict[str, tuple[str, frozenset, bool]] = {}   # node -> (type, cores, up)
        self.of_type: dict[str, list[str]] = {}
        self._n = 0
        for n in nodes:
            self.slots[n.node_id] = [0.0] * max(n.slots, 1)
            self.meta[n.node_id] = (n.itype, frozenset(n.cores), True)
            self.of_type.setdefault(n.itype, []).append(n.node_id)
        for e in running:
            s = self.slots.get(e.node)
            if s is not None:
                rem = max((e.est_run_s or 0.0) - (now - e.started), 0.0)
                i = s.index(min(s))
                s[i] += rem if s[i] > 0 else max(rem, 1e-9)
        for t, k in launching.items():
            for _ in range(k):
                self._promise(t)
        self.state = ClusterState([self.view(nid) for nid in self.slots], caps, idle_timeout_s, spot)
        for t, entries in placed.items():
            for e in entries:
                self.add(t, e.hint, e.job, e.est_run_s or 0.0)

    def _promise(self, itype: str) -> str:
        self._n += 1
        nid = f"{itype}#launching-{self._n}"
        t = self.catalog.types.get(itype)
        self.slots[nid] = [t.startup_s if t else 0.0] * (t.slots if t else 1)
        self.meta[nid] = (itype, frozenset(), False)
        self.of_type.setdefault(itype, []).append(nid)
        return nid

    def view(self, nid: str) -> NodeView:
        itype, cores, up = self.meta[nid]
        s = self.slots[nid]
        free = sum(1 for x in s if x <= 0) if up else 0
        wait, busy = min(s), max(s)
        return NodeView(nid, itype, free, cores, max(wait, 0.0), busy_until_s=busy if busy > 0 else None)

    def add(self, itype: str, node: str | None, job: Job | None, run_s: float, load_s: float = 0.0,
            new: bool = False) -> str:
        """Queue work of ``run_s`` on ``node``; with ``new``, on a node promised now; with no
        node, on the type's earliest slot (a promised node when the type has none)."""
        if new:
            node = self._promise(itype)
        elif node not in self.slots:
            same = self.of_type.get(itype)
            node = min(same, key=lambda n: min(self.slots[n])) if same else self._promise(itype)
        s = self.slots[node]
        i = s.index(min(s))
        s[i] = max(s[i], 0.0) + load_s + run_s
        t = self.catalog.types.get(itype)
        if job is not None and job.core and t is not None and t.kind == "fpga":
            m = self.meta[node]
            self.meta[node] = (m[0], m[1] | {job.core}, m[2])
        self.state.put(self.view(node))
        return node


# ---- the pure scheduling step ------------------------------------------------------------------
def schedule(queue: list[Entry], snapshot: Snapshot, placed: dict[str, list[Entry]], nodes: list[NodeInfo],
             running_on: dict[str, int], launching: dict[str, int], windows: dict[str, UtilisationWindow], *,
             catalog: Catalog, elastic: ElasticPolicy, model: PerfModel, assigns_nodes: bool,
             max_nodes_total: int | None, now: float, wall: float, slots_of=None,
             short_on: dict[str, bool] | None = None, cpu: dict[str, float] | None = None) -> Decision:
    """Queue and cluster state in; placements, starts, launch targets and stops out.

    ``queue``: parsed pending jobs in queue order; ``placed``: jobs placed and not started,
    per type, in queue order (this pass's placements are appended); ``running_on``: jobs
    running per node; ``short_on``: whether all of a node's running jobs are short; ``cpu``:
    mean node CPU utilisation per type (0..1), for a policy that uses it. ``windows`` (utilisation history per type) is the only state kept
    between calls, and is updated here."""
    d = Decision()
    slots_of = slots_of or (lambda t: catalog[t].slots)
    for e in queue:
        try:
            p = place(e.job, catalog, snapshot.state, model=model, elapsed_s=wall - e.submitted_at)
        except Exception as exc:   # one bad job must not stop the queue
            d.placements.append((e, f"placement failed: {type(exc).__name__}: {clip(exc, 200)}"))
            continue
        if p.winner is None:
            d.placements.append((e, p.reason))
            continue
        w = p.winner
        d.placements.append((e, p))
        e.itype, e.est_run_s = w.itype.name, w.run_s
        e.workers = w.workers if e.job.train is not None else None
        e.market = "spot" if w.spot else None
        e.hint = w.node if w.node and not w.node.split("#", 1)[-1].startswith("launching") else None
        snapshot.add(w.itype.name, w.node, e.job, w.run_s, w.image_load_s, new=w.node is None)
        placed.setdefault(w.itype.name, []).append(e)

    by_type: dict[str, list[NodeInfo]] = {}
    for n in nodes:
        by_type.setdefault(n.itype, []).append(n)
    started: dict[str, int] = {}
    if assigns_nodes:
        short_on = short_on if short_on is not None else {}

        def takes(n: NodeInfo, e: Entry) -> bool:
            k = running_on.get(n.node_id, 0)
            if k < n.slots:
                return True
            return k < max(n.depth, n.slots) and short_on.get(n.node_id, False) and (e.est_run_s or 1.0) < SHORT_S

        for t, entries in placed.items():
            ns = by_type.get(t, [])
            if not ns:
                continue
            for e in entries:
                idle = [n for n in ns if takes(n, e)]
                if not idle:
                    if running_on and all(running_on.get(n.node_id, 0) >= max(n.depth, n.slots) for n in ns):
                        break
                    continue
                core = e.job.core if e.job is not None else None
                n = min(idle, key=lambda n: (running_on.get(n.node_id, 0), n.node_id != e.hint,
                                             core not in n.cores, n.node_id))
                d.starts.append((e, n.node_id))
                running_on[n.node_id] = running_on.get(n.node_id, 0) + 1
                short_on[n.node_id] = short_on.get(n.node_id, True) and (e.est_run_s or 1.0) < SHORT_S
                started[t] = started.get(t, 0) + 1

    # the elastic rule, per type with work or nodes
    queued = {t: len(v) - started.get(t, 0) for t, v in placed.items()}
    busy_of = {t: sum(min(running_on.get(n.node_id, 0), n.slots) for n in ns) for t, ns in by_type.items()}
    types = {t for t, q in queued.items() if q > 0} | set(by_type)
    total = len(nodes) + sum(launching.values())
    stopping: set[str] = set()
    for t in sorted(types, key=lambda t: (-queued.get(t, 0), t)):
        if t not in catalog.types:
            continue
        ns = by_type.get(t, [])
        slots = slots_of(t)
        have = len(ns) + launching.get(t, 0)
        busy, q = busy_of.get(t, 0), max(queued.get(t, 0), 0)
        win = windows.setdefault(t, UtilisationWindow(elastic.window_s))
        win.add(busy, len(ns) * slots, now)
        want = elastic.target(t, have, busy, q, slots, cpu=(cpu or {}).get(t))
        if want > have:
            grow = want - have
            while max_nodes_total is not None and total + grow > max_nodes_total:
                victim = _room(t, nodes, running_on, queued, elastic, stopping, by_type)
                if victim is None:
                    grow = max(0, max_nodes_total - total)
                    break
                stopping.add(victim)
                d.stop.append(victim)
                total -= 1
            total += grow
            if grow:
                win.reset()
            d.targets[t] = have + grow
        elif q or busy:
            d.targets[t] = have
        if ns and should_scale_in(elastic, t, len(ns), q, win, now, cpu=(cpu or {}).get(t)):
            idle = [n for n in ns if not running_on.get(n.node_id) and n.node_id not in stopping]
            if idle:
                d.stop.append(idle[-1].node_id)
                stopping.add(idle[-1].node_id)
                win.reset()
    return d


def _room(itype, nodes, running_on, queued, elastic, stopping, by_type) -> str | None:
    """At the total cap: an idle node of a type with nothing queued, above its minimum."""
    for n in nodes:
        if n.itype != itype and not running_on.get(n.node_id) and not queued.get(n.itype) \
                and n.node_id not in stopping \
                and len([m for m in by_type.get(n.itype, []) if m.node_id not in stopping]) > elastic.limits(n.itype)[0]:
            return n.node_id
    return None


# ---- the loop ---------------------------------------------------------------------------------
class SchedulingLoop:
    """Drives one executor's nodes from the store's queue (see the module docstring)."""

    def __init__(self, store: JobStore, catalog: Catalog, nodes: Nodes, *, elastic: ElasticPolicy,
                 max_attempts: int = 3, model: PerfModel | None = None, metrics=None, log=None,
                 poll_s: float = 0.02, lookahead: int = 256, per_pass: int = 64, trusted: bool = False,
                 roots=None, on_finish=None):
        self.store, self.catalog, self.nodes = store, catalog, nodes
        # the loop's own model by default: what its runs teach it stays with this scheduler
        self.elastic, self.max_attempts = elastic, max_attempts
        self.model = model if model is not None else PerfModel()
        self.metrics = metrics
        self.log = log or (lambda msg: None)
        self.poll_s, self.lookahead, self.per_pass = poll_s, lookahead, per_pass
        self.trusted, self.roots = trusted, roots
        self.on_finish = on_finish
        self.batch: str | None = None
        self.entries: dict[str, Entry] = {}
        self.pending: list = []                       # heap of (key, entry)
        self.placed: dict[str, list[Entry]] = {}
        self.running: dict[str, Entry] = {}
        self.fenced: dict[str, tuple] = {}            # job -> (attempt, pgid, pg_start, why, retry)
        self.windows: dict[str, UtilisationWindow] = {}
        self._seq = 0
        self._queue_read = False
        self._event = 0
        self._last_refresh = 0.0
        self._last_fence = 0.0
        self._last_publish = 0.0
        self._opened = False
        self._loaded = False
        self._subscribed = False
        self._scale: tuple[dict, list] = ({}, [])     # the pass's launch targets and stops

    # ---- opening: lock, recover, load ---------------------------------------------------------
    def open(self, batch: str | None = None) -> None:
        if not self._opened:
            self.store.scheduler_lock()
            self._opened = True
            if not self._subscribed:
                if self.metrics is not None:
                    self.metrics.attach(self.store)
                self.store.subscribe(self._on_transitions)
                self._subscribed = True
            self._event = self.store.last_event()
            self._recover()
        if not self._loaded or batch != self.batch:
            self._loaded = True
            self.batch = batch
            self.entries.clear()
            self.pending.clear()
            self.placed.clear()
            self.running.clear()
            self._seq = 0
            self._queue_read = False
            self._load_new()

    def _recover(self) -> None:
        keep = []
        for r in self.store.light(["running"]):
            if not self.nodes.attempt_gone(r["id"], r["attempts"], r["pgid"], r["pg_start"], timeout=10.0):
                keep.append(r["id"])
                self.fenced[r["id"]] = (r["attempts"], r["pgid"], r["pg_start"],
                                        "the scheduler stopped while the job ran", True)
                self.log(f"waiting for {r['id']}: its previous attempt is still running")
        for jid in self.store.recover(self.max_attempts, exclude=keep):
            self.log(f"recovered {jid}: was running when the scheduler stopped")

    def _load_new(self) -> None:
        if not self._queue_read:   # the whole queue, once: unfinished rows only (by the state index)
            rows, top = self.store.light_snapshot(["queued", "placed", "retried", "running"], batch=self.batch)
            self._queue_read = True
        else:                   # then what was submitted since
            rows = self.store.light(after_seq=self._seq, batch=self.batch)
            top = rows[-1][0] if rows else self._seq
        fresh = []
        placed_types = set()
        for (seq, jid, _batch, name, prio, deadline, state, itype, node, attempts, submitted, est,
             _pgid, _pg_start, workers, market) in rows:
            if jid in self.entries or state not in ("queued", "placed", "retried", "running"):
                continue
            if state == "running" and jid not in self.fenced:   # running elsewhere: not ours
                continue
            e = Entry(jid, seq, name, prio, deadline, submitted, state, attempts, itype, node, est)
            self.entries[jid] = e
            if state == "placed":      # as an earlier scheduler placed it: its workers and market too
                e.workers, e.market = workers, market
                self.placed.setdefault(itype, []).append(e)
                placed_types.add(itype)
            elif state != "running":     # a fenced job waits for its previous attempt
                fresh.append((e.key, e.seq, e))
        self._seq = max(self._seq, top)
        if fresh:
            if len(fresh) > len(self.pending):
                self.pending.extend(fresh)
                heapq.heapify(self.pending)
            else:
                for item in fresh:
                    heapq.heappush(self.pending, item)
        for t in placed_types:
            self.placed[t].sort(key=lambda e: e.key)

    def _parse(self, entries: list[Entry]) -> list[tuple[Entry, str]]:
        """Parse the jobs not parsed yet (once each); returns those that failed, with why."""
        todo = [e for e in entries if e.job is None]
        bad = []
        if not todo:
            return bad
        docs = self.store.docs(e.id for e in todo)
        for e in todo:
            doc, base = docs.get(e.id, (None, "."))
            try:
                if doc is None:
                    raise JobError("job: the stored document is unreadable")
                e.job = parse_job(doc, "", base, catalog=self.catalog, trusted=self.trusted,
                                  roots=self.roots, stored=True)
            except JobError as exc:
                bad.append((e, str(exc)))
            except Exception as exc:     # never let one document stop the queue
                bad.append((e, f"job: cannot be read: {type(exc).__name__}: {clip(exc, 200)}"))
        return bad

    # ---- one pass ------------------------------------------------------------------------------
    def step(self) -> None:
        n_placed = sum(len(v) for v in self.placed.values())
        events = self.nodes.poll(0.0 if self.pending and n_placed <= self.lookahead // 2 else self.poll_s)
        changes: list[tuple[Change, Callable | None]] = []
        for ev in events:
            self._event_changes(ev, changes)
        now = time.monotonic()
        if now - self._last_refresh >= 0.05 or not self.entries:
            self._refresh()
            self._last_refresh = now
        if self.fenced and now - self._last_fence >= 0.5:
            self._check_fences(changes)
            self._last_fence = now
        self._plan(changes)
        self._commit(changes)
        self._publish()

    def _event_changes(self, ev, changes) -> None:
        e = self.entries.get(ev.job_id)
        if e is None:
            return
        if isinstance(ev, Started):
            if e.state == "placed":
                changes.append((Change(e.id, "running", ("placed",), fields={"node": ev.node, "itype": e.itype},
                                       start=True), lambda t, e=e, n=ev.node: self._did_start(e, n, t)))
        elif isinstance(ev, Restarted):
            if e.state == "running":
                changes.append((Change(e.id, "retried", ("running",), detail=ev.why), None))
                changes.append((Change(e.id, "placed", ("retried",), detail="kept by the executor's retry"), None))
                changes.append((Change(e.id, "running", ("placed",), fields={"node": ev.node}, start=True),
                                lambda t, e=e, n=ev.node: self._did_start(e, n, t)))
                self.log(f"retried {e.name} ({e.id}): {ev.why}")
        elif isinstance(ev, Finished):
            if e.state == "placed":      # its start report was lost: record the start first
                changes.append((Change(e.id, "running", ("placed",), fields={"node": e.node}, start=True),
                                lambda t, e=e: self._did_start(e, e.node or "?", t)))
            attempt = e.attempts + (e.state == "placed") if ev.attempt is None else ev.attempt
            r = ev.result
            stats = r.get("stats")
            if stats and e.job is not None and e.job.spec is not None:
                try:
                    self.model.observe(e.job.spec, RunStats(**stats))
                except Exception:  # statistics are advice; a malformed set is dropped
                    pass
            if e.job is not None and e.job.train is not None and succeeded(r) and e.itype in self.catalog.types:
                try:          # the measured step refines later train estimates
                    observe_run(self.model, e.job.train, self.catalog[e.itype].device(), r)
                except Exception:
                    pass
            common = dict(measured_s=r.get("measured_s"), backend=r.get("backend"), verified=r.get("verified"),
                          result=r)
            if succeeded(r):
                detail = (f"measured {r.get('measured_s', 0):.4g} s on backend {r.get('backend')}"
                          + (f" (Ray node {r['ray_node']})" if r.get("ray_node") else ""))
                ch = Change(e.id, "done", ("running",), attempt, detail, common)
            else:
                err = r.get("error") or r.get("why") or (f"verification failed: relative error {r.get('rel_err')}"
                                                         f" (tolerance {r.get('tolerance')})")
                ch = Change(e.id, "failed", ("running",), attempt, clip(err, 2000), {**common, "error": clip(err, 2000)})
            changes.append((ch, lambda t, e=e: self._did_finish(e, t)))
        elif isinstance(ev, Lost):
            attempt = e.attempts if ev.attempt is None else ev.attempt
            if not ev.gone:
                self.fenced[e.id] = (attempt, ev.pgid, ev.pg_start, ev.why, ev.retry)
                self._drop_running(e)
                return
            self._lost_changes(e, attempt, ev.why, ev.retry, changes)

    def _lost_changes(self, e: Entry, attempt: int, why: str, retry: bool, changes) -> None:
        if retry and attempt < self.max_attempts:
            changes.append((Change(e.id, "retried", ("running", "placed"), attempt, why),
                            lambda t, e=e: self._did_retry(e, t)))
        else:
            err = why if not retry else f"{why}; gave up after {attempt} attempts"
            changes.append((Change(e.id, "failed", ("running", "placed"), attempt, why, {"error": clip(err, 2000)}),
                            lambda t, e=e: self._did_finish(e, t)))

    def _refresh(self) -> None:
        self._load_new()
        cancelled, self._event = self.store.cancelled_since(self._event)
        for jid in cancelled:
            e = self.entries.get(jid)
            if e is None:
                continue
            if e.state == "running" or e.handed:
                self.log(f"cancelled: {e.name} ({e.id}); stopping it")
                self.nodes.cancel(e.id)
            self._forget(e)
            e.state = "cancelled"

    def _check_fences(self, changes) -> None:
        for jid, (attempt, pgid, pg_start, why, retry) in list(self.fenced.items()):
            if not self.nodes.attempt_gone(jid, attempt, pgid, pg_start, timeout=0.2):
                continue
            del self.fenced[jid]
            e = self.entries.get(jid)
            if e is None:
                continue
            e.state = "running"
            self._lost_changes(e, attempt, why, retry, changes)

    def _plan(self, changes) -> None:
        nodes = self.nodes.nodes()
        launching = self.nodes.launching()
        n_placed = sum(len(v) for v in self.placed.values())
        room = self.lookahead - n_placed if n_placed <= self.lookahead // 2 else 0
        take: list[Entry] = []
        while self.pending and len(take) < min(room, self.per_pass):
            _, _, e = heapq.heappop(self.pending)
            if e.state in ("queued", "retried") and self.entries.get(e.id) is e:
                take.append(e)
        unparsed = [e for v in self.placed.values() for e in v if e.job is None]   # loaded placed
        for e, why in self._parse(take + unparsed):
            changes.append((Change(e.id, "failed", PENDING + ("placed",), detail=why, fields={"error": why}),
                            lambda t, e=e: self._did_finish(e, t)))
            self._unplace(e)
        queue = [e for e in take if e.job is not None]
        running_on: dict[str, int] = {}
        short_on: dict[str, bool] = {}
        for e in self.running.values():
            running_on[e.node] = running_on.get(e.node, 0) + 1
            short_on[e.node] = short_on.get(e.node, True) and (e.est_run_s or 1.0) < SHORT_S
        now, wall = time.monotonic(), time.time()
        snap = None
        if queue:   # the cluster as placement sees it: built once per pass that places
            caps = {t.name: self.elastic.limits(t.name)[1] for t in self.catalog}
            snap = Snapshot(self.catalog, nodes, launching, list(self.running.values()), self.placed, caps,
                            self.nodes.idle_timeout_s, now, spot=self.nodes.offers_spot)
        d = schedule(queue, snap, self.placed, nodes, running_on, launching, self.windows, catalog=self.catalog,
                     elastic=self.elastic, model=self.model, assigns_nodes=self.nodes.assigns_nodes,
                     max_nodes_total=self.nodes.max_nodes_total, now=now, wall=wall,
                     slots_of=self.nodes.slots_of, short_on=short_on,
                     cpu=self.metrics.cpu_by_type() if self.metrics is not None and self.elastic.use_cpu else None)
        for e, p in d.placements:
            if isinstance(p, Placement):
                w = p.winner
                changes.append((Change(e.id, "placed", PENDING, detail=p.reason,
                                       fields=dict(itype=w.itype.name, node=w.node, est_run_s=w.run_s,
                                                   est_total_s=w.time_s, est_cost=w.cost, explain=p.explain(),
                                                   workers=e.workers, market=e.market)),
                                lambda t, e=e: self._did_place(e, t)))
                e.state = "placed"
            else:
                changes.append((Change(e.id, "failed", PENDING, detail=p, fields={"error": p}),
                                lambda t, e=e: self._did_finish(e, t)))
        for e, node in d.starts:
            fields = {"node": node, "itype": e.itype, **self.nodes.attempt_fields(node)}
            changes.append((Change(e.id, "running", ("placed",), fields=fields, start=True),
                            lambda t, e=e, n=node: self._did_start(e, n, t)))
            self._unplace(e)
            e.state = "starting"
        self._scale = (d.targets, d.stop)

    def _commit(self, changes) -> None:
        if changes:
            results = self.store.apply(ch for ch, _ in changes)
            for (ch, cb), t in zip(changes, results):
                if cb is not None:
                    cb(t)
        self.nodes.flush()
        if not self.nodes.assigns_nodes:       # hand placed jobs to an executor that queues them
            for entries in self.placed.values():
                for e in entries:
                    if not e.handed and e.job is not None and self.entries.get(e.id) is e:
                        e.handed = True
                        self.nodes.start(Run(e.id, None, e.job, e.itype, e.workers, e.market), None)
        targets, stop = self._scale
        self._scale = ({}, [])
        self.nodes.scale(targets, stop)

    # ---- after a commit -------------------------------------------------------------------------
    def _did_place(self, e: Entry, t: Transition | None) -> None:
        if t is None:                      # cancelled meanwhile
            self._unplace(e)
            self._forget(e)

    def _did_start(self, e: Entry, node: str, t: Transition | None) -> None:
        if t is None:
            self._unplace(e)
            self._forget(e)
            return
        e.state, e.node, e.attempts, e.started = "running", node, t.attempt, time.monotonic()
        self._unplace(e)
        self.running[e.id] = e
        if self.nodes.assigns_nodes:
            self.nodes.start(Run(e.id, t.attempt, e.job, e.itype, e.workers, e.market), node)

    def _did_finish(self, e: Entry, t: Transition | None) -> None:
        self._forget(e)
        if t is not None and self.on_finish is not None:
            self.on_finish(self.store.get(e.id))

    def _did_retry(self, e: Entry, t: Transition | None) -> None:
        self._drop_running(e)
        if t is None:
            self._forget(e)
            return
        e.state, e.node, e.hint, e.handed = "retried", None, None, False
        heapq.heappush(self.pending, (e.key, e.seq, e))

    def _drop_running(self, e: Entry) -> None:
        self.running.pop(e.id, None)

    def _unplace(self, e: Entry) -> None:
        lst = self.placed.get(e.itype)
        if lst and e in lst:
            lst.remove(e)

    def _forget(self, e: Entry) -> None:
        self.running.pop(e.id, None)
        self._unplace(e)
        self.entries.pop(e.id, None)
        e.state = "gone"

    def _on_transitions(self, ts: list[Transition]) -> None:
        for t in ts:
            if t.state in ("done", "failed"):
                self.log(f"{t.state}: {t.name} ({t.job_id}) on {t.node or t.itype or '-'}")
            elif t.state == "retried":
                self.log(f"retried: {t.name} ({t.job_id}): {t.detail}")
            elif t.state == "placed" and t.detail:
                self.log(f"placed {t.name} ({t.job_id}) on {t.itype}: {t.detail}")

    def _publish(self, force: bool = False) -> None:
        if self.metrics is None:
            return
        now = time.monotonic()
        if not force and now - self._last_publish < 0.2:
            return
        self._last_publish = now
        self.metrics.set_counts(self.store.counts())
        nodes: dict[str, int] = {}
        for n in self.nodes.nodes():
            nodes[n.itype] = nodes.get(n.itype, 0) + 1
        self.metrics.set_pool(nodes, {t: len(v) for t, v in self.placed.items()})
        self.metrics.sample_nodes(self.nodes, force)

    # ---- running -------------------------------------------------------------------------------
    def unfinished(self) -> bool:
        return bool(self.entries) or bool(self.fenced)

    def run(self, *, batch: str | None = None, until_idle: bool = True, timeout: float | None = None) -> None:
        self.open(batch)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            self.step()
            if until_idle and not self.unfinished():
                self._refresh()
                if not self.unfinished():
                    break
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"jobs still unfinished after {timeout} s")
        self._publish(force=True)

    def close(self) -> None:
        self.nodes.shutdown()
        if self._subscribed:
            self.store.unsubscribe(self._on_transitions)
            if self.metrics is not None:
                self.metrics.detach(self.store)
            self._subscribed = False
        if self._opened:
            self.store.release_lock()
            self._opened = False

