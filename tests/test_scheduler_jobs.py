"""Job files: schema validation naming the field; suites; results checked against float64."""
import os
import textwrap
import time

import numpy as np
import yaml

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


# ---- hostile and careless job files: a clear error naming the field, nothing run --------------
def _nested(depth):
    v = [1]
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("job, field", [
    ({"op": "matmul", "a": {"data": [[1, 2], [3]], "dtype": "float32"}, "b": B}, r"jobs\[0\]\.a\.data: ragged"),
    ({"op": "matmul", "a": A, "b": B, "priority": 2**63}, r"jobs\[0\]\.priority: .*int64"),
    ({"op": "matmul", "a": A, "b": B, "priority": -2**63 - 1}, r"jobs\[0\]\.priority: .*int64"),
    ({"op": "matmul", "a": {"data": _nested(3000), "dtype": "float32"}, "b": B}, r"jobs\[0\]\.a\.data.*: nested deeper"),
    ({"op": "matmul", "a": {"shape": [10**7, 10**7], "dtype": "float32"}, "b": B}, r"jobs\[0\]\.a\.shape: .*elements"),
    ({"op": "matmul", "a": {"shape": [1] * 40, "dtype": "float32"}, "b": B}, r"jobs\[0\]\.a\.shape: rank 40"),
    ({"op": "matmul", "a": {"shape": [2**40, 1], "dtype": "int8"}, "b": {"shape": [1, 2**40], "dtype": "int8"}},
     r"jobs\[0\]\.a\.shape: .*elements"),
    ({"op": "matmul", "a": {"data": [[1, 300]], "dtype": "int8"}, "b": {"data": [[1], [2]], "dtype": "int8"}},
     r"jobs\[0\]\.a\.data: values must lie in \[-128, 127\]"),
    ({"op": "matmul", "a": {"data": [[1.5, 2]], "dtype": "int8"}, "b": {"data": [[1], [2]], "dtype": "int8"}},
     r"jobs\[0\]\.a\.data: int8 data must be integers"),
    ({"op": "matmul", "a": {"data": [[1e6, 2]], "dtype": "float16"}, "b": {"data": [[1], [2]], "dtype": "float16"}},
     r"jobs\[0\]\.a\.data: values overflow float16"),
    ({"op": "matmul", "a": A, "b": B, "output": "../out.npy"}, r"jobs\[0\]\.output: .*outside"),
    ({"op": "matmul", "a": A, "b": B, "output": "/tmp/out.npy"}, r"jobs\[0\]\.output: must be a path relative"),
    ({"op": "matmul", "a": A, "b": B, "name": "x\x1b[2J\x1b]0;pwned\x07"}, r"jobs\[0\]\.name: control characters"),
    ({"op": "matmul", "a": A, "b": B, "name": "a\u202eb"}, r"jobs\[0\]\.name: control characters"),
    ({"op": "matmul", "a": A, "b": B, "deadline_s": float("nan")}, r"jobs\[0\]\.deadline_s: nan is not a finite"),
    ({"op": "matmul", "a": A, "b": B, "deadline_s": float("inf")}, r"jobs\[0\]\.deadline_s: inf is not a finite"),
    ({"suite": {"name": "tests"}, "estimate_s": float("inf")}, r"jobs\[0\]\.estimate_s: inf is not a finite"),
    ({"suite": {"name": "shell", "command": "true", "timeout_s": float("nan")}, "estimate_s": 1},
     r"jobs\[0\]\.suite\.timeout_s: nan is not a finite"),
    ({"op": "matmul", "a": {"data": [[float("nan")]], "dtype": "float32"}, "b": {"data": [[1.0]], "dtype": "float32"}},
     r"jobs\[0\]\.a\.data\[0\]\[0\]: nan is not a finite"),
    ({"op": "matmul", "a": A, "b": B, "constraints": {"models": ["TPUv9"]}}, r"jobs\[0\]\.constraints\.models\[0\]: unknown"),
    ({"op": "pool", "a": A, "b": B}, r"jobs\[0\]\.op: unknown op 'pool'; expected one of .*matmul"),
    ({"op": "matmul", "a": A, "b": B, "x": A}, r"jobs\[0\]\.x: only meaningful for conv2d"),
    ({"op": "conv2d", "x": {"shape": [1, 3, 8, 8], "dtype": "float32"}, "w": {"shape": [4, 3, 3, 3], "dtype": "float32"},
      "allow_tf32": True}, r"jobs\[0\]\.allow_tf32: only meaningful for matmul"),
    ({"op": "matmul", "a": A, "b": B, "seed": 2**64}, r"jobs\[0\]\.seed: .*int64"),
])
def test_hostile_job_documents_are_refused_naming_the_field(job, field):
    with pytest.raises(JobError, match=field) as err:
        one(job)
    assert len(str(err.value)) <= 500


def test_unknown_instance_type_is_caught_at_submission():
    from lepton_accel.scheduler.catalog import load_catalog

    job = {"op": "matmul", "a": A, "b": B, "constraints": {"instance_types": ["g6.xlarge", "g9.huge"]}}
    with pytest.raises(JobError, match=r"jobs\[0\]\.constraints\.instance_types\[1\]: unknown instance type 'g9.huge'"):
        one(job, catalog=load_catalog(use_env=False))
    assert one(dict(job, constraints={"instance_types": ["g6.xlarge"]}), catalog=load_catalog(use_env=False))


def test_npz_pickles_and_special_files_are_refused(tmp_path):
    rng = np.random.default_rng()
    np.savez(tmp_path / "a.npz", a=rng.standard_normal((4, 4)).astype(np.float32))
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    os.mkfifo(tmp_path / "fifo.npy")
    for name, msg in (("a.npz", r"a\.path: .*not a \.npy array file"), ("obj.npy", r"a\.path: cannot read"),
                      ("fifo.npy", r"a\.path: .*not a regular file")):
        with pytest.raises(JobError, match=msg):
            parse_workload({"op": "matmul", "a": {"path": name}, "b": B}, base_dir=tmp_path)


def test_yaml_bombs_are_bounded(tmp_path):
    from lepton_accel.scheduler import jobs as J

    assert J._Loader is getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, "
               f"*a{i-1}]" for i in range(1, 10)]
    f = tmp_path / "bomb.yaml"
    f.write_text("\n".join(laughs) + "\n")          # ~500 bytes, 10**10 values expanded
    t0 = time.monotonic()
    with pytest.raises(JobError, match="aliases expand to more than"):
        load_jobs(f)
    assert time.monotonic() - t0 < 10
    # under the expansion limit, but a value whose repr is megabytes: the message is capped
    f.write_text("x: &x [" + ", ".join(["123456789"] * 1000) + "]\ny: &y [" + ", ".join(["*x"] * 100) + "]\n"
                 "name: *y\nop: matmul\na: {shape: [2, 2], dtype: float32}\nb: {shape: [2, 2], dtype: float32}\n")
    with pytest.raises(JobError) as err:
        load_jobs(f)
    assert len(str(err.value)) <= 500
    f.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(JobError, match="nested deeper"):
        load_jobs(f)
    f.write_text("a: &a [*a]\n")
    with pytest.raises(JobError):
        load_jobs(f)
    f.write_text("name: x\n" + "#" * (17 * 2**20))
    with pytest.raises(JobError, match="larger than 16 MiB"):
        load_jobs(f)


SELECTION_REFUSED = [["-p", "evil_plugin"], ["-pevil"], ["--pyargs", "os"], ["--junitxml=/tmp/x.xml"],
                     ["--basetemp=/"], ["-c", "other.ini"], ["--rootdir=/"], ["-o", "python_files=*"],
                     ["--override-ini=addopts=-p evil"], ["@args.txt"], ["--confcutdir=/"], ["../elsewhere"],
                     ["/etc/passwd"], ["test_x.py", "--import-mode=append"], ["-k"]]


@pytest.mark.parametrize("args", SELECTION_REFUSED)
def test_tests_suites_take_selections_only(tmp_path, args):
    roots = [str(tmp_path)]
    job = {"suite": {"name": "tests", "args": args}, "estimate_s": 5}
    with pytest.raises(JobError, match=r"jobs\[0\]\.suite\.args\[\d\]: ") as err:
        one(job, base_dir=tmp_path, roots=roots)
    assert "trusted" in str(err.value) or "outside" in str(err.value) or "needs an expression" in str(err.value)
    assert one(job, base_dir=tmp_path, roots=roots, trusted=True)       # trusted suites: allowed
    ok = {"suite": {"name": "tests", "args": ["test_x.py::test_ok", "-k", "ok and not slow", "-m", "not gpu", "-q",
                                              "--tb=short", "-x", "-p", "no:cacheprovider"]}, "estimate_s": 5}
    assert one(ok, base_dir=tmp_path, roots=roots)


def test_tests_suite_outside_a_declared_root_is_refused_and_rechecked_by_the_worker(tmp_path):
    (tmp_path / "conftest.py").write_text("open('PWNED', 'w').write('1')\n")
    (tmp_path / "test_x.py").write_text("def test_ok():\n    pass\n")
    job = {"suite": {"name": "tests", "args": ["test_x.py"]}, "estimate_s": 5}
    with pytest.raises(JobError, match=r"jobs\[0\]\.suite\.project: .* not inside a declared test root"):
        one(job, base_dir=tmp_path, roots=[])
    # accepted where it was trusted, refused by a worker that does not trust it: nothing runs
    parsed = one(job, base_dir=tmp_path, roots=[], trusted=True)
    res = runner.execute(parsed, "cpu", allow_shell=False, roots=[])
    assert not res["ok"] and "declared test root" in res["error"]
    assert not (tmp_path / "PWNED").exists()


def test_job_commands_get_a_clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2-do-not-leak")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p evil")
    (tmp_path / "test_env.py").write_text("import os\n\ndef test_env():\n    print(sorted(os.environ.items()))\n"
                                          "    assert 'SECRET_TOKEN' not in os.environ\n")
    roots = [str(tmp_path)]
    job = one({"suite": {"name": "tests", "args": ["-s", "test_env.py"]}, "estimate_s": 5},
              base_dir=tmp_path, roots=roots)
    res = runner.execute(job, "cpu", roots=roots)
    assert res["ok"], res["output_tail"]
    assert "hunter2" not in res["output_tail"] and "PATH" in res["output_tail"]
    shell = one({"suite": {"name": "shell", "command": "env"}, "estimate_s": 1}, base_dir=tmp_path)
    res = runner.execute(shell, "cpu", allow_shell=True)
    assert res["ok"] and "hunter2" not in res["output_tail"] and "PYTEST_ADDOPTS" not in res["output_tail"]
    res = runner.execute(shell, "cpu", allow_shell=True, env_names=("SECRET_TOKEN",))   # declared: passed on
    assert "hunter2" in res["output_tail"]


def test_output_is_written_inside_the_job_directory_only(tmp_path):
    job = one({"op": "matmul", "a": A, "b": B, "output": "out/r.npy", "seed": 3}, base_dir=tmp_path)
    (tmp_path / "out").mkdir()
    res = runner.execute(job, "cpu")
    assert res["ok"] and np.load(tmp_path / "out" / "r.npy").shape == (8, 4)
    os.remove(tmp_path / "out" / "r.npy")
    os.rmdir(tmp_path / "out")
    os.symlink("/tmp", tmp_path / "out")      # swapped for a link after submission
    res = runner.execute(job, "cpu")
    assert not res["ok"] and "outside the job's directory" in res["error"]


def test_the_op_fields_come_from_the_op_definitions():
    from lepton_accel.ops import OPS
    from lepton_accel.scheduler.jobs import op_schema

    for name, opdef in OPS.items():
        schema = op_schema(opdef)
        assert set(opdef.operands) <= set(schema["required"])
        assert set(opdef.job_properties) <= set(schema["properties"])
    job = one({"op": "matmul", "a": {"shape": [8, 16], "dtype": "float32"}, "b": B, "allow_tf32": True})
    assert job.spec.params.allow_tf32 is True


@pytest.mark.skipif("conv2d_grad_input" not in __import__("lepton_accel.ops", fromlist=["OPS"]).OPS,
                    reason="no convolution-gradient ops registered")
def test_an_op_added_to_the_registry_runs_from_a_job_file_unchanged():
    seed = int(np.random.default_rng().integers(1 << 30))
    docs = [{"op": "conv2d_grad_input", "dy": {"shape": [2, 4, 7, 5], "dtype": "float32"},
             "w": {"shape": [4, 3, 3, 3], "dtype": "float32"}, "padding": 1, "input_hw": [7, 5], "seed": seed},
            {"op": "conv2d_grad_weight", "x": {"shape": [2, 3, 7, 5], "dtype": "float32"},
             "dy": {"shape": [2, 4, 7, 5], "dtype": "float32"}, "padding": 1, "kernel_hw": [3, 3], "seed": seed}]
    for doc in docs:
        job = one(doc)
        res = runner.execute(job, "cpu")
        assert res["ok"] and res["verified"] and res["rel_err"] < 1e-5, res
    with pytest.raises(JobError, match=r"jobs\[0\]\.input_hw: only meaningful for conv2d_grad_input"):
        one({"op": "matmul", "a": A, "b": B, "input_hw": [4, 4]})
