"""Catalog and placement: hand-checkable cases and properties over random jobs."""
import math

import pytest
from hypothesis import given, settings, strategies as st

from lepton_accel.perf import DEVICES
from lepton_accel.scheduler.catalog import Billing, load_catalog
from lepton_accel.scheduler.jobs import parse_job
from lepton_accel.scheduler.placement import ClusterState, NodeView, candidates, place

CAT = load_catalog(use_env=False)


def gemm_job(m, n, k, dtype="int8", **extra):
    return parse_job({"op": "matmul", "a": {"shape": [m, k], "dtype": dtype},
                      "b": {"shape": [k, n], "dtype": dtype}, **extra})


# ---- catalog -------------------------------------------------------------------------------
def test_catalog_has_dated_sourced_types():
    assert CAT.date and CAT.source
    assert CAT["g5.xlarge"].accelerator == "A10G" and CAT["g5.xlarge"].price_per_hour == 1.006
    assert CAT["g6.xlarge"].price_per_hour == 0.8048
    assert (CAT["p4d.24xlarge"].accelerator, CAT["p4d.24xlarge"].slots) == ("A100-40GB", 8)
    assert (CAT["p5.48xlarge"].price_per_hour, CAT["p5.48xlarge"].slots) == (55.04, 8)
    assert [CAT[f"f2.{s}"].accelerator_count for s in ("6xlarge", "12xlarge", "48xlarge")] == [1, 2, 8]
    assert [CAT[f"f2.{s}"].price_per_hour for s in ("6xlarge", "12xlarge", "48xlarge")] == [1.98, 3.96, 15.84]
    for name in ("f1.2xlarge", "f1.4xlarge", "f1.16xlarge"):
        assert CAT[name].retired == "2025-12-20" and CAT[name].accelerator == "VU9P"
    assert {t.kind for t in CAT} == {"cpu", "gpu", "fpga"}
    assert all(t.source for t in CAT)
    # FPGA parts carry their DSP count and kernel clock (from perf)
    assert CAT["f2.6xlarge"].device().dsp == 9024 and CAT["f2.6xlarge"].device().clock_hz == 250e6
    assert CAT["f1.2xlarge"].device().dsp == 6840


def test_cpu_types_scale_with_vcpus():
    small, big = CAT["c7i.large"].device(), CAT["m7i.4xlarge"].device()
    assert big.peak["float32"] == pytest.approx(8 * small.peak["float32"])


def test_billing_is_per_second_with_a_minimum():
    b = Billing(1, 60)
    assert b.billed_seconds(0.2) == 60 and b.billed_seconds(60.0) == 60
    assert b.billed_seconds(60.01) == 61 and b.billed_seconds(125.5) == 126
    assert CAT.launch_cost("g6.xlarge", 10) == pytest.approx(0.8048 * 60 / 3600)


def test_user_catalog_overrides_and_extends(tmp_path):
    f = tmp_path / "cat.yaml"
    f.write_text("date: '2030-01-01'\nbilling: {minimum_s: 0}\n"
                 "types:\n  g6.xlarge: {vcpus: 4, memory_gib: 16, accelerator: {model: L4, count: 1}, price_per_hour: 0.5}\n"
                 "  my.fpga: {vcpus: 8, memory_gib: 64, accelerator: {model: VU47P, count: 1}, price_per_hour: 0.25}\n"
                 "  c7i.large: null\n")
    cat = load_catalog(f, use_env=False)
    assert cat.date == "2030-01-01" and cat.billing.minimum_s == 0
    assert cat["g6.xlarge"].price_per_hour == 0.5 and cat["my.fpga"].kind == "fpga"
    assert "c7i.large" not in cat.types and "p5.48xlarge" in cat.types


def test_user_catalog_errors_name_the_field(tmp_path):
    f = tmp_path / "cat.yaml"
    f.write_text("types:\n  x.large: {vcpus: 4, memory_gib: 16, accelerator: {model: TPUv9}, price_per_hour: 1}\n")
    with pytest.raises(ValueError, match=r"types.x.large.accelerator.model"):
        load_catalog(f, use_env=False)


# ---- hand-checkable placements ------------------------------------------------------------
BIG = (8192, 8192, 8192)
EIGHT_GPU_OR_FPGA = {"instance_types": ["f2.6xlarge", "p4d.24xlarge", "p5.48xlarge"]}


def fpga_run_s():
    # 32x32 output-stationary core: (8192/32)^2 tiles x K=8192 cycles at 250 MHz x 0.95,
    # plus 402,653,184 bytes over a 12 GB/s link, plus 20 us call overhead
    dev = DEVICES["VU47P"]
    compute = (8192 // dev.core_rows) * (8192 // dev.core_cols) * 8192 / (dev.clock_hz * 0.95)
    moved = 2 * 8192 * 8192 + 4 * 8192 * 8192
    return compute + moved / 12e9 + 20e-6


def test_cheaper_fpga_wins_large_int8_gemm_without_deadline():
    p = place(gemm_job(*BIG, constraints=EIGHT_GPU_OR_FPGA), CAT)
    assert p.itype == "f2.6xlarge"
    run = fpga_run_s()
    assert run == pytest.approx(2.2944, abs=1e-3)
    total = 60 + 8 + run                      # start-up + image load + run
    assert p.winner.time_s == pytest.approx(total)
    assert p.winner.cost == pytest.approx(1.98 * math.ceil(total) / 3600)   # 71 s billed
    by = {c.itype.name: c for c in p.candidates}
    assert by["p5.48xlarge"].cost == pytest.approx(55.04 * 61 / 3600)      # whole node, 61 s
    assert by["p4d.24xlarge"].cost == pytest.approx(21.9576 * 61 / 3600)
    assert "lowest cost" in p.reason


def test_tight_deadline_moves_it_to_gpu():
    p = place(gemm_job(*BIG, constraints=EIGHT_GPU_OR_FPGA, deadline_s=65), CAT)
    assert p.itype == "p4d.24xlarge"          # cheaper of the two GPU types meeting 65 s
    fpga = next(c for c in p.candidates if c.itype.name == "f2.6xlarge")
    assert not fpga.feasible and "deadline" in fpga.excluded
    assert "deadline ruled out" in p.reason and "f2.6xlarge" in p.reason
    assert place(gemm_job(*BIG, constraints=EIGHT_GPU_OR_FPGA, deadline_s=65, policy="min_time"),
                 CAT).itype == "p5.48xlarge"


def test_affinity_to_a_node_holding_the_core():
    job = gemm_job(*BIG, constraints=EIGHT_GPU_OR_FPGA, deadline_s=5)
    core = job.core
    cold = ClusterState([NodeView("f2-a", "f2.6xlarge", 1, frozenset())])
    # 8 s image load on the warm node misses 5 s; nothing else can start in time
    assert place(job, CAT, cold).winner is None
    warm = ClusterState([NodeView("f2-a", "f2.6xlarge", 1, frozenset()),
                         NodeView("f2-b", "f2.6xlarge", 1, frozenset({core}))])
    p = place(job, CAT, warm)
    assert (p.itype, p.winner.node, p.winner.image_load_s) == ("f2.6xlarge", "f2-b", 0.0)
    assert p.winner.cost == pytest.approx(1.98 / 3600 * fpga_run_s())
    assert "already holds core" in p.reason
    # without a deadline the loaded node still wins: no image load to pay for
    p = place(gemm_job(*BIG, constraints=EIGHT_GPU_OR_FPGA), CAT, warm)
    assert p.winner.node == "f2-b"


def test_retired_types_are_skipped_unless_asked():
    job = gemm_job(1024, 1024, 1024, constraints={"models": ["VU9P"]})
    p = place(job, CAT)
    assert p.winner is None and all("retired" in c.excluded for c in p.candidates
                                    if c.itype.accelerator == "VU9P")
    p = place(gemm_job(1024, 1024, 1024, constraints={"models": ["VU9P"], "include_retired": True}), CAT)
    assert p.itype == "f1.2xlarge"


def test_fpga_cannot_run_float_and_constraints_filter():
    p = place(gemm_job(256, 256, 256, "float32"), CAT)
    assert all(not c.feasible for c in p.candidates if c.itype.kind == "fpga")
    p = place(gemm_job(256, 256, 256, "float32", constraints={"kind": "gpu"}), CAT)
    assert p.winner.itype.kind == "gpu" and p.itype == "g6.xlarge"   # cheapest GPU node
    assert place(gemm_job(256, 256, 256, "float16", constraints={"models": ["H100-SXM"]}), CAT).itype == "p5.48xlarge"


def test_warm_node_beats_a_launch_and_explain_lists_every_type():
    job = gemm_job(512, 512, 512, "float32")
    state = ClusterState([NodeView("g6-1", "g6.xlarge", 1)])
    p = place(job, CAT, state)
    assert p.winner.node == "g6-1" and p.winner.startup_s == 0
    text = p.explain()
    for t in CAT:
        assert t.name in text
    assert "<- chosen" in text and "winner:" in text


def test_node_limit_and_waiting():
    job = gemm_job(512, 512, 512, "float32", constraints={"instance_types": ["g6.xlarge"]})
    state = ClusterState([NodeView("g6-1", "g6.xlarge", 0, wait_s=3.0)], max_nodes={"g6.xlarge": 1})
    p = place(job, CAT, state)
    assert p.winner.node == "g6-1" and p.winner.wait_s == 3.0
    assert place(job, CAT, ClusterState([], max_nodes={"g6.xlarge": 0})).winner is None


# ---- properties ----------------------------------------------------------------------------
dims = st.integers(1, 4096)


@settings(max_examples=60, deadline=None)
@given(m=dims, n=dims, k=dims, dtype=st.sampled_from(["float32", "float16", "bfloat16", "int8"]),
       policy=st.sampled_from(["min_cost", "min_time"]), deadline=st.one_of(st.none(), st.floats(1, 200)),
       warm=st.lists(st.sampled_from(sorted(CAT.types)), max_size=4))
def test_winner_is_optimal_among_feasible(m, n, k, dtype, policy, deadline, warm):
    extra = {"policy": policy}
    if deadline is not None:
        extra["deadline_s"] = deadline
    job = gemm_job(m, n, k, dtype, **extra)
    state = ClusterState([NodeView(f"n{i}", t, 1) for i, t in enumerate(warm)])
    p = place(job, CAT, state)
    feas = [c for c in candidates(job, CAT, state) if c.feasible]
    if not feas:
        assert p.winner is None
        return
    assert p.winner is not None and p.winner.feasible
    if deadline is not None:
        assert p.winner.time_s <= deadline
    key = (lambda c: c.cost) if policy == "min_cost" else (lambda c: c.time_s)
    assert key(p.winner) <= min(key(c) for c in feas) * (1 + 1e-12)
    assert not p.winner.itype.retired


# ---- warm nodes: the marginal bill -----------------------------------------------------------
def small_job(**extra):
    return gemm_job(64, 64, 64, "float32", **extra)


def test_warm_node_costs_what_it_adds_to_the_node_bill():
    job = small_job(constraints={"instance_types": ["p4d.24xlarge"]})
    p4d = CAT["p4d.24xlarge"]
    run = next(c for c in candidates(job, CAT) if c.itype.name == "p4d.24xlarge").run_s
    # idle node, history unknown, no idle timeout: the whole node for the run (not 1/8 of it)
    p = place(job, CAT, ClusterState([NodeView("p4d-1", "p4d.24xlarge", 8)]))
    assert p.winner.node == "p4d-1"
    assert p.winner.cost == pytest.approx(21.9576 / 3600 * run)
    # idle for 10 s of a 120 s idle timeout: the job pushes the release back by 10 s + run
    idle10 = NodeView("p4d-1", "p4d.24xlarge", 8, busy_until_s=-10.0)
    p = place(job, CAT, ClusterState([idle10], idle_timeout_s=120))
    assert p.winner.extends_s == pytest.approx(10 + run)
    assert p.winner.cost == pytest.approx(21.9576 / 3600 * (10 + run))
    assert "node life +" in p.explain()
    # another slot busy for 100 s more: the node is billed for this job's time anyway
    busy = NodeView("p4d-1", "p4d.24xlarge", 7, busy_until_s=100.0, age_s=300.0)
    p = place(job, CAT, ClusterState([busy], idle_timeout_s=120))
    assert (p.winner.cost, p.winner.extends_s) == (0.0, 0.0)
    assert "billed for that time anyway" in p.reason
    # young node: the difference is taken between billed seconds (60 s minimum, whole seconds)
    young = NodeView("p4d-1", "p4d.24xlarge", 8, busy_until_s=0.0, age_s=5.0)
    assert place(job, CAT, ClusterState([young])).winner.cost == 0.0       # inside the minimum
    assert p4d.slots == 8


def test_a_stream_of_small_jobs_does_not_keep_a_big_warm_node_alive():
    """A p4d launched for a deadline job, then a small job every 2 s: the small jobs move to
    a cheap type and the p4d goes after its idle timeout instead of living on their slots."""
    idle_timeout, gap = 120.0, 2.0
    nodes = []          # [name, itype, launched, ready, busy_until, released]

    def state(now):
        for n in nodes:
            if n[5] is None and n[4] + idle_timeout <= now:
                n[5] = n[4] + idle_timeout
        live = [n for n in nodes if n[5] is None]
        return ClusterState([NodeView(n[0], n[1], 1 if n[4] <= now and n[3] <= now else 0,
                                      wait_s=max(n[4], n[3]) - now, busy_until_s=max(n[4], n[3]) - now,
                                      age_s=now - n[2]) for n in live], idle_timeout_s=idle_timeout)

    def run(job, now):
        p = place(job, CAT, state(now))
        w = p.winner
        if w.node is None:
            nodes.append([f"{w.itype.name}#{len(nodes)}", w.itype.name, now, now + w.startup_s, now, None])
            node = nodes[-1]
        else:
            node = next(n for n in nodes if n[0] == w.node)
        node[4] = max(now, node[3], node[4]) + w.image_load_s + w.run_s
        return node

    big = run(gemm_job(8192, 8192, 8192, "float16", constraints={"instance_types": ["p4d.24xlarge"]},
                       deadline_s=65), 0.0)
    assert big[1] == "p4d.24xlarge"
    big_done = big[4]
    t, placed_on = big_done, []
    while t < big_done + 600:
        placed_on.append(run(small_job(), t)[1])
        t += gap
    state(t)
    life = (big[5] if big[5] is not None else big[4] + idle_timeout) - big[2]
    # released within a couple of small jobs of its idle timeout (a slot-share price kept it
    # alive for the whole 600 s stream)
    assert life <= big_done + idle_timeout + 2 * gap
    assert sum(name == big[1] for name in placed_on) <= 2
    assert max(set(placed_on), key=placed_on.count) in ("c7i.large", "m7i.xlarge", "c7i.2xlarge")
