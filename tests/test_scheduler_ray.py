"""Ray: autoscaler config from the catalog; a node removed mid-job (retried, recorded);
one scale-up/scale-in run on the fake multi-node autoscaler. Skipped without Ray."""
import threading
import time

import pytest
import yaml

from lepton_accel.scheduler.catalog import load_catalog
from lepton_accel.scheduler.cli import main as cli_main
from lepton_accel.scheduler.jobs import parse_workload
from lepton_accel.scheduler.ray_executor import autoscaler_config, resource_name
from lepton_accel.scheduler.store import JobStore

CAT = load_catalog(use_env=False)


def test_autoscaler_config_from_catalog(capsys):
    cfg = autoscaler_config(CAT, provider="aws", max_workers=3, idle_timeout_minutes=2)
    nts = cfg["available_node_types"]
    live = [t for t in CAT if not t.retired]
    assert set(nts) == {t.name.replace(".", "_") for t in live} | {"ray.head.default"}
    g6 = nts["g6_xlarge"]
    assert g6["resources"] == {"CPU": 4, "lepton_g6_xlarge": 1, "GPU": 1, "accelerator_type:L4": 1}
    assert g6["node_config"] == {"InstanceType": "g6.xlarge"} and g6["max_workers"] == 3
    assert nts["p5_48xlarge"]["resources"]["lepton_p5_48xlarge"] == 8
    assert nts["f2_48xlarge"]["resources"] == {"CPU": 192, "lepton_f2_48xlarge": 8}
    assert nts["ray.head.default"]["resources"] == {"CPU": 0}   # jobs never land on the head
    assert cfg["idle_timeout_minutes"] == 2
    assert "f1_2xlarge" in autoscaler_config(CAT, include_retired=True)["available_node_types"]
    fake = autoscaler_config(CAT, provider="fake", types=["g6.xlarge"], cpus=1)
    assert fake["provider"]["type"] == "fake_multinode"
    assert set(fake["available_node_types"]) == {"g6_xlarge", "ray.head.default"}
    assert cli_main(["cluster", "config", "--types", "f2.6xlarge", "--max-workers", "2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["available_node_types"]["f2_6xlarge"]["max_workers"] == 2


def test_configs_pass_rays_own_validation():
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(autoscaler_config(CAT, provider="aws")))
    validate_config(autoscaler_config(CAT, provider="fake", cpus=1))


def _wait(cond, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s")


@pytest.fixture
def ray_cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        yield ray, cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.ray
def test_node_removed_mid_job_is_retried_on_another_node(ray_cluster, tmp_path):
    ray, cluster = ray_cluster
    from lepton_accel.scheduler.ray_executor import RayExecutor

    g6 = CAT["g6.xlarge"]
    res = {resource_name(g6): 1, "accelerator_type:L4": 1}
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1, resources=res) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    store = JobStore(tmp_path / "jobs.sqlite")
    (jid,) = store.submit(parse_workload({"name": "long", "suite": {"name": "shell", "command": "sleep 4"},
                                          "estimate_s": 4, "constraints": {"instance_types": ["g6.xlarge"]}}))
    ex = RayExecutor(store, CAT, allow_shell=True, request_resources=False, max_retries=2)
    err = []
    th = threading.Thread(target=lambda: _guard(err, ex.run, timeout=90), daemon=True)
    th.start()
    _wait(lambda: store.get(jid).state == "running", 60)
    on = store.get(jid).node
    first = next(n for n in nodes if n.node_id == on)
    cluster.remove_node(first)          # the node dies mid-job
    th.join(120)
    assert not th.is_alive() and not err, err
    r = store.get(jid)
    assert r.state == "done" and r.attempts == 2 and r.node != first.node_id
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"] and resource_name(g6) in n["Resources"]}
    assert r.node in alive
    ev = store.events(jid)
    assert [e["state"] for e in ev] == ["queued", "placed", "running", "retried", "placed", "running", "done"]
    assert first.node_id in ev[3]["detail"] and "died" in ev[3]["detail"]
    store.close()


def _guard(err, fn, **kw):
    try:
        fn(**kw)
    except BaseException as exc:
        err.append(exc)


@pytest.mark.ray
@pytest.mark.slow
def test_autoscaler_scales_up_for_jobs_and_in_when_idle(tmp_path):
    ray = pytest.importorskip("ray")
    from lepton_accel.scheduler.ray_executor import RayExecutor, fake_autoscaling_cluster

    cluster = fake_autoscaling_cluster(CAT, types=["g6.xlarge", "c7i.large"], max_workers=1,
                                       idle_timeout_minutes=0.1, cpus=1)
    cluster.start()
    try:
        ray.init("auto", log_to_driver=False)
        store = JobStore(tmp_path / "jobs.sqlite")
        ex = RayExecutor(store, CAT)
        assert ex.typed_nodes() == {}                       # nothing but the head
        ids = store.submit(parse_workload({"jobs": [
            {"name": f"mm{i}", "op": "matmul", "a": {"shape": [64, 32], "dtype": "float16"},
             "b": {"shape": [32, 16], "dtype": "float16"}, "seed": i, "constraints": {"kind": "gpu"}}
            for i in range(3)]}))
        ex.run(timeout=120)
        recs = store.jobs(ids=ids)
        assert all(r.state == "done" and r.verified and r.itype == "g6.xlarge" for r in recs)
        launched = {r.node for r in recs}
        assert len(launched) == 1                           # max_workers 1: one g6 node launched
        # idle for the 0.1 min timeout -> the autoscaler removes the node
        _wait(lambda: "g6.xlarge" not in ex.typed_nodes(), 90)
        store.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
