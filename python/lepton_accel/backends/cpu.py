"""CPU backend: NumPy's BLAS for GEMM, a strided im2col for convolution.

Half-precision operands are widened to float32 (float32 accumulation, one rounding at
the end). Depthwise convolutions run on a direct native kernel (csrc/cpu/), the rest as
GEMMs. Integer GEMMs run through floating-point BLAS in K-chunks short enough to be
exact, then the chunks are summed in int64 and wrapped to int32 once:
  int8   float32 BLAS, chunks of 1024: |product| <= 2**14, partial sums < 2**24;
  int16  float64 BLAS, chunks of 2**22: |product| <= 2**30, partial sums < 2**53.
"""
from __future__ import annotations

import time

import numpy as np

from .. import numerics
from .._native import core
from ..arrays import ArrayView, to_caller_kind
from ..dtypes import DTYPES, is_integer
from ..ops import Conv2dParams, OpSpec
from ..ops.conv2d import im2col_windows
from ..perf import MODEL
from .base import Backend, RunStats

#: integer operand dtype -> (float type whose BLAS sums it exactly, K-chunk)
_EXACT = {"int8": (np.float32, 1024), "int16": (np.float64, 1 << 22)}


def integer_gemm(a: np.ndarray, b: np.ndarray, dtype: str = "int8") -> np.ndarray:
    """Exact integer (..., M, K) @ (..., K, N) -> int64, through floating-point BLAS."""
    ftype, chunk = _EXACT[dtype]
    k = a.shape[-1]
    out = None
    for k0 in range(0, max(k, 1), chunk):
        part = np.matmul(a[..., k0:k0 + chunk].astype(ftype),
                         b[..., k0:k0 + chunk, :].astype(ftype)).astype(np.int64)
        out = part if out is None else out + part
    return out


#: Integer GEMMs of at most this many multiply-adds run as one int32 matmul (NumPy's
#: integer loop wraps modulo 2**32, exactly the contract) instead of through float BLAS,
#: whose casts cost more than the loop at this size.
_SMALL_INT_MACS = 2048


def gemm(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """(..., M, K) @ (..., K, N) in the accumulation type: float32, or for integers int32
    (already wrapped) or int64 (before wrapping)."""
    if dtype in _EXACT:
        if a.size * b.shape[-1] <= _SMALL_INT_MACS and b.size * a.shape[-2] <= _SMALL_INT_MACS:
            return np.matmul(a, b, dtype=np.int32)
        return integer_gemm(a, b, dtype)
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    if b.dtype != np.float32:
        b = b.astype(np.float32)
    return np.matmul(a, b)


def epilogue(acc: np.ndarray, bias: np.ndarray | None, activation: str | None,
             out_dtype: str, channel_axis: int = -1) -> np.ndarray:
    """Bias, activation and output cast on the accumulator, in place where possible."""
    if bias is not None:
        shape = [1] * acc.ndim
        shape[channel_axis] = -1
        acc += bias.astype(acc.dtype).reshape(shape)
    if out_dtype == "int32":
        out = acc.astype(np.int32, copy=False)  # int64 -> int32 wraps modulo 2**32
        if activation == "relu":
            np.maximum(out, 0, out=out)
        return out
    if activation == "relu":
        np.maximum(acc, 0, out=acc)
    elif activation == "gelu":
        numerics.gelu_(acc)
    return acc.astype(DTYPES[out_dtype], copy=False)


def native_depthwise(spec: OpSpec) -> bool:
    """Depthwise convolutions (one input channel per group) run on the native kernel: as
    GEMMs they would have K = KH*KW per group, far too short for BLAS."""
    return (spec.params.groups > 1 and spec.shapes[1][1] == 1
            and core is not None and hasattr(core, "cpu_depthwise_conv2d"))


def depthwise_nhwc(x: np.ndarray, w: np.ndarray, spec: OpSpec, bias=None, relu: bool = False) -> np.ndarray:
    """Depthwise convolution by the native direct kernel, with bias and ReLU fused:
    (N, OH, OW, OC) float32, or int32 wrapped modulo 2**32. A channel multiplier
    m = OC / C repeats each input channel m times first."""
    oc, _, kh, kw = w.shape
    mult = oc // x.shape[3]
    acc_t = np.int32 if is_integer(spec.dtype) else np.float32
    xs = np.ascontiguousarray(np.repeat(x, mult, axis=3) if mult > 1 else x, dtype=acc_t)
    ws = np.ascontiguousarray(w[:, 0].transpose(1, 2, 0), dtype=acc_t)       # (KH, KW, OC)
    p = spec.params
    (pt, _), (pl, _) = p.padding
    oh, ow = p.spatial(spec.out_shape)
    y = np.empty((x.shape[0], oh, ow, oc), acc_t)
    b = None if bias is None else np.ascontiguousarray(bias, dtype=acc_t)
    core.cpu_depthwise_conv2d(xs, ws, y, p.stride, (pt, pl), p.dilation, b, relu)
    return y


def conv2d_nhwc(x: np.ndarray, w: np.ndarray, spec: OpSpec) -> np.ndarray:
    """Grouped convolution as a batched GEMM over groups: returns (N, OH, OW, OC) accumulators.

    The GEMM's K axis is ordered to spare the larger of the two copies: (tap, channel)
    makes the im2col copy move contiguous channel runs but reorders the weights;
    (channel, tap) reads the weights in place (OC, C, KH, KW) at the cost of a gathering
    im2col. Layers with more weights than im2col elements (deep, small images) take the
    second order.
    """
    g = spec.params.groups
    n = x.shape[0]
    oc, cg, kh, kw = w.shape
    ocg, kk = oc // g, kh * kw
    if kk == 1 and spec.params.stride == (1, 1) and spec.params.padding == ((0, 0), (0, 0)):
        oh, ow = x.shape[1], x.shape[2]
        cols = x.reshape(n * oh * ow, g, cg).transpose(1, 0, 2)       # no copy for 1x1
        return _grouped_gemm(cols, w.reshape(g, ocg, cg).transpose(0, 2, 1), spec, n, oh, ow)
    win = im2col_windows(x, spec)                                    # (N, OH, OW, C, KH, KW)
    oh, ow = win.shape[1], win.shape[2]
    p = n * oh * ow
    if oc > p:  # weights in place, channel-major K
        cols = win.reshape(p, g, cg * kk).transpose(1, 0, 2)
        wg = w.reshape(g, ocg, cg * kk).transpose(0, 2, 1)
    else:       # contiguous im2col runs, tap-major K
        cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(p, kk, g, cg) \
                  .transpose(2, 0, 1, 3).reshape(g, p, kk * cg)
        wg = w.reshape(g, ocg, cg, kk).transpose(0, 3, 2, 1).reshape(g, kk * cg, ocg)
    return _grouped_gemm(cols, wg, spec, n, oh, ow)


def _grouped_gemm(cols, wg, spec: OpSpec, n: int, oh: int, ow: int) -> np.ndarray:
    """(G, P, K) @ (G, K, OCg) -> (N, OH, OW, G*OCg) accumulators."""
    acc = gemm(cols, wg, spec.dtype)                                 # (G, P, OCg)
    return acc.transpose(1, 0, 2).reshape(n, oh, ow, -1)


def _matmul(a, b, bias, spec: OpSpec):
    if a.ndim == 1 or b.ndim == 1:  # NumPy's 1-D promotion; the result drops the axis
        acc = gemm(a[None, :] if a.ndim == 1 else a, b[:, None] if b.ndim == 1 else b,
                   spec.dtype)
    else:
        acc = gemm(a, b, spec.dtype)
    out = epilogue(acc, bias, spec.activation, spec.out_dtype)
    return out if out.shape == spec.out_shape else out.reshape(spec.out_shape)


def _conv2d(x, w, bias, spec: OpSpec):
    nchw = spec.params.layout == "NCHW"
    x_nhwc = x.transpose(0, 2, 3, 1) if nchw else x
    if spec.out_shape[0] == 0 or 0 in w.shape[:1]:
        return np.zeros(spec.out_shape, DTYPES[spec.out_dtype])
    if native_depthwise(spec):
        relu = spec.activation == "relu"
        acc = depthwise_nhwc(x_nhwc, w, spec, bias, relu)
        out = epilogue(acc, None, None if relu else spec.activation, spec.out_dtype)
    else:
        acc = conv2d_nhwc(x_nhwc, w, spec)
        out = epilogue(acc, bias, spec.activation, spec.out_dtype)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if nchw else out


def _forward_spec(spec: OpSpec) -> OpSpec:
    """The forward conv2d a gradient spec belongs to (already validated: built directly)."""
    p = spec.params
    fwd = Conv2dParams(p.stride, p.padding, p.dilation, p.groups, p.layout)
    if spec.op == "conv2d_grad_input":
        (dy_shape, w_shape), x_shape = spec.shapes, spec.out_shape
    else:
        (x_shape, dy_shape), w_shape = spec.shapes, spec.out_shape
    return OpSpec("conv2d", (x_shape, w_shape), spec.dtype, dy_shape, "float32", "float32",
                  params=fwd)


def _as_f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.astype(np.float32)


def conv2d_grad_input_nhwc(dy: np.ndarray, w: np.ndarray, spec: OpSpec) -> np.ndarray:
    """dx (N, H, W, C) float32 from dy (N, OH, OW, OC): per group one GEMM dy_g @ w_g
    into tap-major columns (P, KH*KW, C/g), then col2im as one strided add per tap."""
    p = spec.params
    g = p.groups
    n, oh, ow, oc = dy.shape
    _, cg, kh, kw = w.shape
    ocg, kk, c = oc // g, kh * kw, cg * g
    h, w_in = p.input_hw
    pad_free = p.padding == ((0, 0), (0, 0))
    if kk == 1 and p.stride == (1, 1) and pad_free:
        dyg = dy.reshape(n * oh * ow, g, ocg).transpose(1, 0, 2)          # (G, P, OCg)
        cols = np.matmul(dyg, w.reshape(g, ocg, cg))                       # (G, P, Cg)
        return cols.transpose(1, 0, 2).reshape(n, h, w_in, c)
    wg = w.reshape(g, ocg, cg, kk).transpose(0, 1, 3, 2).reshape(g, ocg, kk * cg)
    dyg = dy.reshape(n * oh * ow, g, ocg).transpose(1, 0, 2)
    cols = np.matmul(dyg, wg).reshape(g, n, oh, ow, kk, cg)                # (G, P, KK*Cg)
    cols = cols[0] if g == 1 else cols.transpose(1, 2, 3, 4, 0, 5).reshape(n, oh, ow, kk, c)
    (pt, pb), (pl, pr) = p.padding
    dxp = np.zeros((n, h + pt + pb, w_in + pl + pr, c), np.float32)
    (sh, sw), (dh, dw) = p.stride, p.dilation
    for i in range(kh):
        for j in range(kw):
            dxp[:, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                j * dw: j * dw + sw * (ow - 1) + 1: sw] += cols[:, :, :, i * kw + j]
    return dxp[:, pt:pt + h, pl:pl + w_in]


def conv2d_grad_weight_nhwc(x: np.ndarray, dy: np.ndarray, spec: OpSpec) -> np.ndarray:
    """dw (OC, C/g, KH, KW) float32: per group one GEMM dy_g^T (a transposed view) @ the
    tap-major im2col of x (whose copy moves contiguous channel runs)."""
    fwd = _forward_spec(spec)
    g = spec.params.groups
    n, oh, ow, oc = dy.shape
    _, cg, kh, kw = spec.out_shape
    ocg, kk, p = oc // g, kh * kw, n * oh * ow
    dyt = dy.reshape(p, g, ocg).transpose(1, 2, 0)                         # (G, OCg, P), no copy
    if kk == 1 and spec.params.stride == (1, 1) and spec.params.padding == ((0, 0), (0, 0)):
        cols = x.reshape(p, g, cg).transpose(1, 0, 2)
        return np.matmul(dyt, cols).reshape(oc, cg, 1, 1)
    win = im2col_windows(x, fwd)                                           # (N, OH, OW, C, KH, KW)
    cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(p, kk, g, cg).transpose(2, 0, 1, 3) \
              .reshape(g, p, kk * cg)
    dw = np.matmul(dyt, cols)                                              # (G, OCg, KK*Cg)
    return dw.reshape(oc, kh, kw, cg).transpose(0, 3, 1, 2)


def _conv2d_grad_input(dy, w, _bias, spec: OpSpec):
    nchw = spec.params.layout == "NCHW"
    out_t = DTYPES[spec.out_dtype]
    if 0 in spec.out_shape or 0 in dy.shape:
        return np.zeros(spec.out_shape, out_t)
    dy_nhwc = _as_f32(dy.transpose(0, 2, 3, 1) if nchw else dy)
    dx = conv2d_grad_input_nhwc(dy_nhwc, _as_f32(w), spec)
    dx = dx.transpose(0, 3, 1, 2) if nchw else dx
    return np.ascontiguousarray(dx, dtype=out_t)


def _conv2d_grad_weight(x, dy, _bias, spec: OpSpec):
    nchw = spec.params.layout == "NCHW"
    out_t = DTYPES[spec.out_dtype]
    if 0 in spec.out_shape or 0 in dy.shape:
        return np.zeros(spec.out_shape, out_t)
    x_nhwc = _as_f32(x.transpose(0, 2, 3, 1) if nchw else x)
    dy_nhwc = _as_f32(dy.transpose(0, 2, 3, 1) if nchw else dy)
    return np.ascontiguousarray(conv2d_grad_weight_nhwc(x_nhwc, dy_nhwc, spec), dtype=out_t)


def _host_kernel(fn):
    """A kernel over host arrays: (x, w[, bias]) in, the caller's kind of array out."""
    def kernel(self, spec: OpSpec, operands: list[ArrayView]):
        t0 = time.perf_counter()
        arrays = [v.host for v in operands]
        out = fn(arrays[0], arrays[1], arrays[2] if spec.bias else None, spec)
        stats = RunStats("cpu", time.perf_counter() - t0, "host-cpu")
        return to_caller_kind(out, operands[0].origin), stats
    kernel.__name__ = fn.__name__
    return kernel


def _matmul_kernel(self, spec: OpSpec, operands: list[ArrayView]):
    # written out rather than through _host_kernel: tiny matmuls are dominated by call cost
    t0 = time.perf_counter()
    out = _matmul(operands[0].host, operands[1].host, operands[2].host if spec.bias else None,
                  spec)
    return to_caller_kind(out, operands[0].origin), RunStats("cpu", time.perf_counter() - t0,
                                                             "host-cpu")


class CpuBackend(Backend):
    name = "cpu"
    kernels = {"matmul": _matmul_kernel, "conv2d": _host_kernel(_conv2d),
               "conv2d_grad_input": _host_kernel(_conv2d_grad_input),
               "conv2d_grad_weight": _host_kernel(_conv2d_grad_weight)}

    def supports(self, spec: OpSpec, operands: list[ArrayView] | None = None) -> tuple[bool, str]:
        if spec.op not in self.kernels:
            return False, f"no {spec.op} kernel on the cpu backend"
        for v in operands or ():
            if not v.is_host:
                return False, f"{v.name} is on {v.device}; the cpu backend takes host memory"
        return True, ""

    def estimate(self, spec: OpSpec, operands=None) -> float:
        return MODEL.estimate(spec, "host-cpu", data_on_host=False).total_s

    def run(self, spec: OpSpec, operands: list[ArrayView]):
        if spec.requant:  # the int32 kernels, then numerics.requantize: the cores' model
            return self.run_requant_on_host(spec, operands)
        return super().run(spec, operands)
