"""The oracle: float64 / exact-integer results of any op, and the one tolerance table.

Each op's reference lives in its op module (convolution as a sum over kernel taps, not
im2col, so it shares nothing with the backends); this module runs it for a spec and says
whether an output passes. The CLI demo, the scheduler's verification, the testbenches'
models and the tests all check through here.
"""
from __future__ import annotations

import numpy as np

from .dtypes import dtype_name, is_integer
from .ops import OpSpec, conv2d_spec, matmul_spec

#: relative Frobenius-error bound by the precision the result is computed and rounded in:
#: float32 (exact float32 math), tf32 (10-bit products), and the half-precision outputs
TOLERANCE = {"float32": 1e-5, "tf32": 2e-3, "float16": 4e-3, "bfloat16": 1e-2}


def tolerance(spec: OpSpec) -> float | None:
    """The error bound an output of spec must meet (None: integers, which are exact)."""
    if is_integer(spec.out_dtype):
        return None
    if getattr(spec.params, "allow_tf32", False):
        return TOLERANCE["tf32"]
    return TOLERANCE[spec.out_dtype]


def reference(spec: OpSpec, arrays, bias=None) -> np.ndarray:
    """spec's result on these operands: float64 for floats, int32 (wrapped) for integers."""
    return spec.definition.reference(spec, arrays, bias)


def relative_error(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are zero)."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    denom = np.linalg.norm(ref)
    num = np.linalg.norm(out - ref)
    return float(num / denom) if denom else float(num)


def check(spec: OpSpec, out, ref) -> dict:
    """Whether ``out`` is spec's answer: bit-exact for integers, within :func:`tolerance`
    for floats (NaN where the reference has a finite value fails). Returns
    ``{"verified", "rel_err", "tolerance", "mismatches", "why"}``."""
    out = np.asarray(out)
    if tuple(out.shape) != tuple(ref.shape):
        return {"verified": False, "rel_err": None, "tolerance": None, "mismatches": None,
                "why": f"shape {tuple(out.shape)} != {tuple(ref.shape)}"}
    if is_integer(spec.out_dtype):
        bad = int(np.count_nonzero(out.astype(np.int64) != np.asarray(ref, np.int64)))
        return {"verified": bad == 0, "rel_err": 0.0 if bad == 0 else None, "tolerance": None,
                "mismatches": bad, "why": "" if bad == 0 else f"{bad} elements differ"}
    tol = tolerance(spec)
    o = np.asarray(out, np.float64)
    r = np.asarray(ref, np.float64)
    finite = np.isfinite(r)
    if not np.array_equal(np.isfinite(o), finite):
        return {"verified": False, "rel_err": None, "tolerance": tol, "mismatches": None,
                "why": "non-finite values where the reference has finite ones (or the reverse)"}
    err = relative_error(o[finite], r[finite])
    return {"verified": err <= tol, "rel_err": err, "tolerance": tol, "mismatches": None,
            "why": "" if err <= tol else f"relative error {err:.3g} over tolerance {tol:g}"}


# ---- the oracle with the public API's arguments ------------------------------------------
def _dt(a) -> str:
    return dtype_name(np.asarray(a).dtype)


def matmul_ref(a, b, bias=None, activation=None) -> np.ndarray:
    """Reference of ``lepton_accel.matmul(a, b, bias=bias, activation=activation)``."""
    a, b = np.asarray(a), np.asarray(b)
    spec = matmul_spec(a.shape, _dt(a), b.shape, _dt(b), activation=activation)
    return reference(spec, (a, b), bias)


def conv2d_ref(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
               activation=None) -> np.ndarray:
    """Reference of ``lepton_accel.conv2d`` with the same arguments."""
    x, w = np.asarray(x), np.asarray(w)
    spec = conv2d_spec(x.shape, _dt(x), w.shape, _dt(w), stride=stride, padding=padding,
                       dilation=dilation, groups=groups, layout=layout, activation=activation)
    return reference(spec, (x, w), bias)
