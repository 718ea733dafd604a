"""Host driver of the matmul core: tiling, packing, job control, quantization.

The driver speaks to any :class:`.device.Device` and follows the host protocol of
:mod:`lepton_accel.hdl.matmul_regmap` (the core's single source of truth): it checks the
core's ID, VERSION and CONFIG registers, writes M, N, K, starts the job (CTRL) while the
frames packed by ``matmul_regmap.pack_job`` are presented and assembles the output with
``matmul_regmap.unpack_c``.

Shapes: the core takes 1 <= M, N, K < 2**regmap.DIM_BITS per job. Larger operands are
split into several jobs: K into chunks whose partial results are summed modulo 2**32
(exactly what one long accumulation would give, since the core's sums wrap), M and N into
blocks. M is also split so that one job's packed streams stay under ``max_job_bytes``
(the a stream repeats each row block once per column tile, per the protocol).

Arithmetic: integer operands (int8 on an int8 core; int8 or int16 on an int16 core)
are multiplied exactly, accumulated in int32 with wrap-around, the int32 bias added with
wrap-around, and ReLU (if asked for) applied to the wrapped value; the result equals
``lepton_accel.reference`` bit for bit. ``requant=(multiplier, shift)`` (per output
channel) gives int8 outputs, ``numerics.requantize`` of the int32 values (ReLU then
clamps the int8 values). Both run in the core's output stage (CTRL.RELU / REQUANT, the
q stream) when the core has it and the job's sums are complete on the core; otherwise
(an older core, K split over several jobs) the same arithmetic runs on the host. Zero-size
operands (K = 0, an empty batch, M or N = 0) give the result without a job.

Floating-point operands are accepted only with an explicit ``quantize=``:

* ``"per_tensor"``: one symmetric scale per operand, ``s = max|x| / qmax``
  (qmax = 127 for int8 cores, 32767 for int16), ``q = clip(round(x / s), -qmax, qmax)``;
* ``"per_channel"``: a symmetric scale per row of ``a`` (per output row) and per column
  of ``b`` (per output channel), same rounding.

The integer product is computed on the core and dequantized to float32:
``C[m, n] = s_a[m] * s_b[n] * (qa @ qb)[m, n]``; a float bias is added after
dequantization (in float32), then the activation. An all-zero operand (or row/column)
gets scale 1. Results are exact for the quantized values, not for the float inputs.
"""
from __future__ import annotations

import math

import numpy as np

from lepton_accel.hdl import matmul_regmap as regmap
from lepton_accel.numerics import wrap_int32

from .device import DeviceError, InStream
from .driver_base import DEFAULT_MAX_JOB_BYTES, CoreDriver, CoreRun, JobStats

__all__ = ["MatmulDriver", "JobStats", "quantize_symmetric", "QUANTIZE_MODES",
           "DEFAULT_MAX_JOB_BYTES"]

QUANTIZE_MODES = ("per_tensor", "per_channel")
_DIM_MAX = (1 << regmap.DIM_BITS) - 1


def quantize_symmetric(x: np.ndarray, qmax: int, axis: int | None):
    """(q, scale): symmetric quantization of x to [-qmax, qmax], per tensor (axis None)
    or with one scale per index along ``axis`` (scales broadcastable against x)."""
    x = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("quantize: operands must be finite to be quantized")
    if axis is None:
        amax = np.max(np.abs(x)) if x.size else np.float32(0)
    else:
        reduce = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
        amax = np.max(np.abs(x), axis=reduce, keepdims=True) if x.size else \
            np.zeros([1] * x.ndim, np.float32)
    scale = np.where(amax > 0, amax / np.float32(qmax), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(x / scale), -qmax, qmax)
    return q, scale


class MatmulDriver(CoreDriver):
    """Runs integer GEMMs of any size on one matmul core behind a :class:`Device`."""

    rmap = regmap
    core_name = "matmul"
    what = "core"
    stats = JobStats

    # ---- identification ------------------------------------------------------------
    def _check_core(self) -> None:
        cfg = super()._check_core()
        acc = regmap.field_value("CONFIG", "ACC_WIDTH", cfg)
        if acc != regmap.ACC_WIDTH:
            raise DeviceError(f"core accumulates in {acc} bits, driver expects "
                              f"{regmap.ACC_WIDTH}")

    # ---- one job -------------------------------------------------------------------
    def _job(self, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None,
             relu: bool = False, requant=None) -> np.ndarray:
        """One core job (dimensions within the registers' range); ``relu`` / ``requant``
        on the core's output stage (int8 out with requant)."""
        d, R, C = self.device, self.rows, self.cols
        m, k = a.shape
        n = b.shape[1]
        frames = regmap.pack_job(a, b, bias, rows=R, cols=C, dtype=self.dtype,
                                 requant=requant)
        heights = [min(R, m - r0) for r0, _ in regmap.tile_order(m, n, R, C)]
        streams = {"a": InStream(b"".join(frames["a"]), k),
                   "b": InStream(b"".join(frames["b"]), k)}
        if bias is not None:
            streams["bias"] = InStream(b"".join(frames["bias"]), 1)
        if requant is not None:
            streams["q"] = InStream(b"".join(frames["q"]), 1)
        try:
            d.write("M", m)
            d.write("N", n)
            d.write("K", k)
            res = d.stream(streams, sum(heights),
                           ctrl=self._ctrl_start(bias, relu, requant is not None))
            out = self._finish(res, heights)
            self._count()
        except BaseException:
            self._recover()
            raise
        c = regmap.unpack_c(out, m, n, rows=R, cols=C)
        return c.astype(np.int8) if requant is not None else c

    # ---- any shape ------------------------------------------------------------------
    def _m_block(self, n: int, k: int) -> int:
        """Rows of a per job so that the packed a and b streams fit max_job_bytes."""
        R, C, lane = self.rows, self.cols, self.lane_dtype.itemsize
        col_tiles = math.ceil(n / C)
        per_row_tile = col_tiles * k * (R + C) * lane  # a and b bytes per R rows
        tiles = max(1, self.max_job_bytes // max(per_row_tile, 1))
        return int(min(_DIM_MAX // R * R, tiles * R))

    def gemm(self, a, b, bias=None, *, relu: bool = False, requant=None) -> np.ndarray:
        """int32 ``a @ b (+ bias)`` with wrap-around, for 2-D integer a (M x K), b (K x N).

        bias: int32 (N,) or None. ``relu``: clamp at 0. ``requant``: (multiplier, shift)
        per column (or scalars): int8 ``numerics.requantize`` of the int32 result (ReLU
        after it). Bit-exact with ``lepton_accel.reference``.
        """
        with self.lock:
            return self._gemm(np.asarray(a), np.asarray(b), bias, relu, requant)

    def _gemm(self, a: np.ndarray, b: np.ndarray, bias, relu=False, requant=None) -> np.ndarray:
        for name, x in (("a", a), ("b", b)):
            if x.ndim != 2:
                raise ValueError(f"{name}: expected a 2-D array, got shape {x.shape}")
            if not self.accepts(x.dtype):
                raise TypeError(f"{name}: dtype {x.dtype} does not run on this {self.dtype} "
                                f"core; integer operands up to {self.dtype} are accepted")
        m, k = a.shape
        if b.shape[0] != k:
            raise ValueError(f"b: inner dimensions differ: a is {a.shape}, b is {b.shape}")
        n = b.shape[1]
        if bias is not None:
            bias = wrap_int32(bias)
            if bias.shape != (n,):
                raise ValueError(f"bias: expected shape ({n},), got {bias.shape}")
        relu, requant = self._check_out_stage(relu, requant, n)
        self.last = JobStats()
        out = np.zeros((m, n), np.int32)
        if m == 0 or n == 0 or k == 0:
            if k == 0 and bias is not None and m and n:
                out = np.broadcast_to(bias, (m, n)).copy()
            return self._host_out_stage(out, relu, requant)
        a = a.astype(self.lane_dtype, copy=False)
        b = b.astype(self.lane_dtype, copy=False)
        n_blk = _DIM_MAX // self.cols * self.cols
        k_blk = _DIM_MAX
        acc = np.zeros((m, n), np.int64) if k > k_blk else None
        # the output stage on the core: only where a job's sums are the final ones
        on_core = self.out_stage and acc is None and (relu or requant is not None)
        if on_core and requant is not None:
            out = np.zeros((m, n), np.int8)
        for n0 in range(0, n, n_blk):
            n1 = min(n, n0 + n_blk)
            m_blk = self._m_block(n1 - n0, min(k, k_blk))
            for m0 in range(0, m, m_blk):
                m1 = min(m, m0 + m_blk)
                for k0 in range(0, k, k_blk):
                    k1 = min(k, k0 + k_blk)
                    bi = bias[n0:n1] if (bias is not None and k0 == 0) else None
                    if on_core:
                        q = None if requant is None else (requant[0][n0:n1], requant[1][n0:n1])
                        part = self._job(a[m0:m1, k0:k1], b[k0:k1, n0:n1], bi, relu, q)
                    else:
                        part = self._job(a[m0:m1, k0:k1], b[k0:k1, n0:n1], bi)
                    if acc is None:
                        out[m0:m1, n0:n1] = part
                    else:
                        acc[m0:m1, n0:n1] += part
        if on_core:
            return out
        return self._host_out_stage(out if acc is None else wrap_int32(acc), relu, requant)

    def matmul(self, a, b, bias=None, *, activation: str | None = None,
               quantize: str | None = None, requant=None) -> np.ndarray:
        """NumPy-style ``activation(a @ b + bias)`` on the core.

        a: (..., M, K) or (K,); b: (..., K, N) or (K,); leading dims broadcast and run
        as one job per batch entry (folded into M when b has no batch dims).
        Integer operands: int32 result (wrap-around), bias int32; with ``requant`` =
        (multiplier, shift) per output column, int8 (see the module docs). Float
        operands need ``quantize="per_tensor"`` or ``"per_channel"`` (see the module
        docs) and give float32.
        """
        with self.lock:
            return self._matmul(a, b, bias, activation, quantize, requant)

    def run(self, spec, a, b, bias=None, multiplier=None, shift=None) -> CoreRun:
        """A validated matmul OpSpec (``lepton_accel.ops``) on integer operands: the
        int32 result in ``spec.out_shape`` (bias and ReLU by the integer rules), or the
        int8 one of a requantizing spec (``multiplier``, ``shift``), with the run's
        counters."""
        requant = (multiplier, shift) if spec.requant else None
        return self.measure(lambda: np.asarray(
            self._matmul(a, b, bias, spec.activation, None, requant)).reshape(spec.out_shape))

    def _matmul(self, a, b, bias, activation, quantize, requant=None) -> np.ndarray:
        if activation not in (None, "relu"):
            raise ValueError(f"activation: {activation!r} is not supported on the fpga "
                             "backend; expected None or 'relu'")
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"{'a' if a.ndim == 0 else 'b'}: expected an array of rank >= 1")
        is_float = [x.dtype.kind == "f" or x.dtype.name == "bfloat16" for x in (a, b)]
        if any(is_float):
            if quantize is None:
                name = "a" if is_float[0] else "b"
                raise TypeError(
                    f"{name}: {np.asarray((a, b)[is_float.index(True)]).dtype} operands do not "
                    f"run natively on the {self.dtype} core; pass quantize='per_tensor' or "
                    "'per_channel' (quantize=) to quantize them symmetrically, or give "
                    "integer operands")
            if quantize not in QUANTIZE_MODES:
                raise ValueError(f"quantize: expected one of {QUANTIZE_MODES}, got {quantize!r}")
            if requant is not None:
                raise ValueError("requant: applies to integer operands, not to quantized "
                                 "float ones")
            return self._matmul_quantized(a, b, bias, activation, quantize)
        if quantize is not None:
            raise ValueError("quantize: only float operands are quantized; integer operands "
                             "run as they are")
        for name, x in (("a", a), ("b", b)):
            if not self.accepts(x.dtype):
                raise TypeError(f"{name}: dtype {x.dtype} does not run on this {self.dtype} "
                                f"core; expected integer operands up to {self.dtype}")
        if bias is not None:
            bias = np.asarray(bias)
            if bias.dtype.kind not in "iu":
                raise TypeError(f"bias: expected an int32 bias for integer operands, got "
                                f"{bias.dtype}")
        if requant is not None and b.ndim < 2:
            raise ValueError("requant: per-channel requantization needs a 2-D (or batched) b")
        return self._batched(a, b, bias, activation == "relu", requant)

    def _batched(self, a, b, bias, relu=False, requant=None):
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        if a2.shape[-1] != b2.shape[-2]:
            raise ValueError(f"b: inner dimensions do not match: a {a.shape}, b {b.shape}")
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
        nb = math.prod(batch)  # explicit sizes: reshape(-1, ...) is ambiguous when K = 0
        if b2.ndim == 2:  # one weight matrix: fold the batch into M (one job stream)
            res = self.gemm(a2.reshape(nb * m, k), b2, bias, relu=relu,
                            requant=requant).reshape(*batch, m, n)
            stats = self.last
        else:
            aa = np.broadcast_to(a2, batch + (m, k)).reshape(nb, m, k)
            bb = np.broadcast_to(b2, batch + (k, n)).reshape(nb, k, n)
            res = np.empty((nb, m, n), np.int8 if requant is not None else np.int32)
            stats = JobStats()
            for i in range(aa.shape[0]):
                res[i] = self.gemm(aa[i], bb[i], bias, relu=relu, requant=requant)
                for f in ("jobs", "cycles", "stall_in", "stall_out"):
                    setattr(stats, f, getattr(stats, f) + getattr(self.last, f))
            res = res.reshape(*batch, m, n)
        self.last = stats
        if a.ndim == 1:
            res = res[..., 0, :]
        if b.ndim == 1:
            res = res[..., 0]
        return res

    def _matmul_quantized(self, a, b, bias, activation, mode):
        qmax = int(np.iinfo(self.lane_dtype).max)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        if mode == "per_tensor":
            qa, sa = quantize_symmetric(a2, qmax, None)
            qb, sb = quantize_symmetric(b2, qmax, None)
        else:
            qa, sa = quantize_symmetric(a2, qmax, -2)   # one scale per row of a
            qb, sb = quantize_symmetric(b2, qmax, -1)   # one scale per column of b
        # On the promoted (>= 2-D) operands: sa is (..., M, 1) or (1, 1), sb (..., 1, N).
        acc = self._batched(qa.astype(self.lane_dtype), qb.astype(self.lane_dtype), None)
        out = (acc.astype(np.float32) * sa) * sb
        if a.ndim == 1:
            out = out[..., 0, :]
        if b.ndim == 1:
            out = out[..., 0]
        out = out.astype(np.float32, copy=False)
        if bias is not None:
            out = out + np.asarray(bias, dtype=np.float32)
        if activation == "relu":
            np.maximum(out, 0, out=out)
        return out.astype(np.float32, copy=False)
