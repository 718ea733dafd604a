"""The Ray executor: the same jobs, placement and store, beyond one machine.

* Every catalog instance type is a Ray node type. A node of type ``g6.xlarge`` declares the
  custom resource ``lepton_g6_xlarge`` (one unit per job slot, i.e. per accelerator), its
  vCPUs, and for GPU types ``GPU`` and ``accelerator_type:<model>``.
  :func:`autoscaler_config` writes the autoscaler's ``available_node_types`` (min/max
  workers, idle timeout) from the catalog: ``lepton-accel cluster config``.
* Our placement chooses the type (Ray's autoscaler packs demand but never weighs price);
  each job becomes a Ray task requesting that type's resource (plus one GPU and the
  accelerator type on GPU types), with ``max_retries`` so Ray moves it off a dead node.
* Tasks report their start (job, node, time) to a small tracker actor on the driver's node;
  a second start of the same job means Ray retried it after its node died, and the store
  records ``retried`` with the dead node before ``running`` on the new one.
* Elasticity: the autoscaler launches nodes for pending tasks and removes idle ones after
  its idle timeout; :class:`RayExecutor` also asks ahead through
  ``ray.autoscaler.sdk.request_resources`` when queued work per type passes the elastic rule's
  scale-out threshold, and withdraws the request when the queue drains.

Ray is an optional dependency (``pip install 'lepton_accel[ray]'``); this module imports it
only where it is used, so the config generator works without it.
"""
from __future__ import annotations

import copy
import re
import time
from importlib import resources
from typing import Any

import yaml

from .catalog import Catalog, InstanceType, load_catalog
from .elastic import ElasticPolicy
from .jobs import JobError, parse_job
from .placement import ClusterState, NodeView, place
from .store import PENDING, UNFINISHED, JobStore

HEAD_TYPE = "ray.head.default"


def resource_name(itype: InstanceType | str) -> str:
    """The custom resource a node of this type offers: one unit per job slot."""
    name = itype.name if isinstance(itype, InstanceType) else itype
    return "lepton_" + re.sub(r"[^A-Za-z0-9]", "_", name)


def node_type_name(itype: InstanceType) -> str:
    return itype.name.replace(".", "_")


def node_resources(itype: InstanceType, cpus: int | None = None) -> dict[str, float]:
    res: dict[str, float] = {"CPU": cpus if cpus is not None else itype.vcpus, resource_name(itype): itype.slots}
    if itype.kind == "gpu":
        res["GPU"] = itype.accelerator_count
        res[f"accelerator_type:{itype.accelerator}"] = 1
    return res


def node_types(catalog: Catalog, *, types=None, include_retired=False, max_workers: int = 4,
               min_workers: int = 0, provider: str = "aws", cpus: int | None = None) -> dict[str, Any]:
    out = {}
    for t in catalog:
        if types is not None and t.name not in types:
            continue
        if types is None and t.retired and not include_retired:
            continue
        out[node_type_name(t)] = {
            "resources": node_resources(t, cpus),
            "node_config": {"InstanceType": t.name} if provider == "aws" else {},
            "min_workers": min_workers,
            "max_workers": max_workers,
        }
    return out


def autoscaler_config(catalog: Catalog | None = None, *, provider: str = "aws", types=None,
                      include_retired: bool = False, max_workers: int = 4, idle_timeout_minutes: float = 5.0,
                      region: str | None = None, cpus: int | None = None,
                      head_resources: dict | None = None) -> dict[str, Any]:
    """A Ray autoscaler config whose worker node types are the catalog's instance types.

    ``provider="aws"``: a cluster-launcher config (`ray up`), head node with no job
    resources so that jobs always land on a typed worker node. ``provider="fake"``: Ray's
    local fake multi-node provider (``RAY_FAKE_CLUSTER=1``), for trying the autoscaling
    behaviour on one machine (``cpus`` then sets each fake node's CPUs).
    """
    catalog = catalog or load_catalog()
    nts = node_types(catalog, types=types, include_retired=include_retired, max_workers=max_workers,
                     provider=provider, cpus=cpus if provider == "fake" else None)
    if provider == "fake":
        cfg = fake_base_config()
        cfg["available_node_types"] = nts
        cfg["available_node_types"][HEAD_TYPE] = {"resources": head_resources or {"CPU": 1},
                                                  "node_config": {}, "max_workers": 0}
    else:
        cfg = {
            "cluster_name": "lepton-accel",
            "max_workers": max_workers * max(len(nts), 1),
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": idle_timeout_minutes,
            "provider": {"type": "aws", "region": region or catalog.region or "us-east-1"},
            "auth": {"ssh_user": "ubuntu"},
            "available_node_types": {
                HEAD_TYPE: {"resources": head_resources or {"CPU": 0},
                            "node_config": {"InstanceType": "m7i.xlarge"}, "min_workers": 0, "max_workers": 0},
                **nts,
            },
            "head_node_type": HEAD_TYPE,
            "setup_commands": ["pip install 'lepton_accel[ray]'"],
        }
    cfg["idle_timeout_minutes"] = idle_timeout_minutes
    if provider == "fake":
        cfg["max_workers"] = max_workers * max(len(nts), 1)
    return cfg


def fake_base_config() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("data/fake_multi_node.yaml").read_text()
    return yaml.safe_load(text)


def fake_autoscaling_cluster(catalog: Catalog | None = None, *, types, max_workers: int = 1,
                             idle_timeout_minutes: float = 0.1, cpus: int = 1, head_cpus: int = 1):
    """A local ``ray.cluster_utils.AutoscalingCluster`` with node types from the catalog.

    Its ``start()`` runs ``ray stop --force`` (Ray's own behaviour): never use it next to
    another Ray cluster on the same machine.
    """
    from ray.cluster_utils import AutoscalingCluster

    cfg = autoscaler_config(catalog, provider="fake", types=types, max_workers=max_workers,
                            idle_timeout_minutes=idle_timeout_minutes, cpus=cpus)

    class _Cluster(AutoscalingCluster):
        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **kw):
            out = copy.deepcopy(cfg)
            out["available_node_types"] = {**copy.deepcopy(worker_node_types),
                                           HEAD_TYPE: {"resources": dict(head_resources), "node_config": {},
                                                       "max_workers": 0}}
            out.update(kw)
            return out

    worker_types = {k: v for k, v in cfg["available_node_types"].items() if k != HEAD_TYPE}
    return _Cluster(head_resources={"CPU": head_cpus}, worker_node_types=worker_types,
                    idle_timeout_minutes=idle_timeout_minutes)


# ---- the executor ------------------------------------------------------------------------
def _tracker_class():
    import ray

    @ray.remote(num_cpus=0)
    class StartTracker:
        """Collects (job, node, time) start reports from tasks, including Ray's retries."""

        def __init__(self):
            self._starts = []

        def started(self, job_id: str, node_id: str) -> None:
            self._starts.append((job_id, node_id, time.time()))

        def drain(self) -> list:
            out, self._starts = self._starts, []
            return out

    return StartTracker


def _run_job(job_id: str, doc: dict, base_dir: str, kind: str, allow_shell: bool, tracker) -> dict:
    """Body of the Ray task: report the start, run through the public API, return the result."""
    import ray

    from .local import backend_for, local_backends
    from .runner import execute

    node = ray.get_runtime_context().get_node_id()
    ray.get(tracker.started.remote(job_id, node))
    result = execute(doc, base_dir, backend_for(kind, local_backends()), allow_shell)
    result["ray_node"] = node
    return result


class RayExecutor:
    """Runs the store's jobs as Ray tasks on typed nodes of a Ray cluster."""

    def __init__(self, store: JobStore, catalog: Catalog | None = None, *, address: str | None = None,
                 max_retries: int = 3, allow_shell: bool = False, elastic: ElasticPolicy | None = None,
                 request_resources: bool = True, metrics=None, poll_s: float = 0.1, log=None):
        import ray

        self.ray = ray
        self.store = store
        self.catalog = catalog or load_catalog()
        self.max_retries = max_retries
        self.allow_shell = allow_shell
        self.elastic = elastic or ElasticPolicy()
        self.use_request_resources = request_resources
        self.metrics = metrics
        self.poll_s = poll_s
        self.log = log or (lambda msg: None)
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        here = ray.get_runtime_context().get_node_id()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.tracker = _tracker_class().options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        self._task = ray.remote(_run_job)
        self.refs: dict[Any, str] = {}          # ObjectRef -> job id
        self.nodes_of: dict[str, str] = {}      # job id -> node it last started on
        self._requested: list = []

    # ---- cluster view ------------------------------------------------------------------
    def typed_nodes(self) -> dict[str, list[str]]:
        """Alive Ray nodes per instance type (by the custom resource they declare)."""
        out: dict[str, list[str]] = {}
        by_res = {resource_name(t): t.name for t in self.catalog}
        for n in self.ray.nodes():
            if not n.get("Alive"):
                continue
            for res in n.get("Resources", {}):
                if res in by_res:
                    out.setdefault(by_res[res], []).append(n["NodeID"])
        return out

    def state(self) -> ClusterState:
        nodes = [NodeView(nid, t, self.catalog[t].slots) for t, ids in self.typed_nodes().items() for nid in ids]
        return ClusterState(nodes, {t.name: self.elastic.limits(t.name)[1] for t in self.catalog})

    # ---- the loop --------------------------------------------------------------------------
    def run(self, *, batch: str | None = None, timeout: float | None = None) -> None:
        self.store.scheduler_lock()
        try:
            self.store.recover()
            end = None if timeout is None else time.monotonic() + timeout
            while True:
                self._place_and_submit(batch)
                self._track_starts()
                self._collect()
                self._check_cancelled()
                self._request_capacity(batch)
                if not self.store.jobs(UNFINISHED, batch=batch):
                    break
                if end is not None and time.monotonic() > end:
                    raise TimeoutError(f"jobs still unfinished after {timeout} s")
        finally:
            if self.use_request_resources and self._requested:
                from ray.autoscaler.sdk import request_resources

                request_resources(bundles=[])
            self.store.release_lock()

    def _place_and_submit(self, batch) -> None:
        pending = self.store.jobs(PENDING, batch=batch)
        if not pending:
            return
        state = self.state()
        now = time.time()
        for rec in pending:
            try:
                job = parse_job(rec.doc, "", rec.base_dir)
            except JobError as exc:
                self.store.transition(rec.id, "failed", from_states=PENDING, error=str(exc), detail=str(exc))
                continue
            p = place(job, self.catalog, state, elapsed_s=now - rec.submitted_at)
            if p.winner is None:
                self.store.transition(rec.id, "failed", from_states=PENDING, error=p.reason, detail=p.reason)
                continue
            t = p.winner.itype
            if not self.store.transition(rec.id, "placed", from_states=PENDING, itype=t.name,
                                         est_run_s=p.winner.run_s, est_total_s=p.winner.time_s,
                                         est_cost=p.winner.cost, explain=p.explain(), detail=p.reason):
                continue
            opts: dict[str, Any] = {"resources": {resource_name(t): 1}, "num_cpus": 1,
                                    "max_retries": self.max_retries, "retry_exceptions": False,
                                    "name": f"lepton:{rec.name}:{rec.id}"}
            if t.kind == "gpu":
                opts.update(num_gpus=1, accelerator_type=t.accelerator)
            ref = self._task.options(**opts).remote(rec.id, rec.doc, rec.base_dir, t.kind, self.allow_shell,
                                                    self.tracker)
            self.refs[ref] = rec.id
            self.log(f"placed {rec.name} ({rec.id}) on {t.name}: {p.reason}")

    def _track_starts(self) -> None:
        for job_id, node, _at in self.ray.get(self.tracker.drain.remote()):
            rec = self.store.get(job_id)
            prev = self.nodes_of.get(job_id)
            if prev is not None and rec.state == "running":
                alive = {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}
                why = (f"node {prev} {'died' if prev not in alive else 'lost the task'}; "
                       f"Ray retried the task on {node}")
                self.store.transition(job_id, "retried", from_states=("running",), detail=why)
                self.store.transition(job_id, "placed", from_states=("retried",), detail="kept by Ray's retry")
                self.log(f"retried {rec.name} ({job_id}): {why}")
            self.nodes_of[job_id] = node
            self.store.start(job_id, node, rec.itype)

    def _collect(self) -> None:
        if not self.refs:
            time.sleep(self.poll_s)
            return
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=self.poll_s)
        if ready:
            self._track_starts()      # a start report may arrive together with the result
        for ref in ready:
            job_id = self.refs.pop(ref)
            rec = self.store.get(job_id)
            if rec.state == "placed":  # finished before its start was seen (should not happen)
                self.store.start(job_id, self.nodes_of.get(job_id, "?"), rec.itype)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.TaskCancelledError:
                continue
            except self.ray.exceptions.RayError as exc:
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                self.store.transition(job_id, "failed", from_states=("running", "placed"), error=msg, detail=msg)
                continue
            if result.get("ok") and result.get("verified", True) is not False:
                self.store.transition(job_id, "done", from_states=("running",), measured_s=result.get("measured_s"),
                                      backend=result.get("backend"), verified=result.get("verified"),
                                      result=result, detail=f"on Ray node {result.get('ray_node')}")
            else:
                err = result.get("error") or "verification failed"
                self.store.transition(job_id, "failed", from_states=("running",), measured_s=result.get("measured_s"),
                                      backend=result.get("backend"), verified=result.get("verified"),
                                      result=result, error=err, detail=err)

    def _check_cancelled(self) -> None:
        if not self.refs:
            return
        cancelled = {r.id for r in self.store.jobs(["cancelled"], ids=list(self.refs.values()))}
        for ref, jid in list(self.refs.items()):
            if jid in cancelled:
                self.ray.cancel(ref, force=True)
                self.refs.pop(ref)

    def _request_capacity(self, batch) -> None:
        """Scale ahead: ask the autoscaler for whole nodes when queued work passes the rule."""
        if not self.use_request_resources:
            return
        placed = self.store.jobs(["placed", "running"], batch=batch)
        by_type: dict[str, list] = {}
        for r in placed:
            by_type.setdefault(r.itype, []).append(r)
        nodes = self.typed_nodes()
        bundles = []
        for tname, recs in by_type.items():
            t = self.catalog[tname]
            busy = sum(r.state == "running" for r in recs)
            want = self.elastic.target(tname, len(nodes.get(tname, [])), busy, len(recs) - busy, t.slots)
            bundles += [{resource_name(t): t.slots}] * want
        if bundles != self._requested:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=bundles)
            self._requested = bundles
