"""The fpga package's process state: whether the ``fpga`` backend offers the simulated
device, the core configuration it uses, and one driver per configuration (each on its
own simulated device, created on first use).

Settings come from the environment unless set here: ``LEPTON_ACCEL_FPGA=off`` (or
:func:`enable` ``(False)``) switches the backend off; ``LEPTON_ACCEL_FPGA_CORE=ROWSxCOLS``
(or :func:`configure`) is the array size of every kind of core (default 16x16);
``LEPTON_ACCEL_FPGA_CONV_DEPTH`` (or ``configure(conv_depth=)``) the conv2d core's image
memory words per row copy (default 1024). int16 operands run on int16 cores, everything
else on int8 cores.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from .build import cache_root
from .kinds import KINDS, CoreConfig, get_kind, kind_for_op

__all__ = ["Settings", "DEFAULT_SIZE", "DEFAULT_CONV_DEPTH", "state_token", "enabled",
           "enable", "core_size", "conv_depth", "settings", "configure", "configured",
           "config_for", "config_for_op", "driver_for", "is_ready"]

DEFAULT_SIZE = (16, 16)
#: Image memory depth (words per row copy) of the conv2d core when nothing is configured.
DEFAULT_CONV_DEPTH = 1024
#: How long a "no model in the cache" answer of :func:`is_ready` is reused.
_NOT_READY_TTL_S = 2.0


@dataclass(frozen=True)
class Settings:
    """What a core kind's configuration is made from (``CoreConfig.from_settings``)."""

    rows: int
    cols: int
    conv_depth: int


_lock = threading.Lock()
_enabled: bool | None = None
_size: tuple[int, int] | None = None
_conv_depth: int | None = None
_drivers: dict[CoreConfig, object] = {}
_configs: dict[tuple, CoreConfig] = {}
_ready: dict[tuple, object] = {}   # (config, LEPTON_ACCEL_CACHE) -> True, or when missed
_generation = 0


def state_token() -> int:
    """Changes with every :func:`enable`, :func:`configure` and :func:`configured`:
    callers that cache a dispatch decision compare it (the environment variables are
    read when the process starts using the backend; change them before that, or call
    these functions)."""
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


def core_size() -> tuple[int, int]:
    """(rows, cols) of the cores the fpga backend uses."""
    if _size is not None:
        return _size
    text = os.environ.get("LEPTON_ACCEL_FPGA_CORE")
    if not text:
        return DEFAULT_SIZE
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"LEPTON_ACCEL_FPGA_CORE: expected ROWSxCOLS like '16x16', "
                         f"got {text!r}") from None
    return r, c


def conv_depth() -> int:
    """Image memory depth of the conv2d core the fpga backend uses."""
    if _conv_depth is not None:
        return _conv_depth
    text = os.environ.get("LEPTON_ACCEL_FPGA_CONV_DEPTH")
    if not text:
        return DEFAULT_CONV_DEPTH
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"LEPTON_ACCEL_FPGA_CONV_DEPTH: expected an integer, got {text!r}") \
            from None


def settings() -> Settings:
    r, c = core_size()
    return Settings(r, c, conv_depth())


def configure(rows: int | None = None, cols: int | None = None, *,
              conv_depth: int | None = None) -> tuple[int, int]:
    """Set the array size (and the conv2d core's image memory depth) used from now on,
    validated against the cores' limits (``ValueError``)."""
    global _size, _conv_depth, _generation
    _generation += 1
    now = settings()
    new = Settings(rows or now.rows, cols or now.cols,
                   now.conv_depth if conv_depth is None else int(conv_depth))
    for kind in KINDS.values():  # every kind's configuration must exist (ValueError)
        kind.from_settings(new, "int8")
    if conv_depth is not None:
        _conv_depth = new.conv_depth
    _size = (new.rows, new.cols)
    return _size


@contextmanager
def configured(rows: int | None = None, cols: int | None = None, *,
               conv_depth: int | None = None, enabled: bool | None = None):
    """:func:`configure` (and :func:`enable`) for the body of a ``with``, then back to
    exactly the settings before (including "from the environment")."""
    global _size, _conv_depth, _enabled, _generation
    saved = (_size, _conv_depth, _enabled)
    try:
        configure(rows, cols, conv_depth=conv_depth)
        if enabled is not None:
            enable(enabled)
        yield settings()
    finally:
        _size, _conv_depth, _enabled = saved
        _generation += 1


def config_for(kind: str, dtype: str = "int8") -> CoreConfig:
    """The configuration of a kind of core ("matmul", "conv2d") that runs ``dtype``
    operands under the current settings (an int16 core for int16, else int8)."""
    lane = "int16" if dtype == "int16" else "int8"
    env = os.environ
    # what the settings are made of, cheaper to compare than to parse (estimates ask often)
    key = (kind, lane, _size, _conv_depth, env.get("LEPTON_ACCEL_FPGA_CORE"),
           env.get("LEPTON_ACCEL_FPGA_CONV_DEPTH"))
    cfg = _configs.get(key)
    if cfg is None:
        cfg = get_kind(kind).from_settings(settings(), lane)
        with _lock:
            if len(_configs) > 64:
                _configs.clear()
            _configs[key] = cfg
    return cfg


def config_for_op(op: str, dtype: str = "int8") -> CoreConfig:
    """The configuration of the kind of core that runs ``op`` natively (ValueError when
    no kind does)."""
    kind = kind_for_op(op)
    if kind is None:
        raise ValueError(f"op: no FPGA core runs {op!r} natively")
    return config_for(kind.kind, dtype)


def driver_for(config: CoreConfig):
    """The host driver of a configuration on its simulated device (the model is built
    on first use): ``config.driver`` on a :class:`.verilator_device.VerilatorDevice`."""
    from .verilator_device import VerilatorDevice

    with _lock:
        drv = _drivers.get(config)
        if drv is None:
            drv = config.driver(VerilatorDevice(config))
            _drivers[config] = drv
        return drv


def is_ready(config: CoreConfig) -> bool:
    """Whether a model of config is loaded or some build of it is in the cache.

    Cheap (no Verilog generation; answers are remembered, a miss only for a moment): a
    cached build of an older RTL version counts, so this is a hint for cost estimates,
    not a promise that no rebuild happens.
    """
    if config in _drivers:
        return True
    key = (config, os.environ.get("LEPTON_ACCEL_CACHE"))
    seen = _ready.get(key)
    if seen is True:
        return True
    now = time.monotonic()
    if seen is not None and now - seen < _NOT_READY_TTL_S:
        return False
    try:
        found = any(p.joinpath("libmodel.so").exists()
                    for p in cache_root().glob(f"{config.tag}-*"))
    except OSError:
        found = False
    _ready[key] = True if found else now
    return found
