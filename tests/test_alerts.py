"""The shipped Prometheus alerting rules: valid (promtool, when installed), reading only
metrics the scheduler exports, each firing on its condition and quiet without it
(promtool's rule unit tests); and on a local run, the metrics that drive each rule take
the values that fire it."""
import importlib.resources
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lepton_accel.scheduler.catalog import load_catalog
from lepton_accel.scheduler.jobs import parse_workload
from lepton_accel.scheduler.local import LocalExecutor
from lepton_accel.scheduler.metrics import SchedulerMetrics
from lepton_accel.scheduler.store import JobStore

RULES = importlib.resources.files("lepton_accel.scheduler") / "data" / "alerts.yaml"
PROMTOOL = shutil.which("promtool")
ALERTS = {"LeptonJobPastDeadline", "LeptonJobFailureRate", "LeptonNodeNotReporting",
          "LeptonSchedulerNotReporting", "LeptonQueueGrowingNoNodeStarting"}


def rules():
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def exported_names() -> set[str]:
    m = SchedulerMetrics()
    names = set()
    for fam in m.registry.collect():
        names.add(fam.name)
        if fam.type == "counter":
            names.add(fam.name + "_total")
    return names


def test_rules_parse_and_read_only_exported_metrics():
    rs = rules()
    assert set(rs) == ALERTS
    names = exported_names()
    for name, r in rs.items():
        assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]
        used = set(re.findall(r"(?<!\")\blepton_[a-z_]+", r["expr"]))
        assert used, name
        assert used <= names, f"{name} reads metrics not exported: {used - names}"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_checks_the_rules():
    p = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "5 rules found" in p.stdout


# Each alert over series that should fire it, and the same names over healthy series that
# should not; promtool evaluates the real expressions. Times in minutes from 0.
UNIT = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - {{series: 'lepton_jobs_past_deadline{{state="running"}}', values: '0x5 1x30'}}
      - {{series: 'lepton_jobs_past_deadline{{state="queued"}}', values: '0x40'}}
      - {{series: 'lepton_job_transitions_total{{state="done"}}', values: '0+1x40'}}
      - {{series: 'lepton_job_transitions_total{{state="failed"}}', values: '0+1x40'}}
      - {{series: 'lepton_node_last_seen_timestamp_seconds{{node="c#1",instance_type="c"}}', values: '0+60x40'}}
      - {{series: 'lepton_node_last_seen_timestamp_seconds{{node="c#2",instance_type="c"}}', values: '0+60x5 300x35'}}
      - {{series: 'lepton_scheduler_last_pass_timestamp_seconds', values: '0+60x5 300x35'}}
      - {{series: 'up{{job="lepton_accel"}}', values: '1x40'}}
      - {{series: 'lepton_jobs{{state="queued"}}', values: '0+1x40'}}
      - {{series: 'lepton_jobs{{state="placed"}}', values: '0x40'}}
      - {{series: 'lepton_nodes_launching{{instance_type="c"}}', values: '0x40'}}
    alert_rule_test: {firing}
  - interval: 1m
    input_series:
      - {{series: 'lepton_jobs_past_deadline{{state="running"}}', values: '0x40'}}
      - {{series: 'lepton_job_transitions_total{{state="done"}}', values: '0+9x40'}}
      - {{series: 'lepton_job_transitions_total{{state="failed"}}', values: '0+1x40'}}
      - {{series: 'lepton_node_last_seen_timestamp_seconds{{node="c#1",instance_type="c"}}', values: '0+60x40'}}
      - {{series: 'lepton_scheduler_last_pass_timestamp_seconds', values: '0+60x40'}}
      - {{series: 'up{{job="lepton_accel"}}', values: '1x40'}}
      - {{series: 'lepton_jobs{{state="queued"}}', values: '0+1x40'}}
      - {{series: 'lepton_nodes_launching{{instance_type="c"}}', values: '1x40'}}
    alert_rule_test:
      - {{eval_time: 30m, alertname: LeptonJobPastDeadline}}
      - {{eval_time: 30m, alertname: LeptonJobFailureRate}}
      - {{eval_time: 30m, alertname: LeptonNodeNotReporting}}
      - {{eval_time: 30m, alertname: LeptonSchedulerNotReporting}}
      - {{eval_time: 30m, alertname: LeptonQueueGrowingNoNodeStarting}}
"""

#: alert, its labels, its summary over the firing series above
FIRING = [
    ("LeptonJobPastDeadline", {"state": "running"}, "1 running job(s) past their deadline"),
    ("LeptonJobFailureRate", {}, "50% of finished jobs failed (15 min)"),
    ("LeptonNodeNotReporting", {"node": "c#2", "instance_type": "c"}, "node c#2 (c) stopped reporting"),
    ("LeptonSchedulerNotReporting", {}, "the lepton_accel scheduler stopped reporting"),
    ("LeptonQueueGrowingNoNodeStarting", {}, "queue grew by 10 jobs in 10 min with no node starting"),
]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_each_rule_fires_on_its_condition_and_not_without(tmp_path):
    shutil.copy(RULES, tmp_path / "alerts.yaml")
    rs = rules()
    firing = []
    for name, labels, summary in FIRING:
        ann = {"summary": summary, "description": rs[name]["annotations"]["description"]}
        firing.append({"eval_time": "30m", "alertname": name,
                       "exp_alerts": [{"exp_labels": {"severity": rs[name]["labels"]["severity"], **labels},
                                       "exp_annotations": ann}]})
    text = UNIT.format(rules="alerts.yaml", firing=json.dumps(firing))
    (tmp_path / "unit.yaml").write_text(text)
    p = subprocess.run([PROMTOOL, "test", "rules", "unit.yaml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout + p.stderr


# ---- on a local run: the metrics the rules read --------------------------------------------------
def values(metrics: SchedulerMetrics) -> dict:
    out = {}
    for fam in text_string_to_metric_families(metrics.text()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(vals, name, **labels):
    return vals.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def local(tmp_path):
    cat_file = tmp_path / "cat.yaml"
    cat_file.write_text("replace: true\ntypes:\n  one.cpu: {vcpus: 2, memory_gib: 4, price_per_hour: 0.1, "
                        "startup_s: 0}\n")
    cat = load_catalog(cat_file, use_env=False)
    store = JobStore(tmp_path / "jobs.sqlite")
    yield store, cat
    store.close()


def test_local_run_drives_deadline_failure_and_reporting_metrics(local):
    store, cat = local
    jobs = [{"name": "late", "suite": {"name": "shell", "command": "sleep 1.6"}, "estimate_s": 0.1,
             "deadline_s": 0.8},
            {"name": "bad", "suite": {"name": "shell", "command": "exit 3"}, "estimate_s": 0.1},
            {"name": "ok", "suite": {"name": "shell", "command": "true"}, "estimate_s": 0.1}]
    store.submit(parse_workload({"jobs": jobs}, catalog=cat))
    metrics = SchedulerMetrics(sample_s=0.1)
    ex = LocalExecutor(store, cat, max_workers=2, allow_shell=True, metrics=metrics)
    peak_late = 0.0
    stopped = None
    try:
        end = time.monotonic() + 30
        while store.unfinished() and time.monotonic() < end:
            ex.step()
            v = values(metrics)
            peak_late = max(peak_late, get(v, "lepton_jobs_past_deadline", state="running") or 0.0)
        assert not store.unfinished()
        ex.loop._publish(force=True)      # the next pass's publication
        v = values(metrics)
        # LeptonJobPastDeadline: the late job counted while it ran past its deadline, not after
        assert peak_late == 1.0
        assert get(v, "lepton_jobs_past_deadline", state="running") == 0.0
        # LeptonJobFailureRate: failed / (done + failed) = 1/3 > 0.2
        failed = get(v, "lepton_job_transitions_total", state="failed")
        done = get(v, "lepton_job_transitions_total", state="done")
        assert (failed, done) == (1.0, 2.0) and failed / (failed + done) > 0.2
        # LeptonNodeNotReporting: a stopped worker's last-seen time stays behind the other's
        pids = ex.node_pids()
        assert len(pids) == 2
        (n1, (t1, pid1)), (n2, _) = sorted(pids.items())
        stopped = pid1
        os.kill(pid1, signal.SIGSTOP)
        t0 = time.time()
        time.sleep(0.3)
        metrics.sample_nodes(ex, force=True)
        v = values(metrics)
        seen1 = get(v, "lepton_node_last_seen_timestamp_seconds", node=n1, instance_type=t1)
        seen2 = get(v, "lepton_node_last_seen_timestamp_seconds", node=n2, instance_type=t1)
        assert seen1 < t0 <= seen2
        assert get(v, "lepton_scheduler_last_pass_timestamp_seconds") >= t0
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        ex.close()


def test_local_run_queue_grows_with_no_node_starting(local):
    store, cat = local
    job = {"name": "w", "suite": {"name": "shell", "command": "true"}, "estimate_s": 0.1}
    metrics = SchedulerMetrics(sampler=False, sample_s=0.0)
    ex = LocalExecutor(store, cat, max_workers=0, allow_shell=True, metrics=metrics)   # no node may start
    try:
        waiting = []
        for k in (2, 3):
            store.submit(parse_workload({"jobs": [dict(job, name=f"w{i}") for i in range(k)]}, catalog=cat))
            for _ in range(3):
                ex.step()
            ex.loop._publish(force=True)
            v = values(metrics)
            waiting.append(sum(get(v, "lepton_jobs", state=s) for s in ("queued", "placed", "retried")))
            assert get(v, "lepton_nodes_launching", instance_type="one.cpu") == 0.0
            assert get(v, "lepton_nodes", instance_type="one.cpu") in (None, 0.0)
        assert waiting == [2.0, 5.0]        # delta over the window > 0 while nothing launches
    finally:
        ex.close()
