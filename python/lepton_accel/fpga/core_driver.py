"""What the host drivers of both cores share.

:class:`CoreDriver` is the base of :class:`.driver.MatmulDriver` and
:class:`.conv_driver.ConvDriver`: the ID / VERSION / CONFIG checks every core answers the
same way (each core's register map, ``rmap``, is the source of truth), the CTRL word that
starts a job, the end-of-job checks (DONE, sticky ERROR flags, BUSY), the split of the
``c`` stream into tiles with its tlast check, and the job counters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .device import Device, DeviceError

__all__ = ["CoreDriver", "JobStats", "DEFAULT_MAX_JOB_BYTES"]

#: Upper bound on one job's packed input streams; bigger jobs are split.
DEFAULT_MAX_JOB_BYTES = 64 << 20


@dataclass
class JobStats:
    """Counters of the last :meth:`MatmulDriver.gemm` call."""

    jobs: int = 0
    cycles: int = 0          # sum of the core's CYCLES over the jobs
    stall_in: int = 0
    stall_out: int = 0


def _wrap32(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


class CoreDriver:
    """Base of a core's driver. Subclasses set ``rmap`` (the core's register map),
    ``core_name`` (as in "not a lepton <core_name> core"), ``what`` (how messages about
    a job name the core) and ``stats`` (the counters' class), and extend
    :meth:`_check_core`."""

    rmap = None
    core_name = ""
    what = "core"
    stats = JobStats

    def __init__(self, device: Device, *, max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
                 poll_limit: int = 1000):
        self.device = device
        self.max_job_bytes = int(max_job_bytes)
        self.poll_limit = poll_limit
        self.last = self.stats()
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
        return cfg

    @property
    def lane_dtype(self) -> np.dtype:
        return np.dtype({"int8": np.int8, "int16": np.int16}[self.dtype])

    def accepts(self, dtype) -> bool:
        """Whether integer operands of dtype run natively on this core."""
        dt = np.dtype(dtype)
        return dt.kind == "i" and dt.itemsize <= self.lane_dtype.itemsize

    # ---- one job -------------------------------------------------------------------
    def _ctrl_start(self, bias) -> int:
        """The CTRL word that starts a job (BIAS_EN when a bias is sent)."""
        rm = self.rmap
        ctrl = rm.field_mask("CTRL", "START")
        if bias is not None:
            ctrl |= rm.field_mask("CTRL", "BIAS_EN")
        return ctrl

    def _finish(self, res, heights: list[int]) -> list:
        """After a job's streams: wait for DONE, raise on ERROR flags (clearing them) or
        BUSY, check the c stream's tlast against the tile heights and return its frames,
        one per tile."""
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
        if not np.array_equal(res.c_last, expect_last):
            raise DeviceError("c stream: tlast does not mark the end of every tile")
        beat = self.cols * rm.ACC_WIDTH // 8
        out, pos = [], 0
        for h in heights:
            out.append(res.c[pos:pos + h * beat])
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
