"""Resource sampling (psutil; NVML through a fake module), its Prometheus export, and the
elastic rule's CPU thresholds."""
import os
import signal
import subprocess
import sys
import time
import types

import pytest

from lepton_accel.scheduler.elastic import ElasticPolicy, UtilisationWindow, cpu_vote, should_scale_in
from lepton_accel.scheduler.metrics import SchedulerMetrics
from lepton_accel.scheduler.monitor import Sampler, gpu_samples

psutil = pytest.importorskip("psutil")


class FakeNvmlError(Exception):
    pass


def fake_nvml(gpus, *, init_fails=False, query_fails=False):
    """A stand-in for pynvml with ``gpus``: (name, util %, used, total, temp) each."""
    m = types.SimpleNamespace(NVML_TEMPERATURE_GPU=0, calls=[])

    def init():
        if init_fails:
            raise FakeNvmlError("NVML Shared Library Not Found")
        m.calls.append("init")

    def handle(i):
        if query_fails:
            raise FakeNvmlError("GPU is lost")
        return gpus[i]

    m.nvmlInit = init
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = handle
    m.nvmlDeviceGetName = lambda h: h[0].encode()
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=h[1], memory=0)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=h[2], total=h[3], free=h[3] - h[2])

    def temp(h, sensor):
        assert sensor == m.NVML_TEMPERATURE_GPU
        return h[4]

    m.nvmlDeviceGetTemperature = temp
    return m


def burner(seconds: float) -> subprocess.Popen:
    """A child that keeps one core busy and has a child of its own that does too."""
    code = ("import subprocess, sys, time\n"
            f"c = subprocess.Popen([sys.executable, '-c', 'import time\\nt=time.time()\\nwhile time.time()-t<{seconds}: pass'])\n"
            f"t = time.time()\nwhile time.time() - t < {seconds}: pass\nc.wait()\n")
    return subprocess.Popen([sys.executable, "-c", code])


def test_node_sample_counts_the_whole_process_tree_and_host():
    p = burner(3.0)
    try:
        s = Sampler(gpus=False)
        time.sleep(0.8)                 # both processes started
        procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children()]
        assert len(procs) == 2
        t0 = (time.monotonic(), sum(sum(q.cpu_times()[:2]) for q in procs))
        s.sample({"n#1": ("t", p.pid)}, time.monotonic())
        time.sleep(1.0)
        h = s.sample({"n#1": ("t", p.pid), "gone#2": ("t", 2 ** 22 + 7)}, time.monotonic())
        t1 = (time.monotonic(), sum(sum(q.cpu_times()[:2]) for q in procs))
        rss = [q.memory_info().rss for q in procs]
    finally:
        p.kill()
        p.wait()
    (n,) = h.nodes                      # the pid that does not exist is left out
    assert n.node_id == "n#1" and n.itype == "t"
    # CPU of both processes over the interval (the machine may be loaded: compare, not assume)
    expect = 100 * (t1[1] - t0[1]) / (t1[0] - t0[0])
    assert expect > 5 and abs(n.cpu_percent - expect) < 0.25 * expect + 5, (n, expect)
    assert n.memory_bytes > 1.5 * min(rss)     # both processes' memory
    assert n.disk_read_bps is not None and n.disk_read_bps >= 0
    assert 0 < h.cpu_percent <= 100 and 0 < h.memory_percent < 100
    assert h.net_rx_bps >= 0 and h.net_tx_bps >= 0 and h.disk_write_bps >= 0
    assert h.gpus == []


def test_a_stopped_worker_is_not_sampled():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        s = Sampler(gpus=False)
        assert len(s.sample({"n": ("t", p.pid)}).nodes) == 1
        os.kill(p.pid, signal.SIGSTOP)
        for _ in range(50):
            if psutil.Process(p.pid).status() == psutil.STATUS_STOPPED:
                break
            time.sleep(0.02)
        assert s.sample({"n": ("t", p.pid)}).nodes == []
        os.kill(p.pid, signal.SIGCONT)
        time.sleep(0.05)
        assert len(s.sample({"n": ("t", p.pid)}).nodes) == 1
    finally:
        p.kill()
        p.wait()


def test_gpus_through_nvml_are_sampled_and_exported():
    gpus = [("NVIDIA H100 80GB HBM3", 87, 40 * 2 ** 30, 80 * 2 ** 30, 61),
            ("NVIDIA L4", 3, 2 ** 28, 24 * 2 ** 30, 44)]
    nv = fake_nvml(gpus)
    s = Sampler(nvml=nv)
    assert nv.calls == ["init"]
    h = s.sample({})
    assert [(g.index, g.name, g.utilization_percent, g.memory_used_bytes, g.memory_total_bytes, g.temperature_c)
            for g in h.gpus] == [(i, *g) for i, g in enumerate(gpus)]
    m = SchedulerMetrics(sampler=False)
    m.observe(h)
    text = m.text()
    assert 'lepton_gpu_utilization_percent{gpu="0",name="NVIDIA H100 80GB HBM3"} 87.0' in text
    assert 'lepton_gpu_temperature_celsius{gpu="1",name="NVIDIA L4"} 44.0' in text
    assert 'lepton_gpu_memory_total_bytes{gpu="1",name="NVIDIA L4"} 2.5769803776e+10' in text


def test_nvml_that_does_not_load_or_fails_is_skipped():
    s = Sampler(nvml=fake_nvml([("x", 1, 1, 2, 30)], init_fails=True))
    assert s.nvml is None and s.sample({}).gpus == []
    assert gpu_samples(fake_nvml([("x", 1, 1, 2, 30)], query_fails=True)) == []
    # this machine: pynvml imports, but there is no driver; or it is not installed
    assert Sampler().sample({}).gpus == [] or os.path.exists("/dev/nvidiactl")


def test_node_series_end_when_the_node_leaves_the_pool():
    m = SchedulerMetrics(sampler=Sampler(gpus=False))
    pool = {"a#1": ("c7i.large", os.getpid())}
    m.observe(m.sampler.sample(pool), pool=pool)
    m.observe(m.sampler.sample(pool), pool=pool)
    text = m.text()
    assert 'lepton_node_memory_bytes{instance_type="c7i.large",node="a#1"}' in text
    assert 'lepton_node_disk_bytes_per_second{direction="write",instance_type="c7i.large",node="a#1"}' in text
    assert m.cpu_by_type().keys() == {"c7i.large"}
    m.observe(m.sampler.sample({}), pool={})
    assert 'node="a#1"' not in m.text()


# ---- the elastic rule's CPU side ----------------------------------------------------------------
def test_cpu_vote_thresholds_default_and_per_type():
    p = ElasticPolicy(cpu_per_type={"g6.xlarge": (0.9, 0.2)})
    assert (p.cpu_out_at, p.cpu_in_at) == (0.8, 0.4)
    assert [cpu_vote(p, "c7i.large", c) for c in (None, 0.0, 0.39, 0.4, 0.8, 0.81, 3.5)] == [0, -1, -1, 0, 0, 1, 1]
    assert [cpu_vote(p, "g6.xlarge", c) for c in (0.19, 0.2, 0.85, 0.91)] == [-1, 0, 0, 1]
    with pytest.raises(ValueError, match="cpu thresholds of t"):
        ElasticPolicy(cpu_per_type={"t": (0.3, 0.5)})
    with pytest.raises(ValueError, match="cpu thresholds"):
        ElasticPolicy(cpu_out_at=0.4, cpu_in_at=0.4)


def test_cpu_scales_out_a_type_whose_slots_are_free_but_cpu_is_hot():
    on = ElasticPolicy(use_cpu=True, max_nodes=4)
    off = ElasticPolicy(max_nodes=4)
    # 2 nodes x 4 slots, 2 busy + 1 queued: demand 3/8 is under 0.8, so queue depth alone keeps 2
    assert off.target("c", 2, busy=2, queued=1, slots=4, cpu=0.95) == 2
    assert on.target("c", 2, busy=2, queued=1, slots=4, cpu=None) == 2
    assert on.target("c", 2, busy=2, queued=1, slots=4, cpu=0.5) == 2
    assert on.target("c", 2, busy=2, queued=1, slots=4, cpu=0.95) == 3
    assert on.target("c", 2, busy=2, queued=0, slots=4, cpu=0.95) == 2     # nothing waits: no use
    assert on.target("c", 4, busy=2, queued=1, slots=4, cpu=0.95) == 4     # the type's maximum


def test_cpu_in_use_holds_scale_in():
    on = ElasticPolicy(use_cpu=True, window_s=1.0, cpu_per_type={"c": (0.9, 0.1)})
    w = UtilisationWindow(1.0)
    for t in range(12):
        w.add(0, 2, now=t * 0.1)        # slots idle for a whole window
    now = 1.1
    assert should_scale_in(on, "c", 2, 0, w, now, cpu=None)      # no sample: slots decide
    assert should_scale_in(on, "c", 2, 0, w, now, cpu=0.05)
    assert not should_scale_in(on, "c", 2, 0, w, now, cpu=0.3)   # above this type's 0.1
    assert should_scale_in(ElasticPolicy(window_s=1.0), "c", 2, 0, w, now, cpu=0.3)   # not used


def test_a_local_run_with_the_cpu_rule_on_finishes_and_sees_the_jobs_cpu(tmp_path):
    from lepton_accel.scheduler.catalog import load_catalog
    from lepton_accel.scheduler.jobs import parse_workload
    from lepton_accel.scheduler.local import LocalExecutor
    from lepton_accel.scheduler.store import JobStore

    f = tmp_path / "cat.yaml"
    f.write_text("replace: true\ntypes:\n  one.cpu: {vcpus: 2, memory_gib: 4, price_per_hour: 0.1, startup_s: 0}\n")
    cat = load_catalog(f, use_env=False)
    store = JobStore(tmp_path / "jobs.sqlite")
    spin = f"{sys.executable} -c \"import time\nt = time.time()\nwhile time.time() - t < 1.2: pass\""
    ids = store.submit(parse_workload({"jobs": [{"name": f"spin{i}", "suite": {"name": "shell", "command": spin},
                                                 "estimate_s": 0.2} for i in range(3)]}, catalog=cat))
    metrics = SchedulerMetrics(sample_s=0.1)
    policy = ElasticPolicy(use_cpu=True, max_nodes=2, window_s=0.2, cpu_per_type={"one.cpu": (0.9, 0.05)})
    ex = LocalExecutor(store, cat, max_workers=2, allow_shell=True, metrics=metrics, elastic=policy)
    cpus = []
    try:
        end = time.monotonic() + 40
        while store.unfinished() and time.monotonic() < end:
            ex.step()
            cpus.append(metrics.cpu_by_type().get("one.cpu"))
    finally:
        ex.close()
        recs = store.jobs(ids=ids)
        store.close()
    assert all(r.state == "done" for r in recs), [(r.name, r.state, r.error) for r in recs]
    assert max(c for c in cpus if c is not None) > 0.1      # the spinning jobs were seen using CPU
