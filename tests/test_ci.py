"""`lepton-accel ci`: shard planning, the not-run-on-its-hardware rule, the merged report,
and the command end to end on the sample project in tests/ci_sample."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

from lepton_accel.scheduler import ci
from lepton_accel.scheduler.catalog import load_catalog
from lepton_accel.scheduler.jobs import JobError, parse_job

SAMPLE = Path(__file__).parent / "ci_sample"
ROOT = Path(__file__).resolve().parents[1]


# ---- shard planning -------------------------------------------------------------------------
durations_st = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=6),
                               st.floats(0, 500, allow_nan=False, allow_infinity=False), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(durations_st, st.one_of(st.none(), st.floats(0, 3000)), st.integers(1, 8), st.floats(0, 5))
def test_every_test_in_exactly_one_shard_and_the_makespan_bound(durations, budget, cap, overhead):
    plan = ci.plan_shards(durations, budget_s=budget, max_shards=cap, overhead_s=overhead)
    flat = [t for s in plan for t in s]
    assert sorted(flat) == sorted(durations) and len(flat) == len(set(flat))
    assert 1 <= len(plan) <= cap and all(plan)
    k = len(plan)
    span = ci.makespan(plan, durations, overhead)
    # list scheduling: no shard exceeds the mean load by more than the longest test
    assert span <= overhead + sum(durations.values()) / k + max(durations.values()) + 1e-6
    if budget is None:
        assert k == 1
    elif span <= budget:
        # the fewest shards that fit: one fewer would not
        assert k == 1 or ci.makespan(ci.assign(durations, k - 1), durations, overhead) > budget
    else:
        # the budget cannot be met within the cap: the cap (or one test a shard) is used
        assert k == min(cap, len(durations))


def test_recorded_durations_decide_the_shards():
    recorded = {"a": 30.0, "b": 30.0, "c": 30.0, "d": 1.0, "e": 1.0}
    one = ci.plan_shards(recorded, budget_s=100, max_shards=4, overhead_s=2)
    assert len(one) == 1
    two = ci.plan_shards(recorded, budget_s=70, max_shards=4, overhead_s=2)
    assert len(two) == 2 and ci.makespan(two, recorded, 2) == 62
    three = ci.plan_shards(recorded, budget_s=40, max_shards=4, overhead_s=2)
    assert sorted(sorted(s) for s in three) == [["a", "d"], ["b", "e"], ["c"]]
    assert ci.plan_shards(recorded, budget_s=10, max_shards=2) == ci.assign(recorded, 2)
    with pytest.raises(ValueError, match="max_shards"):
        ci.plan_shards(recorded, budget_s=10, max_shards=0)


def test_plan_jobs_groups_by_marker_and_uses_recorded_durations():
    config = ci.CIConfig(markers={"gpu": {"kind": "gpu", "models": ["H100-SXM"]}, "sim": {"kind": "cpu"}},
                         default_s=5.0, shard_overhead_s=1.0)
    tests = [("t.py::a", ()), ("t.py::b", ("sim", "gpu")), ("t.py::c", ("sim",)), ("t.py::d", ("slow",)),
             ("t.py::e", ())]
    coll = ci.Collection(root=str(SAMPLE), tests=tests)
    catalog = load_catalog()
    groups, plan, docs = ci.plan_jobs(coll, config, {"t.py::a": 100.0}, deadline_s=100 + 40 + 1 + 3,
                                      max_shards=2, catalog=catalog)
    assert groups == {"cpu": {"kind": "cpu"}, "gpu": {"kind": "gpu", "models": ["H100-SXM"]},
                      "sim": {"kind": "cpu"}}
    # first declared marker wins: b carries sim and gpu and goes with gpu
    by_group = {}
    for g, ids in plan:
        by_group.setdefault(g, []).append(sorted(ids))
    assert by_group == {"cpu": [["t.py::a"], ["t.py::d", "t.py::e"]], "gpu": [["t.py::b"]], "sim": [["t.py::c"]]}
    est = {d["name"]: d["estimate_s"] for d in docs}
    assert est["ci-cpu-1of2"] == 101.0 and est["ci-cpu-2of2"] == 11.0 and est["ci-gpu-1of1"] == 6.0
    for (g, _), doc in zip(plan, docs):
        job = parse_job(doc, g, str(SAMPLE), catalog=catalog, trusted=False, roots=[str(SAMPLE)])
        assert job.suite["junit"] is True and job.deadline_s == 144


def test_a_job_file_may_ask_for_a_report_but_never_choose_its_path(tmp_path):
    doc = {"suite": {"name": "tests", "args": ["check_basic.py"], "junit": True}, "estimate_s": 1}
    assert parse_job(doc, "", str(SAMPLE), trusted=False, roots=[str(SAMPLE)]).suite["junit"] is True
    with pytest.raises(JobError, match="junit"):
        parse_job({**doc, "suite": {**doc["suite"], "junit": str(tmp_path / "x.xml")}}, "", str(SAMPLE),
                  trusted=False, roots=[str(SAMPLE)])
    with pytest.raises(JobError, match="--junitxml"):
        parse_job({**doc, "suite": {"name": "tests", "args": [f"--junitxml={tmp_path}/x.xml"]}}, "",
                  str(SAMPLE), trusted=False, roots=[str(SAMPLE)])


def test_config_errors_name_the_key(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.lepton_accel.ci]\nmarker = {}\n")
    with pytest.raises(ci.CIError, match="unknown key 'marker'"):
        ci.load_config(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.lepton_accel.ci]\ndefault_s = 'long'\n")
    with pytest.raises(ci.CIError, match="default_s"):
        ci.load_config(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.lepton_accel.ci.markers]\nray = {max_shards = 0}\n")
    with pytest.raises(ci.CIError, match="ray.max_shards"):
        ci.load_config(tmp_path)
    own = ci.load_config(ROOT)
    assert own.markers["ray"]["max_shards"] == 1
    assert ci.constraints_of("ray", own) == {"kind": "cpu"} and ci.shard_cap("ray", own, 4) == 1
    assert ci.shard_cap("gpu", own, 4) == 4
    cfg = ci.load_config(SAMPLE)
    assert cfg.markers == {"gpu": {"kind": "gpu"}} and cfg.default_s == 0.5


# ---- the not-run-on-its-hardware rule -----------------------------------------------------------
_XML = ('<testsuites><testsuite name="pytest">'
        '<testcase classname="check_gpu" name="test_a" time="0.5"/>'
        '<testcase classname="check_gpu.TestK" name="test_b[1-x]" time="0.25"/>'
        '<testcase classname="check_gpu" name="test_c" time="0"><skipped message="no widget"/></testcase>'
        '</testsuite></testsuites>')
_IDS = ["check_gpu.py::test_a", "check_gpu.py::TestK::test_b[1-x]", "check_gpu.py::test_c"]


def _record(backend, itype="g6.xlarge", state="done", xml=_XML):
    return SimpleNamespace(name="ci-gpu-1of1", itype=itype, backend=backend, state=state, measured_s=1.5,
                           est_cost=0.01, error=None, result={"junit_xml": xml, "backend": backend})


def _report(constraints, backend, itype="g6.xlarge"):
    return ci.build_report({"g": constraints}, {"j": ("g", _IDS)}, {"j": _record(backend, itype)},
                           load_catalog())


@pytest.mark.parametrize("constraints,itype", [({"kind": "gpu"}, "g6.xlarge"), ({}, "g6.xlarge"),
                                               ({"kind": "fpga"}, "f2.6xlarge")])
def test_an_accelerator_group_on_a_stand_in_is_not_passed(constraints, itype, tmp_path):
    [rep] = _report(constraints, "cpu", itype)
    assert [c.id for c in rep.cases] == _IDS
    assert not rep.on_hardware and not rep.failed
    assert rep.status(False) == "NOT RUN ON ITS HARDWARE" and "required" in rep.status(True)
    assert ci.exit_status([rep], require_hardware=False) == 0
    assert ci.exit_status([rep], require_hardware=True) == 1
    table = ci.format_table([rep], False)
    assert "passed" not in table.splitlines()[2] and "not counted as passed" in table
    for required, tag in ((False, "skipped"), (True, "failure")):
        out = tmp_path / f"{required}.xml"
        ci.write_junit([rep], out, required)
        cases = ET.parse(out).getroot().findall(".//testcase")
        # no test of the group reads as passed: each carries a skipped or failure element
        assert len(cases) == 3 and all(len(c) == 1 for c in cases)
        assert sum(c[0].tag == tag and "not run on its hardware" in c[0].get("message") for c in cases) == 2


def test_a_group_on_its_hardware_or_needing_none_passes():
    kinds = {"gpu": "cuda", "fpga": "fpga"}
    for kind, itype in (("gpu", "g6.xlarge"), ("fpga", "f2.6xlarge")):
        [rep] = _report({"kind": kind}, kinds[kind], itype)
        assert rep.on_hardware and rep.status(True) == "passed"
        assert ci.exit_status([rep], require_hardware=True) == 0
    [rep] = _report({"kind": "cpu"}, "cpu", "c7i.large")
    assert rep.kind is None and rep.on_hardware and ci.exit_status([rep], True) == 0


def test_a_failed_shard_without_a_report_is_a_failure():
    rec = _record("cpu", "c7i.large", state="failed", xml=None)
    rec.error = "suite timed out after 5 s"
    [rep] = ci.build_report({"g": {"kind": "cpu"}}, {"j": ("g", _IDS)}, {"j": rec}, load_catalog())
    assert rep.failed and ci.exit_status([rep], False) == 1
    assert "timed out" in ci.format_table([rep], False)


# ---- end to end -------------------------------------------------------------------------------
def _ci(*args, store):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "lepton_accel.cli", "ci", *map(str, args), "--store", str(store),
                           "--max-workers", "3"], capture_output=True, text=True, timeout=300, env=env)


def _cuda_here() -> bool:
    from lepton_accel.scheduler.runner import backend_for

    return backend_for("gpu") == "cuda"


_SAMPLE_IDS = ["check_basic.py::test_adds", "check_basic.py::test_square_is_positive[1]",
               "check_basic.py::test_square_is_positive[7]", "check_basic.py::TestStrings::test_upper",
               "check_basic.py::test_fails_on_purpose", "check_basic.py::test_skipped",
               "check_gpu.py::test_needs_a_gpu"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ci")
    p = _ci(SAMPLE, "--junit", d / "merged.xml", store=d / "jobs.sqlite")
    return p, d


def test_the_sample_suite_end_to_end(sample_run):
    p, d = sample_run
    assert p.returncode == 1, p.stdout + p.stderr          # one test fails on purpose
    rows = {line.split()[0]: line.split() for line in p.stdout.splitlines()[2:4]}
    # group needs itype ran-on shards passed failed skipped time cost status...
    cpu, gpu = rows["cpu"], rows["gpu"]
    assert cpu[5:8] == ["4", "1", "1"] and cpu[10] == "FAILED"
    assert "FAILED check_basic.py::test_fails_on_purpose" in p.stdout
    assert "skipped check_basic.py::test_skipped: no widget on this machine" in p.stdout
    assert "test_deselected_by_the_project" not in p.stdout + (d / "merged.xml").read_text()
    on_hw = _cuda_here()
    assert gpu[1] == "gpu" and gpu[3] == ("cuda" if on_hw else "cpu")
    assert (gpu[10] == "passed") if on_hw else (" ".join(gpu[10:]) == "NOT RUN ON ITS HARDWARE")
    root = ET.parse(d / "merged.xml").getroot()
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert suites["cpu"].get("tests") == "6" and suites["cpu"].get("failures") == "1"
    assert suites["gpu"].get("skipped") == ("0" if on_hw else "1")
    # the durations measured are kept for the next plan (skipped tests are not)
    known = ci.Durations(d / "jobs.sqlite").get(str(SAMPLE.resolve()), _SAMPLE_IDS)
    assert set(known) == set(_SAMPLE_IDS) - {"check_basic.py::test_skipped"}
    assert all(0 <= s < 60 for s in known.values())


def test_the_next_plan_uses_the_recorded_durations(sample_run):
    _, d = sample_run
    coll = ci.Collection(root=str(SAMPLE.resolve()), tests=[(t, ("gpu",) if "gpu" in t else ()) for t in _SAMPLE_IDS])
    known = ci.Durations(d / "jobs.sqlite").get(coll.root, _SAMPLE_IDS)
    config = ci.load_config(SAMPLE)
    _, plan, docs = ci.plan_jobs(coll, config, known, deadline_s=None, max_shards=2, catalog=load_catalog())
    gpu = next(doc for doc in docs if doc["name"] == "ci-gpu-1of1")
    assert gpu["estimate_s"] == pytest.approx(config.shard_overhead_s + known["check_gpu.py::test_needs_a_gpu"])
    cpu = next(doc for doc in docs if doc["name"] == "ci-cpu-1of1")
    # the skipped test has no record and is assumed to take the default
    assert cpu["estimate_s"] == pytest.approx(config.shard_overhead_s + config.default_s +
                                              sum(v for k, v in known.items() if k.startswith("check_basic")))


def test_collection_errors_and_missing_paths_exit_2(tmp_path, capsys):
    from lepton_accel.cli import main

    (tmp_path / "test_broken.py").write_text("import no_such_module_here\n")
    assert main(["ci", str(tmp_path), "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "could not collect" in err and "no_such_module_here" in err
    assert "Traceback (most recent call last)" not in err
    assert main(["ci", str(tmp_path / "absent"), "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_the_sample_suite_on_a_ray_cluster(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from lepton_accel.cli import main
    from lepton_accel.scheduler.ray_executor import resource_name

    catalog = load_catalog(use_env=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        # the cheapest CPU and GPU types, where placement puts the groups; the GPU node
        # declares a GPU to Ray, but this machine's workers have no CUDA device
        cluster.add_node(num_cpus=1, resources={resource_name(catalog["c7i.large"]): 1})
        cluster.add_node(num_cpus=1, num_gpus=1, resources={resource_name(catalog["g6.xlarge"]): 1,
                                                            "accelerator_type:L4": 1})
        rc = main(["ci", str(SAMPLE), "--ray", cluster.address, "--store", str(tmp_path / "s.sqlite"),
                   "--timeout", "180"])
    finally:
        ray.shutdown()
        cluster.shutdown()
    out = capsys.readouterr().out
    assert rc == 1, out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:4]}
    assert rows["cpu"][2] == "c7i.large" and rows["cpu"][5:8] == ["4", "1", "1"], out
    assert rows["gpu"][2] == "g6.xlarge", out
    if not _cuda_here():
        assert rows["gpu"][3] == "cpu" and "NOT RUN ON ITS HARDWARE" in out, out
