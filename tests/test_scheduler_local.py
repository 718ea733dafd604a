"""The local executor: a batch placed, run on worker processes, verified; a worker killed
mid-job is retried; cancellation; the elastic rule; metrics over HTTP on 127.0.0.1."""
import os
import threading
import time
import urllib.request

import numpy as np
import pytest

from lepton_accel.scheduler.catalog import load_catalog
from lepton_accel.scheduler.cli import format_report
from lepton_accel.scheduler.elastic import ElasticPolicy, UtilisationWindow, should_scale_in
from lepton_accel.scheduler.jobs import parse_workload
from lepton_accel.scheduler.local import LocalExecutor
from lepton_accel.scheduler.metrics import SchedulerMetrics
from lepton_accel.scheduler.store import JobStore

CAT = load_catalog(use_env=False)


def mixed_jobs(seed):
    rng = np.random.default_rng(seed)
    m, n, k = (int(v) for v in rng.integers(16, 200, 3))
    return parse_workload({"jobs": [
        {"name": "mm-f32", "op": "matmul", "a": {"shape": [m, k], "dtype": "float32"},
         "b": {"shape": [k, n], "dtype": "float32"}, "seed": seed},
        {"name": "mm-i8-fpga", "op": "matmul", "a": {"shape": [m, k], "dtype": "int8"},
         "b": {"shape": [k, n], "dtype": "int8"}, "seed": seed + 1, "constraints": {"kind": "fpga"}},
        {"name": "conv-bf16-gpu", "op": "conv2d", "x": {"shape": [2, 8, 17, 15], "dtype": "bfloat16"},
         "w": {"shape": [16, 8, 3, 3], "dtype": "bfloat16"}, "padding": 1, "seed": seed + 2,
         "constraints": {"kind": "gpu"}, "priority": 3},
    ]})


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite")
    yield s
    s.close()


def test_batch_is_placed_run_verified_and_reported(store):
    seed = int(np.random.default_rng().integers(1 << 20))
    ids = store.submit(mixed_jobs(seed), batch="b1")
    metrics = SchedulerMetrics()
    ex = LocalExecutor(store, CAT, max_workers=2, metrics=metrics)
    try:
        ex.run(batch="b1", timeout=60)
    finally:
        ex.close()
    recs = {r.name: r for r in store.jobs(ids=ids)}
    assert all(r.state == "done" and r.verified for r in recs.values())
    assert recs["mm-i8-fpga"].itype.startswith("f2.") and recs["conv-bf16-gpu"].itype == "g6.xlarge"
    for r in recs.values():
        assert r.est_run_s > 0 and r.measured_s > 0 and r.est_cost > 0 and r.explain
        assert r.node.startswith(r.itype + "#")
        states = [e["state"] for e in store.events(r.id)]
        assert states == ["queued", "placed", "running", "done"]
    table = format_report(store.jobs(ids=ids))
    assert "stand-in" in table and "mm-i8-fpga" in table and "yes" in table
    text = metrics.text()
    assert 'lepton_job_transitions_total{state="done"} 3.0' in text
    assert "lepton_cost_dollars_total" in text


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


def _wait(cond, timeout=30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_worker_killed_mid_job_is_retried_and_completes(store):
    (jid,) = store.submit(parse_workload({"name": "slow", "suite": {"name": "shell", "command": "sleep 0.6"},
                                          "estimate_s": 1, "constraints": {"kind": "gpu"}}))
    ex = LocalExecutor(store, CAT, max_workers=2, allow_shell=True)
    try:
        th, err = _run_in_thread(ex, timeout=60)
        w = _wait(lambda: next((w for w in list(ex.workers.values()) if w.job == jid), None))
        first_node = w.node_id
        os.kill(w.proc.pid, 9)
        th.join(60)
        assert not th.is_alive() and not err, err
    finally:
        ex.close()
    r = store.get(jid)
    assert r.state == "done" and r.attempts == 2 and r.node != first_node
    ev = store.events(jid)
    assert [e["state"] for e in ev] == ["queued", "placed", "running", "retried", "placed", "running", "done"]
    retried = ev[3]
    assert retried["node"] == first_node and "died" in retried["detail"]


def test_cancel_a_running_job(store):
    a, b = store.submit(parse_workload({"jobs": [
        {"name": "long", "suite": {"name": "shell", "command": "sleep 30"}, "estimate_s": 30},
        {"name": "short", "op": "matmul", "a": {"shape": [4, 4], "dtype": "float32"},
         "b": {"shape": [4, 4], "dtype": "float32"}}]}))
    ex = LocalExecutor(store, CAT, max_workers=2, allow_shell=True)
    try:
        th, err = _run_in_thread(ex, timeout=30)
        _wait(lambda: store.get(a).state == "running")
        assert store.cancel(a)
        th.join(30)
        assert not th.is_alive() and not err, err
    finally:
        ex.close()
    assert store.get(a).state == "cancelled" and store.get(b).state == "done"
    assert not any(w.job == a for w in ex.workers.values())


def test_elastic_rule():
    pol = ElasticPolicy(scale_out_at=0.8, scale_in_at=0.4, min_nodes=0, max_nodes=3)
    assert pol.target("t", nodes=0, busy=0, queued=1) == 1
    assert pol.target("t", nodes=1, busy=1, queued=0) == 1          # busy but nothing waiting
    assert pol.target("t", nodes=1, busy=1, queued=1) == 2          # demand 2.0 > 0.8
    assert pol.target("t", nodes=1, busy=1, queued=2) == 3          # enough for all of it
    assert pol.target("t", nodes=2, busy=1, queued=0) == 2
    assert pol.target("t", nodes=1, busy=1, queued=50) == 3         # capped at max
    assert pol.target("t", nodes=1, busy=4, queued=1, slots=8) == 1  # 5/8 = 0.62 < 0.8
    assert pol.target("t", nodes=1, busy=6, queued=1, slots=8) == 2  # 7/8 = 0.88 > 0.8
    assert ElasticPolicy(min_nodes=2).target("t", 0, 0, 0) == 2
    w = UtilisationWindow(window_s=2.0)
    for i in range(21):
        w.add(busy=1 if i % 4 == 0 else 0, total=2, now=i * 0.1)     # ~13 % busy
    assert should_scale_in(pol, "t", nodes=2, queued=0, window=w, now=2.0)
    assert not should_scale_in(pol, "t", nodes=2, queued=1, window=w, now=2.0)
    assert not should_scale_in(ElasticPolicy(min_nodes=2), "t", nodes=2, queued=0, window=w, now=2.0)
    w2 = UtilisationWindow(window_s=2.0)
    for i in range(21):
        w2.add(busy=1, total=2, now=i * 0.1)                          # 50 % busy
    assert not should_scale_in(pol, "t", nodes=2, queued=0, window=w2, now=2.0)
    w3 = UtilisationWindow(window_s=2.0)
    w3.add(0, 2, now=0.0)
    assert not should_scale_in(pol, "t", nodes=2, queued=0, window=w3, now=0.5)  # window not full


def test_pool_scales_out_under_load_and_in_when_idle(store):
    n = 12
    store.submit(parse_workload({"jobs": [
        {"name": f"s{i}", "suite": {"name": "shell", "command": "sleep 0.15"}, "estimate_s": 1,
         "constraints": {"instance_types": ["c7i.large"]}} for i in range(n)]}))
    logs = []
    ex = LocalExecutor(store, CAT, max_workers=3, allow_shell=True, log=logs.append,
                       elastic=ElasticPolicy(max_nodes=3, window_s=0.5))
    try:
        ex.run(timeout=60)                       # until the queue is empty
        peak = max(int(l.split("#")[1].split()[0]) for l in logs if l.startswith("scale out"))
        assert peak >= 2                          # queued work made the pool grow
        assert len(ex.workers) >= 2
        # idle now: keep the loop going without work; utilisation 0 % < 40 % -> scale in
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5 and ex.workers:
            ex.step()
        assert not ex.workers and any(l.startswith("scale in") for l in logs)
    finally:
        ex.close()
    assert store.counts()["done"] == n


def test_metrics_endpoint_on_localhost(store):
    metrics = SchedulerMetrics()
    port = metrics.serve(0)
    try:
        assert metrics._server.server_address[0] == "127.0.0.1"
        store.submit(mixed_jobs(7)[:1])
        ex = LocalExecutor(store, CAT, max_workers=1, metrics=metrics)
        try:
            ex.run(timeout=60)              # publishes its final counts
        finally:
            ex.close()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        metrics.stop()
    for name in ('lepton_jobs{state="done"} 1.0', "lepton_queue_depth", 'lepton_nodes{instance_type="c7i.large"}',
                 'lepton_job_estimated_seconds_count{instance_type="c7i.large"} 1.0',
                 'lepton_job_measured_seconds_count{instance_type="c7i.large"} 1.0',
                 'lepton_cost_dollars_total{instance_type="c7i.large"}'):
        assert name in body, name
