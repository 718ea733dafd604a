"""FPGA backend: the matmul and conv2d cores, run by the host drivers in
:mod:`lepton_accel.fpga`.

With no board present (no board driver exists yet) the device is the Verilator model of
each core's Verilog. matmul runs natively on int8 operands (int32 result, wrap-around,
bias and ReLU as the dtype rules say; a requantizing spec's int8 epilogue in the cores'
output stage) on the matmul core; conv2d runs on the conv2d core
(image memory + hardware im2col; row bands for images larger than its memory) and falls
back to host im2col on the matmul core only when the conv core cannot take the
convolution (the run's ``RunStats.extra["route"]`` says which core ran and why).
Float operands are not quantized implicitly: this backend declines them, and
``lepton_accel.fpga.matmul(..., quantize=...)`` runs them with an explicit choice.

Estimates: the core's cycles come from the perf model (measured cycle counts recorded
after every run, else the tile model), as for a real part. This device, however, is a
simulation: its estimate adds the measured simulation time per cycle (and the model
build when it is not cached yet), so auto-dispatch does not pick it over the CPU for
ordinary calls. The scheduler's plans for F1/F2 parts use the device specs in
:mod:`lepton_accel.perf.devices` and the recorded cycle counts, never simulation time.

Runs write no global state: each returns its ``RunStats`` (the cores' cycles,
``sim_s_per_cycle``, ``extra={"core": (rows, cols), "whole_op": bool, "route": {...}}``)
and the caller records them (``perf.MODEL.observe``).
"""
from __future__ import annotations

import math
import sys
import time

from ..arrays import ArrayView, to_caller_kind
from ..ops import OpSpec
from ..perf import DEVICES, MODEL
from ..perf.devices import with_overrides
from .base import Backend, RunStats

#: Part whose clock and link the simulated core stands for (F2's VU47P, 250 MHz).
TARGET_PART = "VU47P"
#: Starting guess of wall seconds per simulated cycle (refined by every run).
DEFAULT_SIM_S_PER_CYCLE = 3e-6
#: Expected seconds to build a model that is not in the cache.
BUILD_S = 60.0
#: Simulated cycles a run needs before its wall time says something about the speed.
MIN_SIM_CYCLES = 10_000


def _session():
    """lepton_accel.fpga.session, imported on first use (``import lepton_accel`` does not
    load the fpga package) and kept, since estimates ask for it on every dispatch."""
    global _SESSION
    if _SESSION is None:
        from ..fpga import session

        _SESSION = session
    return _SESSION


_SESSION = None


class FpgaBackend(Backend):
    name = "fpga"

    def __init__(self):
        self._avail: tuple[bool, str] | None = None
        self._devices: dict = {}     # core size -> the DeviceSpec this device stands for

    # ---- protocol ------------------------------------------------------------------
    def available(self) -> tuple[bool, str]:
        if not _session().enabled():
            return False, ("the simulated FPGA device is switched off "
                           "(LEPTON_ACCEL_FPGA=off or lepton_accel.fpga.enable(False))")
        if self._avail is None:
            try:
                from ..fpga.toolchain import toolchain_missing

                why = toolchain_missing()
            except Exception as e:  # hdl package or amaranth broken
                why = f"the FPGA toolchain could not be loaded ({e})"
            self._avail = (False, why) if why else (True, "")
        return self._avail

    def token(self):
        session = sys.modules.get("lepton_accel.fpga.session")  # not loaded: nothing set
        return session.state_token() if session is not None else 0

    def supports(self, spec: OpSpec, operands: list[ArrayView] | None = None) -> tuple[bool, str]:
        if spec.op not in self.kernels:
            return False, f"no {spec.op} kernel on the fpga backend"
        for v in operands or ():
            if not v.is_host:
                return False, f"{v.name} is on {v.device}; the fpga backend takes host memory"
        if spec.dtype not in ("int8", "int16"):
            return False, (f"{spec.dtype} operands do not run natively on the integer core; "
                           "quantize them explicitly with lepton_accel.fpga.matmul(..., "
                           "quantize='per_tensor' or 'per_channel')")
        if spec.activation not in (None, "relu"):
            return False, f"activation {spec.activation!r} is not supported (None or 'relu')"
        if spec.out_dtype != ("int8" if spec.requant else "int32"):
            return False, f"out_dtype {spec.out_dtype} is not supported (int32, or int8 requantized)"
        return True, ""

    def _device_spec(self):
        size = _session().core_size()
        dev = self._devices.get(size)
        if dev is None:
            rows, cols = size
            dev = with_overrides(DEVICES[TARGET_PART], name=f"{TARGET_PART}-sim-{rows}x{cols}",
                                 core_rows=rows, core_cols=cols)
            self._devices[size] = dev
        return dev

    def core_cycles(self, spec: OpSpec) -> float:
        """Core cycles the perf model expects for spec (measured if recorded)."""
        dev = self._device_spec()
        est = MODEL.estimate(spec, dev, data_on_host=True)
        return est.compute_s * dev.clock_hz

    def estimate(self, spec: OpSpec, operands=None) -> float:
        """Seconds on *this* device: the simulated core, so simulation time per cycle
        (plus a model build when none is cached) on top of the part's own time."""
        session = _session()
        dev = self._device_spec()
        est = MODEL.estimate(spec, dev, data_on_host=True)
        if not math.isfinite(est.total_s):
            return math.inf
        cycles = est.compute_s * dev.clock_hz
        total = est.total_s + cycles * MODEL.sim_s_per_cycle(dev.name, DEFAULT_SIM_S_PER_CYCLE)
        try:
            if not session.is_ready(session.config_for_op(spec.op, spec.dtype)):
                total += BUILD_S
        except Exception:
            total += BUILD_S
        return total

    # ---- kernels -------------------------------------------------------------------
    def _matmul(self, spec: OpSpec, operands: list[ArrayView]):
        session = _session()
        arrays = [v.host for v in operands]
        t0 = time.perf_counter()
        drv = session.driver_for(session.config_for("matmul", spec.dtype))
        run = drv.run(spec, arrays[0], arrays[1], arrays[2] if spec.bias else None,
                      *_requant_arrays(spec, arrays))
        return self._result(spec, operands, run, time.perf_counter() - t0)

    def _conv2d(self, spec: OpSpec, operands: list[ArrayView]):
        from ..fpga.conv import conv2d_run

        arrays = [v.host for v in operands]
        t0 = time.perf_counter()
        rq = _requant_arrays(spec, arrays)
        run = conv2d_run(spec, arrays[0], arrays[1], arrays[2] if spec.bias else None,
                         requant=rq if spec.requant else None)
        return self._result(spec, operands, run, time.perf_counter() - t0)

    def _result(self, spec: OpSpec, operands: list[ArrayView], run, wall: float):
        """The output in the caller's kind of array and the run's RunStats."""
        st = run.stats
        stats = RunStats("fpga", wall, self._device_spec().name, simulated=True,
                         extra={"core": run.array, "whole_op": run.whole_op,
                                "route": run.route})
        if st.jobs:
            stats.cycles = int(st.cycles)
        if st.device_cycles is not None and st.device_cycles > MIN_SIM_CYCLES:
            stats.sim_s_per_cycle = wall / st.device_cycles
        return to_caller_kind(run.out, operands[0].origin), stats

    kernels = {"matmul": _matmul, "conv2d": _conv2d}


def _requant_arrays(spec: OpSpec, arrays) -> tuple:
    """(multiplier, shift) of a requantizing spec (its last two operands), else Nones."""
    return (arrays[-2], arrays[-1]) if spec.requant else (None, None)
