"""The scheduler's commands for ``lepton-accel`` (and ``python -m lepton_accel.scheduler.cli``).

``add_commands(subparsers)`` adds: submit, run, serve, status, cancel, logs, explain, ci and
``cluster config``. Each sets ``func`` (``args.func(args)`` returns the exit status).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sqlite3
import sys
import time
import uuid
from pathlib import Path

from ..perf import NATIVE_BACKEND
from .catalog import load_catalog
from .jobs import JobError, clip, load_jobs, shell_allowed
from .store import FINISHED, JobStore, StoreError, default_path

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def safe(text) -> str:
    """Text fit for a terminal: control characters (escape sequences) shown escaped
    (newlines kept)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(text))


def _store(args, readonly: bool = False) -> JobStore:
    return JobStore(args.store or default_path(), readonly=readonly)


def _guarded(fn):
    """A command whose store, scheduler and job errors end in one line, not a traceback."""
    @functools.wraps(fn)
    def run(args) -> int:
        from .loop import SchedulerError

        try:
            return fn(args)
        except (StoreError, SchedulerError, JobError) as exc:
            print(f"error: {safe(clip(exc, 600))}", file=sys.stderr)
        except sqlite3.Error as exc:
            print(f"error: job store: {safe(clip(exc, 600))}", file=sys.stderr)
        except OSError as exc:
            print(f"error: {safe(clip(exc.strerror or exc, 600))}"
                  + (f": {safe(exc.filename)}" if getattr(exc, "filename", None) else ""), file=sys.stderr)
        return 1
    return run


def _common(p: argparse.ArgumentParser, store: bool = True, catalog: bool = False) -> None:
    if store:
        p.add_argument("--store", metavar="PATH",
                       help=f"job store (SQLite); default $LEPTON_ACCEL_STORE or {default_path()}")
    if catalog:
        p.add_argument("--catalog", metavar="FILE",
                       help="instance catalog overriding/extending the shipped one ($LEPTON_ACCEL_CATALOG)")


def _roots_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tests-root", action="append", default=[], metavar="DIR",
                   help="a directory whose tests 'tests'/'benchmarks' suites may run (repeatable; also "
                        "$LEPTON_ACCEL_TEST_ROOTS)")


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-workers", type=int, default=max(2, min(4, os.cpu_count() or 2)),
                   help="worker processes in all (default: 2..4 by CPU count)")
    p.add_argument("--max-per-type", type=int, default=2, help="worker processes per instance type")
    p.add_argument("--allow-shell", action="store_true", default=None,
                   help="let 'shell' suites run their command (off unless asked)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port (127.0.0.1 unless --metrics-addr)")
    p.add_argument("--metrics-addr", default="127.0.0.1")
    p.add_argument("--job-env", action="append", default=[], metavar="NAME",
                   help="pass this environment variable on to jobs' commands (repeatable); they get a "
                        "clean environment otherwise")
    _roots_arg(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log placement and scaling decisions")


def _load(path, args=None, catalog=None) -> list:
    from .jobs import test_roots

    roots = test_roots(getattr(args, "tests_root", None) or ())
    trusted = shell_allowed(getattr(args, "allow_shell", None))
    try:
        return load_jobs(path, catalog=catalog, roots=roots, trusted=trusted)
    except JobError as exc:
        raise SystemExit(f"error: {safe(path)}: {safe(exc)}")


# ---- submit ---------------------------------------------------------------------------------
@_guarded
def cmd_submit(args) -> int:
    jobs = _load(args.file, args, load_catalog(args.catalog))
    store = _store(args)
    ids = store.submit(jobs, batch=args.batch)
    for jid, job in zip(ids, jobs):
        print(f"queued {jid} {safe(job.name)}")
    return 0


# ---- run / serve ------------------------------------------------------------------------------
def _make_executor(args, store, catalog=None):
    from .elastic import ElasticPolicy
    from .local import LocalExecutor
    from .metrics import SchedulerMetrics

    metrics = SchedulerMetrics()
    if args.metrics_port is not None:
        port = metrics.serve(args.metrics_port, addr=args.metrics_addr)
        print(f"metrics on http://{args.metrics_addr}:{port}/metrics", file=sys.stderr)
    log = (lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr)) if args.verbose else None
    return LocalExecutor(store, catalog or load_catalog(args.catalog),
                         elastic=ElasticPolicy(max_nodes=args.max_per_type), max_workers=args.max_workers,
                         allow_shell=shell_allowed(args.allow_shell), metrics=metrics, log=log,
                         test_roots=args.tests_root, job_env=args.job_env)


def format_report(records, catalog=None) -> str:
    """The table `run` prints: where each job ran, estimated vs measured time, cost, verified.
    ``catalog``: the one the jobs were placed with (default: the shipped one and
    ``$LEPTON_ACCEL_CATALOG``)."""
    rows = [("job", "state", "instance type", "device", "ran here on", "est run s", "est total s",
             "measured s", "est cost $", "verified")]
    total = 0.0
    simulated = False
    cat = catalog if catalog is not None else load_catalog()
    for r in records:
        t = cat.types.get(r.itype) if r.itype else None
        dev = (t.accelerator or "cpu") if t else "-"
        ran = "-"
        if r.backend:
            native = NATIVE_BACKEND[t.kind if t else "cpu"]
            ran = r.backend if r.backend == native else f"{r.backend} (stand-in)"
            simulated |= r.backend != native
        ver = {True: "yes", False: "NO", None: "-"}[r.verified]
        if r.result and r.result.get("rel_err") is not None and r.verified is not None:
            ver += f" ({r.result['rel_err']:.1e})"
        total += r.est_cost or 0.0
        rows.append((safe(r.name), r.state, r.itype or "-", dev, ran,
                     _g(r.est_run_s), _g(r.est_total_s), _g(r.measured_s),
                     "-" if r.est_cost is None else f"{r.est_cost:.3g}", ver))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append(f"estimated cost of the batch: ${total:.4g}")
    if simulated:
        out.append("note: instance types are stood in for by local worker processes; a GPU or FPGA type "
                   "whose backend is not available here ran on the backend shown ('stand-in'). Measured "
                   "times are this machine's; estimated times are the perf model's for the placed device, "
                   "including node start-up and FPGA image load.")
    for r in records:
        if r.error:
            out.append(f"{safe(r.name)}: {safe(clip(r.error, 2000))}")
    return "\n".join(out)


def _g(v) -> str:
    return "-" if v is None else f"{v:.3g}"


@_guarded
def cmd_run(args) -> int:
    catalog = load_catalog(args.catalog)
    jobs = _load(args.file, args, catalog)
    store = _store(args)
    batch = uuid.uuid4().hex[:8]
    ids = store.submit(jobs, batch=batch)
    print(f"submitted {len(ids)} jobs (batch {batch}) to {store.path}", file=sys.stderr)
    ex = _make_executor(args, store, catalog)
    try:
        ex.run(batch=batch, until_idle=True, timeout=args.timeout)
    finally:
        ex.close()
    records = store.jobs(ids=ids)
    order = {jid: i for i, jid in enumerate(ids)}
    records.sort(key=lambda r: order[r.id])
    print(format_report(records, catalog))
    ok = all(r.state == "done" and r.verified is not False for r in records)
    return 0 if ok else 1


@_guarded
def cmd_serve(args) -> int:
    store = _store(args)
    ex = _make_executor(args, store)
    try:
        ex.run(until_idle=args.until_idle)
    except KeyboardInterrupt:
        pass
    finally:
        ex.close()
    counts = store.counts()
    print("  ".join(f"{k}={v}" for k, v in counts.items() if v))
    return 0


# ---- status / cancel / logs -----------------------------------------------------------------------
def status_frame(store, metrics_url: str | None = None, sampler=None, limit: int = 15):
    """One frame of ``status --watch``: the store's jobs and, from the scheduler's metrics
    endpoint (or sampled here, for the nodes running jobs on this machine), the nodes and
    their utilisation."""
    from .monitor import fetch_metrics, status_view

    metrics = fetch_metrics(metrics_url) if metrics_url else None
    sample = None
    if metrics is None and sampler is not None:
        pids = {r.node: (r.itype, r.pgid) for r in store.jobs(["running"]) if r.node and r.pgid}
        sample = sampler.sample(pids)
    view = status_view(store, metrics, sample, limit=limit, safe=safe)
    if metrics_url and metrics is None:
        from rich.console import Group
        from rich.text import Text

        view = Group(view, Text(f"metrics: {metrics_url} does not answer", style="yellow"))
    return view


def _watch(args, store) -> int:
    try:
        from rich.live import Live
    except ImportError:
        print("error: status --watch needs rich (pip install 'lepton_accel[monitor]')", file=sys.stderr)
        return 1
    from .monitor import Sampler

    sampler = Sampler()
    try:
        with Live(status_frame(store, args.metrics_url, sampler, args.limit), auto_refresh=False,
                  screen=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(status_frame(store, args.metrics_url, sampler, args.limit), refresh=True)
    except KeyboardInterrupt:
        return 0


@_guarded
def cmd_status(args) -> int:
    store = _store(args, readonly=True)
    if args.watch:
        return _watch(args, store)
    if args.job:
        try:
            r = store.get(args.job)
        except KeyError as exc:
            print(f"error: {safe(exc.args[0])}", file=sys.stderr)
            return 1
        print(json.dumps({k: v for k, v in vars(r).items() if k not in ("doc", "explain")}, indent=2,
                         default=str))
        return 0
    counts = store.counts()
    print("jobs: " + ("  ".join(f"{k}={v}" for k, v in counts.items() if v) or "none"))
    recs = store.jobs()
    if not args.all:
        recs = [r for r in recs if r.state not in FINISHED] + \
               sorted((r for r in recs if r.state in FINISHED), key=lambda r: -(r.finished_at or 0))[:args.limit]
    if recs:
        print(f"{'id':<12}  {'state':<9}  {'instance type':<13}  {'node':<16}  {'try':>3}  name")
        for r in recs:
            print(f"{r.id:<12}  {r.state:<9}  {r.itype or '-':<13}  {r.node or '-':<16}  {r.attempts:>3}  "
                  f"{safe(r.name)}")
    return 0


@_guarded
def cmd_cancel(args) -> int:
    store = _store(args)
    rc = 0
    for jid in args.job:
        try:
            r = store.get(jid)
        except KeyError as exc:
            print(f"error: {safe(exc.args[0])}", file=sys.stderr)
            rc = 1
            continue
        if store.cancel(r.id):
            print(f"cancelled {r.id} {safe(r.name)}")
        else:
            print(f"not cancelled {r.id} {safe(r.name)}: already {r.state}", file=sys.stderr)
            rc = 1
    return rc


@_guarded
def cmd_logs(args) -> int:
    store = _store(args, readonly=True)
    try:
        r = store.get(args.job)
    except KeyError as exc:
        print(f"error: {safe(exc.args[0])}", file=sys.stderr)
        return 1
    print(f"job {r.id} {safe(r.name)}: {r.state} (attempts {r.attempts})")
    for e in store.events(r.id):
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])) + f".{int(e['at'] % 1 * 1000):03d}"
        where = " ".join(x for x in (e["itype"] or "", e["node"] or "") if x)
        print(safe(f"  {at}  {e['state']:<9}  {where:<30}  {e['detail'] or ''}".rstrip()))
    if r.explain:
        print("placement:")
        print("\n".join("  " + safe(line) for line in r.explain.splitlines()))
    if r.result:
        print("result: " + safe(json.dumps(r.result, default=str)))
    if r.error:
        print(f"error: {safe(r.error)}")
    return 0


# ---- explain ------------------------------------------------------------------------------------
@_guarded
def cmd_explain(args) -> int:
    from .placement import place

    catalog = load_catalog(args.catalog)
    jobs = _load(args.file, args, catalog)
    placements = []
    for i, job in enumerate(jobs):
        if i:
            print()
        placements.append(place(job, catalog))
        print(safe(placements[-1].explain()))
    if args.plot:
        try:
            plot_placements(placements, args.plot)
        except ImportError:
            print("error: --plot needs matplotlib (pip install 'lepton_accel[monitor]')", file=sys.stderr)
            return 1
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def plot_placements(placements, path) -> list:
    """A PNG: per job, every candidate instance type's estimated time (x) against its
    cost (y), log-log; feasible types as dots, the chosen one as a star, types ruled out
    by the deadline (or other limits that leave an estimate) as grey crosses, the deadline
    as a dashed line. Returns what each panel shows: (job name, [(type, time s, cost $,
    "chosen" | "feasible" | "ruled out")])."""
    import math

    import matplotlib

    matplotlib.use("Agg")      # files only: no display needed
    import matplotlib.pyplot as plt

    n = max(len(placements), 1)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    height = 4.4 * rows + 1.0          # inches: the panels, and the title and legend above them
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, height), squeeze=False)
    colour = {"cpu": "tab:blue", "gpu": "tab:green", "fpga": "tab:orange"}
    shown: list = []
    for ax, p in zip(axes.flat, placements):
        job = p.job
        plotted = False
        xs: list[float] = []
        ys: list[float] = []
        shown.append((job.name, []))
        for c in p.candidates:
            if not (math.isfinite(c.time_s) and math.isfinite(c.cost)):
                continue
            cost = max(c.cost, 1e-9)          # a warm node's zero marginal cost, on a log axis
            if c is p.winner:
                ax.scatter([c.time_s], [cost], marker="*", s=320, color=colour.get(c.itype.kind, "k"),
                           edgecolors="black", linewidths=1.2, zorder=4)
                ax.annotate(f"{c.itype.name} (chosen)", (c.time_s, cost), textcoords="offset points",
                            xytext=(8, 8), fontsize=8, fontweight="bold")
            elif c.feasible:
                ax.scatter([c.time_s], [cost], s=40, color=colour.get(c.itype.kind, "k"), zorder=3)
                ax.annotate(c.itype.name, (c.time_s, cost), textcoords="offset points", xytext=(5, -10),
                            fontsize=7)
            else:
                ax.scatter([c.time_s], [cost], marker="x", s=40, color="0.6", zorder=2)
                ax.annotate(f"{c.itype.name} ({c.excluded.split(' (')[0]})", (c.time_s, cost),
                            textcoords="offset points", xytext=(5, -10), fontsize=6, color="0.5")
            plotted = True
            shown[-1][1].append((c.itype.name, c.time_s, c.cost,
                                 "chosen" if c is p.winner else ("feasible" if c.feasible else "ruled out")))
            xs.append(c.time_s)
            ys.append(cost)
        if job.deadline_s:
            ax.axvline(job.deadline_s, color="tab:red", linestyle="--", linewidth=1)
            ax.annotate(f"deadline {job.deadline_s:g} s", (job.deadline_s, 1), xycoords=("data", "axes fraction"),
                        xytext=(-4, -12), textcoords="offset points", ha="right", fontsize=7, color="tab:red")
            xs.append(job.deadline_s)
        if plotted:   # log axes only where the values spread over more than a decade
            ax.margins(0.15)
            for vals, scale, lim, axis in ((xs, ax.set_xscale, ax.set_xlim, ax.xaxis),
                                           (ys, ax.set_yscale, ax.set_ylim, ax.yaxis)):
                if max(vals) / min(vals) > 10:
                    scale("log")
                else:
                    axis.get_major_formatter().set_useOffset(False)
                    if max(vals) - min(vals) < 0.02 * max(vals):   # (nearly) equal: a readable span
                        lim(0.9 * min(vals), 1.1 * max(vals))
        else:
            ax.text(0.5, 0.5, "no instance type can run it", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{job.name} (policy {job.policy})", fontsize=10)
        ax.set_xlabel("estimated time to result, s (start-up + load + run)", fontsize=8)
        ax.set_ylabel("estimated cost, $", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(placements):]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=col, label=f"{kind} type") for kind, col in colour.items()]
    handles += [Line2D([], [], marker="*", markersize=14, linestyle="", color="w", markeredgecolor="k",
                       label="chosen"),
                Line2D([], [], marker="x", linestyle="", color="0.6", label="ruled out (e.g. misses the deadline)"),
                Line2D([], [], linestyle="--", color="tab:red", label="deadline")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8,
               bbox_to_anchor=(0.5, 1 - 0.45 / height))
    fig.suptitle("candidate instance types per job: estimated time vs cost", fontsize=12, y=1 - 0.12 / height)
    # a fixed layout (tight_layout would draw the figure twice more)
    fig.subplots_adjust(left=0.75 / (6.4 * cols), right=1 - 0.25 / (6.4 * cols), bottom=0.55 / height,
                        top=1 - 1.15 / height, hspace=0.9 / 4.4, wspace=0.9 / 6.4 * cols / cols)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return shown


# ---- ci -------------------------------------------------------------------------------------------
def cmd_ci(args) -> int:
    from . import ci

    return ci.run(args)


# ---- cluster config -------------------------------------------------------------------------------
@_guarded
def cmd_cluster_config(args) -> int:
    import yaml

    from .ray_executor import autoscaler_config

    cfg = autoscaler_config(load_catalog(args.catalog), provider=args.provider, types=args.types or None,
                            include_retired=args.include_retired, max_workers=args.max_workers,
                            idle_timeout_minutes=args.idle_timeout_minutes, region=args.region)
    text = yaml.safe_dump(cfg, sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def add_commands(subparsers) -> None:
    """Add the scheduler's commands to an argparse ``add_subparsers()`` object."""
    p = subparsers.add_parser("submit", help="queue the jobs of a job or workload file")
    p.add_argument("file", metavar="JOB.yaml")
    p.add_argument("--batch", help="a batch label to group the jobs")
    _roots_arg(p)
    _common(p, catalog=True)
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("run", help="submit a workload, run it locally, wait and report")
    p.add_argument("file", metavar="WORKLOAD.yaml")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    _common(p, catalog=True)
    _executor_args(p)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("serve", help="run the local scheduler on the store's queued jobs")
    p.add_argument("--until-idle", action="store_true", help="exit when no job is unfinished")
    _common(p, catalog=True)
    _executor_args(p)
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("status", help="jobs by state, or one job's record")
    p.add_argument("job", nargs="?", help="a job id (or unique prefix)")
    p.add_argument("--all", action="store_true", help="list every job, not only recent ones")
    p.add_argument("--limit", type=int, default=20, help="finished jobs to list (default 20)")
    p.add_argument("--watch", action="store_true",
                   help="a live table of jobs, nodes and utilisation, refreshed until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (--watch)")
    p.add_argument("--metrics-url", metavar="URL",
                   help="the scheduler's metrics (e.g. http://127.0.0.1:9464/metrics): every node and its "
                        "utilisation; without it --watch samples the nodes running jobs on this machine")
    _common(p)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("cancel", help="cancel unfinished jobs")
    p.add_argument("job", nargs="+")
    _common(p)
    p.set_defaults(func=cmd_cancel)

    p = subparsers.add_parser("logs", help="a job's state changes, placement and result")
    p.add_argument("job")
    _common(p)
    p.set_defaults(func=cmd_logs)

    p = subparsers.add_parser("explain", help="show every instance type's time and cost for a job")
    p.add_argument("file", metavar="JOB.yaml")
    p.add_argument("--plot", metavar="PNG", help="also write a time-versus-cost scatter of the candidates per job")
    _roots_arg(p)
    _common(p, store=False, catalog=True)
    p.set_defaults(func=cmd_explain)

    p = subparsers.add_parser("ci", help="run a pytest suite as jobs grouped by the hardware its tests need")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="a project, or a test file or directory in one (default: this package's own suite)")
    p.add_argument("--deadline", type=float, default=None, metavar="S",
                   help="seconds the suite may take: each group is split into enough shards (parallel nodes, "
                        "at most --max-per-type) to fit")
    p.add_argument("--require-hardware", action="store_true",
                   help="fail a group that needs a GPU/FPGA but ran on a worker without it")
    p.add_argument("--junit", metavar="OUT.xml", help="write the merged JUnit XML report here")
    p.add_argument("--timeout", type=float, default=None, help="give up on the shards after this many seconds")
    p.add_argument("--max-workers", type=int, default=max(2, min(4, os.cpu_count() or 2)),
                   help="worker processes in all (default: 2..4 by CPU count)")
    p.add_argument("--max-per-type", type=int, default=2,
                   help="worker processes (nodes) per instance type: the most shards a group gets")
    p.add_argument("--job-env", action="append", default=[], metavar="NAME",
                   help="pass this environment variable on to the shards (repeatable)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run the shards on this Ray cluster ('auto': the one this machine is part of) "
                        "instead of local workers")
    p.add_argument("-v", "--verbose", action="store_true", help="log placement and scaling decisions")
    _common(p, catalog=True)
    p.set_defaults(func=cmd_ci)

    p = subparsers.add_parser("cluster", help="Ray cluster helpers")
    sub = p.add_subparsers(dest="cluster_command", required=True)
    c = sub.add_parser("config", help="print a Ray autoscaler config generated from the catalog")
    c.add_argument("--provider", choices=("aws", "fake"), default="aws",
                   help="aws: a cluster launcher config; fake: Ray's local fake multi-node provider")
    c.add_argument("--types", nargs="*", help="instance types to include (default: all live ones)")
    c.add_argument("--include-retired", action="store_true")
    c.add_argument("--max-workers", type=int, default=4, help="max nodes per type")
    c.add_argument("--idle-timeout-minutes", type=float, default=5.0)
    c.add_argument("--region", default=None)
    c.add_argument("-o", "--output", help="write to a file instead of stdout")
    _common(c, store=False, catalog=True)
    c.set_defaults(func=cmd_cluster_config)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lepton-accel", description="lepton_accel scheduler")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
