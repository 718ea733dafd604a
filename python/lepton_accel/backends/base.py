"""What every backend module implements, and what a run hands back.

A backend has one kernel per op it runs (``kernels``: op name -> function); an op it has
no kernel for is refused with :class:`UnsupportedOperation` naming the op. A kernel takes
the validated spec and the operand views and returns the output with the run's
:class:`RunStats`. Backends write no global state: the caller records the statistics
(the public API into the process's perf model, the scheduler into its own).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from .. import numerics
from ..arrays import ArrayView, to_caller_kind
from ..ops import OpSpec


class BackendUnavailable(RuntimeError):
    """A backend was asked for explicitly but cannot run here (the message says why)."""


class UnsupportedOperation(ValueError):
    """A backend (or every backend) does not run this operation; the message says why."""


@dataclass(slots=True)
class RunStats:
    """What one run measured, travelling up with its result."""

    backend: str
    wall_s: float = 0.0
    device: str = ""                   # the device (spec name) it ran on
    cycles: int | None = None          # device clock cycles (FPGA cores' own counter)
    simulated: bool = False            # the device was a simulation
    sim_s_per_cycle: float | None = None
    extra: dict[str, Any] | None = None


Kernel = Callable[[OpSpec, "list[ArrayView]"], "tuple[Any, RunStats]"]


class Backend:
    """Base of the backend modules: ``name``, ``kernels`` and the four questions."""

    name: ClassVar[str]
    #: op name -> kernel(self, spec, views) -> (output, RunStats)
    kernels: ClassVar[dict[str, Callable]] = {}

    def available(self) -> tuple[bool, str]:
        """(True, "") when usable here, else (False, why not)."""
        return True, ""

    def token(self):
        """A cheap value that changes whenever what this backend offers may have changed
        (configuration, switches); a cached dispatch decision is reused while it holds."""
        return None

    def has_kernel(self, op: str) -> bool:
        return op in self.kernels

    def supports(self, spec: OpSpec, operands: list[ArrayView] | None = None) -> tuple[bool, str]:
        """Whether this backend runs ``spec`` (on these operands' devices), and why not."""
        if spec.op not in self.kernels:
            return False, f"no {spec.op} kernel on the {self.name} backend"
        return True, ""

    def estimate(self, spec: OpSpec, operands: list[ArrayView] | None = None) -> float:
        """Seconds this backend would take, transfers included."""
        raise NotImplementedError

    def run(self, spec: OpSpec, operands: list[ArrayView]):
        """Compute the result: (the caller's kind of array, RunStats)."""
        kernel = self.kernels.get(spec.op)
        if kernel is None:
            raise UnsupportedOperation(f"backend: {self.name!r} has no kernel for op "
                                       f"{spec.op!r}")
        return kernel(self, spec, operands)

    def run_requant_on_host(self, spec: OpSpec, operands: list[ArrayView]):
        """A requantizing spec as its int32 op on this backend, then
        ``numerics.requantize`` (and the ReLU) on the host: for backends whose kernels
        have no int8 epilogue of their own."""
        out, stats = self.run(spec.int32_spec, operands[:-2])
        mult, shift = (v.host for v in operands[-2:])
        y = numerics.requantize(np.asarray(out), mult, shift,
                                spec.definition.channel_axis(spec),
                                relu=spec.activation == "relu")
        return to_caller_kind(y, operands[0].origin), stats
