"""conv2d on the FPGA cores.

:func:`conv2d_run` runs a validated conv2d spec on the conv2d core
(:class:`.conv_driver.ConvDriver`: image memory + hardware im2col, row bands for images
larger than the core's memory). Only when the core cannot take the convolution at all
(:class:`.conv_driver.ConvUnsupported`: a size beyond its registers, or a single output
row whose input rows exceed the image memory) does it fall back to
:func:`conv2d_on_matmul_core`, host-side im2col and one GEMM per group on the matmul
core; the :class:`~.driver_base.CoreRun` it returns says which core ran and why. Bias and
ReLU follow the integer rules (int32 wrap-around, ReLU after the wrapped bias add) on
both paths, and so does a requantizing spec's int8 epilogue (``numerics.requantize``, in
the cores' output stage).
"""
from __future__ import annotations

import numpy as np

from ..ops import OpSpec, conv2d_spec
from ..ops.conv2d import im2col_windows
from .conv_driver import ConvUnsupported
from .driver_base import CoreRun
from .matmul_driver import MatmulDriver

__all__ = ["conv2d_run", "conv2d_on_matmul_core", "conv2d"]


def conv2d_run(spec: OpSpec, x, w, bias=None, dtype: str | None = None,
               config=None, requant=None) -> CoreRun:
    """Run a validated conv2d spec on the conv2d core of the session (or ``config``), or,
    if it cannot take it, by host im2col on the matmul core; the output is int32 in x's
    layout (int8 for a requantizing spec, ``requant`` = (multiplier, shift))."""
    from .session import config_for, driver_for

    dtype = dtype or spec.dtype
    mult, shift = requant if requant is not None else (None, None)
    try:
        return driver_for(config or config_for("conv2d", dtype)).run(spec, x, w, bias,
                                                                     mult, shift)
    except ConvUnsupported as e:
        reason = f"host im2col on the matmul core: {e}"
    mdrv = driver_for(config_for("matmul", dtype))
    run = mdrv.measure(lambda: conv2d_on_matmul_core(mdrv, spec, x, w, bias, requant))
    run.reason = reason
    return run


def conv2d_on_matmul_core(drv: MatmulDriver, spec: OpSpec, x, w, bias,
                          requant=None) -> np.ndarray:
    """Host im2col + one GEMM per group on the matmul core (the fallback path); returns
    int32 in x's layout (int8 with ``requant``) and leaves the summed counters in
    ``drv.last``."""
    nchw = spec.params.layout == "NCHW"
    x_nhwc = np.asarray(x).transpose(0, 2, 3, 1) if nchw else np.asarray(x)
    w = np.asarray(w)
    g = spec.params.groups
    oc, cg, kh, kw = w.shape
    ocg = oc // g
    win = im2col_windows(x_nhwc, spec)
    n, oh, ow = win.shape[:3]
    cols = win.reshape(n * oh * ow, g, cg * kh * kw)
    wg = w.reshape(g, ocg, cg * kh * kw)
    relu = spec.activation == "relu"
    if requant is not None:
        requant = drv._check_out_stage(relu, requant, oc)[1]
    out = np.empty((n * oh * ow, oc), np.int32 if requant is None else np.int8)
    with drv.lock:
        total = type(drv.last)()
        for gi in range(g):
            sl = slice(gi * ocg, (gi + 1) * ocg)
            b = None if bias is None else np.asarray(bias)[sl]
            q = None if requant is None else (requant[0][sl], requant[1][sl])
            out[:, sl] = drv.gemm(np.ascontiguousarray(cols[:, gi, :]),
                                  np.ascontiguousarray(wg[gi].T), b, relu=relu, requant=q)
            total.cycles += drv.last.cycles
            total.jobs += drv.last.jobs
            total.stall_in += drv.last.stall_in
            total.stall_out += drv.last.stall_out
        drv.last = total
    out = out.reshape(n, oh, ow, oc)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if nchw else out


def conv2d(x, w, *, bias=None, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
           activation=None, config=None) -> np.ndarray:
    """Integer conv2d (PyTorch's parameters) on the simulated conv2d core; ``config``
    names a conv2d core configuration (default: the session's, ``config_for("conv2d")``)."""
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
    return conv2d_run(spec, x, w, bias, dt, config).out
