"""Scheduler benchmarks: placement speed, local end-to-end throughput, a 10,000-job
backlog, job-file parsing, trace cost.

    python benchmarks/bench_scheduler.py [--jobs 2000] [--backlog 10000] [--trace 1000] [--seed N]

1. placement decisions per second (random mixed jobs; cold cluster and 12 warm nodes;
   median of 5 passes);
2. local jobs per second end to end: submit N small verified matmul jobs to a fresh durable
   store (SQLite WAL, synchronous=FULL) and run them on the local executor's workers;
2b. a backlog: N jobs already in a store, then ``lepton-accel serve --until-idle`` started:
   seconds from its start to the first job done, and to the last;
2c. parsing a 10,000-job workload file with the C YAML loader and with the Python one;
3. cost of a mixed 1,000-job trace (Poisson arrivals, 20 % with deadlines) in a discrete-
   event simulation of a cloud cluster (per-second billing with the catalog's minimum,
   node start-up from the catalog, FPGA image load, idle nodes kept 120 s) under:
   our placement; every job on one GPU type (g5.xlarge, g6.xlarge); every job on the
   cheapest type by hourly price; and two offline references that see the whole trace:
   offline plans (each job on its cheapest type by slot-time, or all on one type T except
   the jobs T cannot run in time, simulated with the same node rules: schedules that exist)
   and a lower bound on the optimum under the same node rules (:func:`coverage_lower_bound`,
   a MILP over job->type assignments; no schedule can cost less). The optimum lies between.
Results go to benchmarks/results/scheduler-<date>.md.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lepton_accel.scheduler.catalog import load_catalog
from lepton_accel.scheduler.jobs import parse_job
from lepton_accel.scheduler.local import LocalExecutor
from lepton_accel.scheduler.placement import ClusterState, NodeView, candidates, place
from lepton_accel.scheduler.store import JobStore

RESULTS = Path(__file__).resolve().parent / "results"
IDLE_TIMEOUT_S = 120.0


def random_job(rng: np.random.Generator, deadline_frac: float = 0.2):
    dtype = str(rng.choice(["float32", "float16", "bfloat16", "int8"]))
    doc: dict = {"policy": "min_cost", "seed": int(rng.integers(1 << 30))}
    if rng.random() < 0.6:
        m, n, k = (int(2 ** rng.uniform(6, 13)) for _ in range(3))
        doc.update(op="matmul", a={"shape": [m, k], "dtype": dtype}, b={"shape": [k, n], "dtype": dtype})
    else:
        hw = int(rng.choice([7, 14, 28, 56, 112, 224]))
        c, oc = int(rng.choice([3, 32, 64, 128, 256, 512])), int(rng.choice([32, 64, 128, 256, 512]))
        kk = int(rng.choice([1, 3, 5, 7]))
        batch = int(rng.choice([1, 8, 32, 128]))
        doc.update(op="conv2d", x={"shape": [batch, c, hw, hw], "dtype": dtype},
                   w={"shape": [oc, c, kk, kk], "dtype": dtype}, padding=kk // 2)
    if rng.random() < deadline_frac:
        doc["deadline_s"] = float(rng.uniform(62, 300))
    return parse_job(doc)


# ---- 1. placement decisions per second ------------------------------------------------------
def bench_placement(rng, n=2000) -> dict:
    cat = load_catalog(use_env=False)
    jobs = [random_job(rng) for _ in range(n)]
    warm = ClusterState([NodeView(f"n{i}", t, 1, frozenset({"matmul-int8"}) if t.startswith("f2") else frozenset())
                         for i, t in enumerate(["c7i.large", "g6.xlarge", "g5.xlarge", "f2.6xlarge",
                                                "p5.48xlarge", "m7i.xlarge"] * 2)])
    out = {}
    for j in jobs:          # the per-job cost terms are computed once, at the first placement
        place(j, cat)
    for label, state in (("cold cluster", None), ("12 warm nodes", warm)):
        rates, cpu_rates = [], []
        for _ in range(5):
            t0, c0 = time.perf_counter(), time.process_time()
            for j in jobs:
                place(j, cat, state)
            rates.append(n / (time.perf_counter() - t0))
            cpu_rates.append(n / max(time.process_time() - c0, 1e-9))
        out[label] = (statistics.median(rates), statistics.median(cpu_rates))
    out["types"] = len(cat.types)
    return out


# ---- 2. local jobs per second end to end ----------------------------------------------------------
def small_jobs(rng, n):
    return [parse_job({"op": "matmul", "a": {"shape": [32, 48], "dtype": "float32"},
                       "b": {"shape": [48, 16], "dtype": "float32"}, "seed": int(rng.integers(1 << 30)),
                       "constraints": {"instance_types": ["c7i.large"]}}) for _ in range(n)]


def bench_local(rng, n=2000, workers=2, repeats=3) -> dict:
    """Median of ``repeats`` runs (the range too: the machine may be shared)."""
    runs = [_local_once(rng, n, workers) for _ in range(repeats)]
    rates = sorted(r["jobs_per_s"] for r in runs)
    out = dict(runs[0])
    out.update(jobs_per_s=statistics.median(rates), seconds=statistics.median(r["seconds"] for r in runs),
               lo=rates[0], hi=rates[-1], repeats=repeats, done=min(r["done"] for r in runs),
               verified=min(r["verified"] for r in runs))
    return out


def _local_once(rng, n, workers) -> dict:
    jobs = small_jobs(rng, n)
    with tempfile.TemporaryDirectory() as d:
        store = JobStore(Path(d) / "jobs.sqlite")
        ex = LocalExecutor(store, load_catalog(use_env=False), max_workers=workers, poll_s=0.002)
        try:
            ex.scale({"c7i.large": workers}, [])   # warm pool: steady-state throughput, not process start
            time.sleep(1.0)
            t0 = time.perf_counter()
            store.submit(jobs)
            ex.run(timeout=600)
            dt = time.perf_counter() - t0
        finally:
            ex.close()
        counts = store.counts()
        verified = sum(bool(r.verified) for r in store.jobs(["done"]))
        events = len(store.events())
        store.close()
    return {"jobs": n, "seconds": dt, "jobs_per_s": n / dt, "done": counts["done"], "verified": verified,
            "events": events, "workers": workers}


def bench_backlog(rng, n=10_000, workers=2, repeats=3) -> dict:
    """n jobs already queued; `serve --until-idle` started: first job done, last job done
    (medians of ``repeats`` runs, with the range)."""
    runs = [_backlog_once(rng, n, workers) for _ in range(repeats)]
    out = dict(runs[0], repeats=repeats)
    for k in ("first_done_s", "last_done_s", "jobs_per_s"):
        vals = sorted(r[k] for r in runs)
        out[k], out[k + "_range"] = statistics.median(vals), (vals[0], vals[-1])
    out["done"] = min(r["done"] for r in runs)
    return out


def _backlog_once(rng, n, workers) -> dict:
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "jobs.sqlite"
        store = JobStore(db)
        store.submit(small_jobs(rng, n))
        cmd = [sys.executable, "-m", "lepton_accel.scheduler.cli", "serve", "--until-idle", "--store", str(db),
               "--max-workers", str(workers)]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        wall = time.time() - t0
        done = [e["at"] for e in store.events() if e["state"] == "done"]
        counts = store.counts()
        store.close()
    if p.returncode != 0:
        raise RuntimeError(f"serve failed: {p.stderr[-500:]}")
    return {"jobs": n, "first_done_s": min(done) - t0, "last_done_s": max(done) - t0, "serve_s": wall,
            "done": counts["done"], "jobs_per_s": n / (max(done) - t0), "workers": workers}


def bench_parse(rng, n=10_000) -> dict:
    """A workload file of n jobs: load_jobs with the C loader, and the YAML part alone with
    the C and the Python loaders."""
    import yaml

    from lepton_accel.scheduler import jobs as J

    lines = ["jobs:"] + [f"  - {{name: j{i}, op: matmul, a: {{shape: [32, 48], dtype: float32}}, "
                         f"b: {{shape: [48, 16], dtype: float32}}, seed: {int(rng.integers(1 << 30))}}}"
                         for i in range(n)]
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "w.yaml"
        f.write_text("\n".join(lines) + "\n")
        text = f.read_text()
        t0 = time.perf_counter()
        jobs = J.load_jobs(f)
        full = time.perf_counter() - t0
    out = {"jobs": len(jobs), "bytes": len(text), "load_jobs_s": full}
    for name, loader in (("C", getattr(yaml, "CSafeLoader", None)), ("Python", yaml.SafeLoader)):
        if loader is None:
            continue
        t0 = time.perf_counter()
        yaml.load(text, Loader=loader)
        out[f"yaml_{name}_s"] = time.perf_counter() - t0
    return out


# ---- 3. trace cost ------------------------------------------------------------------------------
@dataclass
class SimNode:
    nid: str
    itype: object
    launched: float
    ready: float
    slots: list = field(default_factory=list)   # busy-until per slot
    cores: set = field(default_factory=set)
    last_end: float = 0.0
    ended: float | None = None


class Sim:
    def __init__(self, catalog):
        self.cat = catalog
        self.nodes: list[SimNode] = []
        self.missed = 0
        self.by_type: dict[str, int] = {}
        self.escaped = 0      # jobs a restricted policy could not run on its type in time

    def _retire_idle(self, now):
        for n in self.nodes:
            if n.ended is None and max(n.slots) <= now and n.last_end + IDLE_TIMEOUT_S <= now:
                n.ended = max(n.last_end, n.ready) + IDLE_TIMEOUT_S

    def live(self, now):
        self._retire_idle(now)
        return [n for n in self.nodes if n.ended is None]

    def state(self, now) -> ClusterState:
        views = []
        for n in self.live(now):
            start = max(now, n.ready)
            free = sum(1 for b in n.slots if b <= start) if n.ready <= now else 0
            wait = max(min(n.slots), n.ready) - now
            views.append(NodeView(n.nid, n.itype.name, free, frozenset(n.cores), max(wait, 0.0),
                                  busy_until_s=max(n.last_end, n.ready) - now, age_s=now - n.launched))
        return ClusterState(views, idle_timeout_s=IDLE_TIMEOUT_S)

    def run_on(self, job, itype, node_id, now, run_s, load_s):
        node = next((n for n in self.nodes if n.nid == node_id), None) if node_id else None
        if node is None:
            node = SimNode(f"{itype.name}#{len(self.nodes)}", itype, now, now + itype.startup_s,
                           [0.0] * itype.slots)
            self.nodes.append(node)
        i = int(np.argmin(node.slots))
        start = max(now, node.ready, node.slots[i])
        if itype.kind == "fpga" and job.core not in node.cores:
            run_s += load_s
            node.cores.add(job.core)
        end = start + run_s
        node.slots[i] = end
        node.last_end = max(node.last_end, end)
        if job.deadline_s is not None and end - now > job.deadline_s + 1e-9:
            self.missed += 1
        self.by_type[itype.name] = self.by_type.get(itype.name, 0) + 1

    def cost(self) -> float:
        total = 0.0
        for n in self.nodes:
            end = n.ended if n.ended is not None else max(n.last_end, n.ready) + IDLE_TIMEOUT_S
            total += self.cat.launch_cost(n.itype, end - n.launched)
        return total


def restricted(job, itype: str):
    """The same job, allowed only on one instance type (same placement rules otherwise)."""
    doc = dict(job.doc, constraints={"instance_types": [itype]})
    return parse_job(doc)


def simulate(trace, cat, assign=None) -> Sim:
    """Run the trace; ``assign(i, job)`` may restrict a job to one type (None: free choice).

    Every policy uses our placement to choose between a warm node (possibly waiting for a
    slot) and launching a new one, so the policies differ only in the types they allow.
    """
    sim = Sim(cat)
    for i, (now, job) in enumerate(trace):
        j = assign(i, job) if assign else job
        state = sim.state(now)
        p = place(j, cat, state)
        if p.winner is None and j is not job:   # the type cannot run it in time: free choice
            p = place(job, cat, state)
        if p.winner is None:       # nothing meets the deadline: run it where it is fastest
            c = min((c for c in candidates(job, cat) if math.isfinite(c.run_s)), key=lambda c: c.time_s)
            itype, node = c.itype, None
        else:
            itype, node = p.winner.itype, p.winner.node
        load = itype.device().image_load_s if itype.kind == "fpga" else 0.0
        sim.run_on(job, itype, node, now, _run_s(job, itype), load)
        if j is not job and itype.name not in j.constraints.instance_types:
            sim.escaped += 1
    return sim


def _run_s(job, itype) -> float:
    from lepton_accel.perf import MODEL

    return MODEL.estimate(job.spec, itype.device()).total_s


def lower_bound(trace, cat):
    """Per job: cheapest slot-time on any live type that can meet its deadline.

    Any schedule pays at least the slot-time its jobs occupy, so no schedule costs less.
    """
    total, plan = 0.0, []
    for _, job in trace:
        best = None
        for t in cat.usable():
            run = _run_s(job, t)
            if not math.isfinite(run) or (job.deadline_s is not None and run > job.deadline_s):
                continue
            c = t.slot_price_per_second * run
            if best is None or c < best[0]:
                best = (c, t.name)
        total += best[0]
        plan.append(best[1])
    return total, plan


def coverage_lower_bound(trace, cat, bin_s: float = 10.0, time_limit_s: float = 20.0):
    """A lower bound on the offline optimum under the simulation's node rules, by a MILP.

    Any schedule puts job j on some type t; the node that runs it was launched no later than
    j's arrival a_j (nodes are launched for an arriving job), and no later than
    a_j + deadline - run - start-up when j has a deadline (it must be ready in time), and it
    is billed until at least a_j + run + idle timeout. So at least one node of type t is
    billed throughout that interval, and type t's bill is at least its price x the length of
    the union of the intervals of its jobs, and at least its price x their slot-time / slots.
    Minimising that over all job->type assignments (x_jt binary; y_tb binary "a type-t node is
    billed throughout time bin b", forced to 1 by every job whose interval holds the whole
    bin) can only cost less than the best schedule. HiGHS's dual bound is used, which stays a
    valid bound when the time limit stops the search before optimality.
    Returns (bound, status text) or (None, why) when scipy is not installed.
    """
    try:
        import numpy as _np
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_matrix
    except ImportError:
        return None, "scipy not installed"
    types = cat.usable()
    pairs = []                    # (job index, type index, interval start, interval end, run)
    for j, (a, job) in enumerate(trace):
        for ti, t in enumerate(types):
            r = _run_s(job, t)
            if not math.isfinite(r) or (job.deadline_s is not None and r > job.deadline_s):
                continue
            if job.spec.bytes_in + job.spec.bytes_out > t.memory_gib * 2**30:
                continue
            start = a if job.deadline_s is None else min(a, a + job.deadline_s - r - t.startup_s)
            pairs.append((j, ti, start, a + r + IDLE_TIMEOUT_S, r))
    lo_t = min(p[2] for p in pairs)
    nb = int(math.ceil((max(p[3] for p in pairs) - lo_t) / bin_s)) + 1
    nx, T = len(pairs), len(types)
    ny = T * nb
    nv = nx + ny + T              # x, y, z_t (billed node-seconds of type t)
    rows, cols, vals, lo, hi = [], [], [], [], []
    for p, (j, *_rest) in enumerate(pairs):        # every job on exactly one type
        rows.append(j), cols.append(p), vals.append(1.0)
    lo += [1.0] * len(trace)
    hi += [1.0] * len(trace)
    r_ = len(trace)
    for p, (j, ti, s0, s1, r) in enumerate(pairs):  # y_tb >= x_jt for bins inside the interval
        for b in range(int(math.ceil((s0 - lo_t) / bin_s)), int(math.floor((s1 - lo_t) / bin_s))):
            rows += [r_, r_]
            cols += [nx + ti * nb + b, p]
            vals += [1.0, -1.0]
            lo.append(0.0), hi.append(_np.inf)
            r_ += 1
    for ti, t in enumerate(types):                # z_t >= bin x covered bins
        for b in range(nb):
            rows.append(r_), cols.append(nx + ti * nb + b), vals.append(-bin_s)
        rows.append(r_), cols.append(nx + ny + ti), vals.append(1.0)
        lo.append(0.0), hi.append(_np.inf)
        r_ += 1
    for ti, t in enumerate(types):                # z_t >= slot-time / slots
        for p, (j, tj, s0, s1, r) in enumerate(pairs):
            if tj == ti:
                rows.append(r_), cols.append(p), vals.append(-r / t.slots)
        rows.append(r_), cols.append(nx + ny + ti), vals.append(1.0)
        lo.append(0.0), hi.append(_np.inf)
        r_ += 1
    cost = _np.r_[_np.zeros(nx + ny), [t.price_per_second for t in types]]
    res = milp(cost, constraints=LinearConstraint(coo_matrix((vals, (rows, cols)), shape=(r_, nv)).tocsr(), lo, hi),
               integrality=_np.r_[_np.ones(nx + ny), _np.zeros(T)],
               bounds=Bounds(_np.zeros(nv), _np.r_[_np.ones(nx + ny), _np.full(T, _np.inf)]),
               options={"time_limit": time_limit_s, "disp": False})
    bound = getattr(res, "mip_dual_bound", None)
    if bound is None or not math.isfinite(bound):
        return None, f"MILP gave no bound ({res.message})"
    gap = "solved to optimality" if res.status == 0 else f"stopped at {time_limit_s:g} s, gap to its best assignment " \
        f"{(res.fun - bound) / res.fun:.1%}"
    return float(bound), gap


def _row(sim):
    return (sim.cost(), sim.missed, sim.by_type, len(sim.nodes))


def bench_trace(rng, n=1000, mean_gap_s=2.0, bound_time_s=20.0) -> dict:
    cat = load_catalog(use_env=False)
    t, trace = 0.0, []
    for _ in range(n):
        t += float(rng.exponential(mean_gap_s))
        trace.append((t, random_job(rng)))
    cheapest = min(cat.usable(), key=lambda t: t.price_per_hour).name
    res = {}
    t0 = time.perf_counter()
    res["ours (online)"] = _row(simulate(trace, cat))
    sim_s = time.perf_counter() - t0
    cache: dict = {}

    def only(name):
        def assign(i, job):
            if (i, name) not in cache:
                cache[(i, name)] = restricted(job, name)
            return cache[(i, name)]
        return assign

    for name in ("g5.xlarge", "g6.xlarge", cheapest):
        res[f"all on {name}"] = _row(simulate(trace, cat, only(name)))
    lb, plan = lower_bound(trace, cat)
    # offline plans (they see the whole trace): each job on its cheapest type by slot-time;
    # and for every type T, all jobs on T except those T cannot run in time
    offline = {"offline: each job's cheapest type": simulate(trace, cat, lambda i, j: only(plan[i])(i, j))}
    for tt in cat.usable():
        ok = [math.isfinite(r := _run_s(j, tt)) and (j.deadline_s is None or tt.startup_s + r <= j.deadline_s)
              for _, j in trace]
        if sum(ok) < n // 2:
            continue
        offline[f"offline: {tt.name} + cheapest for the rest"] = simulate(
            trace, cat, lambda i, j, tt=tt, ok=ok: only(tt.name if ok[i] else plan[i])(i, j))
    best_name = min(offline, key=lambda k: offline[k].cost())
    res["offline plan: " + best_name.split(": ", 1)[1]] = _row(offline[best_name])
    cov, how = coverage_lower_bound(trace, cat, time_limit_s=bound_time_s)
    if cov is None:       # no MILP solver: the per-job slot-time bound (much looser)
        cov, how = lb, f"slot-time bound ({how})"
    res["offline lower bound"] = (max(cov, lb), 0, {}, 0)
    return {"results": res, "span_s": t, "deadlines": sum(j.deadline_s is not None for _, j in trace),
            "cheapest": cheapest, "sim_s": sim_s, "plans_tried": len(offline), "bound": how,
            "slot_bound": lb}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2000, help="local end-to-end jobs")
    ap.add_argument("--backlog", type=int, default=10_000, help="jobs queued before serve starts")
    ap.add_argument("--trace", type=int, default=1000, help="jobs in the cost trace")
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--traces", type=int, default=3, help="independent random traces to cost")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--bound-time", type=float, default=20.0, help="seconds for the lower-bound MILP per trace")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(1 << 31))
    rng = np.random.default_rng(seed)
    pl = bench_placement(rng, args.decisions)
    loc = bench_local(rng, args.jobs)
    backlog = bench_backlog(rng, args.backlog)
    parse = bench_parse(rng)
    load = os.getloadavg()
    traces = [bench_trace(rng, args.trace, bound_time_s=args.bound_time) for _ in range(args.traces)]
    lines = [f"# Scheduler benchmark, {time.strftime('%Y-%m-%d')}", "",
             f"Command: `python benchmarks/bench_scheduler.py --jobs {args.jobs} --backlog {args.backlog} "
             f"--trace {args.trace} --seed {seed} --bound-time {args.bound_time:g}`; commit {_commit()}; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared: load average "
             f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end), Python {platform.python_version()}.", "",
             "## Placement decisions per second", "",
             f"Random mixed matmul/conv2d jobs (4 dtypes), {pl['types']} catalog types scored per decision.", "",
             "| cluster state | decisions/s (wall) | decisions per CPU-second |", "|---|---|---|"]
    lines += [f"| {k} | {v[0]:,.0f} | {v[1]:,.0f} |" for k, v in pl.items() if k != "types"]
    lines += ["", "Median of 5 passes over the same jobs. On a shared machine the wall rate is what this "
              "process got of a core; the CPU-second rate is the cost of a decision itself.", "",
              "## Local executor, end to end", "",
              f"{loc['jobs']} small float32 matmuls (32x48x16), each submitted to a fresh durable store "
              f"(SQLite WAL, synchronous=FULL), placed, run on {loc['workers']} local worker processes and "
              f"verified against float64; {loc['events']} state changes recorded.", "",
              f"Median of {loc['repeats']} runs (range {loc['lo']:.0f}-{loc['hi']:.0f} jobs/s).", "",
              "| jobs | seconds | jobs/s | done | verified |", "|---|---|---|---|---|",
              f"| {loc['jobs']} | {loc['seconds']:.2f} | {loc['jobs_per_s']:.1f} | {loc['done']} | {loc['verified']} |",
              "", "## A backlog", "",
              f"{backlog['jobs']:,} of the same jobs queued in a durable store, then `lepton-accel serve --until-idle "
              f"--max-workers {backlog['workers']}` started (a new process: imports, recovery, worker start-up "
              f"included). Medians of {backlog['repeats']} runs, ranges in brackets.", "",
              "| jobs | first job done after s | last job done after s | jobs/s | done |", "|---|---|---|---|---|",
              f"| {backlog['jobs']:,} | {backlog['first_done_s']:.2f} [{backlog['first_done_s_range'][0]:.2f}-"
              f"{backlog['first_done_s_range'][1]:.2f}] | {backlog['last_done_s']:.1f} | "
              f"{backlog['jobs_per_s']:.0f} [{backlog['jobs_per_s_range'][0]:.0f}-{backlog['jobs_per_s_range'][1]:.0f}]"
              f" | {backlog['done']:,} |",
              "", "## Parsing a workload file", "",
              f"{parse['jobs']:,} jobs, {parse['bytes'] / 2**20:.1f} MiB of YAML.", "",
              "| step | seconds |", "|---|---|",
              f"| `load_jobs` (C loader, bounds, schema, specs) | {parse['load_jobs_s']:.2f} |"]
    lines += [f"| YAML alone, {k.split('_')[1]} loader | {v:.2f} |" for k, v in parse.items() if k.startswith("yaml_")]
    lines += ["", "## Cost of mixed traces", "",
              f"{args.traces} independent traces of {args.trace} jobs (60 % matmul, 40 % conv2d, sizes "
              "log-uniform, 4 dtypes, Poisson arrivals every 2 s on average, ~20 % with deadlines of "
              "62-300 s). Simulated cloud: per-second billing with a 60 s minimum per node, catalog "
              f"start-up times, 8 s FPGA image load, idle nodes kept {IDLE_TIMEOUT_S:.0f} s; run times "
              "from the perf model. Costs are of the simulation, not of a cloud bill. Every policy "
              "places with our code (warm node vs new node, waiting for a slot); they differ only in "
              "the types allowed. A restricted policy whose type cannot run a job in time (memory, "
              "deadline) places that job freely. The offline plans see the whole trace: each job on "
              "its cheapest type by slot-time, or all on one type T except jobs T cannot run in time "
              "(the best of these is shown). The offline lower bound holds for every schedule under the "
              "same node rules: a job on type T keeps some T node billed from its arrival (earlier "
              "when its deadline needs a node already up) until run + idle timeout later, so each "
              "type pays at least its price x the union of its jobs' intervals (in 10 s bins, "
              "whole bins only) and at least its slot-time; a MILP (HiGHS) minimises that over "
              "job->type assignments and its dual bound is reported. The optimum of a trace is "
              "not computed exactly: it lies between that bound and the cheapest schedule found.", ""]
    summary = []
    for k, tr in enumerate(traces, 1):
        lines += [f"### Trace {k}: {tr['span_s']:.0f} s, {tr['deadlines']} deadlines", "",
                  "| policy | cost $ | vs ours | deadlines missed | nodes launched | jobs per type |",
                  "|---|---|---|---|---|---|"]
        ours_cost = tr["results"]["ours (online)"][0]
        for name, (cost, missed, by_type, nodes) in tr["results"].items():
            types = ", ".join(f"{t} {v}" for t, v in sorted(by_type.items(), key=lambda kv: -kv[1])) or "-"
            lines.append(f"| {name} | {cost:.4f} | {cost / ours_cost:.3g}x | {missed} | {nodes or '-'} | {types} |")
        r = tr["results"]
        lb = r["offline lower bound"][0]
        plan = min(v[0] for n, v in r.items() if n.startswith("offline plan"))
        best = min(v[0] for n, v in r.items() if n != "offline lower bound")
        gpu = min(r["all on g5.xlarge"][0], r["all on g6.xlarge"][0])
        cheap = r[f"all on {tr['cheapest']}"][0]
        summary.append(f"| {k} | {ours_cost:.4f} | {ours_cost / gpu:.3g} | {ours_cost / cheap:.3g} | "
                       f"{ours_cost / plan:.3g} | {ours_cost / lb:.3g} | [{lb:.4f}, {best:.4f}] |")
        lines += ["", f"Simulating the trace under our placement took {tr['sim_s']:.2f} s. Lower bound: "
                  f"{tr['bound']} (the per-job slot-time bound used before: ${tr['slot_bound']:.4f}).", ""]
    lines += ["### Ratios", "",
              "| trace | ours $ | ours / best all-GPU-type | ours / all-cheapest-type | ours / best offline plan "
              "| ours / offline lower bound | optimum lies in |", "|---|---|---|---|---|---|---|"] + summary + [""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"scheduler-{time.strftime('%Y-%m-%d')}.md"
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
