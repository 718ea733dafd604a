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
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server

from .store import STATES

_BUCKETS = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100, 1000)


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
        """Count the store's committed transitions (and finished jobs' times and costs)."""
        store.subscribe(self.on_transitions)

    def detach(self, store) -> None:
        store.unsubscribe(self.on_transitions)

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
