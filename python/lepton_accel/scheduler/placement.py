"""Placement: on which instance type (and node) a job runs, and why.

For every catalog type the job may use, placement builds a :class:`Candidate`:

* **time** = wait for a slot + start-up of a new node (if no warm node is used)
  + FPGA image load (if the chosen node does not already hold the job's core)
  + the run itself, from the shared :data:`lepton_accel.perf.MODEL` (compute or device
  memory, host<->device transfer, call overhead) on the type's accelerator; a suite's run
  time is the estimate the job gives.
* **cost** = what the choice adds to the bill (the marginal cost). A new node is billed
  whole, per second with the cloud's minimum (``catalog.billing``), from launch until the
  job ends plus the idle time the cluster keeps a node before removing it
  (``ClusterState.idle_timeout_s``). A warm node is billed whole too, until its committed
  work ends plus the idle time; the job adds only the time by which it pushes that release
  back (its end plus the idle time, past the old release), at the node's full price. A job
  that fits inside a life the node is billed for anyway adds nothing; a job that keeps an
  expensive node alive pays for keeping it alive, not a slot's share of it. With the node's
  age known the difference is taken between billed seconds (rounding and minimum included).

A type is excluded by the job's constraints, when it is retired (unless asked), when its
device cannot run the dtype, when the operands do not fit its memory, or when the job's
deadline (hard) would be missed. Among the rest, ``min_cost`` picks the lowest cost (then
time), ``min_time`` the lowest time (then cost). Within a type, warm nodes that already hold
the needed FPGA core win over nodes that would have to load it (affinity), which in turn
usually win over launching a node. Priority is not a placement matter: it orders the queue.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from ..perf import MODEL, DeviceSpec, Estimate, PerfModel
from .catalog import Catalog, InstanceType
from .jobs import Job


@dataclass(frozen=True)
class NodeView:
    """What placement needs to know about a running node."""

    node_id: str
    itype: str
    free_slots: int = 1
    cores: frozenset = frozenset()   # FPGA core images loaded on it
    wait_s: float = 0.0              # expected wait for a slot when none is free
    # seconds from now until the node's committed work ends (<= 0: idle since that long);
    # None: not tracked, taken as ``wait_s`` when no slot is free and 0 otherwise
    busy_until_s: float | None = None
    age_s: float | None = None       # seconds since launch (billing minimum); None: past it

    @property
    def work_end_s(self) -> float:
        if self.busy_until_s is not None:
            return self.busy_until_s
        return self.wait_s if self.free_slots <= 0 else 0.0


@dataclass
class ClusterState:
    """Nodes (running, and being launched) and launch limits; the default is a cold
    cluster with no limits. A node being launched counts against its type's limit."""

    nodes: list[NodeView] = field(default_factory=list)
    max_nodes: dict[str, int] = field(default_factory=dict)
    idle_timeout_s: float = 0.0      # a new node is kept (and billed) this long after its work
    spot: bool = True                # whether the executor can launch spot nodes
    _by_type: dict | None = field(default=None, init=False, repr=False, compare=False)

    def _index(self) -> dict[str, list[NodeView]]:
        if self._by_type is None:
            idx: dict[str, list[NodeView]] = {}
            for n in self.nodes:
                idx.setdefault(n.itype, []).append(n)
            self._by_type = idx
        return self._by_type

    def of_type(self, name: str) -> list[NodeView]:
        return self._index().get(name, [])

    def can_launch(self, name: str) -> bool:
        cap = self.max_nodes.get(name)
        return cap is None or len(self.of_type(name)) < cap

    def put(self, view: NodeView) -> None:
        """Add a node, or replace the node with the same id (keeps the index current)."""
        same = self._index().setdefault(view.itype, [])
        for i, n in enumerate(same):
            if n.node_id == view.node_id:
                same[i] = view
                break
        else:
            same.append(view)
        for i, n in enumerate(self.nodes):
            if n.node_id == view.node_id:
                self.nodes[i] = view
                return
        self.nodes.append(view)


@dataclass(slots=True)
class Candidate:
    itype: InstanceType
    feasible: bool = False
    excluded: str = ""              # why it cannot take the job
    node: str | None = None         # warm node used, None for a new node
    estimate: Estimate | None = None
    run_s: float = math.inf
    wait_s: float = 0.0
    startup_s: float = 0.0
    image_load_s: float = 0.0
    time_s: float = math.inf
    cost: float = math.inf
    extends_s: float = 0.0          # warm node: how far the job pushes back the node's release
    workers: int = 1                # a train job's data-parallel workers (nodes of the type)
    weighed: tuple = ()             # a train job's options: one dict per worker count
    spot: dict | None = None        # on spot capacity: the expected interruptions and their price

    @property
    def where(self) -> str:
        return self.node if self.node else ("new spot node" if self.spot else "new node")


@dataclass
class Placement:
    job: Job
    candidates: list[Candidate]
    winner: Candidate | None
    reason: str

    @property
    def itype(self) -> str | None:
        return self.winner.itype.name if self.winner else None

    def explain(self) -> str:
        return explain(self)


@lru_cache(maxsize=256)
def _device(itype: InstanceType) -> DeviceSpec:
    return itype.device()


_TABLES: dict[int, tuple] = {}


def _table(catalog: Catalog) -> list[tuple]:
    """Per type, computed once per catalog: (type, device, memory bytes, FPGA image load s)."""
    hit = _TABLES.get(id(catalog))
    if hit is not None and hit[0] is catalog:
        return hit[1]
    rows = []
    for t in catalog:
        dev = _device(t)
        rows.append((t, dev, t.memory_gib * 2**30, dev.image_load_s if t.kind == "fpga" else 0.0))
    if len(_TABLES) > 64:
        _TABLES.clear()
    _TABLES[id(catalog)] = (catalog, rows)
    return rows


def _score(job: Job, itype: InstanceType, catalog: Catalog, run_s: float, node: NodeView | None,
           idle_s: float, fpga_load: float) -> tuple:
    """(time, cost, node id, wait, image load, extension, start-up) of one option."""
    if node is None:
        t = itype.startup_s + fpga_load + run_s
        return (t, itype.price_per_hour / 3600.0 * catalog.billing.billed_seconds(t + idle_s), None, 0.0,
                fpga_load, 0.0, itype.startup_s)
    wait = 0.0 if node.free_slots > 0 else node.wait_s
    load = fpga_load if fpga_load and job.core not in node.cores else 0.0
    t = wait + load + run_s
    ext, cost = _extension(catalog, itype, node, t, idle_s)
    return (t, cost, node.node_id, wait, load, ext, 0.0)


def _options(job: Job, itype: InstanceType, catalog: Catalog, run_s: float, nodes, launch: bool,
             idle_s: float, fpga_load: float):
    """The scores of every warm node of the type and, when one may be launched, a new node."""
    if nodes:
        core = job.core
        per_s = itype.price_per_second
        billed = catalog.billing.billed_seconds
        for node in nodes:
            wait = 0.0 if node.free_slots > 0 else node.wait_s
            load = fpga_load if fpga_load and core not in node.cores else 0.0
            t = wait + load + run_s
            old = node.work_end_s + idle_s       # the node's release without the job ...
            if old < 0.0:
                old = 0.0
            new = t + idle_s                     # ... and with it
            if new < old:
                new = old
            if node.age_s is None:
                cost = per_s * (new - old)
            else:
                cost = per_s * (billed(node.age_s + new) - billed(node.age_s + old))
            yield (t, cost, node.node_id, wait, load, new - old, 0.0)
    if launch:
        yield _score(job, itype, catalog, run_s, None, idle_s, fpga_load)


def _candidate(job: Job, itype: InstanceType, run_s: float, est, opt: tuple, elapsed_s: float) -> Candidate:
    t, cost, node, wait, load, ext, startup = opt
    c = Candidate(itype, False, "", node, est, run_s, wait, startup, load, t, cost, ext)
    deadline = job.deadline_s
    if deadline is not None and elapsed_s + t > deadline:
        c.excluded = f"misses deadline {deadline:g} s: {elapsed_s + t:.3g} s on {c.where}"
    else:
        c.feasible = True
    return c


def _option(job: Job, itype: InstanceType, catalog: Catalog, run_s: float, est, node: NodeView | None,
            elapsed_s: float, idle_s: float = 0.0, fpga_load: float | None = None) -> Candidate:
    if fpga_load is None:
        fpga_load = _device(itype).image_load_s if itype.kind == "fpga" else 0.0
    return _candidate(job, itype, run_s, est, _score(job, itype, catalog, run_s, node, idle_s, fpga_load),
                      elapsed_s)


def _extension(catalog: Catalog, itype: InstanceType, node: NodeView, end_s: float,
               idle_s: float) -> tuple[float, float]:
    """(seconds, dollars) by which a job ending ``end_s`` from now extends ``node``'s bill.

    Without the job the node is released ``idle_s`` after its committed work ends; with it,
    no earlier than ``idle_s`` after the job ends. Only the difference is new money.
    """
    old = max(node.work_end_s + idle_s, 0.0)
    new = max(old, end_s + idle_s)
    if node.age_s is None:
        return new - old, itype.price_per_second * (new - old)
    billed = catalog.billing.billed_seconds
    return new - old, itype.price_per_second * (billed(node.age_s + new) - billed(node.age_s + old))


def _key(policy: str):
    if policy == "min_time":
        return lambda c: (c.time_s, c.cost, c.itype.name, c.node or "")
    return lambda c: (c.cost, c.time_s, c.itype.name, c.node or "")


def candidates(job: Job, catalog: Catalog, state: ClusterState | None = None, *,
               model: PerfModel = MODEL, elapsed_s: float = 0.0) -> list[Candidate]:
    """The best option on every catalog type (feasible or with the reason it is not)."""
    state = state or ClusterState()
    out = []
    costs = job.costs
    seen: dict[str, tuple] = {}        # types sharing a device share its estimate
    cons = job.constraints
    open_ = not (cons.kinds or cons.models or cons.instance_types)
    idle_s = state.idle_timeout_s
    footprint = job.footprint
    trained = job.train is not None and job.estimate_s is None   # timed by the perf model
    suite_s = None if costs is not None or trained else float(job.estimate_s)
    deadline = job.deadline_s
    min_cost = job.policy != "min_time"
    index = state._index()
    for itype, dev, mem, load in _table(catalog):
        if not open_ or itype.retired:
            ok, why = cons.allows(itype)
            if not ok:
                out.append(Candidate(itype, excluded=why))
                continue
        weighed = ()
        if trained:
            from .train import weigh

            cap = state.max_nodes.get(itype.name)     # n workers need n nodes of the type
            weighed = [w for w in weigh(job.train, dev, itype.network_gbps, model, cap) if math.isfinite(w["run_s"])]
            if not weighed and isinstance(job.train["workers"], dict) and cap is not None \
                    and cap < job.train["workers"]["min"]:
                out.append(Candidate(itype, excluded=f"at most {cap} nodes, fewer than workers.min "
                                                     f"{job.train['workers']['min']}"))
                continue
            if not weighed:
                out.append(Candidate(itype, excluded=f"{itype.accelerator or 'cpu'} cannot run float32 training"))
                continue
            est, run_s, n = _pick_workers(weighed, itype, catalog, job, elapsed_s)
        elif suite_s is None:
            hit = seen.get(dev.name)
            if hit is None:
                est = model.estimate(costs, dev, data_on_host=True)
                hit = seen[dev.name] = (est, est.total_s)
            est, run_s = hit
            if run_s == math.inf or run_s != run_s:
                out.append(Candidate(itype, excluded=f"{itype.accelerator or 'cpu'} cannot run {costs.dtype}"))
                continue
        else:
            est, run_s = None, suite_s
            if job.train is not None:      # timed by its own estimate: its count, within the cap
                from .train import worker_range, workers_for

                n = workers_for(job.train)
                rng, cap = worker_range(job.train), state.max_nodes.get(itype.name)
                if rng is not None and rng[0] != rng[1] and cap is not None:
                    if cap < rng[0]:
                        out.append(Candidate(itype, excluded=f"at most {cap} nodes, fewer than workers.min {rng[0]}"))
                        continue
                    n = min(n, cap)
        if footprint > mem:
            out.append(Candidate(itype, excluded=f"operands exceed {itype.memory_gib:g} GiB memory"))
            continue
        nodes = index.get(itype.name)
        cap = state.max_nodes.get(itype.name)
        launch = cap is None or len(nodes or ()) < cap
        if not nodes and not launch:
            out.append(Candidate(itype, excluded="at its node limit"))
            continue
        # The best option of this type, in one pass: among those within the deadline by the
        # policy's key, else the fastest (which then carries the deadline's exclusion).
        best = best_key = fastest = None
        for o in _options(job, itype, catalog, run_s, nodes, launch, idle_s, load):
            if fastest is None or o[0] < fastest[0]:
                fastest = o
            if deadline is not None and elapsed_s + o[0] > deadline:
                continue
            k = (o[1], o[0], o[2] or "") if min_cost else (o[0], o[1], o[2] or "")
            if best_key is None or k < best_key:
                best, best_key = o, k
        if best is None:
            best = fastest
        c = _candidate(job, itype, run_s, est, best, elapsed_s)
        if job.train is not None:     # n workers are n nodes of the type, each billed
            c.workers, c.weighed = n, tuple(weighed)
            c.cost *= n
        if cons.spot and c.feasible:
            c.feasible, c.excluded = False, "on demand; the constraints ask for spot capacity"
        out.append(c)
        if cons.spot is not False and (job.train is not None or cons.spot):
            if state.spot:
                out.append(_spot_candidate(job, itype, catalog, weighed, load, elapsed_s, run_s, launch, c.workers))
            else:
                out.append(Candidate(itype, excluded="this executor launches no spot nodes", spot={}))
    return out


def checkpoint_interval_s(train: dict, option: dict) -> float:
    """Seconds of work between two checkpoints of a train job, for one weighed option."""
    if "step_s" not in option:      # no step time (a job with its own estimate): the whole run
        return option["run_s"]
    every = train.get("checkpoint_every") or {"epochs": 1}
    steps = every["steps"] if "steps" in every else every["epochs"] * option["steps_per_epoch"]
    return min(steps * option["step_s"], option["run_s"])


def spot_terms(train: dict, option: dict, itype: InstanceType, catalog: Catalog) -> dict:
    """A train option on spot nodes: the job is reclaimed when any of its n nodes is (a
    Poisson process at n times the type's rate); a reclaim loses the work since the last
    checkpoint and costs a restart (a new node's start-up). With reclaims at rate r, a
    checkpoint interval C and restart R, a segment of C seconds of work takes
    (1/r + R)(e^(rC) - 1) seconds on average, so the run takes T/C of those; for rC << 1
    that is T + rT(C/2 + R)."""
    n, run = option["workers"], option["run_s"]
    rate = n * itype.interruptions_per_hour / 3600.0
    every = checkpoint_interval_s(train, option)
    restart_each = itype.startup_s
    if rate <= 0 or every <= 0:
        k, run_s = 0.0, run
    elif rate * every > 700:          # reclaimed long before a checkpoint: never finishes
        k, run_s = math.inf, math.inf
    else:
        segments = run / every
        k = segments * math.expm1(rate * every)               # expected reclaims
        run_s = segments * (1 / rate + restart_each) * math.expm1(rate * every)
    restart = k * restart_each
    lost = run_s - run - restart
    return {"run_s": run_s, "interruptions": k, "lost_s": lost, "restart_s": restart, "checkpoint_s": every,
            "cost": n * catalog.launch_cost(itype, itype.startup_s + run_s, spot=True)}


def _spot_candidate(job: Job, itype: InstanceType, catalog: Catalog, weighed, load: float,
                    elapsed_s: float, run_s: float, launch: bool, workers: int) -> Candidate:
    """The type's best option on new spot nodes (a job that checkpoints only)."""
    if itype.spot_price_per_hour is None:
        return Candidate(itype, excluded="no spot price in the catalog", spot={})
    if job.train is None:
        return Candidate(itype, excluded="spot needs a job that checkpoints (a train job)", spot={})
    if not launch:
        return Candidate(itype, excluded="at its node limit", spot={})
    own = not weighed
    if own:             # a job timed by its own estimate: its checkpoint interval is unknown
        weighed = [{"workers": workers, "run_s": run_s}]
    opts = []
    for w in weighed:
        w["spot"] = spot_terms(job.train, w, itype, catalog)
        opts.append(w)
    deadline = job.deadline_s

    def total(w):
        return itype.startup_s + load + w["spot"]["run_s"]

    key = (lambda w: (w["spot"]["cost"], total(w))) if job.policy != "min_time" else \
        (lambda w: (total(w), w["spot"]["cost"]))
    ok = [w for w in opts if deadline is None or elapsed_s + total(w) <= deadline]
    best = min(ok or opts, key=key)
    sp = best["spot"]
    c = Candidate(itype, False, "", None, None, sp["run_s"], 0.0, itype.startup_s, load, total(best), sp["cost"],
                  0.0, best["workers"], () if own else tuple(weighed), {**sp, "workers": best["workers"]})
    if deadline is not None and elapsed_s + c.time_s > deadline:
        c.excluded = f"misses deadline {deadline:g} s: {elapsed_s + c.time_s:.3g} s on {c.where}"
    else:
        c.feasible = True
    return c


def _pick_workers(weighed, itype, catalog, job, elapsed_s):
    """The worker count of a train job on a type: by its policy, within the deadline."""
    def cost(w):
        return w["workers"] * catalog.launch_cost(itype, itype.startup_s + w["run_s"])

    key = (lambda w: (cost(w), w["run_s"])) if job.policy != "min_time" else (lambda w: (w["run_s"], cost(w)))
    for w in weighed:
        w["cost"] = cost(w)
    ok = [w for w in weighed if job.deadline_s is None or elapsed_s + itype.startup_s + w["run_s"] <= job.deadline_s]
    best = min(ok or weighed, key=key)
    return None, best["run_s"], best["workers"]


def place(job: Job, catalog: Catalog, state: ClusterState | None = None, *,
          model: PerfModel = MODEL, elapsed_s: float = 0.0) -> Placement:
    """Choose the instance type (and node) for ``job`` under its policy and deadline."""
    cands = candidates(job, catalog, state, model=model, elapsed_s=elapsed_s)
    feasible = sorted((c for c in cands if c.feasible), key=_key(job.policy))
    if not feasible:
        why = "; ".join(f"{c.itype.name}: {c.excluded}" for c in cands)
        return Placement(job, cands, None, f"no instance type can run it ({why})")
    win = feasible[0]
    return Placement(job, cands, win, _reason(job, win, feasible, cands))


def _reason(job: Job, win: Candidate, feasible: list[Candidate], cands: list[Candidate]) -> str:
    what = "cost" if job.policy == "min_cost" else "time"
    parts = [f"{win.itype.name} ({win.where}) has the lowest {what}: "
             f"${win.cost:.3g}, {win.time_s:.4g} s"]
    if len(feasible) > 1:
        nxt = feasible[1]
        if job.policy == "min_cost":
            ratio = f" ({nxt.cost / win.cost:.3g}x)" if win.cost > 0 else ""
            parts.append(f"next {nxt.itype.name} costs ${nxt.cost:.3g}{ratio}")
        else:
            ratio = nxt.time_s / win.time_s if win.time_s > 0 else math.inf
            parts.append(f"next {nxt.itype.name} takes {nxt.time_s:.4g} s ({ratio:.3g}x)")
    key = _key(job.policy)
    wk = key(win)
    beaten_by_deadline = [c for c in cands if not c.feasible and c.excluded[:1] == "m"
                          and c.excluded.startswith("misses deadline") and key(c) < wk] if job.deadline_s else []
    if beaten_by_deadline:
        parts.append("the deadline ruled out the " + ("cheaper " if job.policy == "min_cost" else "")
                     + ", ".join(c.itype.name for c in beaten_by_deadline))
    if win.node:
        parts.append(f"keeps {win.node} billed {win.extends_s:.4g} s longer" if win.extends_s > 0
                     else f"{win.node} is billed for that time anyway")
    if win.node and win.itype.kind == "fpga" and win.image_load_s == 0:
        parts.append(f"{win.node} already holds core {job.core}")
    elif win.node is None and win.startup_s:
        parts.append(f"includes {win.startup_s:g} s start-up and {win.image_load_s:g} s image load"
                     if win.image_load_s else f"includes {win.startup_s:g} s start-up")
    return "; ".join(parts)


def explain(p: Placement) -> str:
    """A table of every candidate (time, cost, where, why excluded) and the verdict."""
    job = p.job
    lines = [f"job {job.name}: " + (f"{job.spec.op} {job.spec.dtype} GEMM {'x'.join(map(str, job.spec.gemm_shape))} "
                                     f"(batch, M, N, K), {job.spec.flops / 1e9:.3g} GFLOP"
                                     if job.spec else (f"train {job.train.get('model') or job.train.get('entry')}, "
                                                         f"{job.train['epochs']} epochs" if job.train else
                                                         f"suite {job.suite['name']}, ~{job.estimate_s:g} s"))
             + f"; policy {job.policy}" + (f"; deadline {job.deadline_s:g} s" if job.deadline_s else "")]
    hdr = f"  {'type':<14} {'device':<10} {'where':<16} {'run s':>10} {'start s':>8} {'load s':>7} {'total s':>10} {'cost $':>10}  note"
    lines.append(hdr)
    order = sorted(p.candidates, key=lambda c: (not c.feasible, c.cost, c.time_s))
    for c in order:
        dev = c.itype.accelerator or "cpu"
        if c.estimate is None and not math.isfinite(c.run_s):
            lines.append(f"  {c.itype.name:<14} {dev:<10} {'-':<16} {'-':>10} {'-':>8} {'-':>7} {'-':>10} {'-':>10}  excluded: {c.excluded}")
            continue
        mark = "<- chosen" if c is p.winner else ("" if c.feasible else f"excluded: {c.excluded}")
        if c.node:
            life = f"node life +{c.extends_s:.3g} s" if c.extends_s > 0 else "node billed anyway"
            mark = f"{mark}; {life}" if mark else life
        lines.append(f"  {c.itype.name:<14} {dev:<10} {c.where:<16} {c.run_s:>10.4g} {c.startup_s:>8.3g} "
                     f"{c.image_load_s:>7.3g} {c.time_s:>10.4g} {c.cost:>10.3g}  {mark}")
    lines.append(("winner: " if p.winner else "no placement: ") + p.reason)
    if p.winner is not None and p.winner.spot:
        w, sp = p.winner, p.winner.spot
        od = next((c for c in p.candidates if c.itype is w.itype and not c.spot and math.isfinite(c.cost)), None)
        lines.append(f"spot: {w.itype.name} at ${w.itype.spot_price_per_hour:g}/h against ${w.itype.price_per_hour:g}/h "
                     f"on demand; the job checkpoints every {sp['checkpoint_s']:.3g} s of work, so a reclaim "
                     f"loses half that on average plus a {w.itype.startup_s:g} s restart; "
                     f"{w.itype.interruptions_per_hour:.3g} reclaims per node-hour x {sp['workers']} node(s) "
                     f"over the run: {sp['interruptions']:.3g} expected, +{sp['lost_s'] + sp['restart_s']:.3g} s "
                     f"expected time" + (f"; on demand it would cost ${od.cost:.3g}" if od else ""))
    if p.winner is not None and p.winner.weighed:
        w = p.winner
        lines.append(f"workers weighed on {w.itype.name} (n nodes, each billed; all-reduce of "
                     f"{w.weighed[0]['grad_bytes'] / 1e3:.4g} kB over {w.itype.network_gbps or 0:g} Gbps):")
        for o in w.weighed:
            c = o["spot"]["cost"] if w.spot else o["cost"]
            lines.append(f"  n={o['workers']:<3} step {o['step_s'] * 1e3:8.3g} ms (compute {o['compute_s'] * 1e3:.3g}"
                         f" + all-reduce {o['allreduce_s'] * 1e3:.3g})  run {o['run_s']:8.4g} s  cost ${c:.3g}"
                         + (" spot" if w.spot else "") + ("  <- chosen" if o["workers"] == w.workers else ""))
        lines.append(f"  chose n={w.workers}: the lowest {'cost' if job.policy == 'min_cost' else 'time'}"
                     + (" within the deadline" if job.deadline_s else ""))
    return "\n".join(lines)

