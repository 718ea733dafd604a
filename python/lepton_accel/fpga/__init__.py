"""Host side of the FPGA cores: the device layer, the host driver and model builds.

    >>> import numpy as np, lepton_accel.fpga as fpga
    >>> a = np.random.default_rng().integers(-128, 128, (40, 30), dtype=np.int8)
    >>> b = np.random.default_rng().integers(-128, 128, (30, 20), dtype=np.int8)
    >>> c = fpga.matmul(a, b)            # int32, on the simulated 16x16 int8 core

    >>> x = np.random.default_rng().integers(-128, 128, (1, 8, 12, 12), dtype=np.int8)
    >>> w = np.random.default_rng().integers(-128, 128, (16, 8, 3, 3), dtype=np.int8)
    >>> y = fpga.conv2d(x, w, padding=1)  # int32, on the simulated conv2d core

Devices: :class:`VerilatorDevice` (the core's Verilog compiled by Verilator, driven by
our C++ harness) is the only implementation of :class:`Device` today; no FPGA board
driver exists yet.

The core configuration used by :func:`matmul` and the ``fpga`` backend is
``LEPTON_ACCEL_FPGA_CORE`` (e.g. ``"16x16"`` or ``"8x8"``; default 16x16) or
:func:`configure`. int8 operands run on an int8 core of that size; int16 operands on an
int16 core of that size (each configuration is its own model, built once and cached).
conv2d runs on a conv2d core of the same array size whose image memory holds
``LEPTON_ACCEL_FPGA_CONV_DEPTH`` words per row copy (default 1024; capacity = image lanes
x depth elements) or ``configure(conv_depth=)``; larger images run in row bands.

The ``fpga`` backend of :func:`lepton_accel.matmul` offers the simulated device whenever
the toolchain (Amaranth, Verilator, a C++ compiler) is installed; ``LEPTON_ACCEL_FPGA=off``
or ``enable(False)`` switches it off. Its cost estimate includes simulation time, so
auto-dispatch picks it only when asked for by name.
"""
from __future__ import annotations

import os
import threading

from .build import BuildError, CoreConfig, build_model, cache_root, toolchain_missing
from .device import Device, DeviceError, DeviceTimeout, StreamResult
from .conv_driver import ConvDriver, ConvStats, ConvUnsupported
from .driver import QUANTIZE_MODES, JobStats, MatmulDriver, quantize_symmetric

__all__ = ["enable", "enabled", "configure", "core_size", "driver", "matmul", "conv2d", "CoreConfig", "Device",
           "DeviceError", "DeviceTimeout", "StreamResult", "MatmulDriver", "JobStats",
           "ConvDriver", "ConvStats", "ConvUnsupported", "conv_driver", "conv_config_for",
           "BuildError", "build_model", "cache_root", "toolchain_missing", "QUANTIZE_MODES",
           "quantize_symmetric", "VerilatorDevice"]

_lock = threading.Lock()
_drivers: dict[CoreConfig, MatmulDriver | ConvDriver] = {}
_size: tuple[int, int] | None = None
_conv_depth: int | None = None
#: Image memory depth (words per row copy) of the conv2d core when nothing is configured.
DEFAULT_CONV_DEPTH = 1024
_enabled: bool | None = None
_generation = 0


def state_token() -> int:
    """Bumped by :func:`enable` and :func:`configure`: callers that cache a dispatch
    decision compare it (the environment variables are read when the process starts
    using the backend; change them before that, or call these functions)."""
    return _generation


def enabled() -> bool:
    """Whether the fpga backend offers the simulated device (on unless switched off with
    ``LEPTON_ACCEL_FPGA=off`` or :func:`enable` ``(False)``)."""
    if _enabled is not None:
        return _enabled
    return os.environ.get("LEPTON_ACCEL_FPGA", "").lower() not in ("off", "0", "none")


def enable(on: bool = True) -> None:
    """Offer (or stop offering) the simulated device through the ``fpga`` backend."""
    global _enabled, _generation
    _enabled = bool(on)
    _generation += 1


def _env_size() -> tuple[int, int]:
    text = os.environ.get("LEPTON_ACCEL_FPGA_CORE", "16x16").lower()
    try:
        r, c = (int(v) for v in text.split("x"))
    except ValueError:
        raise ValueError(f"LEPTON_ACCEL_FPGA_CORE: expected ROWSxCOLS like '16x16', "
                         f"got {text!r}") from None
    return r, c


def core_size() -> tuple[int, int]:
    """(rows, cols) of the core the fpga backend uses."""
    return _size if _size is not None else _env_size()


def conv_depth() -> int:
    """Image memory depth of the conv2d core the fpga backend uses."""
    if _conv_depth is not None:
        return _conv_depth
    text = os.environ.get("LEPTON_ACCEL_FPGA_CONV_DEPTH", str(DEFAULT_CONV_DEPTH))
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"LEPTON_ACCEL_FPGA_CONV_DEPTH: expected an integer, got {text!r}") \
            from None


def configure(rows: int | None = None, cols: int | None = None, *,
              conv_depth: int | None = None) -> tuple[int, int]:
    """Set the array size (and the conv2d core's image memory depth) used from now on,
    validated against the cores' limits."""
    global _size, _conv_depth, _generation
    _generation += 1
    r0, c0 = core_size()
    r, c = rows or r0, cols or c0
    CoreConfig(r, c, "int8")  # raises ValueError when out of range
    if conv_depth is not None:
        CoreConfig(r, c, "int8", "conv2d", 0, conv_depth)
        _conv_depth = int(conv_depth)
    _size = (r, c)
    return _size


def config_for(dtype: str) -> CoreConfig:
    r, c = core_size()
    return CoreConfig(r, c, "int16" if dtype == "int16" else "int8")


def conv_config_for(dtype: str) -> CoreConfig:
    r, c = core_size()
    return CoreConfig(r, c, "int16" if dtype == "int16" else "int8", "conv2d", 0,
                      conv_depth())


def driver(config: CoreConfig | None = None) -> MatmulDriver | ConvDriver:
    """The host driver of a configuration on its simulated device (built on first use):
    a :class:`MatmulDriver`, or a :class:`ConvDriver` for a conv2d configuration."""
    from .verilator_device import VerilatorDevice

    config = config or config_for("int8")
    with _lock:
        drv = _drivers.get(config)
        if drv is None:
            cls = ConvDriver if config.kind == "conv2d" else MatmulDriver
            drv = cls(VerilatorDevice(config))
            _drivers[config] = drv
        return drv


def conv_driver(config: CoreConfig | None = None) -> ConvDriver:
    """The conv2d core's host driver (configuration: :func:`conv_config_for`)."""
    return driver(config or conv_config_for("int8"))


def is_ready(config: CoreConfig) -> bool:
    """Whether a model of config is loaded or some build of it is in the cache.

    Cheap (no Verilog generation): a cached build of an older RTL version counts, so
    this is a hint for cost estimates, not a promise that no rebuild happens.
    """
    if config in _drivers:
        return True
    try:
        return any(p.joinpath("libmodel.so").exists()
                   for p in cache_root().glob(f"{config.tag}-*"))
    except OSError:
        return False


def _dtype_of(x) -> str:
    import numpy as np

    return np.asarray(x).dtype.name


def matmul(a, b, bias=None, *, activation=None, quantize=None, config=None):
    """``activation(a @ b + bias)`` on the simulated core (NumPy semantics).

    int8 / int16 operands: exact int32 result with wrap-around. Float operands need
    ``quantize="per_tensor"`` or ``"per_channel"`` (symmetric; see
    :mod:`lepton_accel.fpga.driver`) and return float32.
    """
    if config is None:
        dts = {_dtype_of(a), _dtype_of(b)}
        config = config_for("int16" if "int16" in dts else "int8")
    return driver(config).matmul(a, b, bias, activation=activation, quantize=quantize)


def conv2d(*args, **kwargs):
    """Integer convolution on the conv2d core (host im2col on the matmul core only as the
    fallback); see :mod:`.conv`."""
    from .conv import conv2d as _conv2d

    return _conv2d(*args, **kwargs)


def __getattr__(name):
    if name == "VerilatorDevice":
        from .verilator_device import VerilatorDevice

        return VerilatorDevice
    raise AttributeError(name)
