"""Faults that kill real processes, and the store's own failures: a job never runs twice
at once, one scheduler per store even through a symlink, recovery honours max_attempts,
private files, one clear line for every store failure."""
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lepton_accel.scheduler.catalog import load_catalog
from lepton_accel.scheduler.jobs import parse_workload
from lepton_accel.scheduler.local import LocalExecutor
from lepton_accel.scheduler.store import JobStore, StoreError, StoreLocked

CAT = load_catalog(use_env=False)
CLI = [sys.executable, "-m", "lepton_accel.scheduler.cli"]

# A test that records its pid and its child's, checks that no process of an earlier
# attempt is alive, and (first attempt only) waits to be killed.
SLOW_TEST = '''
import os, subprocess, sys, time, pathlib
HERE = pathlib.Path(__file__).parent

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False

def test_slow():
    log = HERE / "attempts.log"
    earlier = [int(p) for p in log.read_text().split()] if log.exists() else []
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(HERE / "survivors.log", "a") as f:
        f.write(repr([p for p in earlier if alive(p)]) + "\\n")
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {child.pid}\\n")
    if not earlier:
        time.sleep(120)
    child.kill()
'''


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _wait(cond, timeout=60.0, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def project(tmp_path):
    p = tmp_path / "proj"
    p.mkdir()
    (p / "test_slow.py").write_text(SLOW_TEST)
    return p


def _first_attempt(project):
    log = project / "attempts.log"
    _wait(lambda: log.exists() and log.read_text().strip(), 60, "the first attempt to start")
    return [int(x) for x in log.read_text().split()]


def _suite_job(project):
    return parse_workload({"name": "slow-suite", "suite": {"name": "tests", "args": ["-q", "test_slow.py"]},
                           "estimate_s": 5, "constraints": {"instance_types": ["c7i.large"]}},
                          base_dir=project, roots=[str(project)])


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_serve_killed_its_attempt_is_gone_before_the_retry(project, tmp_path):
    db = tmp_path / "jobs.sqlite"
    store = JobStore(db)
    (jid,) = store.submit(_suite_job(project))
    serve = CLI + ["serve", "--until-idle", "--store", str(db), "--tests-root", str(project), "-v"]
    p = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = _first_attempt(project)
        assert all(_alive(pid) for pid in first)
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
    assert store.get(jid).state == "running"
    p2 = subprocess.run(serve, capture_output=True, text=True, timeout=120)
    assert p2.returncode == 0, p2.stderr
    r = store.get(jid)
    assert r.state == "done" and r.attempts == 2, (r.state, r.error)
    survivors = (project / "survivors.log").read_text().splitlines()
    assert survivors == ["[]", "[]"]          # the retry saw nothing of the first attempt alive
    assert not any(_alive(pid) for pid in first)
    store.close()


def _run_in_thread(ex, **kw):
    err = []

    def target():
        try:
            ex.run(**kw)
        except BaseException as exc:  # surfaced by the test
            err.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, err


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_worker_killed_its_pytest_is_gone_before_the_retry(project, tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    (jid,) = store.submit(_suite_job(project))
    ex = LocalExecutor(store, CAT, max_workers=2, test_roots=[str(project)])
    try:
        th, err = _run_in_thread(ex, timeout=120)
        first = _first_attempt(project)
        w = next(w for w in list(ex.workers.values()) if w.job == jid)
        os.kill(w.proc.pid, signal.SIGKILL)
        th.join(120)
        assert not th.is_alive() and not err, err
    finally:
        ex.close()
    r = store.get(jid)
    assert r.state == "done" and r.attempts == 2
    assert (project / "survivors.log").read_text().splitlines() == ["[]", "[]"]
    assert not any(_alive(pid) for pid in first)
    assert "died" in [e for e in store.events(jid) if e["state"] == "retried"][0]["detail"]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_cancel_kills_the_job_and_its_children(project, tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    (jid,) = store.submit(_suite_job(project))
    ex = LocalExecutor(store, CAT, max_workers=1, test_roots=[str(project)])
    try:
        th, err = _run_in_thread(ex, timeout=120)
        first = _first_attempt(project)
        assert store.cancel(jid)
        th.join(60)
        assert not th.is_alive() and not err, err
    finally:
        ex.close()
    assert store.get(jid).state == "cancelled"
    assert not any(_alive(pid) for pid in first)


def test_the_lock_holds_through_a_symlink(tmp_path):
    a = JobStore(tmp_path / "a.sqlite")
    os.symlink(tmp_path / "a.sqlite", tmp_path / "b.sqlite")
    b = JobStore(tmp_path / "b.sqlite")
    a.scheduler_lock()
    with pytest.raises(StoreLocked, match="another scheduler"):
        b.scheduler_lock()
    a.release_lock()
    b.scheduler_lock()
    b.close()
    a.close()


def test_recover_honours_max_attempts(tmp_path):
    s = JobStore(tmp_path / "s.db")
    a, b = s.submit(parse_workload({"jobs": [{"name": n, "suite": {"name": "shell", "command": "true"},
                                              "estimate_s": 1} for n in ("a", "b")]}))
    for jid, runs in ((a, 3), (b, 1)):
        for _ in range(runs):
            s.transition(jid, "placed", from_states=("queued", "retried"), itype="c7i.large")
            s.start(jid, "n1", "c7i.large")
            if _ < runs - 1:
                s.transition(jid, "retried", from_states=("running",))
    assert s.recover(max_attempts=3) == [b]
    ra = s.get(a)
    assert ra.state == "failed" and "gave up after 3 attempts" in ra.error
    assert s.get(b).state == "retried"
    s.close()


def test_store_files_are_private(tmp_path):
    s = JobStore(tmp_path / "state" / "jobs.sqlite")
    s.submit(parse_workload({"suite": {"name": "shell", "command": "true"}, "estimate_s": 1}))
    s.scheduler_lock()
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)   # noqa: E731
    assert mode(tmp_path / "state") == 0o700
    for suffix in ("", "-wal", "-shm", ".lock"):
        assert mode(f"{tmp_path / 'state' / 'jobs.sqlite'}{suffix}") == 0o600, suffix
    s.close()


def _cli(*args, env=None, **kw):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, **kw)


def _one_line(capsys, *argv):
    from lepton_accel.scheduler.cli import main

    rc = main(list(argv))          # an uncaught exception fails the test
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1, err
    return err


def test_store_failures_are_one_line(tmp_path, capsys):
    db = tmp_path / "jobs.sqlite"
    holder = JobStore(db)
    holder.scheduler_lock()
    p = _cli("serve", "--until-idle", "--store", str(db))        # a real second process
    assert p.returncode == 1 and "another scheduler is running" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    holder.close()
    bad = tmp_path / "corrupt.sqlite"
    bad.write_bytes(os.urandom(8192))
    assert "corrupt or not a job store" in _one_line(capsys, "status", "--store", str(bad))
    assert "corrupt or not a job store" in _one_line(capsys, "serve", "--until-idle", "--store", str(bad))
    assert "corrupt or not a job store" in _one_line(capsys, "cancel", "abc", "--store", str(bad))
    assert "no such file" in _one_line(capsys, "status", "--store", str(tmp_path / "none.sqlite"))
    # a full disk (SQLite's page limit stands in for it)
    s = JobStore(tmp_path / "full.sqlite")
    s._conn.execute("PRAGMA max_page_count = 8")
    with pytest.raises(StoreError, match="disk is full") as err:
        s.submit(parse_workload({"jobs": [{"suite": {"name": "shell", "command": "x" * 4000}, "estimate_s": 1}
                                          for _ in range(50)]}))
    assert "\n" not in str(err.value)
    s.close()


def test_status_on_a_read_only_store(tmp_path):
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="lepton-ro-"))      # a path every user may traverse
    os.chmod(top, 0o755)
    try:
        _status_read_only(top / "ro" / "jobs.sqlite")
    finally:
        os.chmod(top, 0o755)
        for p in top.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(top, ignore_errors=True)


def _status_read_only(db):
    s = JobStore(db)
    s.submit(parse_workload({"name": "visible", "suite": {"name": "shell", "command": "true"}, "estimate_s": 1}))
    s.close()
    os.chmod(db.parent, 0o755)
    for p in db.parent.iterdir():
        os.chmod(p, 0o644)
    if os.geteuid() == 0:     # root writes anything: read as nobody, with the imports done first
        code = ("import os, sys; import lepton_accel.scheduler.cli as c, lepton_accel.scheduler.loop; "
                "os.setgid(65534); os.setuid(65534); sys.exit(c.main(['status', '--store', sys.argv[1]]))")
        p = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60,
                           cwd="/")
    else:
        os.chmod(db.parent, 0o555)
        p = _cli("status", "--store", str(db))
    assert p.returncode == 0, p.stderr
    assert "visible" in p.stdout and "queued=1" in p.stdout


def test_a_killed_forkserver_costs_a_retry_not_the_run(tmp_path):
    import multiprocessing.forkserver as fs

    store = JobStore(tmp_path / "jobs.sqlite")
    ids = store.submit(parse_workload({"jobs": [
        {"name": f"s{i}", "suite": {"name": "shell", "command": "touch started.$$; sleep 1.5"}, "estimate_s": 1,
         "constraints": {"instance_types": ["c7i.large"]}} for i in range(3)]}, base_dir=tmp_path))
    ex = LocalExecutor(store, CAT, max_workers=2, allow_shell=True)
    try:
        th, err = _run_in_thread(ex, timeout=120)
        _wait(lambda: list(tmp_path.glob("started.*")), 60, "a job's command to start")
        pid = fs._forkserver._forkserver_pid
        if pid is None:
            pytest.skip("workers are not started by a forkserver here")
        os.kill(pid, signal.SIGKILL)
        th.join(120)
        assert not th.is_alive() and not err, err
    finally:
        ex.close()
    assert all(r.state == "done" for r in store.jobs(ids=ids))
    assert any(e["state"] == "retried" and "died" in e["detail"] for e in store.events())
