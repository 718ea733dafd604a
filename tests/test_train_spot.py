"""Spot capacity for train jobs (prices and reclaim rates in the catalog, expected lost work
priced in, explain says so), the placed worker count and market kept in the store across a
scheduler restart, and the train step calibrated by measured runs."""
import math

import pytest

from lepton_accel.perf import PerfModel
from lepton_accel.scheduler.catalog import load_catalog
from lepton_accel.scheduler.elastic import ElasticPolicy
from lepton_accel.scheduler.jobs import JobError, parse_workload
from lepton_accel.scheduler.loop import NodeInfo, Nodes, SchedulingLoop
from lepton_accel.scheduler.placement import checkpoint_interval_s, place
from lepton_accel.scheduler.store import JobStore
from lepton_accel.scheduler.train import observe_run, step_estimate

CAT = load_catalog(use_env=False)
TRAIN = {"model": "seed_cnn", "epochs": 20, "batch_size": 256, "workers": "auto",
         "checkpoint_every": {"steps": 20}}


def _job(spot=None, policy="min_cost", types=("c7i.2xlarge", "m7i.4xlarge"), deadline=None, **train):
    cons = {"instance_types": list(types)}
    if spot is not None:
        cons["spot"] = spot
    doc = {"train": {**TRAIN, **train}, "policy": policy, "constraints": cons}
    if deadline:
        doc["deadline_s"] = deadline
    return parse_workload(doc, catalog=CAT)[0]


def _overlay(tmp_path, text):
    path = tmp_path / "cat.yaml"
    path.write_text(text)
    return load_catalog(path, use_env=False)


def test_the_catalog_carries_dated_spot_prices_below_on_demand(tmp_path):
    assert CAT.spot_date and "assumed discount" in CAT.spot_source
    spot = [t for t in CAT if t.spot_price_per_hour is not None]
    assert {t.kind for t in spot} == {"cpu", "gpu"}
    for t in spot:
        assert 0 < t.spot_price_per_hour < t.price_per_hour and t.interruptions_per_hour > 0
    assert all(t.spot_price_per_hour is None for t in CAT if t.kind == "fpga")
    with pytest.raises(ValueError, match=r"types\.x\.spot: expected a mapping with price_per_hour"):
        _overlay(tmp_path, "types:\n  x: {vcpus: 2, memory_gib: 4, price_per_hour: 1, spot: 0.3}\n")
    with pytest.raises(ValueError, match=r"types\.x\.spot\.interruptions_per_hour: must be >= 0"):
        _overlay(tmp_path, "types:\n  x: {vcpus: 2, memory_gib: 4, price_per_hour: 1, "
                           "spot: {price_per_hour: 0.3, interruptions_per_hour: -1}}\n")
    with pytest.raises(ValueError, match=r"spot: x has no spot price"):
        _overlay(tmp_path, "types:\n  x: {vcpus: 2, memory_gib: 4, price_per_hour: 1}\n").launch_cost("x", 60, spot=True)


def test_a_checkpointing_train_job_goes_on_spot_with_the_expected_loss_priced_in():
    p = place(_job(), CAT)
    w = p.winner
    assert w.spot and w.where == "new spot node"
    sp, n = w.spot, w.workers
    option = next(o for o in w.weighed if o["workers"] == n)
    every = checkpoint_interval_s(TRAIN, option)
    assert every == pytest.approx(min(20 * option["step_s"], option["run_s"]))
    k = n * w.itype.interruptions_per_hour / 3600 * option["run_s"]     # rare reclaims: first order
    assert sp["interruptions"] == pytest.approx(k, rel=1e-3)
    assert w.run_s == pytest.approx(option["run_s"] + k * (every / 2 + w.itype.startup_s), rel=1e-6)
    assert w.cost == pytest.approx(n * CAT.launch_cost(w.itype, w.itype.startup_s + w.run_s, spot=True))
    od = place(_job(spot=False), CAT).winner
    assert not od.spot and od.cost > w.cost
    text = p.explain()
    assert "spot:" in text and "on demand it would cost" in text and "reclaims per node-hour" in text


def test_frequent_reclaims_and_rare_checkpoints_keep_a_job_on_demand(tmp_path):
    # a reclaim every ~36 s on a spot node at 90 % off: with checkpoints once per run (20
    # epochs of 1,000 steps) the expected rework outweighs the discount
    cat = _overlay(tmp_path, "types:\n  c7i.2xlarge: {vcpus: 8, memory_gib: 16, price_per_hour: 0.357, "
                             "network_gbps: 12.5, spot: {price_per_hour: 0.0357, interruptions_per_hour: 100}}\n")
    rare = parse_workload({"train": {**TRAIN, "workers": 1, "epochs": 20000, "checkpoint_every": {"epochs": 20000}},
                           "constraints": {"instance_types": ["c7i.2xlarge"]}}, catalog=cat)[0]
    often = parse_workload({"train": {**TRAIN, "workers": 1, "epochs": 20000, "checkpoint_every": {"steps": 1}},
                            "constraints": {"instance_types": ["c7i.2xlarge"]}}, catalog=cat)[0]
    pr, po = place(rare, cat), place(often, cat)
    assert not pr.winner.spot, pr.explain()
    spot_rare = next(c for c in pr.candidates if c.spot)
    assert spot_rare.feasible and spot_rare.cost > pr.winner.cost
    assert po.winner.spot and po.winner.spot["lost_s"] < spot_rare.spot["lost_s"]


def test_spot_constraints_and_jobs_that_do_not_checkpoint(tmp_path):
    op = {"name": "m", "op": "matmul", "a": {"shape": [64, 64], "dtype": "float32"},
          "b": {"shape": [64, 64], "dtype": "float32"}}
    plain = place(parse_workload(op, catalog=CAT)[0], CAT)
    assert not plain.winner.spot and not any(c.spot for c in plain.candidates)
    forced = place(parse_workload({**op, "constraints": {"spot": True}}, catalog=CAT)[0], CAT)
    assert forced.winner is None and "spot needs a job that checkpoints" in forced.reason
    cat = _overlay(tmp_path, "types:\n  x.cpu: {vcpus: 8, memory_gib: 16, price_per_hour: 0.01}\n")
    doc = {"train": TRAIN, "constraints": {"instance_types": ["c7i.2xlarge", "x.cpu"], "spot": True}}
    only = place(parse_workload(doc, catalog=cat)[0], cat)
    assert only.winner.spot and only.winner.itype.name == "c7i.2xlarge"     # x.cpu is cheaper on demand
    x = {c.excluded for c in only.candidates if c.itype.name == "x.cpu"}
    assert x == {"no spot price in the catalog", "on demand; the constraints ask for spot capacity"}
    with pytest.raises(JobError, match=r"constraints\.spot"):
        parse_workload({**op, "constraints": {"spot": "yes"}})


def test_a_deadline_is_met_on_spot_with_the_expected_delay_counted(tmp_path):
    cat = _overlay(tmp_path, "types:\n  c7i.2xlarge: {vcpus: 8, memory_gib: 16, price_per_hour: 0.357, "
                             "network_gbps: 12.5, spot: {price_per_hour: 0.1, interruptions_per_hour: 10}}\n")
    job = parse_workload({"train": {**TRAIN, "workers": 1, "epochs": 2000, "checkpoint_every": {"epochs": 1000}},
                          "constraints": {"instance_types": ["c7i.2xlarge"]}}, catalog=cat)[0]
    free = place(job, cat)
    mine = [c for c in free.candidates if c.itype.name == "c7i.2xlarge"]
    sp = next(c for c in mine if c.spot)
    od = next(c for c in mine if not c.spot)
    assert sp.time_s > od.time_s
    deadline = (sp.time_s + od.time_s) / 2          # on demand meets it, spot's expected time does not
    doc = {"train": {**TRAIN, "workers": 1, "epochs": 2000, "checkpoint_every": {"epochs": 1000}},
           "deadline_s": deadline, "constraints": {"instance_types": ["c7i.2xlarge"]}}
    tight = place(parse_workload(doc, catalog=cat)[0], cat)
    assert not tight.winner.spot
    assert any(c.spot and c.excluded.startswith("misses deadline") for c in tight.candidates)


# ---- what placement chose survives a restart --------------------------------------------------
class NoNodes(Nodes):
    def nodes(self):
        return []

    def poll(self, timeout):
        return []

    def start(self, run, node_id):
        raise AssertionError("nothing starts without nodes")

    def cancel(self, job_id):
        pass


class OneNode(Nodes):
    """One c7i.2xlarge node up; records what it is asked to start."""

    def __init__(self):
        self.runs = []

    def nodes(self):
        return [NodeInfo("n1", "c7i.2xlarge", 1, frozenset())]

    def poll(self, timeout):
        return []

    def start(self, run, node_id):
        self.runs.append((run, node_id))

    def cancel(self, job_id):
        pass


def test_the_placed_worker_count_and_market_survive_a_scheduler_restart(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job = _job(spot=True, policy="min_time", types=("c7i.2xlarge",))
    chosen = place(job, CAT).winner
    assert chosen.workers == 8 and chosen.spot          # not the restart fallback of min(2, cores)
    (jid,) = store.submit([job])
    first = SchedulingLoop(store, CAT, NoNodes(), elastic=ElasticPolicy(max_nodes=8), trusted=True)
    first.open()
    first.step()
    r = store.get(jid)
    assert r.state == "placed" and (r.workers, r.market) == (8, "spot")
    first.close()                                       # the scheduler stops before starting it
    nodes = OneNode()
    second = SchedulingLoop(store, CAT, nodes, elastic=ElasticPolicy(max_nodes=8), trusted=True)
    second.open()
    for _ in range(3):
        second.step()
        if nodes.runs:
            break
    (run, node), = nodes.runs
    assert run.job_id == jid and run.workers == 8 and run.market == "spot" and node == "n1"
    second.close()
    store.close()


# ---- the step calibrated by what runs measured ------------------------------------------------
def test_a_measured_step_calibrates_later_train_estimates():
    model = PerfModel()
    t = CAT["c7i.2xlarge"]
    dev = t.device()
    train = {**TRAIN, "batch_size": 32, "epochs": 1}
    before = step_estimate(train, dev, 2, t.network_gbps, model)
    assert before["calibration"] == 1.0
    measured = 30 * before["compute_s"]
    observe_run(model, train, dev, {"train": {"step_s_median": measured, "workers": 2}})
    after = step_estimate(train, dev, 2, t.network_gbps, model)
    assert after["calibration"] == pytest.approx(30) and after["compute_s"] == pytest.approx(measured)
    # other worker counts and CPU types scale by the same factor; GPU types are untouched
    one = step_estimate(train, CAT["m7i.4xlarge"].device(), 1, None, model)
    assert one["compute_s"] == pytest.approx(30 * one["layers_s"])
    g = CAT["g6.xlarge"]
    assert step_estimate(train, g.device(), 1, None, model)["calibration"] == 1.0
    # a second run averages in log space; an entry-point job's own estimate is left alone
    observe_run(model, train, dev, {"train": {"step_s_median": 120 * before["compute_s"], "workers": 2}})
    assert model.train_step_factor("cpu") == pytest.approx(math.sqrt(30 * 120))
    observe_run(model, {**train, "entry": "m:f"}, dev, {"train": {"step_s_median": 1.0, "workers": 2}})
    assert model.train_step_factor("cpu") == pytest.approx(math.sqrt(30 * 120))


def test_an_entry_point_job_on_spot_counts_its_whole_run_as_the_interval():
    job = parse_workload({"train": {"entry": "m:f", "epochs": 2, "batch_size": 32, "workers": 2},
                          "estimate_s": 600, "constraints": {"instance_types": ["c7i.large"]}}, catalog=CAT)[0]
    p = place(job, CAT)
    w = p.winner
    assert w.spot and w.workers == 2 and w.weighed == ()
    assert w.spot["checkpoint_s"] == 600          # no step time: a reclaim may cost the whole run so far
    assert "spot:" in p.explain()


def test_an_executor_without_spot_nodes_gets_no_spot_placement():
    from lepton_accel.scheduler.placement import ClusterState
    from lepton_accel.scheduler.ray_executor import RayExecutor

    assert not RayExecutor.offers_spot and Nodes.offers_spot
    p = place(_job(), CAT, ClusterState(spot=False))
    assert p.winner is not None and not p.winner.spot
    assert {c.excluded for c in p.candidates if c.spot is not None} == {"this executor launches no spot nodes"}
    assert place(_job(spot=True), CAT, ClusterState(spot=False)).winner is None
