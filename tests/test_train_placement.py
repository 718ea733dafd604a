"""Placement of train jobs: step time from the perf model (the seed CNN's layers as OpSpecs,
forward and backward) plus the gradient all-reduce over the type's network; the type and
the worker count chosen under the policy and deadline; explain shows the counts weighed."""
import math

import pytest

from lepton_accel.perf import MODEL
from lepton_accel.scheduler.catalog import load_catalog
from lepton_accel.scheduler.jobs import SpecCosts, parse_workload
from lepton_accel.scheduler.placement import place
from lepton_accel.scheduler.train import seed_cnn_layers, step_estimate

CAT = load_catalog(use_env=False)


def _job(policy="min_cost", deadline=None, spot=False, **train):
    doc = {"train": {"model": "seed_cnn", "epochs": 20, "batch_size": 256, "workers": "auto", **train},
           "policy": policy, "constraints": {"instance_types": ["c7i.2xlarge", "m7i.4xlarge"]}}
    if spot is not None:
        doc["constraints"]["spot"] = spot
    if deadline:
        doc["deadline_s"] = deadline
    return parse_workload(doc, catalog=CAT)[0]


def test_the_step_is_the_layers_forward_and_backward_plus_the_all_reduce():
    specs, params = seed_cnn_layers(32)
    ops = [s.op for s in specs]
    assert ops.count("conv2d") == 2 and ops.count("conv2d_grad_weight") == 2
    assert ops.count("conv2d_grad_input") == 1 and ops.count("matmul") == 6   # no dx for the input
    import torch
    from lepton_accel.torch.cnn import SeedCNN

    assert params == sum(p.numel() for p in SeedCNN().parameters())
    t = CAT["c7i.2xlarge"]
    dev = t.device()
    one = step_estimate({"batch_size": 64, "epochs": 1}, dev, 1, t.network_gbps)
    two = step_estimate({"batch_size": 64, "epochs": 1}, dev, 2, t.network_gbps)
    compute = sum(MODEL.estimate(SpecCosts(s), dev, data_on_host=True).total_s for s in seed_cnn_layers(32)[0])
    assert math.isclose(two["compute_s"], compute)
    assert one["allreduce_s"] == 0
    assert math.isclose(two["allreduce_s"], 2 * (2 - 1) / 2 * 4 * params / (t.network_gbps * 1e9 / 8))
    assert two["steps_per_epoch"] == math.ceil(1437 / 64) and two["step_s"] < one["step_s"]
    del torch


def test_policy_chooses_the_worker_count_and_explain_shows_them():
    cheap, fast = place(_job("min_cost"), CAT), place(_job("min_time"), CAT)
    assert cheap.winner.workers == 1
    assert fast.winner.workers == 8 and fast.winner.time_s < cheap.winner.time_s
    assert fast.winner.cost > cheap.winner.cost
    text = fast.explain()
    for n in (1, 2, 4, 8):
        assert f"n={n} " in text
    assert "chose n=8" in text and "all-reduce" in text


def test_a_named_worker_count_is_kept_and_billed_per_node():
    p1 = place(_job(workers=1), CAT).winner
    p4 = place(_job(workers=4), CAT).winner
    assert (p1.workers, p4.workers) == (1, 4) and len(p4.weighed) == 1
    assert p4.cost == pytest.approx(4 * CAT.launch_cost(p4.itype, p4.itype.startup_s + p4.run_s))


def test_a_deadline_can_need_more_workers():
    free = place(_job("min_cost", epochs=20000), CAT).winner
    by_n = {o["workers"]: o for o in free.weighed}
    # a deadline that one worker misses and two meet
    deadline = free.itype.startup_s + (by_n[1]["run_s"] + by_n[2]["run_s"]) / 2
    tight = place(_job("min_cost", deadline=deadline, epochs=20000), CAT).winner
    assert tight.workers >= 2 and tight.time_s <= deadline


def test_an_entry_point_job_needs_an_estimate():
    from lepton_accel.scheduler.jobs import JobError

    with pytest.raises(JobError, match=r"^estimate_s: missing"):
        parse_workload({"train": {"entry": "m:f", "epochs": 1, "batch_size": 2}})
