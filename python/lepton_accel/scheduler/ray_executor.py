"""The Ray executor: the same jobs, placement and store, beyond one machine.

* Every catalog instance type is a Ray node type. A node of type ``g6.xlarge`` declares the
  custom resource ``lepton_g6_xlarge`` (one unit per job slot, i.e. per accelerator), its
  vCPUs, and for GPU types ``GPU`` and ``accelerator_type:<model>``.
  :func:`autoscaler_config` writes the autoscaler's ``available_node_types`` (min/max
  workers, idle timeout) from the catalog: ``lepton-accel cluster config``.
* The scheduling is the shared loop (:mod:`.loop`): our placement chooses the type (Ray's
  autoscaler packs demand but never weighs price); each placed job becomes a Ray task
  requesting that type's resource (plus one GPU and the accelerator type on GPU types),
  with ``max_retries`` so Ray moves it off a dead node. This module supplies only what a
  Ray node does: submit, poll, cancel, and the scale-ahead request.
* Tasks report their start (job, node, time) to a small tracker actor on the driver's node;
  a second start of the same job means Ray retried it after its node died, and the store
  records ``retried`` with the dead node before ``running`` on the new one.
* A train job (:mod:`.ray_train`) is one ``TorchTrainer.fit()`` per attempt, driven by a
  Ray task on the driver's node: n Ray Train workers (the count placement chose), each
  taking one CPU and one unit of the type's resource. A worker group lost with its node is
  restarted by Ray Train (``FailureConfig(max_failures=max_retries)``) and resumes from the
  job's checkpoint; the new group's start is recorded ``retried`` with the dead node, the
  workers' errors and the checkpoint resumed from. A train job past its ``timeout_s`` is
  cancelled and failed.
* Elasticity: the autoscaler launches nodes for pending tasks and removes idle ones after
  its idle timeout; :class:`RayExecutor` also asks ahead through
  ``ray.autoscaler.sdk.request_resources`` when queued work per type passes the elastic rule's
  scale-out threshold, and withdraws the request when the queue drains.

Ray is an optional dependency (``pip install 'lepton_accel[ray]'``); this module imports it
only where it is used, so the config generator works without it.
"""
from __future__ import annotations

import copy
import os
import re
import time
from importlib import resources
from typing import Any

import yaml

from ..perf import PerfModel
from .catalog import Catalog, InstanceType, load_catalog
from .elastic import ElasticPolicy
from .loop import Finished, Lost, NodeInfo, Nodes, Restarted, Run, SchedulingLoop, Started
from .store import JobStore

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
        """Collects (job, node, time, detail) start reports from tasks, including Ray's
        retries, and the worker groups of train jobs (each group's nodes, the checkpoint
        it resumed from, why the group before it failed)."""

        def __init__(self):
            self._starts = []
            self._runs: dict = {}       # train attempt key -> [worker group, ...]
            self._failed: dict = {}     # train attempt key -> why its last worker group failed

        def started(self, job_id: str, node_id: str) -> None:
            self._starts.append((job_id, node_id, time.time(), None))

        def train_started(self, job_id: str, key: str, nodes: list, resumed_from) -> int:
            """Rank 0 of a new worker group: its index within the attempt (0: the first)."""
            runs = self._runs.setdefault(key, [])
            run = {"run": len(runs), "nodes": list(nodes), "resumed_from": resumed_from,
                   "cause": self._failed.pop(key, None) if runs else None,
                   "previous_nodes": runs[-1]["nodes"] if runs else None, "time": time.time()}
            runs.append(run)
            self._starts.append((job_id, nodes[0], run["time"], run))
            return run["run"]

        def train_failed(self, job_id: str, key: str, why: str) -> None:
            self._failed[key] = why

        def train_runs(self, key: str) -> list:
            return list(self._runs.get(key, []))

        def drain(self) -> list:
            out, self._starts = self._starts, []
            return out

    return StartTracker


def _run_job(job_id: str, job, kind: str, allow_shell: bool, roots, tracker) -> dict:
    """Body of the Ray task: report the start, run the parsed job, return the result."""
    import ray

    from .runner import backend_for, execute

    node = ray.get_runtime_context().get_node_id()
    ray.get(tracker.started.remote(job_id, node))
    result = execute(job, backend_for(kind), allow_shell=allow_shell, roots=roots, mark=f"{job_id}.ray")
    result["ray_node"] = node
    return result


def _run_train(job_id: str, job, attempt: int, adir: str, workers: int, resource: str, max_failures: int,
               tracker) -> dict:
    """Body of the Ray task that drives a train job's ``TorchTrainer.fit()`` (it blocks)."""
    from .ray_train import run_attempt

    return run_attempt(job, job_id=job_id, attempt=attempt, adir=adir, workers=workers, resource=resource,
                       tracker=tracker, max_failures=max_failures)


class RayExecutor(Nodes):
    """Runs the store's jobs as Ray tasks on typed nodes of a Ray cluster."""

    assigns_nodes = False     # Ray queues the tasks and picks the node
    offers_spot = False       # the generated node types are on demand

    def __init__(self, store: JobStore, catalog: Catalog | None = None, *, address: str | None = None,
                 max_retries: int = 3, allow_shell: bool = False, elastic: ElasticPolicy | None = None,
                 request_resources: bool = True, metrics=None, model: PerfModel | None = None, poll_s: float = 0.1,
                 log=None, test_roots=None, lookahead: int = 256):
        import ray

        from .jobs import test_roots as _roots

        self.ray = ray
        self.store = store
        self.catalog = catalog or load_catalog()
        self.max_retries = max_retries
        self.allow_shell = allow_shell
        self.use_request_resources = request_resources
        self.log = log or (lambda msg: None)
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        here = ray.get_runtime_context().get_node_id()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.tracker = _tracker_class().options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        self._here = here
        self._task = ray.remote(_run_job)
        self._train_task = ray.remote(_run_train)
        self.refs: dict[Any, str] = {}          # ObjectRef -> job id
        #: train jobs' checkpoints and models: <store>.artifacts/<job id>/, next to the store
        #: (as the local executor keeps them); every node must reach it
        self.artifacts = os.path.abspath(str(store.path.parent / (store.path.name + ".artifacts")))
        self._deadlines: dict[str, tuple[float, float]] = {}   # train job id -> (monotonic end, timeout)
        self.nodes_of: dict[str, str] = {}      # job id -> node it last started on
        self._requested: list = []
        self._events: list = []
        self.loop = SchedulingLoop(store, self.catalog, self, elastic=elastic or ElasticPolicy(),
                                   max_attempts=max_retries + 1, model=model, metrics=metrics, log=self.log,
                                   poll_s=poll_s, lookahead=lookahead, trusted=allow_shell,
                                   roots=_roots(test_roots or ()))

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

    # ---- the loop --------------------------------------------------------------------------
    def run(self, *, batch: str | None = None, timeout: float | None = None) -> None:
        try:
            self.loop.run(batch=batch, until_idle=True, timeout=timeout)
        finally:
            self.loop.close()

    # ---- Nodes: what a Ray node does ---------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(nid, t, self.catalog[t].slots) for t, ids in self.typed_nodes().items() for nid in ids]

    def slots_of(self, itype: str) -> int:
        return self.catalog[itype].slots

    def start(self, run: Run, node_id: str | None) -> None:
        t = self.catalog[run.itype]
        if run.job.train is not None:
            self._start_train(run, t)
            return
        opts: dict[str, Any] = {"resources": {resource_name(t): 1}, "num_cpus": 1,
                                "max_retries": self.max_retries, "retry_exceptions": False,
                                "name": f"lepton:{run.job.name}:{run.job_id}"}
        if t.kind == "gpu":
            opts.update(num_gpus=1, accelerator_type=t.accelerator)
        ref = self._task.options(**opts).remote(run.job_id, run.job, t.kind, self.allow_shell, self.loop.roots,
                                                self.tracker)
        self.refs[ref] = run.job_id

    def _start_train(self, run: Run, t: InstanceType) -> None:
        """A train job: one Ray task on the driver's node runs ``TorchTrainer.fit()`` for
        the attempt; its n workers each take one unit of the type's resource."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .train import DEFAULT_TIMEOUT_S, artifact_dir, workers_for

        rec = self.store.get(run.job_id)
        attempt = (run.attempt if run.attempt is not None else (rec.attempts if rec else 0) + 1)
        n = workers_for(run.job.train, run.workers)
        adir = artifact_dir(self.artifacts, run.job_id)
        ref = self._train_task.options(
            num_cpus=0, max_retries=0, name=f"lepton:{run.job.name}:{run.job_id}:train",
            scheduling_strategy=NodeAffinitySchedulingStrategy(self._here, soft=False),
        ).remote(run.job_id, run.job, attempt, adir, n, resource_name(t), self.max_retries, self.tracker)
        self.refs[ref] = run.job_id
        timeout = float(run.job.train.get("timeout_s", DEFAULT_TIMEOUT_S))
        self._deadlines[run.job_id] = (time.monotonic() + timeout, timeout)

    def _train_restart_why(self, info: dict) -> str:
        alive = {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}
        prev = info.get("previous_nodes") or []
        dead = [f"node {nid} died (it ran rank {r})" for r, nid in enumerate(prev) if nid not in alive]
        ck = info.get("resumed_from")
        parts = [f"Ray Train restarted the {len(info['nodes'])} training workers (worker group {info['run']})"
                 + (" after " + ", ".join(dead) if dead else " after a worker failed")]
        if info.get("cause"):
            parts.append(info["cause"])
        parts.append(f"resuming from the checkpoint at step {ck['step']}" if ck else "no checkpoint yet")
        return "; ".join(parts)

    def _starts(self) -> list:
        out = []
        for job_id, node, _at, info in self.ray.get(self.tracker.drain.remote()):
            prev = self.nodes_of.get(job_id)
            self.nodes_of[job_id] = node
            if info is not None:       # a train job's worker group
                if info["run"] == 0:
                    out.append(Started(job_id, node))
                else:
                    out.append(Restarted(job_id, node, self._train_restart_why(info)))
            elif prev is None:
                out.append(Started(job_id, node))
            else:
                alive = {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}
                why = (f"node {prev} {'died' if prev not in alive else 'lost the task'}; "
                       f"Ray retried the task on {node}")
                out.append(Restarted(job_id, node, why))
        return out

    def poll(self, timeout: float) -> list:
        out = self._starts()
        if not self.refs:
            time.sleep(timeout)
            return out
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        if ready:
            out += self._starts()      # a start report may arrive together with the result
        for ref in ready:
            job_id = self.refs.pop(ref)
            self._deadlines.pop(job_id, None)
            self.nodes_of.pop(job_id, None)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.TaskCancelledError:
                continue
            except self.ray.exceptions.RayError as exc:
                out.append(Lost(job_id, None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}", retry=False))
                continue
            out.append(Finished(job_id, None, result))
        now = time.monotonic()
        for job_id, (end, timeout) in list(self._deadlines.items()):
            if now > end:              # a train job past its timeout_s: its trainer is stopped
                self.cancel(job_id)
                out.append(Finished(job_id, None, {"ok": False, "backend": "cpu",
                                                   "error": f"training timed out after {timeout:g} s"}))
        return out

    def cancel(self, job_id: str) -> None:
        """Cancel the job's task (force: its process is killed; for a train job that ends
        the Ray Train controller it owns, and so its workers)."""
        self._deadlines.pop(job_id, None)
        self.nodes_of.pop(job_id, None)
        for ref, jid in list(self.refs.items()):
            if jid == job_id:
                self.ray.cancel(ref, force=True)
                self.refs.pop(ref)

    def scale(self, targets: dict[str, int], stop: list[str]) -> None:
        """Scale ahead: ask the autoscaler for whole nodes; idle ones go after its idle
        timeout (``stop`` is left to it)."""
        if not self.use_request_resources:
            return
        bundles = []
        for tname, want in sorted(targets.items()):
            t = self.catalog[tname]
            bundles += [{resource_name(t): t.slots}] * want
        if bundles != self._requested:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=bundles)
            self._requested = bundles

    def shutdown(self) -> None:
        if self.use_request_resources and self._requested:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[])
            self._requested = []
