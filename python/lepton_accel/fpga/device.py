"""The device layer: what the host drivers need from something that runs a core.

A device exposes the core's AXI4-Lite registers and its AXI4-Stream ports. The host
drivers (:mod:`.matmul_driver`, :mod:`.conv_driver`) talk only to this interface, so the
same driver runs on the Verilator model (:class:`.verilator_device.VerilatorDevice`, the
one implementation today) and, later, on a board whose shell moves the stream data by DMA.

Stream data crosses the interface as whole jobs, for every kind of core the same way:
the input streams by name (each one's beats back to back, ``bytes`` packed as the core's
register map describes, with its tlast period), optionally the CTRL word that starts the
job (written while the streams are presented), and the number of output beats expected;
the device returns the output beats and their ``tlast`` flags.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Mapping

import numpy as np

__all__ = ["Device", "DeviceError", "DeviceTimeout", "InStream", "StreamResult"]


class DeviceError(RuntimeError):
    """The device (or the simulated core) failed; the message says how."""


class DeviceTimeout(DeviceError):
    """The core stopped making progress (no handshake within the cycle limit)."""


@dataclass(frozen=True)
class InStream:
    """One input stream of a job: its beats back to back, ``tlast`` on every
    ``frame``-th beat (1: on every beat)."""

    data: bytes = b""
    frame: int = 1


@dataclass
class StreamResult:
    out: bytes               # output beats, back to back
    out_last: np.ndarray     # tlast of each output beat (uint8)
    cycles: int              # device clock cycles the transfer took (simulated devices)


class Device(abc.ABC):
    """A core the host can reach: registers, streams, reset.

    Implementations set :attr:`regmap` (the core's register map module, for
    :meth:`write` / :meth:`read` by name) and describe the core's streams with
    :meth:`_set_streams`.
    """

    #: short name for messages, e.g. "verilator"
    kind: str = "device"
    #: True for a simulation: its wall time says nothing about hardware speed
    simulated: bool = False
    #: the core's register map module (``lepton_accel.hdl.<core>_regmap``)
    regmap = None
    #: input stream names in register-map order, the output stream's name, and the
    #: bytes per beat of each
    inputs: tuple[str, ...] = ()
    output: str = ""
    beat_bytes: dict[str, int] = {}

    def _set_streams(self, streams: list[dict]) -> None:
        """Take the stream layout from a core description (``CoreConfig.streams()``)."""
        self.inputs = tuple(s["name"] for s in streams if s["direction"] == "in")
        outs = [s["name"] for s in streams if s["direction"] == "out"]
        if len(outs) != 1:
            raise DeviceError(f"a core has one output stream, this one has {outs}")
        self.output = outs[0]
        self.beat_bytes = {s["name"]: s["bits"] // 8 for s in streams}

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

    @property
    def clock_cycles(self) -> int | None:
        """Clock cycles the device has run since it was created, where it can tell (a
        simulation); None otherwise."""
        return None

    # ---- streams -------------------------------------------------------------------
    def stream(self, inputs: Mapping[str, InStream], out_beats: int, *,
               ctrl: int | None = None) -> StreamResult:
        """Send a job's input streams (any not named send nothing), writing ``ctrl`` to
        CTRL while they are presented when given, and receive ``out_beats`` output beats.
        Raises ValueError for a stream the core does not have or data that is not a
        whole number of its beats, before anything moves."""
        for name, s in inputs.items():
            if name not in self.inputs:
                raise ValueError(f"inputs: the core has no input stream {name!r} "
                                 f"(it has {', '.join(self.inputs)})")
            if len(s.data) % self.beat_bytes[name]:
                raise ValueError(f"{name}: {len(s.data)} bytes is not a whole number of "
                                 f"{self.beat_bytes[name]}-byte beats")
            if s.frame < 1:
                raise ValueError(f"{name}: frame must be >= 1 beat, got {s.frame}")
        if out_beats < 0:
            raise ValueError(f"out_beats: expected >= 0, got {out_beats}")
        ordered = [inputs.get(name, InStream()) for name in self.inputs]
        return self._transfer(ordered, int(out_beats), ctrl)

    @abc.abstractmethod
    def _transfer(self, inputs: list[InStream], out_beats: int,
                  ctrl: int | None) -> StreamResult:
        """:meth:`stream` after its checks: ``inputs`` in :attr:`inputs` order."""

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
