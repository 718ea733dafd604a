"""What the host drivers of every core share.

:class:`CoreDriver` is the base of :class:`.matmul_driver.MatmulDriver` and
:class:`.conv_driver.ConvDriver`: the ID / VERSION / CONFIG checks every core answers the
same way (each core's register map, ``rmap``, is the source of truth), the CTRL word that
starts a job, the end-of-job checks (DONE, sticky ERROR flags, BUSY), the split of the
output stream into tiles with its tlast check, the reset after a failed job, the job
counters, and :class:`CoreRun`, what a driver's ``run`` of a validated spec returns.

A driver runs one job at a time: its public calls hold :attr:`CoreDriver.lock` (an
RLock), so threads sharing a driver queue up instead of interleaving register writes.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .. import numerics
from .device import Device, DeviceError

__all__ = ["CoreDriver", "CoreRun", "JobStats", "DEFAULT_MAX_JOB_BYTES"]

#: Upper bound on one job's packed input streams; bigger jobs are split.
DEFAULT_MAX_JOB_BYTES = 64 << 20


@dataclass
class JobStats:
    """Counters of one driver call (summed over its jobs)."""

    jobs: int = 0
    cycles: int = 0          # sum of the core's CYCLES over the jobs
    stall_in: int = 0
    stall_out: int = 0
    #: clock cycles the device ran during the call (a simulation's own count; None
    #: where the device cannot tell)
    device_cycles: int | None = None


@dataclass
class CoreRun:
    """One op on the cores: the output and what it cost.

    ``core`` is the kind of core that ran it and ``array`` its (rows, cols); ``whole_op``
    says the cycles are those of the whole op on its own core (the conv2d core), not of
    GEMMs on the matmul core; ``reason`` says why the op did not run on its own core
    (empty when it did)."""

    out: np.ndarray
    stats: JobStats
    core: str
    array: tuple[int, int]
    whole_op: bool = False
    reason: str = ""

    @property
    def route(self) -> dict:
        """Which core ran and why: {"core", "reason", "bands", "depthwise"} (bands: the
        conv2d core's row bands, 0 elsewhere; depthwise: whether it ran in the conv2d
        core's depthwise mode)."""
        return {"core": self.core, "reason": self.reason,
                "bands": getattr(self.stats, "bands", 0),
                "depthwise": getattr(self.stats, "depthwise_mode", False)}


class CoreDriver:
    """Base of a core's driver. Subclasses set ``rmap`` (the core's register map),
    ``core_name`` (its kind's name, as in "not a lepton <core_name> core"), ``what`` (how
    messages about a job name the core), ``stats`` (the counters' class) and
    ``whole_op``, extend :meth:`_check_core`, and give ``run(spec, ...)`` for the op
    their kind runs (through :meth:`measure`)."""

    rmap = None
    core_name = ""
    what = "core"
    stats = JobStats

    #: whether a run's cycles are its whole op on this core (see :class:`CoreRun`)
    whole_op = False

    def __init__(self, device: Device, *, max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
                 poll_limit: int = 1000):
        self.device = device
        self.max_job_bytes = int(max_job_bytes)
        self.poll_limit = poll_limit
        #: counters of the last call (a call's own are in the CoreRun it returns)
        self.last = self.stats()
        self.lock = threading.RLock()
        with self.lock:
            self._check_core()

    # ---- identification ------------------------------------------------------------
    def _check_core(self) -> int:
        """Check ID and the VERSION major; set rows, cols and dtype from CONFIG and
        return the CONFIG word."""
        d, rm = self.device, self.rmap
        ident = d.read("ID")
        if ident != rm.CORE_ID:
            raise DeviceError(f"not a lepton {self.core_name} core: ID reads 0x{ident:08x}, "
                              f"expected 0x{rm.CORE_ID:08x}")
        major = rm.field_value("VERSION", "MAJOR", d.read("VERSION"))
        if major != rm.VERSION[0]:
            raise DeviceError(f"core interface version {major}.x, this driver speaks "
                              f"{rm.VERSION[0]}.x")
        cfg = d.read("CONFIG")
        self.rows = rm.field_value("CONFIG", "ROWS", cfg)
        self.cols = rm.field_value("CONFIG", "COLS", cfg)
        code = rm.field_value("CONFIG", "DTYPE", cfg)
        names = {v: k for k, v in rm.DTYPE_CODES.items()}
        if code not in names:
            raise DeviceError(f"core reports unknown dtype code {code}")
        self.dtype = names[code]
        #: the core has the output stage (CONFIG.OUT_STAGE: CTRL.RELU / REQUANT and the q
        #: stream); without it ReLU and requantization run on the host, same arithmetic
        self.out_stage = bool(rm.field_value("CONFIG", "OUT_STAGE", cfg))
        return cfg

    @property
    def lane_dtype(self) -> np.dtype:
        return np.dtype({"int8": np.int8, "int16": np.int16}[self.dtype])

    def accepts(self, dtype) -> bool:
        """Whether integer operands of dtype run natively on this core."""
        dt = np.dtype(dtype)
        return dt.kind == "i" and dt.itemsize <= self.lane_dtype.itemsize

    # ---- one job -------------------------------------------------------------------
    def _ctrl_start(self, bias, relu: bool = False, requant: bool = False) -> int:
        """The CTRL word that starts a job (BIAS_EN when a bias is sent; RELU / REQUANT
        for the output stage)."""
        rm = self.rmap
        ctrl = rm.field_mask("CTRL", "START")
        if bias is not None:
            ctrl |= rm.field_mask("CTRL", "BIAS_EN")
        if relu:
            ctrl |= rm.field_mask("CTRL", "RELU")
        if requant:
            ctrl |= rm.field_mask("CTRL", "REQUANT")
        return ctrl

    @staticmethod
    def _check_out_stage(relu, requant, channels: int):
        """(relu, requant) checked: requant None or (multiplier, shift) per channel."""
        if relu is not False and relu is not True:
            raise TypeError(f"relu: expected True or False, got {relu!r}")
        if requant is None:
            return relu, None
        if not isinstance(requant, (tuple, list)) or len(requant) != 2:
            raise TypeError("requant: expected (multiplier, shift), per output channel")
        return relu, numerics.check_requant(requant[0], requant[1], channels)

    @staticmethod
    def _host_out_stage(out: np.ndarray, relu: bool, requant, axis: int = -1) -> np.ndarray:
        """The output stage's arithmetic on the host (int32 ``out``)."""
        if requant is not None:
            return numerics.requantize(out, requant[0], requant[1], axis, relu=relu)
        return np.maximum(out, 0) if relu else out

    def _finish(self, res, heights: list[int]) -> list:
        """After a job's streams: wait for DONE, raise on ERROR flags (clearing them) or
        BUSY, check the output stream's tlast against the tile heights and return its
        frames, one per tile."""
        d, rm, what = self.device, self.rmap, self.what
        for _ in range(self.poll_limit):
            status = d.read("STATUS")
            if rm.field_value("STATUS", "DONE", status) or \
                    rm.field_value("STATUS", "ERROR", status):
                break
        else:
            raise DeviceError(f"{what} did not report DONE after its last output beat")
        err = d.read("ERROR")
        if err:
            d.write("ERROR", err)
            flags = [f.name for f in rm.REG["ERROR"].fields if (err >> f.lsb) & 1]
            raise DeviceError(f"{what} raised ERROR {', '.join(flags)} (0x{err:x})")
        if rm.field_value("STATUS", "BUSY", status):
            raise DeviceError(f"{what} still busy after its last output beat")
        c_beats = sum(heights)
        expect_last = np.zeros(c_beats, np.uint8)
        expect_last[np.cumsum(heights) - 1] = 1
        if not np.array_equal(res.out_last, expect_last):
            raise DeviceError(f"{d.output} stream: tlast does not mark the end of every tile")
        beat = self.cols * rm.ACC_WIDTH // 8
        out, pos = [], 0
        for h in heights:
            out.append(res.out[pos:pos + h * beat])
            pos += h * beat
        return out

    def _recover(self) -> None:
        """Reset the core after a job failed anywhere between its registers and its last
        check, so that nothing of it (BUSY, sticky ERROR flags, beats in flight) reaches
        the next job."""
        try:
            self.device.reset()
        except Exception:  # the job's own error is the one to report
            pass

    def _count(self) -> int:
        """Add the job's CYCLES and stall counters to :attr:`last`; return CYCLES."""
        d = self.device
        cycles = d.read_cycles()
        st = self.last
        st.jobs += 1
        st.cycles += cycles
        st.stall_in += d.read("STALL_IN")
        st.stall_out += d.read("STALL_OUT")
        return cycles

    def measure(self, compute) -> CoreRun:
        """Call ``compute()`` (which sets :attr:`last`) holding the lock: its output and
        counters, with the device cycles it took, as a :class:`CoreRun`."""
        with self.lock:
            c0 = self.device.clock_cycles
            out = compute()
            stats = self.last
            if c0 is not None:
                stats.device_cycles = self.device.clock_cycles - c0
            return CoreRun(out, stats, self.core_name, (self.rows, self.cols), self.whole_op)
