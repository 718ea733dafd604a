"""A core (matmul or conv2d) as a Verilator model, driven by our C++ harness via ctypes.

Every clock cycle runs in C++ (``harness/matmul_harness.cpp``, ``harness/conv_harness.cpp``
on ``harness/lx_harness.h``); Python calls in once per register access and once per
streamed job. Errors in the simulation (no progress within
the cycle limit, more output than expected, a bus that does not answer) come back as
:class:`.DeviceError` / :class:`.DeviceTimeout`, never as a hang.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

import importlib

from .build import CoreConfig, build_model
from .device import Device, DeviceError, DeviceTimeout, StreamResult

__all__ = ["VerilatorDevice"]

_ERRORS = {1: "timeout", 2: "overflow", 3: "bad arguments"}
_LIBS: dict[str, ctypes.CDLL] = {}
_LIBS_LOCK = threading.Lock()

_u8p = ctypes.POINTER(ctypes.c_uint8)
_u64 = ctypes.c_uint64


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
        conv = getattr(lib, "lx_conv_stream", None)
        if conv is not None:
            conv.restype = ctypes.c_int64
            conv.argtypes = [
                ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint32,
                ctypes.c_char_p, _u64, ctypes.c_int, _u64,
                ctypes.c_char_p, _u64, ctypes.c_int, _u64,
                ctypes.c_char_p, _u64, ctypes.c_int,
                _u8p, _u8p, _u64, ctypes.c_int,
                ctypes.c_uint32, ctypes.c_uint32, _u64,
                _u64, _u64, ctypes.POINTER(_u64),
            ]
            _LIBS[str(path)] = lib
            return lib
        lib.lx_stream.restype = ctypes.c_int64
        lib.lx_stream.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p, _u64, ctypes.c_int,
            ctypes.c_char_p, _u64, ctypes.c_int,
            _u64,
            ctypes.c_char_p, _u64, ctypes.c_int,
            _u8p, _u8p, _u64, ctypes.c_int,
            ctypes.c_uint32, ctypes.c_uint32, _u64,
            _u64, _u64, ctypes.POINTER(_u64),
        ]
        _LIBS[str(path)] = lib
        return lib


class VerilatorDevice(Device):
    """A simulated core of one configuration (matmul, or conv2d with ``config.kind``).

    Parameters
    ----------
    config : CoreConfig
        Core kind, array size and dtype (conv2d: image lanes and memory depth); the
        model is built (or taken from the cache) on creation.
    idle_limit : int
        Cycles without any stream handshake after which a job is abandoned with
        :class:`DeviceTimeout`.
    pause_in, pause_out : float
        Probability that a source withholds a beat / the sink drops tready on a cycle
        (random backpressure for tests; 0 runs at full rate).
    """

    kind = "verilator"
    simulated = True

    def __init__(self, config: CoreConfig | None = None, *, idle_limit: int = 10_000,
                 pause_in: float = 0.0, pause_out: float = 0.0, seed: int = 1,
                 quiet: bool = False):
        self.config = config or CoreConfig()
        self.regmap = importlib.import_module(self.config.core.regmap)
        self.model_path, self.built_now = build_model(self.config, quiet=quiet)
        self._lib = _load(self.model_path)
        self._h = self._lib.lx_create()
        if not self._h:
            raise DeviceError("could not create the Verilator model")
        self.idle_limit = int(idle_limit)
        self.pause_in, self.pause_out = pause_in, pause_out
        self._seed = int(seed)
        self._lock = threading.Lock()
        cfg = self.config
        if cfg.kind == "conv2d":
            widths = self.regmap.stream_widths(cfg.rows, cfg.cols, cfg.dtype, cfg.x_lanes)
        else:
            widths = self.regmap.stream_widths(cfg.rows, cfg.cols, cfg.dtype)
        self.beat_bytes = {name: w // 8 for name, w in widths.items()}
        self._in0 = "x" if cfg.kind == "conv2d" else "a"
        for i, name in enumerate((self._in0, "b", "bias", "c")):
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
    def sim_cycles(self) -> int:
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
    def _raise(self, rc: int, got: int, c_beats: int):
        what = _ERRORS.get(-rc, f"error {-rc}")
        msg = f"simulated core: {what} after {got} of {c_beats} output beats"
        if -rc == 1:
            raise DeviceTimeout(msg + f" (no stream handshake for {self.idle_limit} cycles)")
        raise DeviceError(msg)

    def conv_stream(self, x: bytes, b: bytes, bias: bytes | None, *, x_frame: int,
                    b_frame: int, c_beats: int, start: int | None = None) -> StreamResult:
        """conv2d core: write CTRL=start (if given) while presenting the streams, send the
        images on x (tlast every x_frame beats), the weight tiles on b (tlast every
        b_frame beats) and the bias beats, and receive c_beats output beats."""
        if self.config.kind != "conv2d":
            raise DeviceError(f"conv_stream needs a conv2d core, this is {self.config.tag}")
        bb = self.beat_bytes
        bias = bias or b""
        for name, data in (("x", x), ("b", b), ("bias", bias)):
            if len(data) % bb[name]:
                raise ValueError(f"{name}: {len(data)} bytes is not a whole number of "
                                 f"{bb[name]}-byte beats")
        c = np.empty(c_beats * bb["c"], dtype=np.uint8)
        c_last = np.zeros(c_beats, dtype=np.uint8)
        got = _u64(0)
        self._seed += 1
        ctrl = self.regmap.REG["CTRL"].offset
        with self._lock:
            rc = self._lib.lx_conv_stream(
                self._h, start is not None, ctrl, 0 if start is None else start,
                x, len(x) // bb["x"], bb["x"], max(1, x_frame),
                b, len(b) // bb["b"], bb["b"], max(1, b_frame),
                bias, len(bias) // bb["bias"], bb["bias"],
                c.ctypes.data_as(_u8p), c_last.ctypes.data_as(_u8p), c_beats, bb["c"],
                int(round(self.pause_in * 1000)), int(round(self.pause_out * 1000)),
                self._seed, self.idle_limit, 4, ctypes.byref(got))
        if rc < 0:
            self._raise(rc, got.value, c_beats)
        return StreamResult(c.tobytes(), c_last, int(rc))

    def stream(self, a: bytes, b: bytes, bias: bytes | None, *, k: int,
               c_beats: int) -> StreamResult:
        if self.config.kind != "matmul":
            raise DeviceError(f"stream is the matmul core's transfer; use conv_stream on "
                              f"{self.config.tag}")
        bb = self.beat_bytes
        for name, data in (("a", a), ("b", b), ("bias", bias or b"")):
            if len(data) % bb[name]:
                raise ValueError(f"{name}: {len(data)} bytes is not a whole number of "
                                 f"{bb[name]}-byte beats")
        bias = bias or b""
        c = np.empty(c_beats * bb["c"], dtype=np.uint8)
        c_last = np.zeros(c_beats, dtype=np.uint8)
        got = _u64(0)
        self._seed += 1
        with self._lock:
            rc = self._lib.lx_stream(
                self._h,
                a, len(a) // bb["a"], bb["a"],
                b, len(b) // bb["b"], bb["b"],
                k,
                bias, len(bias) // bb["bias"], bb["bias"],
                c.ctypes.data_as(_u8p), c_last.ctypes.data_as(_u8p), c_beats, bb["c"],
                int(round(self.pause_in * 1000)), int(round(self.pause_out * 1000)),
                self._seed, self.idle_limit, 4, ctypes.byref(got))
        if rc < 0:
            self._raise(rc, got.value, c_beats)
        return StreamResult(c.tobytes(), c_last, int(rc))
