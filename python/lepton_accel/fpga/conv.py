"""conv2d on the matmul core by host-side im2col.

The host builds the im2col matrix (one row per output pixel, Cg*KH*KW columns per
group) and runs one GEMM per group on the matmul core; bias and ReLU follow the integer
rules (int32 wrap-around). This is a lowering on the host, not a convolution core: every
input pixel is sent KH*KW times, which a dedicated conv core would avoid.
"""
from __future__ import annotations

import numpy as np

from ..backends.cpu import im2col_windows
from ..spec import OpSpec, conv2d_spec
from .driver import MatmulDriver

__all__ = ["conv2d_spec_run", "conv2d"]


def conv2d_spec_run(drv: MatmulDriver, spec: OpSpec, x, w, bias) -> np.ndarray:
    """Run a validated conv2d spec on the core; returns int32 in x's layout."""
    nchw = spec.param["layout"] == "NCHW"
    x_nhwc = np.asarray(x).transpose(0, 2, 3, 1) if nchw else np.asarray(x)
    w = np.asarray(w)
    g = spec.param["groups"]
    oc, cg, kh, kw = w.shape
    ocg = oc // g
    win = im2col_windows(x_nhwc, spec)
    n, oh, ow = win.shape[:3]
    cols = win.reshape(n * oh * ow, g, cg * kh * kw)
    wg = w.reshape(g, ocg, cg * kh * kw)
    out = np.empty((n * oh * ow, oc), np.int32)
    cycles = jobs = 0
    for gi in range(g):
        b = None if bias is None else np.asarray(bias)[gi * ocg:(gi + 1) * ocg]
        out[:, gi * ocg:(gi + 1) * ocg] = drv.gemm(np.ascontiguousarray(cols[:, gi, :]),
                                                    np.ascontiguousarray(wg[gi].T), b)
        cycles += drv.last.cycles
        jobs += drv.last.jobs
    drv.last.cycles, drv.last.jobs = cycles, jobs
    if spec.activation == "relu":
        np.maximum(out, 0, out=out)
    out = out.reshape(n, oh, ow, oc)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if nchw else out


def conv2d(x, w, *, bias=None, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
           activation=None, config=None) -> np.ndarray:
    """Integer conv2d (PyTorch's parameters) on the simulated matmul core via im2col."""
    from . import config_for, driver

    x, w = np.asarray(x), np.asarray(w)
    for name, v in (("x", x), ("w", w)):
        if v.dtype.kind != "i":
            raise TypeError(f"{name}: conv2d on the fpga core takes int8/int16 operands, got "
                            f"{v.dtype}")
    spec = conv2d_spec(x.shape, "int8", w.shape, "int8",
                       bias_shape=None if bias is None else np.shape(bias),
                       bias_dtype=None if bias is None else "int32",
                       stride=stride, padding=padding, dilation=dilation, groups=groups,
                       layout=layout, activation=activation)
    dt = "int16" if "int16" in (x.dtype.name, w.dtype.name) else "int8"
    drv = driver(config or config_for(dt))
    return conv2d_spec_run(drv, spec, x, w, bias)
