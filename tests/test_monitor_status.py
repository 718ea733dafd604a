"""`lepton-accel status --watch`: one frame rendered to text from a live local run (jobs,
nodes with their utilisation from the metrics endpoint, the host), the fallback without
an endpoint, and the command itself refreshing until interrupted."""
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("rich")
pytest.importorskip("psutil")

from lepton_accel.scheduler.catalog import load_catalog  # noqa: E402
from lepton_accel.scheduler.cli import status_frame  # noqa: E402
from lepton_accel.scheduler.jobs import parse_workload  # noqa: E402
from lepton_accel.scheduler.local import LocalExecutor  # noqa: E402
from lepton_accel.scheduler.metrics import SchedulerMetrics  # noqa: E402
from lepton_accel.scheduler.monitor import Sampler, render_text  # noqa: E402
from lepton_accel.scheduler.store import JobStore  # noqa: E402


@pytest.fixture
def cat(tmp_path):
    f = tmp_path / "cat.yaml"
    f.write_text("replace: true\ntypes:\n  one.cpu: {vcpus: 2, memory_gib: 4, price_per_hour: 0.1, startup_s: 0}\n")
    return load_catalog(f, use_env=False)


def test_one_frame_shows_jobs_nodes_and_utilisation(tmp_path, cat):
    store = JobStore(tmp_path / "jobs.sqlite")
    jobs = [{"name": "spin", "suite": {"name": "shell", "command": "sleep 2.5"}, "estimate_s": 0.5,
             "deadline_s": 1.0},
            {"name": "quick [red]x[/red]", "suite": {"name": "shell", "command": "true"}, "estimate_s": 0.1}]
    ids = store.submit(parse_workload({"jobs": jobs}, catalog=cat))
    metrics = SchedulerMetrics(sample_s=0.1)
    port = metrics.serve(0)
    ex = LocalExecutor(store, cat, max_workers=2, allow_shell=True, metrics=metrics)
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            ex.step()
            spin = store.get(ids[0])
            if spin.state == "running" and store.get(ids[1]).state == "done" and time.time() - spin.submitted_at > 1.2:
                break
        ex.loop._publish(force=True)
        ro = JobStore(tmp_path / "jobs.sqlite", readonly=True)
        text = render_text(status_frame(ro, f"http://127.0.0.1:{port}/metrics"), width=140)
        nodes = ex.node_pids()
        # the same view without the endpoint: this machine's nodes that run jobs, sampled here
        sampler = Sampler(gpus=False)
        status_frame(ro, None, sampler)
        time.sleep(0.2)
        local = render_text(status_frame(ro, None, sampler), width=140)
        missing = render_text(status_frame(ro, "http://127.0.0.1:9/metrics"), width=140)
        ro.close()
    finally:
        ex.close()
        metrics.stop()
        store.close()
    assert "jobs: running=1  done=1" in text
    lines = text.splitlines()
    spin_row = next(x for x in lines if "spin" in x)
    assert ids[0] in spin_row and "running (late)" in spin_row and spin.node in spin_row
    assert "quick [red]x[/red]" in text           # a name is text, not markup
    assert len(nodes) == 2
    for nid in nodes:                       # every node, idle or not, with its numbers
        row = next(x for x in lines if x.lstrip("│┃ ").startswith(nid))
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells[1] == "one.cpu"
        assert cells[2] == ("1" if nid == spin.node else "0")
        assert float(cells[3]) >= 0 and float(cells[4]) > 1       # cpu %, memory MiB
        assert float(cells[7]) < 5                               # seen seconds ago
    assert "host: cpu " in text and "network rx " in text
    local_row = next(x for x in local.splitlines() if x.lstrip("│┃ ").startswith(spin.node))
    assert float(local_row.split("│")[5]) > 1                   # memory of the running node
    assert "does not answer" in missing


def test_watch_refreshes_until_interrupted(tmp_path):
    import pty
    import select

    store = JobStore(tmp_path / "jobs.sqlite")
    store.close()
    master, slave = pty.openpty()           # a terminal: the view redraws in place
    env = dict(os.environ, COLUMNS="120", LINES="40", TERM="xterm")
    p = subprocess.Popen([sys.executable, "-m", "lepton_accel.scheduler.cli", "status", "--watch", "--interval",
                          "0.2", "--store", str(tmp_path / "jobs.sqlite")], stdin=slave, stdout=slave,
                         stderr=subprocess.PIPE, text=True, env=env)
    os.close(slave)
    out = b""
    try:
        end = time.monotonic() + 90
        while out.count(b"jobs: none") < 3 and time.monotonic() < end:   # drawn, then redrawn
            if select.select([master], [], [], 0.5)[0]:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        assert out.count(b"jobs: none") >= 3, out[-2000:]
        assert p.poll() is None                 # still refreshing
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=30)[1]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    assert p.returncode == 0, err
    assert b"nodes" in out and "Traceback" not in err
