"""The device layer: what the host drivers need from something that runs a core.

A device exposes the core's AXI4-Lite registers and its AXI4-Stream ports. The host
driver (:mod:`.driver`) talks only to this interface, so the same driver runs on the
Verilator model (:class:`.verilator_device.VerilatorDevice`, the one implementation
today) and, later, on a board whose shell moves the stream data by DMA.

Stream data crosses the interface as whole jobs: the input streams' beats back to back
(``bytes``, packed as :mod:`lepton_accel.hdl.regmap` describes) and the number of output
beats expected; the device returns the output beats and their ``tlast`` flags.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from lepton_accel.hdl import regmap

__all__ = ["Device", "DeviceError", "DeviceTimeout", "StreamResult"]


class DeviceError(RuntimeError):
    """The device (or the simulated core) failed; the message says how."""


class DeviceTimeout(DeviceError):
    """The core stopped making progress (no handshake within the cycle limit)."""


@dataclass
class StreamResult:
    c: bytes                 # output beats, back to back
    c_last: np.ndarray       # tlast of each output beat (uint8)
    cycles: int              # device clock cycles the transfer took (simulated devices)


class Device(abc.ABC):
    """A matmul core the host can reach: registers, streams, reset."""

    #: short name for messages, e.g. "verilator"
    kind: str = "device"
    #: True for a simulation: its wall time says nothing about hardware speed
    simulated: bool = False
    #: the core's register map (``lepton_accel.hdl.regmap``, or ``conv_regmap`` for a
    #: conv2d core): names for :meth:`write` / :meth:`read`
    regmap = regmap

    # ---- registers -----------------------------------------------------------------
    @abc.abstractmethod
    def write_reg(self, offset: int, value: int) -> None:
        """AXI4-Lite write of a 32-bit register at a byte offset."""

    @abc.abstractmethod
    def read_reg(self, offset: int) -> int:
        """AXI4-Lite read of a 32-bit register at a byte offset."""

    def write(self, name: str, value: int) -> None:
        self.write_reg(self.regmap.REG[name].offset, value)

    def read(self, name: str) -> int:
        return self.read_reg(self.regmap.REG[name].offset)

    def read_cycles(self) -> int:
        """The core's cycle counter of the last job (CYCLES_LO latches CYCLES_HI)."""
        lo = self.read("CYCLES_LO")
        hi = self.read("CYCLES_HI")
        return (hi << 32) | lo

    # ---- streams -------------------------------------------------------------------
    @abc.abstractmethod
    def stream(self, a: bytes, b: bytes, bias: bytes | None, *, k: int,
               c_beats: int) -> StreamResult:
        """Send a job's input beats (tlast every k beats on a and b, on every bias
        beat) and receive c_beats output beats."""

    # ---- control -------------------------------------------------------------------
    @abc.abstractmethod
    def reset(self) -> None:
        """Reset the core (synchronous, active high)."""

    def close(self) -> None:
        """Release the device."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
