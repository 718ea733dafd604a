"""FPGA backend: the matmul and conv2d cores, run by the host drivers in
:mod:`lepton_accel.fpga`.

With no board present (no board driver exists yet) the device is the Verilator model of
each core's Verilog. matmul runs natively on int8 operands (int32 result, wrap-around,
bias and ReLU as the dtype rules say) on the matmul core; conv2d runs on the conv2d core
(image memory + hardware im2col; row bands for images larger than its memory) and falls
back to host im2col on the matmul core only when the conv core cannot take the
convolution (``lepton_accel.fpga.conv.LAST_ROUTE`` says which ran and why).
Float operands are not quantized implicitly: this backend declines them, and
``lepton_accel.fpga.matmul(..., quantize=...)`` runs them with an explicit choice.

Estimates: the core's cycles come from the perf model (measured cycle counts recorded
after every run, else the tile model), as for a real part. This device, however, is a
simulation: its estimate adds the measured simulation time per cycle (and the model
build when it is not cached yet), so auto-dispatch does not pick it over the CPU for
ordinary calls. The scheduler's plans for F1/F2 parts use the device specs in
:mod:`lepton_accel.perf.devices` and the recorded cycle counts, never simulation time.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

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


class FpgaBackend(Backend):
    name = "fpga"

    def __init__(self):
        self._avail: tuple[bool, str] | None = None

    # ---- protocol ------------------------------------------------------------------
    def available(self) -> tuple[bool, str]:
        from .. import fpga

        if not fpga.enabled():
            return False, ("the simulated FPGA device is switched off "
                           "(LEPTON_ACCEL_FPGA=off or lepton_accel.fpga.enable(False))")
        if self._avail is None:
            try:
                from ..fpga.build import toolchain_missing

                why = toolchain_missing()
            except Exception as e:  # hdl package or amaranth broken
                why = f"the FPGA toolchain could not be loaded ({e})"
            self._avail = (False, why) if why else (True, "")
        return self._avail

    def token(self):
        fpga = sys.modules.get("lepton_accel.fpga")  # not imported yet: nothing configured
        return fpga.state_token() if fpga is not None else 0

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
        if spec.out_dtype != "int32":
            return False, f"out_dtype {spec.out_dtype} is not supported (int32)"
        return True, ""

    def _device_spec(self, dtype: str):
        from ..fpga import core_size

        rows, cols = core_size()
        return with_overrides(DEVICES[TARGET_PART], name=f"{TARGET_PART}-sim-{rows}x{cols}",
                              core_rows=rows, core_cols=cols)

    def core_cycles(self, spec: OpSpec) -> float:
        """Core cycles the perf model expects for spec (measured if recorded)."""
        dev = self._device_spec(spec.dtype)
        est = MODEL.estimate(spec, dev, data_on_host=True)
        return est.compute_s * dev.clock_hz

    def estimate(self, spec: OpSpec, operands=None) -> float:
        """Seconds on *this* device: the simulated core, so simulation time per cycle
        (plus a model build when none is cached) on top of the part's own time."""
        from .. import fpga

        dev = self._device_spec(spec.dtype)
        est = MODEL.estimate(spec, dev, data_on_host=True)
        if not math.isfinite(est.total_s):
            return math.inf
        cycles = est.compute_s * dev.clock_hz
        total = est.total_s + cycles * MODEL.sim_s_per_cycle(dev.name, DEFAULT_SIM_S_PER_CYCLE)
        try:
            cfg = (fpga.conv_config_for(spec.dtype) if spec.op == "conv2d"
                   else fpga.config_for(spec.dtype))
            if not fpga.is_ready(cfg):
                total += BUILD_S
        except Exception:
            total += BUILD_S
        return total

    def _run(self, spec: OpSpec, operands: list[ArrayView]):
        from .. import fpga

        arrays = [v.host for v in operands]
        bias = arrays[2] if spec.bias else None
        t0 = time.perf_counter()
        whole_conv = False
        if spec.op == "matmul":
            drv = fpga.driver(fpga.config_for(spec.dtype))
            sim0 = getattr(drv.device, "sim_cycles", None)
            out = drv.matmul(arrays[0], arrays[1], bias, activation=spec.activation)
            out = np.asarray(out).reshape(spec.out_shape)
        else:
            from ..fpga.conv import conv2d_run

            drv = fpga.driver(fpga.conv_config_for(spec.dtype))
            sim0 = getattr(drv.device, "sim_cycles", None)
            out, ran = conv2d_run(spec, arrays[0], arrays[1], bias, spec.dtype)
            whole_conv = ran is drv and isinstance(drv, fpga.ConvDriver)
            if ran is not drv:   # the matmul-core fallback ran: its own clock
                drv, sim0 = ran, None
        wall = time.perf_counter() - t0
        stats = RunStats("fpga", wall, self._device_spec(spec.dtype).name, simulated=True,
                         extra={"core": (drv.rows, drv.cols), "whole_op": whole_conv})
        if drv.last.jobs:
            stats.cycles = int(drv.last.cycles)
        if sim0 is not None:
            simulated = drv.device.sim_cycles - sim0
            if simulated > 10_000:
                stats.sim_s_per_cycle = wall / simulated
        return to_caller_kind(out, operands[0].origin), stats

    kernels = {"matmul": _run, "conv2d": _run}
