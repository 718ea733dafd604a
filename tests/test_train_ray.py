"""Train jobs on the Ray executor (Ray Train's TorchTrainer) on a local multi-node Ray cluster:
the seed CNN on 2 Ray Train workers, one per node of the placed type; a node removed
mid-job. Skipped without Ray Train, torch or scikit-learn."""
import os
import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.train.torch")

from lepton_accel.scheduler.catalog import load_catalog  # noqa: E402
from lepton_accel.scheduler.jobs import parse_workload  # noqa: E402
from lepton_accel.scheduler.ray_executor import resource_name  # noqa: E402
from lepton_accel.scheduler.store import JobStore  # noqa: E402
from lepton_accel.scheduler.train import checkpoint_info, read_progress  # noqa: E402
from waiting import wait_until as _wait  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CAT = load_catalog(use_env=False)
TYPE = "c7i.large"
# 1437 training digits, global batch 32 on 2 workers: 45 steps an epoch
TRAIN = {"model": "seed_cnn", "data": "digits", "epochs": 2, "batch_size": 32, "workers": 2, "lr": 3e-3,
         "checkpoint_every": {"steps": 8}, "seed": 3}
STEPS = 2 * 45


def _job(**over):
    return parse_workload({"name": "train-ray", "train": {**TRAIN, **over},
                           "constraints": {"instance_types": [TYPE]}})[0]


def _adir(db, jid):
    return os.path.join(str(db) + ".artifacts", jid)


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _typed_nodes(cluster, k):
    """k nodes of the type: one CPU and one unit of its resource each (one training worker)."""
    return [cluster.add_node(num_cpus=1, resources={resource_name(CAT[TYPE]): 1}) for _ in range(k)]


def _run(ex, err, timeout):
    try:
        ex.run(timeout=timeout)
    except BaseException as exc:  # surfaced by the test
        err.append(exc)


def _local_accuracy(tmp_path):
    """The same job from the same seed on the local executor's 2 processes."""
    from lepton_accel.scheduler.local import LocalExecutor

    store = JobStore(tmp_path / "local.sqlite")
    (jid,) = store.submit([_job()])
    ex = LocalExecutor(store, CAT, max_workers=1)
    try:
        ex.run(timeout=180)
    finally:
        ex.close()
    r = store.get(jid)
    store.close()
    assert r.state == "done", r.error
    return r.result["train"]


def test_the_seed_cnn_trains_on_two_ray_train_workers(cluster, tmp_path):
    from lepton_accel.scheduler.ray_executor import RayExecutor

    nodes = _typed_nodes(cluster, 2)
    ray.init(address=cluster.address, log_to_driver=False)
    db = tmp_path / "jobs.sqlite"
    store = JobStore(db)
    (jid,) = store.submit([_job()])
    ex = RayExecutor(store, CAT, request_resources=False)
    ex.run(timeout=150)
    r = store.get(jid)
    assert r.state == "done", r.error
    res = r.result
    adir = _adir(db, jid)
    t = res["train"]
    assert res["workers"] == 2 and t["workers"] == 2 and t["per_rank_batch"] == 16
    assert t["steps"] == STEPS and len(t["epochs"]) == 2
    assert t["test_accuracy"] >= 0.9, t["epochs"]
    # one worker group, one worker on each node of the type; rank 0's node is the job's node
    (run,) = res["ray_train"]["runs"]
    assert sorted(run["nodes"]) == sorted(n.node_id for n in nodes) and r.node == run["nodes"][0]
    assert res["resumed_from"] is None and run["cause"] is None
    # the local executor's files and format, in the job's artifact directory
    for name in ("checkpoint.pt", "checkpoint.pt.json", "progress.jsonl", "model.pt", "result.json"):
        assert os.path.isfile(os.path.join(adir, name)), name
    assert res["model_path"] == os.path.join(adir, "model.pt")
    assert [s["step"] for s in read_progress(adir)] == list(range(1, STEPS + 1))
    assert {(s["attempt"], s["run"]) for s in read_progress(adir)} == {(1, 0)}
    assert [c["step"] for c in res["checkpoints"]] == [8, 16, 24, 32, 40, 45, 48, 56, 64, 72, 80, 88, 90]
    assert checkpoint_info(adir)["step"] == STEPS
    assert [e["state"] for e in store.events(jid)] == ["queued", "placed", "running", "done"]
    store.close()
    ray.shutdown()
    # the same seed on the local executor's gloo + DDP processes ends with the same model
    local = _local_accuracy(tmp_path)
    assert local["test_accuracy"] == t["test_accuracy"]
    assert [e["loss"] for e in local["epochs"]] == pytest.approx([e["loss"] for e in t["epochs"]], rel=1e-5)


def test_a_node_removed_mid_job_resumes_from_the_checkpoint(cluster, tmp_path):
    from lepton_accel.scheduler.ray_executor import RayExecutor

    nodes = _typed_nodes(cluster, 3)     # two run the job, the third takes over
    ray.init(address=cluster.address, log_to_driver=False)
    db = tmp_path / "jobs.sqlite"
    store = JobStore(db)
    every = 8
    # global batch 8: 180 steps an epoch of about 10 ms each, long enough to lose a node midway
    (jid,) = store.submit([_job(epochs=3, batch_size=8, checkpoint_every={"steps": every})])
    total = 3 * 180
    adir = _adir(db, jid)
    ex = RayExecutor(store, CAT, request_resources=False, max_retries=2)
    err = []
    th = threading.Thread(target=_run, args=(ex, err, 170), daemon=True)
    th.start()
    # running (rank 0's start recorded, with its node) and past the first checkpoint
    _wait(lambda: store.get(jid).state == "running" and checkpoint_info(adir), 120, "the first checkpoint")
    on = store.get(jid).node                 # rank 0's node
    first = next(n for n in nodes if n.node_id == on)
    cluster.remove_node(first)               # the node dies mid-job
    th.join(180)
    assert not th.is_alive() and not err, err
    r = store.get(jid)
    assert r.state == "done", r.error
    assert r.attempts == 2 and r.node != first.node_id
    ev = store.events(jid)
    assert [e["state"] for e in ev] == ["queued", "placed", "running", "retried", "placed", "running", "done"]
    why = ev[3]["detail"]
    assert f"node {first.node_id} died (it ran rank 0)" in why and "Ray Train restarted" in why, why
    res = r.result
    runs = res["ray_train"]["runs"]
    assert len(runs) == 2 and first.node_id in runs[0]["nodes"] and first.node_id not in runs[1]["nodes"]
    resumed_at = res["resumed_from"]["step"]
    assert resumed_at >= every and f"resuming from the checkpoint at step {resumed_at}" in why
    steps = read_progress(adir)
    before = [s["step"] for s in steps if s["run"] == 0]
    after = [s["step"] for s in steps if s["run"] == 1]
    assert {s["attempt"] for s in steps if s["run"] == 1} == {2}
    # the second worker group starts right after the checkpoint and runs every later step once:
    # no step before the checkpoint is computed again
    assert after == list(range(resumed_at + 1, total + 1))
    assert before == list(range(1, len(before) + 1)) and before[-1] >= resumed_at
    assert before[-1] - resumed_at <= every          # work lost: at most checkpoint_every steps
    # the checkpoints: the first group's up to the one resumed from, then the second group's
    ck1 = [c["step"] for c in res["checkpoints"] if c["attempt"] == 1]
    assert ck1 and ck1[-1] == resumed_at
    assert all(c["attempt"] == 2 and c["step"] > resumed_at for c in res["checkpoints"][len(ck1):])
    assert res["train"]["steps"] == total and res["train"]["test_accuracy"] >= 0.9
    store.close()


def test_a_cancelled_train_job_stops_its_ray_train_workers(cluster, tmp_path):
    from lepton_accel.scheduler.ray_executor import RayExecutor

    _typed_nodes(cluster, 2)
    ray.init(address=cluster.address, log_to_driver=False)
    res_name = resource_name(CAT[TYPE])
    db = tmp_path / "jobs.sqlite"
    store = JobStore(db)
    (jid,) = store.submit([_job(epochs=20, batch_size=8)])     # far longer than the test waits
    adir = _adir(db, jid)
    ex = RayExecutor(store, CAT, request_resources=False)
    err = []
    th = threading.Thread(target=_run, args=(ex, err, 120), daemon=True)
    th.start()
    _wait(lambda: checkpoint_info(adir), 90, "the first checkpoint")
    assert ray.available_resources().get(res_name, 0) == 0       # both workers hold a unit
    assert store.cancel(jid)
    th.join(60)
    assert not th.is_alive() and not err, err
    assert store.get(jid).state == "cancelled"
    # the trainer's task is killed, with it the controller it owns and the workers
    _wait(lambda: ray.available_resources().get(res_name, 0) == 2, 60, "the workers' resources to be freed")
    n = len(read_progress(adir))
    time.sleep(3)
    assert len(read_progress(adir)) == n                          # no step computed after the cancel
    store.close()


def test_an_elastic_job_continues_on_the_workers_left(cluster, tmp_path):
    from lepton_accel.scheduler.ray_executor import RayExecutor

    nodes = _typed_nodes(cluster, 2)     # no spare: the job must shrink to go on
    ray.init(address=cluster.address, log_to_driver=False)
    db = tmp_path / "jobs.sqlite"
    store = JobStore(db)
    every = 8
    # min_time: placement takes the most workers the range allows (2 nodes of the type)
    job = parse_workload({"name": "elastic", "policy": "min_time", "constraints": {"instance_types": [TYPE]},
                          "train": {**TRAIN, "epochs": 3, "batch_size": 8, "workers": {"min": 1, "max": 2},
                                    "checkpoint_every": {"steps": every}}})[0]
    (jid,) = store.submit([job])
    adir = _adir(db, jid)
    ex = RayExecutor(store, CAT, request_resources=False, max_retries=2)
    err = []
    th = threading.Thread(target=_run, args=(ex, err, 170), daemon=True)
    th.start()
    _wait(lambda: store.get(jid).state == "running" and checkpoint_info(adir), 120, "the first checkpoint")
    assert checkpoint_info(adir)["world"] == 2
    gone = next(n for n in nodes if n.node_id != store.get(jid).node)
    cluster.remove_node(gone)
    th.join(180)
    assert not th.is_alive() and not err, err
    r = store.get(jid)
    assert r.state == "done", r.error
    res = r.result
    runs = res["ray_train"]["runs"]
    assert len(runs) == 2 and len(runs[0]["nodes"]) == 2 and runs[1]["nodes"] == [r.node]
    assert res["workers"] == 1 and res["train"]["workers"] == 1
    ck = res["resumed_from"]
    assert ck["world"] == 2
    steps = read_progress(adir)
    before = [s for s in steps if s["run"] == 0]
    after = [s for s in steps if s["run"] == 1]
    assert {s["world"] for s in before} == {2} and {s["world"] for s in after} == {1}
    # global batch 8 kept (4 a rank, then 8 on one): the rest of the epoch re-sharded onto one
    # worker, nothing before the checkpoint recomputed; 180 steps an epoch either way
    assert [s["step"] for s in after] == list(range(ck["step"] + 1, 3 * 180 + 1))
    assert res["train"]["test_accuracy"] >= 0.9
    store.close()
