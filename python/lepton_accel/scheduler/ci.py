"""Hardware CI: run a project's pytest suite as scheduler jobs, grouped by the hardware its
tests need, sharded to meet a deadline, with one merged report.

``lepton-accel ci [PATH]`` collects the suite (in a pytest subprocess, with the project's
own configuration), gives each test a group from its markers through the project's
``[tool.lepton_accel.ci]`` table (unmarked tests: ``cpu``), splits each group into shards
by the durations recorded from earlier runs (in the job store), and submits one ``tests``
suite job per shard. The jobs are placed and run like any other; each returns pytest's
JUnit XML with its result (the worker chooses the file, see :mod:`.runner`). The shards'
reports are merged per group, the durations recorded for next time, and a group that needs
a GPU or FPGA but ran on a worker without that hardware is reported as not run on its
hardware, never as passed.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from ..perf import KINDS, NATIVE_BACKEND

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

#: outcomes of one test in the merged report
PASSED, FAILED, SKIPPED, ERROR = "passed", "failed", "skipped", "error"
#: the group of tests that carry none of the declared markers
DEFAULT_GROUP = "cpu"


class CIError(RuntimeError):
    """The suite cannot be run (configuration, collection); one line saying why."""


# ---- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CIConfig:
    """The project's ``[tool.lepton_accel.ci]`` table.

    ``markers``: marker -> job constraints, in declared order (the first declared marker
    a test carries decides its group). ``default_s``: the duration assumed for a test with
    none recorded. ``shard_overhead_s``: what one shard costs besides its tests (pytest's
    start-up and collection)."""
    markers: dict = field(default_factory=dict)
    default_s: float = 1.0
    shard_overhead_s: float = 2.0


def load_config(root: str | os.PathLike) -> CIConfig:
    path = Path(root) / "pyproject.toml"
    if not path.is_file():
        return CIConfig()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CIError(f"{path}: cannot read: {exc}") from None
    table = data.get("tool", {}).get("lepton_accel", {}).get("ci", {})
    where = f"{path} [tool.lepton_accel.ci]"
    if not isinstance(table, dict):
        raise CIError(f"{where}: expected a table")
    unknown = set(table) - {"markers", "default_s", "shard_overhead_s"}
    if unknown:
        raise CIError(f"{where}: unknown key {sorted(unknown)[0]!r}; expected markers, default_s, "
                      "shard_overhead_s")
    markers = table.get("markers", {})
    if not isinstance(markers, dict) or not all(isinstance(v, dict) for v in markers.values()):
        raise CIError(f"{where}.markers: expected marker = {{kind = ..., models = [...]}} entries")
    for m, entry in markers.items():
        cap = entry.get("max_shards")
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise CIError(f"{where}.markers.{m}.max_shards: expected an integer >= 1")
    for key in ("default_s", "shard_overhead_s"):
        v = table.get(key, 1.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0 <= v < 1e7):
            raise CIError(f"{where}.{key}: expected a number of seconds >= 0")
    return CIConfig(markers=dict(markers), default_s=float(table.get("default_s", 1.0)),
                    shard_overhead_s=float(table.get("shard_overhead_s", 2.0)))


# ---- collection --------------------------------------------------------------------------------
# runs inside the project's pytest: node ids and marker names of the selected tests
_COLLECT = r"""
import json, sys
import pytest

class Collect:
    root, items = None, []
    def pytest_collection_finish(self, session):
        Collect.root = str(session.config.rootpath)
        Collect.items = [[i.nodeid, sorted({m.name for m in i.iter_markers()})] for i in session.items]

code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[2:]], plugins=[Collect()])
with open(sys.argv[1], "w") as f:
    json.dump({"code": int(code), "root": Collect.root, "tests": Collect.items}, f)
"""


#: files that make a directory a pytest project (its rootdir and configuration)
_CONFIG_FILES = ("pyproject.toml", "pytest.ini", ".pytest.ini", "tox.ini", "setup.cfg")


@dataclass
class Collection:
    root: str                          # pytest's rootdir: node ids are relative to it
    tests: list                        # [(node id, (marker, ...)), ...] in collection order


def collect(path: str | os.PathLike, *, timeout: float = 600.0) -> Collection:
    """The tests pytest selects at ``path`` (a project directory, or a file or directory in
    one), with the project's own configuration (its ``addopts`` deselection included)."""
    target = Path(path).resolve()
    if not target.exists():
        raise CIError(f"{path}: no such file or directory")
    cwd = target if target.is_dir() else target.parent
    # a project directory: its own testpaths decide what is collected
    project = target.is_dir() and any((target / f).is_file() for f in _CONFIG_FILES)
    select = [] if project else [str(target)]
    with tempfile.TemporaryDirectory(prefix="lepton-ci-") as tmp:
        out = os.path.join(tmp, "collected.json")
        try:
            p = subprocess.run([sys.executable, "-c", _COLLECT, out, *select], cwd=cwd, capture_output=True,
                               text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CIError(f"{path}: collecting the tests took longer than {timeout:g} s") from None
        try:
            with open(out) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = None
    if data is None or data["code"] not in (0, 5) or data["root"] is None:
        tail = (p.stdout + p.stderr).strip().splitlines()[-15:]
        code = p.returncode if data is None else data["code"]
        raise CIError(f"{path}: pytest could not collect the tests (exit {code}):\n  " + "\n  ".join(tail))
    return Collection(root=data["root"], tests=[(nid, tuple(m)) for nid, m in data["tests"]])


def group_tests(tests: Iterable, config: CIConfig) -> dict[str, list[str]]:
    """Group name -> node ids. A test's group is the first marker of ``config.markers`` (in
    declared order) it carries; a test with none is in :data:`DEFAULT_GROUP`."""
    groups: dict[str, list[str]] = {}
    for nid, marks in tests:
        g = next((m for m in config.markers if m in marks), DEFAULT_GROUP)
        groups.setdefault(g, []).append(nid)
    return groups


def constraints_of(group: str, config: CIConfig) -> dict:
    """The job constraints of a group (its entry less ``max_shards``)."""
    if group in config.markers:
        return {k: v for k, v in config.markers[group].items() if k != "max_shards"}
    return {"kind": "cpu"}


def shard_cap(group: str, config: CIConfig, max_shards: int) -> int:
    """The most shards a group gets: the per-type cap, or less where its entry says
    (``max_shards = 1`` keeps tests that must run serially in one shard)."""
    own = config.markers.get(group, {}).get("max_shards")
    return max_shards if own is None else min(max_shards, own)


# ---- shard planning --------------------------------------------------------------------------
def assign(durations: Mapping[str, float], k: int) -> list[list[str]]:
    """Greedy longest-first into ``k`` bins (each test to the least loaded bin; ties by id,
    so a plan is reproducible). Empty bins are dropped."""
    if k < 1:
        raise ValueError("k: at least one shard")
    bins: list[list[str]] = [[] for _ in range(k)]
    load = [0.0] * k
    for tid in sorted(durations, key=lambda t: (-durations[t], t)):
        i = min(range(k), key=lambda j: (load[j], j))
        bins[i].append(tid)
        load[i] += durations[tid]
    return [b for b in bins if b]


def makespan(shards: Iterable[Iterable[str]], durations: Mapping[str, float], overhead_s: float = 0.0) -> float:
    return max((overhead_s + sum(durations[t] for t in s) for s in shards), default=0.0)


def plan_shards(durations: Mapping[str, float], *, budget_s: float | None, max_shards: int,
                overhead_s: float = 0.0) -> list[list[str]]:
    """Split tests (id -> expected seconds) into the fewest shards whose estimated makespan
    (longest shard, ``overhead_s`` each) fits ``budget_s``, at most ``max_shards`` (the
    nodes the group may have at once). No budget: one shard. A budget that even
    ``max_shards`` cannot meet gets ``max_shards`` (the best this cap allows)."""
    if max_shards < 1:
        raise ValueError("max_shards: at least one shard")
    if not durations:
        return []
    if budget_s is None:
        return assign(durations, 1)
    for k in range(1, min(max_shards, len(durations)) + 1):
        plan = assign(durations, k)
        if makespan(plan, durations, overhead_s) <= budget_s:
            return plan
    return assign(durations, min(max_shards, len(durations)))


# ---- recorded durations ---------------------------------------------------------------------
class Durations:
    """Test id -> its last measured duration, per project, in a table of the job store's
    database file (``ci_durations``; the scheduler's own tables are not touched)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("CREATE TABLE IF NOT EXISTS ci_durations (project TEXT NOT NULL, test_id TEXT NOT NULL, "
                   "seconds REAL NOT NULL, at REAL NOT NULL, PRIMARY KEY (project, test_id))")
        return db

    def get(self, project: str, ids: Iterable[str]) -> dict[str, float]:
        want = set(ids)
        db = self._connect()
        try:
            rows = db.execute("SELECT test_id, seconds FROM ci_durations WHERE project = ?", (project,)).fetchall()
        finally:
            db.close()
        return {t: s for t, s in rows if t in want}

    def record(self, project: str, seconds: Mapping[str, float]) -> None:
        now = time.time()
        db = self._connect()
        try:
            with db:
                db.executemany("INSERT INTO ci_durations VALUES (?, ?, ?, ?) ON CONFLICT (project, test_id) "
                               "DO UPDATE SET seconds = excluded.seconds, at = excluded.at",
                               [(project, t, float(s), now) for t, s in seconds.items()])
        finally:
            db.close()


# ---- JUnit XML --------------------------------------------------------------------------------
def junit_key(nodeid: str) -> tuple[str, str]:
    """The (classname, name) pytest's JUnit report gives a node id: the file path dotted
    without ``.py``, classes after it, the function (with its parameters) as the name."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


@dataclass
class Case:
    id: str
    outcome: str
    time_s: float
    message: str = ""


def parse_junit(text: str, ids: Iterable[str] = ()) -> list[Case]:
    """The test cases of one JUnit XML report; a case whose (classname, name) matches one
    of ``ids`` is named by that node id, any other by ``classname::name``."""
    by_key = {junit_key(i): i for i in ids}
    root = ET.fromstring(text)
    cases = []
    for tc in root.iter("testcase"):
        key = (tc.get("classname", ""), tc.get("name", ""))
        tid = by_key.get(key) or "::".join(k for k in key if k)
        try:
            t = float(tc.get("time", 0) or 0)
        except ValueError:
            t = 0.0
        outcome, msg = PASSED, ""
        for child in tc:
            if child.tag in ("failure", "error"):
                outcome, msg = (FAILED if child.tag == "failure" else ERROR), child.get("message", "")
                break
            if child.tag == "skipped":
                outcome, msg = SKIPPED, child.get("message", "")
        cases.append(Case(tid, outcome, t, msg))
    return cases


# ---- the report ---------------------------------------------------------------------------------
@dataclass
class GroupReport:
    name: str
    constraints: dict
    kind: str | None = None            # the hardware the group needs (gpu/fpga), None: any
    itypes: list = field(default_factory=list)
    backends: list = field(default_factory=list)
    shards: int = 0
    cases: list = field(default_factory=list)
    errors: list = field(default_factory=list)   # shard failures without test results
    time_s: float = 0.0                # the longest shard's measured wall time
    cost: float = 0.0                  # estimated cost of its shards

    def count(self, outcome: str) -> int:
        return sum(c.outcome == outcome for c in self.cases)

    @property
    def on_hardware(self) -> bool:
        """Every shard ran on a backend native to the hardware the group needs."""
        if self.kind not in ("gpu", "fpga"):
            return True
        return bool(self.backends) and all(b == NATIVE_BACKEND[self.kind] for b in self.backends)

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(c.outcome in (FAILED, ERROR) for c in self.cases)

    def status(self, require_hardware: bool) -> str:
        if self.failed:
            return "FAILED"
        if not self.on_hardware:
            return "NOT RUN ON ITS HARDWARE" + (" (required)" if require_hardware else "")
        return "passed"


def group_kind(constraints: dict, itypes: Iterable[str], catalog) -> str | None:
    """The accelerator kind a group needs: its constraints' kind, else that of the types it
    was placed on (an accelerator type chosen by cost still says where the tests ran)."""
    k = constraints.get("kind")
    kinds = [k] if isinstance(k, str) else list(k or ())
    if kinds and all(x in ("gpu", "fpga") for x in kinds) and len(set(kinds)) == 1:
        return kinds[0]
    if kinds:
        return None
    placed = {catalog.types[t].kind for t in itypes if t in catalog.types}
    return placed.pop() if len(placed) == 1 and placed <= {"gpu", "fpga"} else None


def build_report(groups: dict, shards: dict, records: dict, catalog) -> list[GroupReport]:
    """``groups``: name -> constraints; ``shards``: job id -> (group, [node ids]); ``records``:
    job id -> the job's store record."""
    reports = {g: GroupReport(g, c) for g, c in groups.items()}
    for jid, (g, ids) in shards.items():
        rep, r = reports[g], records[jid]
        rep.shards += 1
        if r.itype and r.itype not in rep.itypes:
            rep.itypes.append(r.itype)
        res = r.result or {}
        if r.backend or res.get("backend"):
            rep.backends.append(r.backend or res.get("backend"))
        rep.time_s = max(rep.time_s, r.measured_s or 0.0)
        rep.cost += r.est_cost or 0.0
        xml = res.get("junit_xml")
        cases = []
        if xml:
            try:
                cases = parse_junit(xml, ids)
            except ET.ParseError as exc:
                rep.errors.append(f"{r.name}: unreadable JUnit report: {exc}")
        rep.cases.extend(cases)
        if r.state != "done" and not any(c.outcome in (FAILED, ERROR) for c in cases):
            rep.errors.append(f"{r.name}: {r.state}: {r.error or res.get('error') or 'no result'}")
        elif not xml and r.state == "done":
            rep.errors.append(f"{r.name}: finished without a JUnit report")
    for rep in reports.values():
        rep.kind = group_kind(rep.constraints, rep.itypes, catalog)
    return list(reports.values())


def exit_status(reports: Iterable[GroupReport], require_hardware: bool) -> int:
    """1 on any failed test or shard, or (``require_hardware``) a group not run on its
    hardware; else 0."""
    bad = any(r.failed or (require_hardware and not r.on_hardware) for r in reports)
    return 1 if bad else 0


def format_table(reports: list[GroupReport], require_hardware: bool) -> str:
    from .cli import safe

    rows = [("group", "needs", "instance type", "ran on", "shards", "passed", "failed", "skipped", "time s",
             "est cost $", "status")]
    for r in reports:
        need = r.kind or "-"
        rows.append((r.name, need, ",".join(r.itypes) or "-", ",".join(sorted(set(r.backends))) or "-",
                     str(r.shards), str(r.count(PASSED)), str(r.count(FAILED) + r.count(ERROR)),
                     str(r.count(SKIPPED)), f"{r.time_s:.3g}", f"{r.cost:.3g}", r.status(require_hardware)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    for r in reports:
        if not r.on_hardware and r.backends:
            out.append(f"{r.name}: needs a {r.kind} but ran on {','.join(sorted(set(r.backends))) or 'nothing'} "
                       f"(a stand-in worker without that hardware): its {r.count(PASSED)} passing tests are not "
                       "counted as passed")
        for c in r.cases:
            if c.outcome in (FAILED, ERROR):
                out.append(safe(f"{r.name}: {c.outcome.upper()} {c.id}: {c.message}"[:500]))
            elif c.outcome == SKIPPED:
                out.append(safe(f"{r.name}: skipped {c.id}: {c.message}"[:500]))
        for e in r.errors:
            out.append(safe(f"{r.name}: {e}"[:2000]))
    return "\n".join(out)


def write_junit(reports: list[GroupReport], path: str | os.PathLike, require_hardware: bool) -> None:
    """One ``testsuite`` per group. A passing test of a group not run on its hardware is
    written as skipped (``--require-hardware``: as a failure), never as passed."""
    top = ET.Element("testsuites", name="lepton-accel ci")
    for r in reports:
        suite = ET.SubElement(top, "testsuite", name=r.name, time=f"{r.time_s:.3f}")
        props = ET.SubElement(suite, "properties")
        for k, v in (("needs", r.kind or "any"), ("instance_types", ",".join(r.itypes)),
                     ("ran_on", ",".join(sorted(set(r.backends)))), ("on_hardware", str(r.on_hardware).lower()),
                     ("est_cost", f"{r.cost:.6g}")):
            ET.SubElement(props, "property", name=k, value=v)
        counts = dict.fromkeys((PASSED, FAILED, SKIPPED, ERROR), 0)
        for c in r.cases:
            cls, _, name = c.id.rpartition("::")
            tc = ET.SubElement(suite, "testcase", classname=cls, name=name, time=f"{c.time_s:.3f}")
            outcome = c.outcome
            if outcome == PASSED and not r.on_hardware:
                why = f"not run on its hardware: needs {r.kind}, ran on {','.join(sorted(set(r.backends)))}"
                outcome = FAILED if require_hardware else SKIPPED
                ET.SubElement(tc, "failure" if require_hardware else "skipped", message=why)
            elif outcome != PASSED:
                ET.SubElement(tc, {FAILED: "failure", ERROR: "error", SKIPPED: "skipped"}[outcome], message=c.message)
            counts[outcome] += 1
        for e in r.errors:
            tc = ET.SubElement(suite, "testcase", classname=r.name, name="shard")
            ET.SubElement(tc, "error", message=e[:2000])
            counts[ERROR] += 1
        suite.set("tests", str(sum(counts.values())))
        suite.set("failures", str(counts[FAILED]))
        suite.set("errors", str(counts[ERROR]))
        suite.set("skipped", str(counts[SKIPPED]))
    ET.ElementTree(top).write(path, encoding="utf-8", xml_declaration=True)


# ---- the command -----------------------------------------------------------------------------
def _budget(deadline_s: float | None, constraints: dict, catalog) -> float | None:
    """The time a shard's tests may take: the deadline less the quickest start-up of a new
    node the group may be placed on."""
    if deadline_s is None:
        return None
    k = constraints.get("kind")
    kinds = set([k] if isinstance(k, str) else (k or KINDS))
    ups = [t.startup_s for t in catalog.types.values() if t.kind in kinds and not t.retired]
    return deadline_s - min(ups, default=0.0)


def plan_jobs(collection: Collection, config: CIConfig, known: Mapping[str, float], *, deadline_s, max_shards,
              catalog, timeout_s=None) -> tuple[dict, list, list]:
    """(groups, shard plan [(group, [node ids])], job documents), one document per shard."""
    groups = group_tests(collection.tests, config)
    cons = {g: constraints_of(g, config) for g in groups}
    plan, docs = [], []
    for g, ids in groups.items():
        dur = {t: known.get(t, config.default_s) for t in ids}
        shards = plan_shards(dur, budget_s=_budget(deadline_s, cons[g], catalog),
                             max_shards=shard_cap(g, config, max_shards),
                             overhead_s=config.shard_overhead_s)
        for i, shard in enumerate(shards):
            est = config.shard_overhead_s + sum(dur[t] for t in shard)
            suite = {"name": "tests", "project": collection.root, "args": ["-q", *shard], "junit": True}
            if timeout_s is not None:
                suite["timeout_s"] = timeout_s
            doc = {"name": f"ci-{g}-{i + 1}of{len(shards)}", "suite": suite, "estimate_s": max(est, 0.001),
                   "constraints": cons[g]}
            if deadline_s is not None:
                doc["deadline_s"] = deadline_s
            plan.append((g, shard))
            docs.append(doc)
    return cons, plan, docs


def run(args) -> int:
    """``lepton-accel ci``; the exit status (0 all passed, 1 a failure, 2 could not run)."""
    from .catalog import load_catalog
    from .cli import _store, safe
    from .jobs import JobError, parse_job, test_roots
    from .loop import SchedulerError
    from .store import FINISHED, StoreError

    try:
        path = args.path or _own_checkout()
        collection = collect(path)
        config = load_config(collection.root)
        catalog = load_catalog(args.catalog)
        store = _store(args)
        durations = Durations(store.path)
        known = durations.get(collection.root, (t for t, _ in collection.tests))
        groups, plan, docs = plan_jobs(collection, config, known, deadline_s=args.deadline,
                                       max_shards=args.max_per_type, catalog=catalog, timeout_s=args.timeout)
        if not docs:
            print(f"no tests collected at {safe(path)}", file=sys.stderr)
            return 0
        roots = test_roots([collection.root])
        jobs = []
        for (g, _), doc in zip(plan, docs):
            try:
                jobs.append(parse_job(doc, f"group {g}", collection.root, catalog=catalog, trusted=False,
                                      roots=roots))
            except JobError as exc:
                raise CIError(f"[tool.lepton_accel.ci] markers: {exc}") from None
        batch = "ci-" + uuid.uuid4().hex[:8]
        ids = store.submit(jobs, batch=batch)
        print(f"{len(collection.tests)} tests in {len(groups)} groups, {len(ids)} shards (batch {batch})",
              file=sys.stderr)
        ex = _executor(args, store, catalog, collection.root)
        try:
            try:
                ex.run(batch=batch, timeout=args.timeout)
            except TimeoutError as exc:
                print(f"error: {exc}; cancelling the rest", file=sys.stderr)
                for r in store.jobs(ids=ids):
                    if r.state not in FINISHED:
                        store.cancel(r.id)
        finally:
            ex.close()
        records = {r.id: r for r in store.jobs(ids=ids)}
        reports = build_report(groups, dict(zip(ids, plan)), records, catalog)
    except CIError as exc:
        print(f"error: {safe(exc)}", file=sys.stderr)
        return 2
    except (StoreError, SchedulerError, JobError, sqlite3.Error, OSError) as exc:
        print(f"error: {safe(exc)}", file=sys.stderr)
        return 2
    try:   # for the next plan; a run whose durations cannot be kept still reports
        durations.record(collection.root, {c.id: c.time_s for rep in reports for c in rep.cases
                                           if c.outcome != SKIPPED})
    except sqlite3.Error as exc:
        print(f"warning: test durations not recorded: {safe(exc)}", file=sys.stderr)
    finally:
        store.close()
    print(format_table(reports, args.require_hardware))
    if args.junit:
        write_junit(reports, args.junit, args.require_hardware)
        print(f"wrote {safe(args.junit)}", file=sys.stderr)
    return exit_status(reports, args.require_hardware)


def _own_checkout() -> str:
    root = Path(__file__).resolve().parents[3]
    if not ((root / "pyproject.toml").is_file() and (root / "tests").is_dir()):
        raise CIError("no PATH given and this installation has no test suite of its own; name a project")
    return str(root)


def _executor(args, store, catalog, root):
    from .elastic import ElasticPolicy
    from .metrics import SchedulerMetrics

    log = (lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr)) if args.verbose else None
    if getattr(args, "ray", None):
        from .ray_executor import RayExecutor

        return _RayRun(RayExecutor(store, catalog, address=args.ray, elastic=ElasticPolicy(max_nodes=args.max_per_type),
                                   metrics=SchedulerMetrics(), log=log, test_roots=[root]))
    from .local import LocalExecutor

    return LocalExecutor(store, catalog, elastic=ElasticPolicy(max_nodes=args.max_per_type),
                         max_workers=args.max_workers, metrics=SchedulerMetrics(), log=log, test_roots=[root],
                         job_env=args.job_env)


class _RayRun:
    """The Ray executor as the command drives it (its run closes its own loop)."""

    def __init__(self, ex):
        self.ex = ex

    def run(self, *, batch, timeout) -> None:
        self.ex.run(batch=batch, timeout=timeout)

    def close(self) -> None:
        pass
