"""The durable store: acknowledged jobs survive, state changes are exactly-once, and a
scheduler killed with SIGKILL and restarted finishes every job, none lost, none twice."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from lepton_accel.scheduler.jobs import parse_workload
from lepton_accel.scheduler.store import JobStore, StoreLocked


def jobs(n, seed=0):
    return parse_workload({"jobs": [{"op": "matmul", "a": {"shape": [8, 16], "dtype": "float32"},
                                     "b": {"shape": [16, 4], "dtype": "float32"}, "seed": seed + i,
                                     "name": f"j{i}", "priority": i % 3} for i in range(n)]})


def test_submit_is_durable_and_queue_ordered(tmp_path):
    s = JobStore(tmp_path / "s.db")
    ids = s.submit(jobs(6))
    s.close()
    s = JobStore(tmp_path / "s.db")   # a new connection sees every acknowledged job
    recs = s.jobs()
    assert {r.id for r in recs} == set(ids) and all(r.state == "queued" for r in recs)
    assert [r.priority for r in recs] == sorted((r.priority for r in recs), reverse=True)
    assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [e["state"] for e in s.events(ids[0])] == ["queued"]


def test_transitions_are_conditional_and_recorded(tmp_path):
    s = JobStore(tmp_path / "s.db")
    (jid,) = s.submit(jobs(1))
    assert s.start(jid, "n1", "g6.xlarge") is None            # not placed yet
    assert s.transition(jid, "placed", from_states=("queued",), itype="g6.xlarge")
    attempt = s.start(jid, "n1", "g6.xlarge")
    assert attempt == 1
    assert s.transition(jid, "retried", from_states=("running",), attempt=1, detail="node died")
    assert s.transition(jid, "placed", from_states=("retried",), itype="g6.xlarge")
    assert s.start(jid, "n2", "g6.xlarge") == 2
    # a late result of the abandoned first attempt is ignored
    assert not s.transition(jid, "done", from_states=("running",), attempt=1)
    assert s.transition(jid, "done", from_states=("running",), attempt=2, measured_s=0.1, result={"ok": True})
    assert not s.transition(jid, "done", from_states=("running",), attempt=2)   # never twice
    assert not s.cancel(jid)
    ev = s.events(jid)
    assert [e["state"] for e in ev] == ["queued", "placed", "running", "retried", "placed", "running", "done"]
    assert [e["node"] for e in ev if e["state"] == "running"] == ["n1", "n2"]
    assert all(e["at"] > 0 for e in ev)
    r = s.get(jid[:6])
    assert r.state == "done" and r.result == {"ok": True} and r.attempts == 2


def test_recover_and_one_scheduler_per_store(tmp_path):
    s = JobStore(tmp_path / "s.db")
    a, b, c = s.submit(jobs(3))
    for j in (a, b):
        s.transition(j, "placed", from_states=("queued",), itype="c7i.large")
    s.start(a, "n1", "c7i.large")
    assert s.recover() == [a]
    assert s.get(a).state == "retried" and s.get(b).state == "placed" and s.get(c).state == "queued"
    s.scheduler_lock()
    other = JobStore(tmp_path / "s.db")
    with pytest.raises(StoreLocked):
        other.scheduler_lock()
    s.release_lock()
    other.scheduler_lock()
    other.close()
    s.close()


WORKLOAD = """
jobs:
{jobs}
"""


def test_scheduler_killed_and_restarted_loses_nothing_reports_nothing_twice(tmp_path):
    lines = []
    for i in range(10):
        lines.append(f"  - {{name: sleep{i}, suite: {{name: shell, command: 'sleep 0.4'}}, estimate_s: 1}}")
    for i in range(6):
        lines.append(f"  - {{name: mm{i}, op: matmul, a: {{shape: [64, 96], dtype: float32}}, "
                     f"b: {{shape: [96, 48], dtype: float32}}, seed: {i + 100}}}")
    wf = tmp_path / "w.yaml"
    wf.write_text(WORKLOAD.format(jobs="\n".join(lines)))
    db = tmp_path / "jobs.sqlite"
    env = {**os.environ, "LEPTON_ACCEL_STORE": str(db)}
    cli = [sys.executable, "-m", "lepton_accel.scheduler.cli"]
    out = subprocess.run(cli + ["submit", str(wf)], env=env, capture_output=True, text=True, check=True)
    ids = re.findall(r"queued (\w+)", out.stdout)
    assert len(ids) == 16
    serve = cli + ["serve", "--until-idle", "--allow-shell", "-v", "--max-workers", "2"]
    log1 = open(tmp_path / "run1.log", "w")
    p = subprocess.Popen(serve, env=env, stdout=log1, stderr=subprocess.STDOUT)
    s = JobStore(db)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        c = s.counts()
        if c["done"] >= 3 and c["running"] >= 1:
            break
        time.sleep(0.02)
    else:
        p.kill()
        pytest.fail(f"scheduler made no progress: {s.counts()}")
    p.send_signal(signal.SIGKILL)
    p.wait()
    log1.close()
    before = s.counts()
    assert before["done"] < 16 and before["running"] >= 1
    # restart: it resumes every unfinished job
    p2 = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=120)
    assert p2.returncode == 0, p2.stderr
    recs = {r.id: r for r in s.jobs()}
    assert set(recs) == set(ids)                                   # none lost, none invented
    assert all(r.state == "done" for r in recs.values()), s.counts()
    events = s.events()
    done = [e["job_id"] for e in events if e["state"] == "done"]
    assert sorted(done) == sorted(ids)                             # each done exactly once
    retried = {e["job_id"] for e in events if e["state"] == "retried"}
    assert retried and all("scheduler stopped" in e["detail"] for e in events if e["state"] == "retried")
    reported = re.findall(r"done: \S+ \((\w+)\)", (tmp_path / "run1.log").read_text() + p2.stdout + p2.stderr)
    assert len(reported) == len(set(reported))                     # nothing reported twice
    assert set(reported) <= set(ids)
    assert all(recs[j].verified for j in ids if recs[j].name.startswith("mm"))
