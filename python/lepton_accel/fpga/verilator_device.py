"""A core of any kind as a Verilator model, driven by our C++ harness via ctypes.

Every clock cycle runs in C++ (``harness/lx_harness.cpp``); Python calls in once per
register access and once per streamed job. Errors in the simulation (no progress within
the cycle limit, more output than expected, a bus that does not answer) come back as
:class:`.DeviceError` / :class:`.DeviceTimeout`, never as a hang.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

from .build import build_model
from .device import Device, DeviceError, DeviceTimeout, InStream, StreamResult
from .kinds import CoreConfig, MatmulConfig

__all__ = ["VerilatorDevice"]

_ERRORS = {1: "timeout", 2: "overflow", 3: "bad arguments"}
_LIBS: dict[str, ctypes.CDLL] = {}
_LIBS_LOCK = threading.Lock()

_u8p = ctypes.POINTER(ctypes.c_uint8)
_u64 = ctypes.c_uint64


class _LxIn(ctypes.Structure):
    """``struct LxIn`` of the harness: one input stream of a transfer."""

    _fields_ = [("data", ctypes.c_char_p), ("beats", _u64), ("bytes", ctypes.c_int32),
                ("frame_beats", _u64)]


def _load(path: Path) -> ctypes.CDLL:
    with _LIBS_LOCK:
        lib = _LIBS.get(str(path))
        if lib is not None:
            return lib
        lib = ctypes.CDLL(str(path))
        lib.lx_create.restype = ctypes.c_void_p
        lib.lx_create.argtypes = []
        lib.lx_destroy.argtypes = [ctypes.c_void_p]
        lib.lx_cycles.restype = _u64
        lib.lx_cycles.argtypes = [ctypes.c_void_p]
        lib.lx_inputs.restype = ctypes.c_int
        lib.lx_inputs.argtypes = []
        lib.lx_port_bytes.restype = ctypes.c_int
        lib.lx_port_bytes.argtypes = [ctypes.c_int]
        lib.lx_reset.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.lx_step.argtypes = [ctypes.c_void_p, _u64]
        lib.lx_write_reg.restype = ctypes.c_int
        lib.lx_write_reg.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, _u64,
                                     ctypes.POINTER(ctypes.c_uint32)]
        lib.lx_read_reg.restype = ctypes.c_int
        lib.lx_read_reg.argtypes = [ctypes.c_void_p, ctypes.c_uint32, _u64,
                                    ctypes.POINTER(ctypes.c_uint32),
                                    ctypes.POINTER(ctypes.c_uint32)]
        lib.lx_stream.restype = ctypes.c_int64
        lib.lx_stream.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(_LxIn), ctypes.c_int,
            ctypes.c_int, ctypes.c_uint32, ctypes.c_uint32,
            _u8p, _u8p, _u64, ctypes.c_int,
            ctypes.c_uint32, ctypes.c_uint32, _u64,
            _u64, _u64, ctypes.POINTER(_u64),
        ]
        _LIBS[str(path)] = lib
        return lib


class VerilatorDevice(Device):
    """A simulated core of one configuration (any kind: :mod:`.kinds`).

    Parameters
    ----------
    config : CoreConfig
        The core (kind, array size, dtype and the kind's own parameters); the model is
        built (or taken from the cache) on creation. Default: the 16x16 int8 matmul core.
    idle_limit : int
        Cycles without any stream handshake after which a job is abandoned with
        :class:`DeviceTimeout`.
    pause_in, pause_out : float
        Probability that a source holds back its next beat / the sink drops tready on a
        cycle (random backpressure for tests; 0 runs at full rate).
    """

    kind = "verilator"
    simulated = True

    def __init__(self, config: CoreConfig | None = None, *, idle_limit: int = 10_000,
                 pause_in: float = 0.0, pause_out: float = 0.0, seed: int = 1,
                 quiet: bool = False):
        self.config = config or MatmulConfig()
        self.regmap = self.config.regmap
        self._set_streams(self.config.streams())
        self.model_path, self.built_now = build_model(self.config, quiet=quiet)
        self._lib = _load(self.model_path)
        self._h = self._lib.lx_create()
        if not self._h:
            raise DeviceError("could not create the Verilator model")
        self.idle_limit = int(idle_limit)
        self.pause_in, self.pause_out = pause_in, pause_out
        self._seed = int(seed)
        self._lock = threading.Lock()
        if self._lib.lx_inputs() != len(self.inputs):
            raise DeviceError(f"model has {self._lib.lx_inputs()} input streams, the register "
                              f"map says {len(self.inputs)}")
        for i, name in enumerate(self.inputs + (self.output,)):
            have = self._lib.lx_port_bytes(i)
            if have < self.beat_bytes[name]:
                raise DeviceError(f"model port {name} holds {have} bytes, the register map "
                                  f"says {self.beat_bytes[name]}")
        self.reset()

    # ---- control -------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self._lib.lx_reset(self._h, 4)

    def close(self) -> None:
        if getattr(self, "_h", None):
            self._lib.lx_destroy(self._h)
            self._h = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def clock_cycles(self) -> int:
        """Clock cycles simulated since the model was created."""
        return int(self._lib.lx_cycles(self._h))

    # ---- registers -----------------------------------------------------------------
    def write_reg(self, offset: int, value: int) -> None:
        resp = ctypes.c_uint32(0)
        with self._lock:
            rc = self._lib.lx_write_reg(self._h, offset, value & 0xFFFFFFFF, 1000,
                                        ctypes.byref(resp))
        if rc != 0:
            raise DeviceTimeout(f"AXI4-Lite write to 0x{offset:02x} got no response")
        if resp.value != 0:
            raise DeviceError(f"AXI4-Lite write to 0x{offset:02x} answered BRESP={resp.value}")

    def read_reg(self, offset: int) -> int:
        data, resp = ctypes.c_uint32(0), ctypes.c_uint32(0)
        with self._lock:
            rc = self._lib.lx_read_reg(self._h, offset, 1000, ctypes.byref(data),
                                       ctypes.byref(resp))
        if rc != 0:
            raise DeviceTimeout(f"AXI4-Lite read of 0x{offset:02x} got no response")
        if resp.value != 0:
            raise DeviceError(f"AXI4-Lite read of 0x{offset:02x} answered RRESP={resp.value}")
        return data.value

    def step(self, cycles: int) -> None:
        with self._lock:
            self._lib.lx_step(self._h, cycles)

    # ---- streams -------------------------------------------------------------------
    def _transfer(self, inputs: list[InStream], out_beats: int,
                  ctrl: int | None) -> StreamResult:
        bb = self.beat_bytes
        ins = (_LxIn * len(inputs))()
        for slot, name, s in zip(ins, self.inputs, inputs):
            slot.data = s.data
            slot.beats = len(s.data) // bb[name]
            slot.bytes = bb[name]
            slot.frame_beats = s.frame
        out_bytes = bb[self.output]
        out = np.empty(out_beats * out_bytes, dtype=np.uint8)
        out_last = np.zeros(out_beats, dtype=np.uint8)
        got = _u64(0)
        self._seed += 1
        ctrl_offset = self.regmap.REG["CTRL"].offset
        with self._lock:
            rc = self._lib.lx_stream(
                self._h, ins, len(inputs), ctrl is not None, ctrl_offset,
                0 if ctrl is None else ctrl & 0xFFFFFFFF,
                out.ctypes.data_as(_u8p), out_last.ctypes.data_as(_u8p), out_beats, out_bytes,
                int(round(self.pause_in * 1000)), int(round(self.pause_out * 1000)),
                self._seed, self.idle_limit, 4, ctypes.byref(got))
        if rc < 0:
            what = _ERRORS.get(-rc, f"error {-rc}")
            msg = f"simulated core: {what} after {got.value} of {out_beats} output beats"
            if -rc == 1:
                raise DeviceTimeout(msg + f" (no stream handshake for {self.idle_limit} cycles)")
            raise DeviceError(msg)
        return StreamResult(out.tobytes(), out_last, int(rc))
