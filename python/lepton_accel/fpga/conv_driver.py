"""Host driver of the conv2d core: job setup, row bands, packing, job control.

The driver speaks to any :class:`.device.Device` holding a conv2d core and follows the
host protocol of :mod:`lepton_accel.hdl.conv_regmap` (the core's single source of truth):
it checks ID, VERSION and CONFIG, reads CAPACITY, writes the job registers from
``conv_regmap.register_values``, starts the job while the streams are presented, sends
the frames packed by ``conv_regmap.pack_job`` (weights and bias once per image) and
assembles the output with ``conv_regmap.unpack_c``. Convolutions with no output element
or no input channel (N, OC or C = 0) give their result without a job.

Depthwise convolutions (groups == C, any channel multiplier) run in the core's
depthwise mode (channels on the array's columns, ``conv_regmap.MODE``) on cores that have
it (VERSION 1.2 or later with a nonzero DW_CONFIG) when the cycle model
(``conv_regmap.expected_cycles``) says it is not slower than one column group per
channel; the image and weights are padded with zero channels to a multiple of the
core's channels per tile and the padded output channels dropped. Older cores run them
as before.

On such cores every job also sets MODE.WREUSE: a group's weights are sent once per
image when they fit the core's weight buffer (WBUF_DEPTH b beats), not once per pixel
tile (``conv_regmap.b_tiles``).

Images larger than the core's image memory (H*W*C > CAPACITY) run in bands of output
rows: each band is an ordinary job on the input rows it reads, with PAD_T = the rows of
top padding it still sees (0 for inner bands) and OH = the band's output rows (bottom
padding follows from OH; the core reads zeros past the band's rows). A batch is split
into several jobs when the N register or ``max_job_bytes`` of packed streams require it.

Arithmetic: int8 operands (int8 core; int8 or int16 on an int16 core) are multiplied
exactly, accumulated in int32 with wrap-around, the int32 bias added with wrap-around,
then ReLU on the wrapped value; the result equals ``lepton_accel.reference`` and
``lepton_accel.conv2d(..., backend="cpu")`` bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from lepton_accel.hdl import conv_regmap as cr
from lepton_accel.numerics import wrap_int32

from .device import DeviceError, InStream
from .driver_base import CoreDriver, CoreRun, JobStats

__all__ = ["ConvDriver", "ConvStats", "ConvUnsupported", "job_of_spec", "row_bands"]

_DIM_MAX = (1 << cr.DIM_BITS) - 1
_SMALL_MAX = (1 << cr.SMALL_BITS) - 1


class ConvUnsupported(ValueError):
    """This convolution cannot run on the conv2d core (the message says why)."""


@dataclass
class ConvStats(JobStats):
    """Counters of the last :meth:`ConvDriver.run`: per job its :class:`ConvJob` and
    CYCLES (``jobs``/``cycles`` are their count and sum), and the row bands used."""

    job_cycles: list = field(default_factory=list)   # [(ConvJob, cycles)]
    bands: int = 0
    depthwise_mode: bool = False


def job_of_spec(spec) -> cr.ConvJob:
    """The whole convolution of a validated conv2d OpSpec as one :class:`ConvJob`."""
    p = spec.params
    return cr.ConvJob.make(p.to_nhwc(spec.shapes[0]), tuple(spec.shapes[1]), stride=p.stride,
                           padding=p.padding, dilation=p.dilation, groups=p.groups)


def row_bands(job: cr.ConvJob, capacity: int):
    """Split job into bands of output rows whose input rows fit ``capacity`` elements.

    Yields (oy0, iy0, band_job): output rows oy0 … oy0+band_job.oh-1 come from a job on
    input rows iy0 … iy0+band_job.h-1. Raises :class:`ConvUnsupported` when not even one
    output row fits.
    """
    sh, dh = job.stride[0], job.dilation[0]
    (pt, _), pad_w = job.pad
    span1 = dh * (job.kh - 1) + 1                       # input rows of one output row
    if job.h * job.w * job.c <= capacity:
        yield 0, 0, job
        return
    rows_fit = capacity // (job.w * job.c)
    if rows_fit < min(span1, job.h):
        raise ConvUnsupported(
            f"one output row needs {min(span1, job.h)} input rows of {job.w}x{job.c} "
            f"elements, more than the core's image memory ({capacity} elements)")
    ob = max(1, (rows_fit - span1) // sh + 1) if rows_fit >= span1 else 1
    for oy0 in range(0, job.oh, ob):
        n_out = min(ob, job.oh - oy0)
        top = oy0 * sh - pt                              # first input row (may be < 0)
        span = (n_out - 1) * sh + span1
        iy0, iy1 = max(0, top), min(job.h, top + span)
        band_pt = iy0 - top
        band_pb = (top + span) - iy1
        band = replace(job, h=iy1 - iy0, pad=((band_pt, band_pb), pad_w))
        assert band.oh == n_out and band.h * band.w * band.c <= capacity
        yield oy0, iy0, band


class ConvDriver(CoreDriver):
    """Runs integer 2-D convolutions of any size on one conv2d core behind a Device."""

    rmap = cr
    core_name = "conv2d"
    what = "conv2d core"
    stats = ConvStats
    whole_op = True
    #: use MODE.WREUSE (weights sent once per group and image) on cores that have it
    keep_weights = True

    # ---- identification ------------------------------------------------------------
    def _check_core(self) -> None:
        d = self.device
        if getattr(d, "regmap", None) is not cr:
            raise DeviceError("the device does not hold a conv2d core (its register map is "
                              f"{getattr(getattr(d, 'regmap', None), '__name__', None)})")
        cfg = super()._check_core()
        self.x_lanes = 1 << cr.field_value("CONFIG", "XLANES_LOG2", cfg)
        if cr.field_value("CONFIG", "ACC_WIDTH", cfg) != cr.ACC_WIDTH:
            raise DeviceError("core accumulator width differs from conv_regmap.ACC_WIDTH")
        self.capacity = d.read("CAPACITY")
        # depthwise mode and its MODE register: interface 1.2 on
        self.has_mode = cr.field_value("VERSION", "MINOR", d.read("VERSION")) >= 2
        dwc = d.read("DW_CONFIG") if self.has_mode else 0
        ct, p = cr.field_value("DW_CONFIG", "CT", dwc), cr.field_value("DW_CONFIG", "P", dwc)
        self.dw = (ct, p) if ct and p else None
        self.wbuf = d.read("WBUF_DEPTH") if self.has_mode else 0

    def depthwise_job(self, job: cr.ConvJob) -> cr.ConvJob | None:
        """The depthwise-mode job for job on this core, or None where the mode is absent,
        job is not depthwise (groups == C) or the cycle model finds it slower."""
        if not self.dw or job.dw or job.cg != 1 or job.groups != job.c:
            return None
        dwj = cr.depthwise_job(job, *self.dw)
        one = replace(job, n=1)
        if cr.expected_cycles(replace(dwj, n=1), self.rows, self.cols, self.x_lanes) > \
                cr.expected_cycles(one, self.rows, self.cols, self.x_lanes):
            return None
        return dwj
    # ---- what fits -----------------------------------------------------------------
    def check(self, job: cr.ConvJob) -> None:
        """Raise :class:`ConvUnsupported` if job cannot run on this core (register
        ranges; the image memory is handled by row bands)."""
        for name, v in (("W", job.w), ("C", job.c), ("G", job.groups), ("CG", job.cg),
                        ("OCG", job.ocg), ("OW", job.ow), ("H", job.h), ("OH", job.oh)):
            if v > _DIM_MAX:
                raise ConvUnsupported(f"{name} = {v} exceeds the core's {cr.DIM_BITS}-bit "
                                      "register")
        (pt, _), (pl, _) = job.pad
        for name, v in (("KH", job.kh), ("KW", job.kw), ("SH", job.stride[0]),
                        ("SW", job.stride[1]), ("DH", job.dilation[0]),
                        ("DW", job.dilation[1]), ("PAD_T", pt), ("PAD_L", pl)):
            if v > _SMALL_MAX:
                raise ConvUnsupported(f"{name} = {v} exceeds the core's {cr.SMALL_BITS}-bit "
                                      "field")
        list(row_bands(job, self.capacity))

    # ---- one job -------------------------------------------------------------------
    def _job(self, x: np.ndarray, w: np.ndarray, bias, job: cr.ConvJob, relu: bool = False,
             requant=None) -> np.ndarray:
        """One core job: x is (job.n, H, W, C) NHWC of the job's rows; ``relu`` /
        ``requant`` on the core's output stage (int8 out with requant)."""
        d, R, C, XL = self.device, self.rows, self.cols, self.x_lanes
        frames = cr.pack_job(x, w, bias, job, rows=R, cols=C, dtype=self.dtype, x_lanes=XL,
                             requant=requant)
        tiles = list(cr.tile_order(job, R, C))
        p_all = job.oh * job.ow
        heights = [min(R, p_all - p0) for _, p0, _ in tiles] * job.n
        c_beats = sum(heights)
        streams = {"x": InStream(b"".join(frames["x"]), math.ceil(job.h * job.w * job.c / XL)),
                   "b": InStream(b"".join(frames["b"]) * job.n, job.k)}
        if bias is not None:
            streams["bias"] = InStream(b"".join(frames["bias"]) * job.n, 1)
        if requant is not None:
            streams["q"] = InStream(b"".join(frames["q"]) * job.n, 1)
        try:
            for name, value in cr.register_values(job).items():
                if name != "MODE" or self.has_mode:
                    d.write(name, value)
            res = d.stream(streams, c_beats,
                           ctrl=self._ctrl_start(bias, relu, requant is not None))
            out = self._finish(res, heights)
            self.last.job_cycles.append((job, self._count()))
        except BaseException:
            self._recover()
            raise
        c = cr.unpack_c(out, job, rows=R, cols=C)
        return c.astype(np.int8) if requant is not None else c

    def _n_block(self, job: cr.ConvJob) -> int:
        """Images per job: within the N register and max_job_bytes of packed streams."""
        lane = self.lane_dtype.itemsize
        tiles = len(list(cr.tile_order(job, self.rows, self.cols)))
        per_image = (math.ceil(job.h * job.w * job.c / self.x_lanes) * self.x_lanes * lane
                     + tiles * job.k * self.cols * lane + tiles * self.cols * (4 + 8)
                     + tiles * self.rows * self.cols * 4)
        return int(max(1, min(_DIM_MAX, self.max_job_bytes // max(per_image, 1))))

    # ---- any size ------------------------------------------------------------------
    def conv_nhwc(self, x, w, bias, job: cr.ConvJob, *, relu: bool = False,
                  requant=None) -> np.ndarray:
        """(N, OH, OW, OC) int32 of job on NHWC x, weights (OC, CG, KH, KW), int32 bias;
        ``relu`` clamps at 0, ``requant`` = (multiplier, shift) per output channel gives
        int8 (``numerics.requantize``, ReLU after it), on the core's output stage when
        it has one."""
        with self.lock:
            return self._conv_nhwc(x, w, bias, job, relu, requant)

    def _conv_nhwc(self, x, w, bias, job: cr.ConvJob, relu=False, requant=None) -> np.ndarray:
        x, w = np.asarray(x), np.asarray(w)
        for name, v in (("x", x), ("w", w)):
            if not self.accepts(v.dtype):
                raise TypeError(f"{name}: dtype {v.dtype} does not run on this {self.dtype} "
                                f"core; integer operands up to {self.dtype} are accepted")
        if x.shape != (job.n, job.h, job.w, job.c) or \
                w.shape != (job.oc, job.cg, job.kh, job.kw):
            raise ValueError(f"operands {x.shape}, {w.shape} do not match the job {job}")
        if bias is not None:
            bias = wrap_int32(bias)
            if bias.shape != (job.oc,):
                raise ValueError(f"bias: expected shape ({job.oc},), got {bias.shape}")
        relu, requant = self._check_out_stage(relu, requant, job.oc)
        self.last = ConvStats()
        if job.n == 0 or job.oc == 0 or job.c == 0:
            # nothing for the core to do (its registers refuse zero sizes): no output
            # element, or, with no input channel, only the bias
            out = np.zeros((job.n, job.oh, job.ow, job.oc), np.int32)
            if bias is not None:
                out[...] = bias
            return self._host_out_stage(out, relu, requant)
        x = x.astype(self.lane_dtype, copy=False)
        w = w.astype(self.lane_dtype, copy=False)
        on_core = self.out_stage and (relu or requant is not None)
        stage = (relu, requant) if on_core else (False, None)
        oc = job.oc
        dwj = self.depthwise_job(job)
        if dwj is not None:
            try:
                self.check(dwj)
            except ConvUnsupported:   # the padded channels do not fit: the normal mode
                dwj = None
        if dwj is not None:
            x, w, bias = cr.depthwise_operands(x, w, bias, dwj)
            if stage[1] is not None:   # the padded channels' output stage: zeros
                stage = (relu, tuple(np.concatenate([np.asarray(v), np.zeros(
                    dwj.oc - oc, np.asarray(v).dtype)]) for v in stage[1]))
            job = dwj
            self.last.depthwise_mode = True
        if self.wbuf and self.keep_weights:
            job = replace(job, wreuse=self.wbuf)
        self.check(job)
        out = np.empty((job.n, job.oh, job.ow, job.oc),
                       np.int8 if on_core and requant is not None else np.int32)
        bands = list(row_bands(job, self.capacity))
        self.last.bands = len(bands)
        for oy0, iy0, band in bands:
            nb = self._n_block(band)
            for n0 in range(0, job.n, nb):
                n1 = min(job.n, n0 + nb)
                sub = replace(band, n=n1 - n0)
                xs = np.ascontiguousarray(x[n0:n1, iy0:iy0 + band.h])
                out[n0:n1, oy0:oy0 + band.oh] = self._job(xs, w, bias, sub, *stage)
        if out.shape[-1] != oc:
            out = np.ascontiguousarray(out[..., :oc])
        return out if on_core else self._host_out_stage(out, relu, requant)

    def run(self, spec, x, w, bias=None, multiplier=None, shift=None) -> CoreRun:
        """A validated conv2d OpSpec on integer operands: int32 in x's layout, bias and
        ReLU by the integer rules (int32 wrap-around, ReLU after the wrapped bias add),
        or int8 for a requantizing spec (``multiplier``, ``shift`` per output channel),
        with the run's counters. Raises :class:`ConvUnsupported` (before any job) when
        the core cannot take it."""
        if spec.activation not in (None, "relu"):
            raise ConvUnsupported(f"activation {spec.activation!r} (None or 'relu')")
        requant = (multiplier, shift) if spec.requant else None
        return self.measure(lambda: self._run_spec(spec, x, w, bias, requant))

    def _run_spec(self, spec, x, w, bias, requant=None) -> np.ndarray:
        nchw = spec.params.layout == "NCHW"
        x = np.asarray(x)
        x_nhwc = x.transpose(0, 2, 3, 1) if nchw else x
        out = self._conv_nhwc(x_nhwc, w, bias, job_of_spec(spec), spec.activation == "relu",
                              requant)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if nchw else out
