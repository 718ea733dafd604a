"""What a worker does with one job: build its inputs, run it, check it.

Operations run through the public API (``lepton_accel.matmul`` / ``conv2d``) with an explicit
``backend=``; the result is checked against a float64 NumPy reference (exact for int8, whose
int32 accumulation wraps) with a relative Frobenius-error bound per dtype. Suites run pytest
as an argument list; the ``shell`` suite runs a command line only when shell was enabled.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from ..dtypes import DTYPES
from .jobs import operand_path

# ---- inputs -------------------------------------------------------------------------------
def _random(shape, dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype == "int8":
        return rng.integers(-128, 128, size=shape, dtype=np.int8)
    if dtype == "int32":
        return rng.integers(-1000, 1000, size=shape, dtype=np.int32)
    return rng.standard_normal(size=shape).astype(DTYPES[dtype])


def operands(doc: dict, base_dir: str) -> dict[str, np.ndarray]:
    names = ("a", "b") if doc["op"] == "matmul" else ("x", "w")
    rng = np.random.default_rng(int(doc.get("seed", 0)))
    out = {}
    for n in names + ("bias",):
        src = doc.get(n)
        if src is None:
            continue
        if "shape" in src:
            out[n] = _random(tuple(src["shape"]), src["dtype"], rng)
        elif "data" in src:
            out[n] = np.asarray(src["data"]).astype(DTYPES[src["dtype"]])
        else:
            out[n] = np.load(operand_path(src, base_dir), allow_pickle=False)
    return out


# ---- running ------------------------------------------------------------------------------------
def _checksum(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def run_op(doc: dict, base_dir: str, backend: str) -> dict[str, Any]:
    import lepton_accel as la

    ops = operands(doc, base_dir)
    bias = ops.get("bias")
    kw: dict[str, Any] = {"bias": bias, "activation": doc.get("activation"), "backend": backend}
    if doc.get("out_dtype"):
        kw["out_dtype"] = doc["out_dtype"]
    if doc["op"] == "matmul":
        t0 = time.perf_counter()
        out = la.matmul(ops["a"], ops["b"], **kw)
        measured = time.perf_counter() - t0
    else:
        for k in ("stride", "padding", "dilation", "groups", "layout"):
            if k in doc:
                kw[k] = tuple(doc[k]) if isinstance(doc[k], list) else doc[k]
        t0 = time.perf_counter()
        out = la.conv2d(ops["x"], ops["w"], **kw)
        measured = time.perf_counter() - t0
    out = np.asarray(out)
    result: dict[str, Any] = {"ok": True, "backend": backend, "measured_s": measured,
                              "out_shape": list(out.shape), "out_dtype": str(out.dtype),
                              "checksum": _checksum(out)}
    if doc.get("verify", True):
        from .. import reference
        from ..ops import get_op

        opdef = get_op(doc["op"])
        arrays = [ops[n] for n in opdef.operands]
        spec = opdef.spec(tuple(a.shape for a in arrays), tuple(_name(a.dtype) for a in arrays),
                          bias_shape=None if bias is None else bias.shape,
                          bias_dtype=None if bias is None else _name(bias.dtype),
                          activation=doc.get("activation"), out_dtype=doc.get("out_dtype"),
                          **opdef.params_from_job(doc))
        ref = reference.reference(spec, arrays, bias)
        result.update(reference.check(spec, out, ref))
    if doc.get("output"):
        path = doc["output"] if os.path.isabs(doc["output"]) else os.path.join(base_dir, doc["output"])
        np.save(path, out)
        result["output"] = path
    return result


def _name(dt) -> str:
    from ..dtypes import dtype_name
    return dtype_name(dt)


def run_suite(doc: dict, base_dir: str, allow_shell: bool) -> dict[str, Any]:
    suite = doc["suite"]
    timeout = suite.get("timeout_s")
    if suite["name"] == "shell":
        if not allow_shell:
            return {"ok": False, "error": "shell suites are disabled; enable them explicitly "
                                          "(--allow-shell or LEPTON_ACCEL_ALLOW_SHELL=1)"}
        argv, shell = suite["command"], True
    else:
        extra = ["--benchmark-only"] if suite["name"] == "benchmarks" else []
        argv, shell = [sys.executable, "-m", "pytest", *extra, *suite.get("args", [])], False
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, shell=shell, cwd=base_dir, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"suite timed out after {timeout} s",
                "measured_s": time.perf_counter() - t0}
    tail = (p.stdout + p.stderr)[-4000:]
    return {"ok": p.returncode == 0, "returncode": p.returncode, "measured_s": time.perf_counter() - t0,
            "verified": p.returncode == 0, "output_tail": tail,
            **({} if p.returncode == 0 else {"error": f"suite exited with {p.returncode}"})}


def execute(doc: dict, base_dir: str, backend: str, allow_shell: bool = False) -> dict[str, Any]:
    """Run one job document; never raises (errors come back in the result)."""
    try:
        if "suite" in doc:
            return run_suite(doc, base_dir, allow_shell)
        return run_op(doc, base_dir, backend)
    except Exception as exc:  # reported as the job's failure
        return {"ok": False, "backend": backend, "error": f"{type(exc).__name__}: {exc}"}
