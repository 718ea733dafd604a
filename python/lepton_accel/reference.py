"""Float64 / exact-integer reference implementations, written independently of the
backends (convolution as a sum over kernel taps, not im2col), for verification."""
from __future__ import annotations

import numpy as np

from .dtypes import dtype_name, is_integer


def _activate(acc: np.ndarray, activation) -> np.ndarray:
    if activation == "relu":
        return np.maximum(acc, 0)
    if activation == "gelu":
        return 0.5 * acc * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (acc + 0.044715 * acc ** 3)))
    return acc


def _finish(acc, bias, activation, integer: bool, channel_axis: int):
    if bias is not None:
        shape = [1] * acc.ndim
        shape[channel_axis] = -1
        acc = acc + np.asarray(bias, np.int64 if integer else np.float64).reshape(shape)
    if integer:
        return _activate(acc.astype(np.int32), activation)  # wrap, then activation
    return _activate(acc, activation)


def matmul_ref(a, b, bias=None, activation=None) -> np.ndarray:
    """float64 result for float operands; int32 (wrapped) for integer operands."""
    a, b = np.asarray(a), np.asarray(b)
    integer = is_integer(str(a.dtype))
    t = np.int64 if integer else np.float64
    return _finish(np.matmul(a.astype(t), b.astype(t)), bias, activation, integer, -1)


def conv2d_ref(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
               activation=None) -> np.ndarray:
    """Direct convolution: for every kernel tap, a strided slice times the tap's weights."""
    from .spec import conv2d_spec  # resolves "same"/"valid" and pairs the same way the API does

    x, w = np.asarray(x), np.asarray(w)
    spec = conv2d_spec(x.shape, dtype_name(x.dtype), w.shape, dtype_name(w.dtype),
                       stride=stride, padding=padding, dilation=dilation, groups=groups,
                       layout=layout)
    p = spec.param
    integer = is_integer(spec.dtype)
    t = np.int64 if integer else np.float64
    xn = (x if layout == "NCHW" else x.transpose(0, 3, 1, 2)).astype(t)
    (pt, pb), (pl, pr) = p["padding"]
    xn = np.pad(xn, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c = xn.shape[:2]
    oc, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = p["stride"], p["dilation"]
    oh, ow = (spec.out_shape[2], spec.out_shape[3]) if layout == "NCHW" else spec.out_shape[1:3]
    ocg = oc // groups
    out = np.zeros((n, oc, oh, ow), t)
    wt = w.astype(t)
    for g in range(groups):
        xs = xn[:, g * cg:(g + 1) * cg]
        wg = wt[g * ocg:(g + 1) * ocg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                           j * dw: j * dw + sw * (ow - 1) + 1: sw]
                out[:, g * ocg:(g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    out = _finish(out, bias, activation, integer, 1)
    return out if layout == "NCHW" else out.transpose(0, 2, 3, 1)


def relative_error(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are zero)."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    denom = np.linalg.norm(ref)
    num = np.linalg.norm(out - ref)
    return float(num / denom) if denom else float(num)


#: relative-error tolerance per operand dtype, fitting its precision
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}
