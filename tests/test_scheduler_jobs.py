"""Job files: schema validation naming the field; suites; results checked against float64."""
import textwrap

import numpy as np

from lepton_accel import reference
import pytest

from lepton_accel.scheduler import runner
from lepton_accel.scheduler.jobs import JobError, load_jobs, parse_workload

A = {"shape": [8, 16], "dtype": "float32"}
B = {"shape": [16, 4], "dtype": "float32"}


def one(job, **kw):
    return parse_workload({"jobs": [job]}, **kw)[0]


@pytest.mark.parametrize("job, field", [
    ({"op": "matmul", "a": {"shape": [8, 16], "dtype": "float33"}, "b": B}, r"jobs\[0\]\.a\.dtype: "),
    ({"op": "matmul", "a": {"shape": [8, 0], "dtype": "float32"}, "b": B}, r"jobs\[0\]\.a\.shape\[1\]: "),
    ({"op": "matmul", "a": {"shape": [8, 16]}, "b": B}, r"jobs\[0\]\.a\.dtype: missing"),
    ({"op": "matmul", "a": A, "b": B, "polcy": "min_cost"}, r"jobs\[0\]\.polcy: unknown field"),
    ({"op": "matmul", "a": A, "b": B, "policy": "cheapest"}, r"jobs\[0\]\.policy: "),
    ({"op": "matmul", "a": A, "b": B, "deadline_s": -1}, r"jobs\[0\]\.deadline_s: "),
    ({"op": "matmul", "a": A, "b": B, "priority": "high"}, r"jobs\[0\]\.priority: "),
    ({"op": "matmul", "a": A, "b": B, "constraints": {"kind": "tpu"}}, r"jobs\[0\]\.constraints\.kind: "),
    ({"op": "matmul", "a": A, "b": B, "constraints": {"gpu": True}}, r"jobs\[0\]\.constraints\.gpu: unknown"),
    ({"op": "matmul", "a": A}, r"jobs\[0\]\.b: missing"),
    ({"op": "matmul", "a": A, "b": {"shape": [15, 4], "dtype": "float32"}}, r"jobs\[0\]\.b: inner dimensions"),
    ({"op": "matmul", "a": A, "b": {"shape": [16, 4], "dtype": "float16"}}, r"jobs\[0\]\.b: dtype"),
    ({"op": "matmul", "a": A, "b": B, "stride": 2}, r"jobs\[0\]\.stride: only meaningful for conv2d"),
    ({"op": "matmul", "a": {"shape": [8, 16], "dtype": "int8"}, "b": {"shape": [16, 4], "dtype": "int8"},
      "activation": "gelu"}, r"jobs\[0\]\.activation: "),
    ({"op": "conv2d", "x": {"shape": [1, 3, 8, 8], "dtype": "float32"},
      "w": {"shape": [4, 3, 3, 3], "dtype": "float32"}, "padding": 5}, r"jobs\[0\]\.padding: "),
    ({"op": "conv2d", "x": {"shape": [1, 3, 8, 8], "dtype": "float32"},
      "w": {"shape": [4, 3, 3, 3], "dtype": "float32"}, "layout": "CHWN"}, r"jobs\[0\]\.layout: "),
    ({"op": "conv2d", "x": {"shape": [1, 3, 8, 8], "dtype": "float32"},
      "w": {"shape": [4, 3, 3, 3], "dtype": "float32"}, "groups": 2}, r"jobs\[0\]\.groups: "),
    ({"op": "matmul", "a": {"shape": [2, 2], "data": [[1, 2], [3, 4]], "dtype": "int8"}, "b": B},
     r"jobs\[0\]\.a: an operand is"),
    ({"a": A, "b": B}, r"jobs\[0\]\.op: "),
    ({"suite": {"name": "tests"}}, r"jobs\[0\]\.estimate_s: missing"),
    ({"suite": {"name": "rm -rf"}, "estimate_s": 1}, r"jobs\[0\]\.suite\.name: "),
    ({"suite": {"name": "shell"}, "estimate_s": 1}, r"jobs\[0\]\.suite\.command: missing"),
])
def test_errors_name_the_field(job, field):
    with pytest.raises(JobError, match=field):
        one(job)


def test_workload_defaults_merge_and_file_errors_name_the_file(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text(textwrap.dedent("""
        defaults: {policy: min_time, constraints: {kind: gpu}}
        jobs:
          - {op: matmul, a: {shape: [4, 8], dtype: float16}, b: {shape: [8, 2], dtype: float16}}
          - {op: matmul, a: {shape: [4, 8], dtype: int8}, b: {shape: [8, 2], dtype: int8},
             policy: min_cost, constraints: {models: [L4]}}
    """))
    a, b = load_jobs(f)
    assert (a.policy, a.constraints.kinds) == ("min_time", ("gpu",))
    assert (b.policy, b.constraints.kinds, b.constraints.models) == ("min_cost", ("gpu",), ("L4",))
    f.write_text("jobs:\n  - {op: matmul, a: {shape: [4, 8], dtype: int8}, b: {shape: [9, 2], dtype: int8}}\n")
    with pytest.raises(JobError, match=r"jobs\[0\]\.b: inner"):
        load_jobs(f)
    f.write_text("jobs: [\n")
    with pytest.raises(JobError, match="not valid YAML"):
        load_jobs(f)


def test_operands_by_path_and_inline(tmp_path):
    rng = np.random.default_rng()
    a = rng.standard_normal((5, 7)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    b = rng.integers(-3, 3, (7, 3)).tolist()
    job = parse_workload({"op": "matmul", "a": {"path": "a.npy"}, "b": {"data": b, "dtype": "float32"}},
                         base_dir=tmp_path)[0]
    assert job.spec.shapes == ((5, 7), (7, 3))
    res = runner.execute(job, "cpu")
    assert res["ok"] and res["verified"] and res["out_shape"] == [5, 3]
    with pytest.raises(JobError, match=r"a\.path: cannot read"):
        parse_workload({"op": "matmul", "a": {"path": "missing.npy"}, "b": B}, base_dir=tmp_path)
    with pytest.raises(JobError, match=r"a\.dtype: file holds float32"):
        parse_workload({"op": "matmul", "a": {"path": "a.npy", "dtype": "int8"}, "b": B}, base_dir=tmp_path)


def test_shell_suite_runs_only_when_enabled(tmp_path):
    job = one({"suite": {"name": "shell", "command": "echo hello > out.txt"}, "estimate_s": 1}, base_dir=tmp_path)
    res = runner.execute(job, "cpu", allow_shell=False)
    assert not res["ok"] and "disabled" in res["error"] and not (tmp_path / "out.txt").exists()
    res = runner.execute(job, "cpu", allow_shell=True)
    assert res["ok"] and (tmp_path / "out.txt").read_text().strip() == "hello"


def test_tests_suite_runs_pytest_as_an_argument_list(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    roots = [str(tmp_path)]     # the directory is declared a test root
    job = one({"suite": {"name": "tests", "args": ["-q", "-p", "no:cacheprovider", "test_x.py; echo pwned"]},
               "estimate_s": 5}, base_dir=tmp_path, roots=roots)
    res = runner.execute(job, "cpu", roots=roots)
    assert not res["ok"]   # the odd argument is a (missing) file name, never a shell command
    assert "pwned" not in res["output_tail"].replace("test_x.py; echo pwned", "")
    job = one({"suite": {"name": "tests", "args": ["-q", "-p", "no:cacheprovider", "test_x.py"]}, "estimate_s": 5},
              base_dir=tmp_path, roots=roots)
    res = runner.execute(job, "cpu", roots=roots)
    assert res["ok"] and "1 passed" in res["output_tail"]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
def test_results_are_checked_against_float64(dtype):
    seed = int(np.random.default_rng().integers(1 << 30))
    bias_dt = "int32" if dtype == "int8" else "float32"
    job = one({"op": "matmul", "a": {"shape": [3, 33, 70], "dtype": dtype}, "b": {"shape": [70, 21], "dtype": dtype},
               "bias": {"shape": [21], "dtype": bias_dt}, "activation": "relu", "seed": seed})
    res = runner.execute(job, "cpu")
    assert res["ok"] and res["verified"], res
    # the check can fail: a perturbed output is caught
    ops = runner.operands(job)
    spec = job.spec
    ref = reference.reference(spec, (ops["a"], ops["b"]), ops["bias"])
    out = ref.copy()
    out.flat[int(np.random.default_rng().integers(out.size))] += 1 if dtype == "int8" else 0.5 * np.abs(ref).max() + 1
    assert reference.check(spec, out, ref)["verified"] is False
    assert reference.check(spec, ref, ref)["verified"] is True


def test_conv_reference_checks_grouped_strided_nhwc():
    seed = int(np.random.default_rng().integers(1 << 30))
    job = one({"op": "conv2d", "x": {"shape": [2, 11, 13, 8], "dtype": "float32"},
               "w": {"shape": [12, 4, 3, 2], "dtype": "float32"}, "groups": 2, "stride": [2, 1],
               "dilation": [1, 2], "padding": [1, 1], "layout": "NHWC", "seed": seed})
    res = runner.execute(job, "cpu")
    assert res["ok"] and res["verified"] and res["rel_err"] < 1e-5, res


def test_failures_come_back_as_results():
    job = one({"op": "matmul", "a": A, "b": B})
    res = runner.execute(job, "no-such-backend")
    assert not res["ok"] and "backend" in res["error"]
