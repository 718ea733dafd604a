"""The worker count placement chooses is the number of training processes the local
executor starts (a job's own number is kept); an elastic job's range is honoured."""
import json
import os

import pytest

from lepton_accel.scheduler.catalog import load_catalog
from lepton_accel.scheduler.elastic import ElasticPolicy
from lepton_accel.scheduler.jobs import JobError, parse_workload
from lepton_accel.scheduler.placement import ClusterState, place
from lepton_accel.scheduler.train import worker_counts, workers_for

CAT = load_catalog(use_env=False)


def _doc(policy, **train):
    return {"name": f"w-{policy}", "policy": policy,
            "train": {"model": "seed_cnn", "epochs": 1, "batch_size": 128, "seed": 1, "workers": "auto", **train},
            "constraints": {"instance_types": ["c7i.large"]}}


def test_workers_for_keeps_a_named_count_and_clamps_an_elastic_one():
    assert workers_for({"workers": 3}, placed=1) == 3          # the job's own number wins
    assert workers_for({"workers": "auto"}, placed=4) == 4
    assert workers_for({"workers": {"min": 2, "max": 4}}, placed=8) == 4
    assert workers_for({"workers": {"min": 2, "max": 4}}, placed=1) == 2
    assert workers_for({"workers": {"min": 2, "max": 4}}) == 4
    assert worker_counts({"workers": {"min": 1, "max": 6}}) == (1, 2, 4, 6)
    assert worker_counts({"workers": {"min": 3, "max": 6}}, cap=2) == ()
    assert worker_counts({"workers": "auto"}, cap=2) == (1, 2)
    assert worker_counts({"workers": 5}, cap=2) == (5,)


def test_placement_caps_auto_and_elastic_jobs_by_the_types_node_limit():
    job = parse_workload(_doc("min_time", epochs=2000), catalog=CAT)[0]
    assert place(job, CAT).winner.workers == 8
    assert place(job, CAT, ClusterState(max_nodes={"c7i.large": 2})).winner.workers == 2
    el = parse_workload(_doc("min_time", epochs=2000, workers={"min": 3, "max": 4}), catalog=CAT)[0]
    assert place(el, CAT).winner.workers == 4
    p = place(el, CAT, ClusterState(max_nodes={"c7i.large": 2}))
    assert p.winner is None and "fewer than workers.min 3" in p.reason


@pytest.mark.parametrize("workers, field", [({"min": 3, "max": 2}, "train.workers.min"),
                                            ({"min": 1}, "train.workers"),
                                            ({"min": 1, "max": 2, "step": 1}, "train.workers"),
                                            ({"min": 1, "max": 65}, "train.workers.max"),
                                            ({"min": 1, "max": 64}, "train.batch_size")])
def test_bad_elastic_ranges_are_named(workers, field):
    with pytest.raises(JobError) as exc:
        parse_workload({"jobs": [{"train": {"model": "seed_cnn", "epochs": 1, "batch_size": 32,
                                            "workers": workers}}]})
    assert str(exc.value).startswith(f"jobs[0].{field}:"), str(exc.value)


def test_the_local_executor_starts_the_count_placement_chose(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from lepton_accel.scheduler.local import LocalExecutor
    from lepton_accel.scheduler.store import JobStore

    # min_cost chooses one worker (one node billed); this machine's default for auto is two
    job = parse_workload(_doc("min_cost"), catalog=CAT)[0]
    chosen = place(job, CAT, ClusterState(max_nodes={"c7i.large": 2})).winner.workers
    assert chosen == 1 and workers_for(job.train) == min(2, os.cpu_count() or 1)
    store = JobStore(tmp_path / "jobs.sqlite")
    (jid,) = store.submit([job])
    ex = LocalExecutor(store, CAT, max_workers=1, elastic=ElasticPolicy(max_nodes=2))
    try:
        ex.run(timeout=240)
    finally:
        ex.close()
    r = store.get(jid)
    assert r.state == "done", r.error
    adir = os.path.join(str(tmp_path / "jobs.sqlite") + ".artifacts", jid)
    with open(os.path.join(adir, "job.json")) as f:
        assert json.load(f)["workers"] == chosen
    assert r.result["workers"] == chosen and r.result["train"]["workers"] == chosen
    assert sorted(p for p in os.listdir(adir) if p.endswith(".log")) == [f"rank{i}.log" for i in range(chosen)]
    assert f"chose n={chosen}" in r.explain
    store.close()
