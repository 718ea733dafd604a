"""Roofline cost model shared by auto-dispatch and the scheduler.

time = max(compute, device memory traffic) + host<->device transfer + call overhead,
with compute = flops / (peak x efficiency). Measured tables refine it: an efficiency per
(device, dtype), or for FPGA cores the cycle count of a shape measured on the core's
own counter, which is then scaled by the target part's clock.
"""
from __future__ import annotations

import json
import math
import os
from typing import NamedTuple

from ..ops import OpSpec
from .devices import DEVICES, DeviceSpec


class Estimate(NamedTuple):
    """One op's predicted time on one device (a tuple: placement builds thousands a second)."""

    device: str
    compute_s: float
    memory_s: float
    transfer_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.transfer_s + self.overhead_s


class PerfModel:
    def __init__(self):
        self._efficiency: dict[tuple[str, str], float] = {}
        self._fpga_cycles: dict[tuple, int] = {}
        self._sim_s_per_cycle: dict[str, float] = {}
        self._train_step: dict[str, float] = {}      # device kind -> measured / modelled step
        #: bumped whenever a measurement changes what an estimate would say
        self.generation = 0
        table = os.environ.get("LEPTON_ACCEL_PERF_TABLE")
        if table:
            self.load_table(table)

    # ---- measured refinements --------------------------------------------------------
    def set_efficiency(self, device: str, dtype: str, fraction: float) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction: expected a value in (0, 1], got {fraction}")
        self._efficiency[(device, dtype)] = fraction
        self.generation += 1

    def record_fpga_cycles(self, rows: int, cols: int, dtype: str, gemm: tuple,
                           cycles: int) -> None:
        """Remember the cycles an (rows x cols) core took for an M x N x K GEMM, or, with
        ``gemm = fpga_cycle_key(spec)``, for that whole op on a core that runs it end to end
        (the conv2d core)."""
        key = (rows, cols, dtype, tuple(gemm))
        if self._fpga_cycles.get(key) != int(cycles):
            self._fpga_cycles[key] = int(cycles)
            self.generation += 1

    def observe(self, spec: OpSpec, stats) -> None:
        """Learn from one run's statistics (a backend's ``RunStats``): the cycles an FPGA
        core took (``extra["whole_op"]``: for the whole op, else per GEMM of its batch), and
        how fast its simulation ran. Called by whoever ran the op (the
        public API, the scheduler), never by a backend."""
        extra = stats.extra or {}
        core = extra.get("core")
        if stats.cycles is not None and core is not None:
            rows, cols = core
            if extra.get("whole_op"):
                self.record_fpga_cycles(rows, cols, spec.dtype, fpga_cycle_key(spec), stats.cycles)
            else:
                batch, m, n, k = spec.gemm_shape
                self.record_fpga_cycles(rows, cols, spec.dtype, (m, n, k),
                                        int(round(stats.cycles / max(batch, 1))))
        if stats.sim_s_per_cycle is not None:
            old = self._sim_s_per_cycle.get(stats.device)
            new = stats.sim_s_per_cycle
            self._sim_s_per_cycle[stats.device] = new if old is None else 0.5 * old + 0.5 * new
            self.generation += 1

    def observe_train_step(self, kind: str, modelled_s: float, measured_s: float) -> None:
        """Learn from a training run: its measured step against the layers' modelled compute
        on the device it ran on. The ratio (framework dispatch, pooling, loss and optimizer,
        which the layer model leaves out) then scales the compute of later train estimates
        on devices of that kind; repeated runs are averaged in log space."""
        if not (modelled_s > 0 and measured_s > 0) or not all(map(math.isfinite, (modelled_s, measured_s))):
            return
        ratio = measured_s / modelled_s
        old = self._train_step.get(kind)
        self._train_step[kind] = ratio if old is None else math.sqrt(old * ratio)
        self.generation += 1

    def train_step_factor(self, kind: str) -> float:
        """Measured / modelled training step on devices of ``kind`` (1.0 before any run)."""
        return self._train_step.get(kind, 1.0)

    def sim_s_per_cycle(self, device: str, default: float) -> float:
        """Wall seconds per simulated cycle seen on a simulated device (else default)."""
        return self._sim_s_per_cycle.get(device, default)

    def load_table(self, path: str) -> None:
        """JSON: {"efficiency": {"DEVICE": {"dtype": f}}, "fpga_cycles": [[r, c, dt, M, N, K, cyc]],
        "train_step": {"KIND": measured / modelled}}."""
        with open(path) as f:
            data = json.load(f)
        for dev, per_dtype in data.get("efficiency", {}).items():
            for dt, frac in per_dtype.items():
                self.set_efficiency(dev, dt, float(frac))
        for r, c, dt, m, n, k, cyc in data.get("fpga_cycles", []):
            self.record_fpga_cycles(r, c, dt, (m, n, k), cyc)
        for kind, ratio in data.get("train_step", {}).items():
            self.observe_train_step(kind, 1.0, float(ratio))

    # ---- the estimate ----------------------------------------------------------------
    def estimate(self, spec: OpSpec, device: DeviceSpec | str, *, data_on_host: bool = True,
                 precision: str | None = None) -> Estimate:
        dev = DEVICES[device] if isinstance(device, str) else device
        tf32 = precision == "tf32" or getattr(spec.params, "allow_tf32", False)
        dtype = "tf32" if (tf32 and spec.dtype == "float32" and "tf32" in dev.peak) else spec.dtype
        peak = dev.peak.get(dtype, 0.0)
        if peak <= 0:
            return Estimate(dev.name, math.inf, math.inf, 0.0, dev.call_overhead)
        if dev.kind == "fpga":
            compute = self._fpga_compute_s(spec, dev)
        else:
            eff = self._efficiency.get((dev.name, dtype), dev.efficiency.get(dtype, 1.0))
            compute = spec.flops / (peak * eff)
        moved = spec.bytes_in + spec.bytes_out
        memory = moved / dev.memory_bw
        transfer = moved / dev.link_bw if (data_on_host and dev.link_bw > 0) else 0.0
        return Estimate(dev.name, compute, memory, transfer, dev.call_overhead)

    def _fpga_compute_s(self, spec: OpSpec, dev: DeviceSpec) -> float:
        batch, M, N, K = spec.gemm_shape
        core = (dev.core_rows, dev.core_cols, spec.dtype)
        whole = self._fpga_cycles.get(core + (fpga_cycle_key(spec),))  # the op, end to end
        if whole is not None:
            return whole / dev.clock_hz
        per_gemm = self._fpga_cycles.get(core + ((M, N, K),))          # one GEMM of the batch
        if per_gemm is not None:
            return batch * per_gemm / dev.clock_hz
        # Output-stationary tiles of rows x cols, K cycles each, at the part's efficiency.
        tiles = math.ceil(M / dev.core_rows) * math.ceil(N / dev.core_cols)
        eff = self._efficiency.get((dev.name, spec.dtype), dev.efficiency.get(spec.dtype, 1.0))
        return batch * tiles * max(K, 1) / (dev.clock_hz * eff)


def fpga_cycle_key(spec: OpSpec) -> tuple:
    """Cycle-table key of a whole op on a core that runs it end to end (the conv2d core's
    cycles depend on the image, not only on the implicit GEMM): the op, its operand shapes
    and its parameters."""
    return (spec.op, spec.shapes, spec.params)


#: The process-wide model used by dispatch and the scheduler.
MODEL = PerfModel()
