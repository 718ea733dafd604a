"""Prometheus metrics of the scheduler (prometheus-client).

Each :class:`SchedulerMetrics` owns its own registry, so several schedulers (or tests) in
one process do not collide. It counts transitions by subscribing to the store
(:meth:`SchedulerMetrics.attach`): every state change committed is seen, whichever
executor made it. :meth:`SchedulerMetrics.serve` exposes it over HTTP, bound to
127.0.0.1 unless another address is asked for explicitly.

Metrics:
  lepton_jobs{state}                          jobs in the store by state (gauge)
  lepton_queue_depth{instance_type}           placed jobs waiting for a node (gauge)
  lepton_nodes{instance_type}                 nodes (workers) per type (gauge)
  lepton_job_estimated_seconds{instance_type} estimated run time of finished jobs (histogram)
  lepton_job_measured_seconds{instance_type}  measured run time of the same jobs (histogram)
  lepton_cost_dollars_total{instance_type}    estimated cost accrued by finished jobs (counter)
  lepton_job_transitions_total{state}         state changes recorded (counter)
  lepton_jobs_past_deadline{state}            unfinished jobs older than their deadline (gauge)
  lepton_nodes_launching{instance_type}       nodes asked for and not up yet (gauge)
  lepton_scheduler_last_pass_timestamp_seconds  wall time the loop last published (gauge)

Resources (:mod:`.monitor`, sampled by the scheduler every ``sample_s``):
  lepton_node_cpu_percent{node,instance_type}        worker process tree, percent of one core
  lepton_node_memory_bytes{node,instance_type}       resident memory of the tree
  lepton_node_disk_bytes_per_second{node,instance_type,direction}   read / write
  lepton_node_last_seen_timestamp_seconds{node,instance_type}       last sample taken (a
      stopped, zombie or unreadable worker is not sampled: the time goes stale)
  lepton_host_cpu_percent, lepton_host_memory_percent                this machine
  lepton_host_network_bytes_per_second{direction}                    rx / tx
  lepton_host_disk_bytes_per_second{direction}                       read / write
  lepton_gpu_utilization_percent{gpu,name}, lepton_gpu_memory_used_bytes{gpu,name},
  lepton_gpu_memory_total_bytes{gpu,name}, lepton_gpu_temperature_celsius{gpu,name}
      through NVML, when it loads

The alerting rules in ``data/alerts.yaml`` read these names.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server

from .store import STATES, UNFINISHED

_BUCKETS = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100, 1000)


class SchedulerMetrics:
    """``sampler``: a :class:`~.monitor.Sampler` (default: one made on the first sample;
    ``False``: no resource samples); ``sample_s``: seconds between samples."""

    def __init__(self, registry: CollectorRegistry | None = None, *, sampler=None, sample_s: float = 1.0):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sampler, self.sample_s = sampler, sample_s
        self.last_sample = None
        self._last_sample_at = -1e18
        self._store = None
        self.past_deadline = Gauge("lepton_jobs_past_deadline", "Unfinished jobs older than their deadline",
                                   ["state"], registry=r)
        self.launching = Gauge("lepton_nodes_launching", "Nodes asked for and not up yet, per instance type",
                               ["instance_type"], registry=r)
        self.last_pass = Gauge("lepton_scheduler_last_pass_timestamp_seconds",
                               "Wall time the scheduling loop last published its metrics", registry=r)
        nl = ["node", "instance_type"]
        self.node_cpu = Gauge("lepton_node_cpu_percent", "Worker process tree CPU, percent of one core", nl,
                              registry=r)
        self.node_mem = Gauge("lepton_node_memory_bytes", "Worker process tree resident memory", nl, registry=r)
        self.node_disk = Gauge("lepton_node_disk_bytes_per_second", "Worker process tree disk throughput",
                               nl + ["direction"], registry=r)
        self.node_seen = Gauge("lepton_node_last_seen_timestamp_seconds", "Wall time a node was last sampled",
                               nl, registry=r)
        self.host_cpu = Gauge("lepton_host_cpu_percent", "Host CPU utilisation", registry=r)
        self.host_mem = Gauge("lepton_host_memory_percent", "Host memory utilisation", registry=r)
        self.host_net = Gauge("lepton_host_network_bytes_per_second", "Host network throughput", ["direction"],
                              registry=r)
        self.host_disk = Gauge("lepton_host_disk_bytes_per_second", "Host disk throughput", ["direction"],
                               registry=r)
        gl = ["gpu", "name"]
        self.gpu_util = Gauge("lepton_gpu_utilization_percent", "GPU utilisation (NVML)", gl, registry=r)
        self.gpu_mem = Gauge("lepton_gpu_memory_used_bytes", "GPU memory used (NVML)", gl, registry=r)
        self.gpu_mem_total = Gauge("lepton_gpu_memory_total_bytes", "GPU memory in all (NVML)", gl, registry=r)
        self.gpu_temp = Gauge("lepton_gpu_temperature_celsius", "GPU temperature (NVML)", gl, registry=r)
        self._node_labels: dict[str, str] = {}      # node -> type, of the nodes in the pool
        self.jobs = Gauge("lepton_jobs", "Jobs in the store by state", ["state"], registry=r)
        self.queue_depth = Gauge("lepton_queue_depth", "Placed jobs waiting for a node, per instance type",
                                 ["instance_type"], registry=r)
        self.nodes = Gauge("lepton_nodes", "Nodes (workers) per instance type", ["instance_type"], registry=r)
        self.estimated = Histogram("lepton_job_estimated_seconds", "Estimated run time of finished jobs",
                                   ["instance_type"], buckets=_BUCKETS, registry=r)
        self.measured = Histogram("lepton_job_measured_seconds", "Measured run time of finished jobs",
                                  ["instance_type"], buckets=_BUCKETS, registry=r)
        self.cost = Counter("lepton_cost_dollars", "Estimated cost accrued by finished jobs",
                            ["instance_type"], registry=r)
        self.transitions = Counter("lepton_job_transitions", "Job state changes recorded", ["state"],
                                   registry=r)
        self._server = None
        self._seen_nodes: set[str] = set()
        self._seen_queue: set[str] = set()

    # ---- updates ----------------------------------------------------------------------------
    def set_counts(self, counts: dict[str, int]) -> None:
        for s in STATES:
            self.jobs.labels(s).set(counts.get(s, 0))

    def set_pool(self, nodes: dict[str, int], queued: dict[str, int]) -> None:
        self._seen_nodes |= set(nodes)
        self._seen_queue |= set(queued)
        for t in self._seen_nodes:
            self.nodes.labels(t).set(nodes.get(t, 0))
        for t in self._seen_queue:
            self.queue_depth.labels(t).set(queued.get(t, 0))

    def transition(self, state: str) -> None:
        self.transitions.labels(state).inc()

    def attach(self, store) -> None:
        """Count the store's committed transitions (and finished jobs' times and costs);
        the store's unfinished jobs are read for the past-deadline gauge."""
        self._store = store
        store.subscribe(self.on_transitions)

    def detach(self, store) -> None:
        store.unsubscribe(self.on_transitions)
        if self._store is store:
            self._store = None

    # ---- resources, deadlines, the pool being launched ------------------------------------------
    def sample_nodes(self, nodes, force: bool = False) -> None:
        """Called by the loop as it publishes: ``nodes`` is the executor
        (:class:`~.loop.Nodes`); its ``node_pids()`` (node -> (type, pid)), when it has
        one, names the processes to sample. At most once per ``sample_s``."""
        now = time.monotonic()
        self.last_pass.set(time.time())
        if not force and now - self._last_sample_at < self.sample_s:
            return
        self._last_sample_at = now
        launching = nodes.launching()
        for t in set(launching) | self._seen_nodes | self._seen_queue | set(self._node_labels.values()):
            self.launching.labels(t).set(launching.get(t, 0))
        if self._store is not None:
            self.count_past_deadline(self._store)
        if self.sampler is False:
            return
        if self.sampler is None:
            from .monitor import Sampler

            self.sampler = Sampler()
        named = getattr(nodes, "node_pids", None)
        pool = named() if named else {}
        self.observe(self.sampler.sample(pool, now), pool=pool)

    def count_past_deadline(self, store, wall: float | None = None) -> dict[str, int]:
        wall = time.time() if wall is None else wall
        n = {s: 0 for s in UNFINISHED}
        for r in store.light(UNFINISHED):
            if r["deadline_s"] is not None and wall - r["submitted_at"] > r["deadline_s"]:
                n[r["state"]] = n.get(r["state"], 0) + 1
        for s, k in n.items():
            self.past_deadline.labels(s).set(k)
        return n

    def observe(self, s, pool: dict | None = None) -> None:
        """Set the resource gauges from a :class:`~.monitor.HostSample`; ``pool``: the
        nodes in the pool now (node -> (type, pid)); nodes that left it lose their series."""
        self.last_sample = s
        for g, v in ((self.host_cpu, s.cpu_percent), (self.host_mem, s.memory_percent)):
            if v is not None:
                g.set(v)
        for g, pair in ((self.host_net, (("rx", s.net_rx_bps), ("tx", s.net_tx_bps))),
                        (self.host_disk, (("read", s.disk_read_bps), ("write", s.disk_write_bps)))):
            for d, v in pair:
                if v is not None:
                    g.labels(d).set(v)
        wall = time.time()
        for n in s.nodes:
            lab = (n.node_id, n.itype)
            self.node_cpu.labels(*lab).set(n.cpu_percent)
            self.node_mem.labels(*lab).set(n.memory_bytes)
            if n.disk_read_bps is not None:
                self.node_disk.labels(*lab, "read").set(n.disk_read_bps)
                self.node_disk.labels(*lab, "write").set(n.disk_write_bps)
            self.node_seen.labels(*lab).set(wall)
        if pool is not None:
            for nid, t in list(self._node_labels.items()):
                if nid not in pool:             # left the pool: its series end
                    for g in (self.node_cpu, self.node_mem, self.node_seen):
                        _remove(g, nid, t)
                    for d in ("read", "write"):
                        _remove(self.node_disk, nid, t, d)
                    del self._node_labels[nid]
            for nid, (t, _pid) in pool.items():
                self._node_labels[nid] = t
        for gpu in s.gpus:
            lab = (str(gpu.index), gpu.name)
            self.gpu_util.labels(*lab).set(gpu.utilization_percent)
            self.gpu_mem.labels(*lab).set(gpu.memory_used_bytes)
            self.gpu_mem_total.labels(*lab).set(gpu.memory_total_bytes)
            self.gpu_temp.labels(*lab).set(gpu.temperature_c)

    def cpu_by_type(self) -> dict[str, float]:
        """Mean CPU utilisation (0..1 of one core) of each type's nodes in the last sample."""
        s = self.last_sample
        if s is None:
            return {}
        acc: dict[str, list[float]] = {}
        for n in s.nodes:
            acc.setdefault(n.itype, []).append(n.cpu_percent / 100.0)
        return {t: sum(v) / len(v) for t, v in acc.items()}

    def on_transitions(self, transitions) -> None:
        for t in transitions:
            if t.state == "queued":
                continue
            self.transition(t.state)
            if t.state in ("done", "failed") and t.itype:
                self.finished(t.itype, t.est_run_s, t.measured_s, t.est_cost)

    def finished(self, itype: str, est_s: float | None, measured_s: float | None, cost: float | None) -> None:
        if est_s is not None:
            self.estimated.labels(itype).observe(est_s)
        if measured_s is not None:
            self.measured.labels(itype).observe(measured_s)
        if cost:
            self.cost.labels(itype).inc(cost)

    # ---- exposition -------------------------------------------------------------------------
    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def serve(self, port: int = 9464, addr: str = "127.0.0.1") -> int:
        """Serve /metrics over HTTP; returns the bound port (pass 0 for any free port)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _remove(gauge, *labels) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass
