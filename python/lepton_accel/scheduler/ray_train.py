"""Train jobs on a Ray cluster: Ray Train's ``TorchTrainer`` runs the per-rank loop.

One attempt of a train job is one ``TorchTrainer.fit()``: n Ray Train workers, each
reserving one CPU and one unit of the placed type's resource (so each lands on a node of
that type), join the gloo process group Ray Train sets up and run
:func:`.train.train_ranks` with the model made data-parallel by
``ray.train.torch.prepare_model``. Checkpoints, ``progress.jsonl``, ``model.pt`` and
``result.json`` go to the job's artifact directory in the local executor's format (the
directory must be reachable from every node: one machine, or a shared filesystem);
Ray Train's own storage (``<artifact dir>/ray``) holds only its run records and the
metrics reported at each checkpoint.

Faults: a worker or node lost mid-run is Ray Train's to handle
(``FailureConfig(max_failures)``): it starts a new worker group, whose loop resumes from
the job's newest checkpoint. Rank 0 of every worker group reports its start (the nodes
of its ranks and the checkpoint it resumes from) to the executor's tracker, and a
callback on the Ray Train controller reports why a worker group failed; the executor
turns a second start into ``retried`` with that cause. ``fit()`` blocks: the executor
runs :func:`run_attempt` inside a Ray task on the driver's node.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from typing import Any

from .jobs import Job
from .train import checkpoint_info, train_ranks

#: Ray Train's storage, under the job's artifact directory
STORAGE = "ray"


def missing_modules(train: dict) -> list[str]:
    """The modules a train job on Ray needs that are not installed here."""
    need = ["torch", "ray.train.torch"] + (["sklearn"] if train.get("data") == "digits" else [])
    out = []
    for m in need:
        try:
            if importlib.util.find_spec(m) is None:
                out.append(m)
            elif m.startswith("ray."):
                importlib.import_module(m)    # ray.train refuses to import without its extra's packages
        except (ImportError, ValueError):
            out.append("ray[train]" if m.startswith("ray.") else m)
    return out


def _gather_nodes(rank: int, world: int) -> list[str]:
    """Every rank's Ray node id, in rank order (a collective over the group Ray Train made)."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if world == 1 or not dist.is_initialized():
        return [node]
    nodes: list = [None] * world
    dist.all_gather_object(nodes, node)
    return nodes


def _broadcast(value, rank: int, world: int):
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: its rank and the world from Ray Train's context, the model
    wrapped by ``prepare_model``, the loop shared with the local executor."""
    import ray
    import ray.train
    from ray.train.torch import prepare_model

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    adir, tracker = config["adir"], config["tracker"]
    nodes = _gather_nodes(rank, world)
    run = None
    if rank == 0:
        # which worker group this is (0: the first), with the checkpoint it resumes from
        run = ray.get(tracker.train_started.remote(config["job_id"], config["key"], nodes,
                                                   checkpoint_info(adir)))
    run = _broadcast(run, rank, world)
    attempt = config["attempt"] + run

    def report(_where, info):
        # every rank, after an epoch's checkpoint: Ray Train's metrics (a report is a barrier
        # across the workers through an actor; mid-epoch checkpoints skip it)
        if info["position"] == 0:
            ray.train.report({"step": info["step"], "epoch": info["epoch"], "attempt": attempt, "run": run})

    train_ranks(config["spec"], adir, rank, world, attempt, wrap_model=prepare_model,
                on_checkpoint=report, run=run)


def _failure_callback(tracker, job_id: str, key: str):
    """A Ray Train callback (it runs on the controller) that tells the tracker why a
    worker group failed."""
    from ray.train import UserCallback

    class ReportFailure(UserCallback):
        def after_exception(self, run_context, worker_exceptions):
            parts = []
            for r, exc in sorted(worker_exceptions.items()):
                first = (str(exc).strip().splitlines() or [""])[0]
                parts.append(f"rank {r}: {type(exc).__name__}: {first[:300]}")
            tracker.train_failed.remote(job_id, key, "; ".join(parts) or "a worker failed")

    return ReportFailure()


def run_attempt(job: Job, *, job_id: str, attempt: int, adir: str, workers: int, resource: str,
                tracker, max_failures: int = 3, use_gpu: bool = False) -> dict[str, Any]:
    """Run one attempt of a train job with ``TorchTrainer`` on ``workers`` Ray Train workers,
    each on a node offering ``resource``; returns the job's result (the local executor's
    fields, plus ``ray_train``: each worker group's nodes, the checkpoint it resumed from
    and why the one before it failed)."""
    train = job.train
    missing = missing_modules(train)
    if missing:
        return {"ok": False, "backend": "cpu", "error": f"train jobs on Ray need {' and '.join(missing)} "
                "(pip install \"lepton_accel[torch,ray]\", PyTorch's CPU build)"}
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    adir = os.path.abspath(adir)
    os.makedirs(adir, mode=0o700, exist_ok=True)
    n = int(workers)
    spec = {"train": train, "base_dir": os.path.realpath(job.base_dir), "workers": n}
    with open(os.path.join(adir, "job.json"), "w") as f:
        json.dump(spec, f)
    key = f"{job_id}:{attempt}"
    per_worker = {"CPU": 1, resource: 1}
    if use_gpu:
        per_worker["GPU"] = 1
    # an elastic job: Ray Train starts with what is there (at least min, at most the count
    # placement chose) and restarts a failed group on the workers it can get
    size = (int(train["workers"]["min"]), n) if isinstance(train["workers"], dict) else n
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "adir": adir, "job_id": job_id, "key": key, "attempt": attempt,
                           "tracker": tracker},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=120),
        scaling_config=ScalingConfig(num_workers=size, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(storage_path=os.path.join(adir, STORAGE), name=f"{job_id}-attempt{attempt}",
                             failure_config=FailureConfig(max_failures=max_failures),
                             callbacks=[_failure_callback(tracker, job_id, key)]),
    )
    t0 = time.perf_counter()
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        runs = _runs(tracker, key)
        first = (str(exc).strip().splitlines() or [""])[0]
        return {"ok": False, "backend": "cpu", "measured_s": time.perf_counter() - t0,
                "error": f"Ray Train gave up after {len(runs)} worker group(s): {type(exc).__name__}: {first[:1500]}",
                "ray_train": {"runs": runs}}
    measured = time.perf_counter() - t0
    runs = _runs(tracker, key)
    try:
        with open(os.path.join(adir, "result.json")) as f:
            metrics = json.load(f)
    except (OSError, ValueError) as exc:
        return {"ok": False, "backend": "cpu", "measured_s": measured,
                "error": f"training ended without its result.json in {adir}: {exc}", "ray_train": {"runs": runs}}
    return {"ok": True, "backend": "cpu", "measured_s": measured, "workers": metrics.get("workers", n),
            "resumed_from": runs[-1]["resumed_from"] if runs else None, "train": metrics,
            "model_path": metrics["model_path"], "artifacts": adir, "checkpoints": metrics["checkpoints"],
            "ray_train": {"runs": runs, "storage": os.path.join(adir, STORAGE)}}


def _runs(tracker, key: str) -> list[dict]:
    import ray

    return ray.get(tracker.train_runs.remote(key))

