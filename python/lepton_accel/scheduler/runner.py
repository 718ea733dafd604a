"""What a worker does with one job: build its inputs, run it, check it.

Operations run through the public API (``lepton_accel.matmul`` / ``conv2d``) with an explicit
``backend=``; the result is checked against a float64 NumPy reference (exact for int8, whose
int32 accumulation wraps) with a relative Frobenius-error bound per dtype. Suites run pytest
as an argument list; the ``shell`` suite runs a command line only when shell was enabled.
"""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from ..dtypes import DTYPES, is_integer
from .jobs import operand_path

#: relative Frobenius error allowed, by output dtype (after the operands' own rounding)
TOLERANCE = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 2e-2}


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


# ---- float64 references -----------------------------------------------------------------------
def _wrap32(v: np.ndarray) -> np.ndarray:
    return ((v.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(np.int64)


def _epilogue(acc: np.ndarray, bias, activation, integer: bool, axis: int) -> np.ndarray:
    if integer:
        acc = _wrap32(acc)
        if bias is not None:
            acc = _wrap32(acc + _along(bias.astype(np.int64), acc.ndim, axis))
        return np.maximum(acc, 0) if activation == "relu" else acc
    if bias is not None:
        acc = acc + _along(bias.astype(np.float64), acc.ndim, axis)
    if activation == "relu":
        acc = np.maximum(acc, 0)
    elif activation == "gelu":
        acc = 0.5 * acc * (1 + np.tanh(math.sqrt(2 / math.pi) * (acc + 0.044715 * acc ** 3)))
    return acc


def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    axis = axis % ndim
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def reference_matmul(a, b, bias, activation, integer: bool) -> np.ndarray:
    t = np.int64 if integer else np.float64
    acc = np.matmul(a.astype(t), b.astype(t))
    return _epilogue(acc, bias, activation, integer, -1)


def reference_conv2d(x, w, bias, activation, integer: bool, *, stride, padding, dilation, groups,
                     layout) -> np.ndarray:
    t = np.int64 if integer else np.float64
    if layout == "NHWC":
        x = np.transpose(x, (0, 3, 1, 2))
    x, w = x.astype(t), w.astype(t)
    (pt, pb), (pl, pr) = padding
    (sh, sw), (dh, dw) = stride, dilation
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    oh = (h - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd - (dw * (kw - 1) + 1)) // sw + 1
    ocg = oc // groups
    out = np.zeros((n, oc, oh, ow), t)
    for g in range(groups):
        xg = x[:, g * cg:(g + 1) * cg]
        wg = w[g * ocg:(g + 1) * ocg]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                out[:, g * ocg:(g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    out = _epilogue(out, bias, activation, integer, 1)
    return np.transpose(out, (0, 2, 3, 1)) if layout == "NHWC" else out


def check(out: np.ndarray, ref: np.ndarray, out_dtype: str) -> dict[str, Any]:
    """Compare with the reference: exact for integers, relative Frobenius error for floats."""
    if tuple(out.shape) != tuple(ref.shape):
        return {"verified": False, "rel_err": None, "why": f"shape {out.shape} != {ref.shape}"}
    if is_integer(out_dtype):
        bad = int(np.count_nonzero(out.astype(np.int64) != ref))
        return {"verified": bad == 0, "rel_err": 0.0 if bad == 0 else None, "mismatches": bad}
    o = np.asarray(out, dtype=np.float64)
    if not np.all(np.isfinite(o)):
        return {"verified": False, "rel_err": None, "why": "non-finite values in the output"}
    denom = float(np.linalg.norm(ref)) or 1.0
    err = float(np.linalg.norm(o - ref)) / denom
    tol = TOLERANCE.get(out_dtype, 1e-4)
    return {"verified": err <= tol, "rel_err": err, "tolerance": tol}


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
        from ..spec import conv2d_spec, matmul_spec  # the spec resolves padding and dtypes
        first = ops["a"] if doc["op"] == "matmul" else ops["x"]
        integer = is_integer(_name(first.dtype))
        if doc["op"] == "matmul":
            spec = matmul_spec(ops["a"].shape, str(ops["a"].dtype), ops["b"].shape, str(ops["b"].dtype),
                               bias_shape=None if bias is None else bias.shape,
                               bias_dtype=None if bias is None else _name(bias.dtype),
                               activation=doc.get("activation"), out_dtype=doc.get("out_dtype"))
            ref = reference_matmul(ops["a"], ops["b"], bias, doc.get("activation"), integer)
        else:
            spec = conv2d_spec(ops["x"].shape, _name(ops["x"].dtype), ops["w"].shape, _name(ops["w"].dtype),
                               bias_shape=None if bias is None else bias.shape,
                               bias_dtype=None if bias is None else _name(bias.dtype),
                               activation=doc.get("activation"), out_dtype=doc.get("out_dtype"),
                               **{k: kw[k] for k in ("stride", "padding", "dilation", "groups", "layout") if k in kw})
            p = spec.param
            ref = reference_conv2d(ops["x"], ops["w"], bias, doc.get("activation"), integer,
                                   stride=p["stride"], padding=p["padding"], dilation=p["dilation"],
                                   groups=p["groups"], layout=p["layout"])
        result.update(check(out, ref, spec.out_dtype))
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
