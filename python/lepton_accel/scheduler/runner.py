"""What a worker does with one job: build its inputs, run it, check it.

Shared by every executor's workers. An operation runs its parsed spec through
:func:`lepton_accel.api.execute` on the worker's backend and is checked by the oracle
(:mod:`lepton_accel.reference`); its :class:`~lepton_accel.backends.RunStats` come back in
the result (``stats``) for the scheduler to record in its perf model. A suite runs pytest
as an argument list in a clean, declared environment (:func:`job_env`), in a process group
of its own that dies with the worker; the ``shell`` suite runs a command line only when
shell was enabled.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from ..dtypes import DTYPES
from ..perf import NATIVE_BACKEND
from . import procs
from .jobs import JobError, Job, check_suite, inline_array, operand_path, suite_project, test_roots

#: variables of the scheduler's environment a job's commands see (besides their own)
JOB_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM",
           "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
           "NVIDIA_VISIBLE_DEVICES")
_TAIL = 4000
#: the largest JUnit XML report a suite sends back with its result
MAX_JUNIT_BYTES = 8 * 2**20


def backend_for(kind: str, available: set[str] | None = None) -> str:
    """The backend a node of ``kind`` runs its jobs on here: its native one, else cpu
    (only the native backend's availability is checked)."""
    native = NATIVE_BACKEND[kind]
    if available is not None:
        return native if native in available else "cpu"
    from ..backends import get

    try:
        ok, _ = get(native).available()
    except Exception:  # a backend that cannot even say: not here
        ok = False
    return native if ok else "cpu"


# ---- inputs -------------------------------------------------------------------------------
def _random(shape, dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype == "int8":
        return rng.integers(-128, 128, size=shape, dtype=np.int8)
    if dtype == "int32":
        return rng.integers(-1000, 1000, size=shape, dtype=np.int32)
    return rng.standard_normal(size=shape).astype(DTYPES[dtype])


def operands(job: Job) -> dict[str, np.ndarray]:
    """The job's arrays by operand name (and ``bias``): random from its seed, inline or loaded."""
    doc = job.doc
    rng = np.random.default_rng(int(doc.get("seed", 0)))
    out = {}
    for n in job.spec.definition.operands + ("bias",):
        src = doc.get(n)
        if src is None:
            continue
        if "shape" in src:
            out[n] = _random(tuple(src["shape"]), src["dtype"], rng)
        elif "data" in src:
            out[n] = inline_array(src, n)
        else:
            out[n] = np.load(operand_path(src, job.base_dir), allow_pickle=False)
    return out


# ---- running ------------------------------------------------------------------------------------
def _checksum(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def output_path(job: Job) -> str:
    """Where the job's ``output`` goes, checked (again, at write time) to be inside its directory."""
    base = os.path.realpath(job.base_dir)
    target = os.path.realpath(os.path.join(base, job.doc["output"]))
    if os.path.commonpath([base, target]) != base or target == base:
        raise JobError(f"output: {job.doc['output']} is outside the job's directory")
    return target


def run_op(job: Job, backend: str) -> dict[str, Any]:
    from .. import reference
    from ..api import execute

    spec = job.spec
    arrays = operands(job)
    names = spec.definition.operands + (("bias",) if spec.bias else ())
    t0 = time.perf_counter()
    out, stats = execute(spec, [arrays[n] for n in names], backend)
    measured = time.perf_counter() - t0
    out = np.asarray(out)
    result: dict[str, Any] = {"ok": True, "backend": stats.backend, "measured_s": measured,
                              "out_shape": list(out.shape), "out_dtype": str(out.dtype),
                              "checksum": _checksum(out), "stats": dataclasses.asdict(stats)}
    if job.doc.get("verify", True):
        ref = reference.reference(spec, [arrays[n] for n in spec.definition.operands], arrays.get("bias"))
        result.update(reference.check(spec, out, ref))
    if job.doc.get("output"):
        path = output_path(job)
        np.save(path, out)
        result["output"] = path
    return result


def job_env(mark: str | None, tmp: str, names=()) -> dict[str, str]:
    """The environment of a job's commands: :data:`JOB_ENV` and ``names`` from ours, a
    private TMPDIR, the attempt's marker; nothing else of the scheduler's (no secrets)."""
    env = {k: os.environ[k] for k in (*JOB_ENV, *names) if k in os.environ}
    env.update(TMPDIR=tmp, PYTHONDONTWRITEBYTECODE="1")
    if mark:
        env[procs.MARKER] = mark
    return env


def _child_setup() -> None:
    os.setpgid(0, 0)          # a group of its own: a timeout kills the command's children too
    procs.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_suite(job: Job, *, allow_shell: bool = False, roots=None, env_names=(), mark: str | None = None,
              abandon=None) -> dict[str, Any]:
    """Run a suite. ``abandon()`` is asked twice a second whether to give up (the
    scheduler is gone): the command's processes are then killed."""
    suite = job.suite
    timeout = suite.get("timeout_s")
    if suite["name"] == "shell" and not allow_shell:
        return {"ok": False, "error": "shell suites are disabled; enable them explicitly "
                                      "(--allow-shell or LEPTON_ACCEL_ALLOW_SHELL=1)"}
    try:   # checked at submission; again here, under this scheduler's rules
        check_suite(suite, job.base_dir, "", trusted=allow_shell, roots=test_roots() if roots is None else roots)
    except JobError as exc:
        return {"ok": False, "error": str(exc)}
    tmp = tempfile.mkdtemp(prefix="lepton-job-")
    try:
        if suite["name"] == "shell":
            argv, shell, cwd = suite["command"], True, job.base_dir
            junit = None
        else:
            cwd = suite_project(suite, job.base_dir)
            extra = ["--benchmark-only"] if suite["name"] == "benchmarks" else []
            junit = os.path.join(tmp, "junit.xml") if suite.get("junit") else None
            if junit:   # the path is the worker's own (its private directory), never the job's
                extra.append(f"--junitxml={junit}")
            argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--confcutdir={cwd}",
                    f"--basetemp={os.path.join(tmp, 'basetemp')}", *extra, *suite.get("args", [])]
            shell = False
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, shell=shell, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=job_env(mark, tmp, env_names),
                             preexec_fn=_child_setup)
        started = procs.start_time(p.pid)
        end = None if timeout is None else t0 + timeout
        out = b""
        try:
            while True:
                step = 0.5 if end is None else max(min(0.5, end - time.perf_counter()), 0.001)
                try:
                    out, _ = p.communicate(timeout=step)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if abandon is not None and abandon():
                    procs.kill_attempt(p.pid, started, mark, timeout=5)
                    return {"ok": False, "error": "abandoned: the scheduler is gone"}
                if end is not None and time.perf_counter() >= end:
                    procs.kill_attempt(p.pid, started, mark, timeout=5)
                    p.communicate()
                    return {"ok": False, "error": f"suite timed out after {timeout} s",
                            "measured_s": time.perf_counter() - t0}
        finally:
            if p.poll() is None:
                p.kill()
        tail = out.decode("utf-8", "replace")[-_TAIL:]
        result = {"ok": p.returncode == 0, "returncode": p.returncode, "measured_s": time.perf_counter() - t0,
                  "verified": p.returncode == 0, "output_tail": tail,
                  **({} if p.returncode == 0 else {"error": f"suite exited with {p.returncode}"})}
        if junit:
            result["junit_xml"] = _read_report(junit)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_report(path: str) -> str | None:
    """The suite's JUnit XML (None when pytest wrote none or it is too large to send)."""
    try:
        if os.path.getsize(path) > MAX_JUNIT_BYTES:
            return None
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def run_train(job: Job, *, job_id: str | None, attempt: int | None, artifacts: str | None, env_names=(),
              mark: str | None = None, abandon=None, workers: int | None = None) -> dict[str, Any]:
    from .train import run_train as _run

    if artifacts is None or job_id is None:
        return {"ok": False, "error": "train jobs need an artifact directory (this executor gives none)"}
    tmp = tempfile.mkdtemp(prefix="lepton-job-")
    try:
        return _run(job, job_id=job_id, attempt=attempt or 1, artifacts=artifacts,
                    env=job_env(mark, tmp, env_names), abandon=abandon, workers=workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def execute(job: Job, backend: str, *, allow_shell: bool = False, roots=None, env_names=(),
            mark: str | None = None, abandon=None, job_id: str | None = None, attempt: int | None = None,
            artifacts: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """Run one parsed job; never raises (errors come back in the result). ``artifacts``:
    the directory under which a train job keeps its checkpoints (per job id); ``workers``:
    the worker count placement chose for a train job."""
    try:
        if job.train is not None:
            return run_train(job, job_id=job_id, attempt=attempt, artifacts=artifacts, env_names=env_names,
                             mark=mark, abandon=abandon, workers=workers)
        if job.suite is not None:
            result = run_suite(job, allow_shell=allow_shell, roots=roots, env_names=env_names, mark=mark,
                               abandon=abandon)
            result.setdefault("backend", backend)   # the hardware the node had (a suite's tests use it)
            return result
        return run_op(job, backend)
    except Exception as exc:  # reported as the job's failure
        return {"ok": False, "backend": backend, "error": f"{type(exc).__name__}: {exc}"[:2000]}


def succeeded(result: dict) -> bool:
    """The one success rule: the run went through and nothing failed verification."""
    return bool(result.get("ok")) and result.get("verified", True) is not False
