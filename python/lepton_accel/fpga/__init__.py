"""Host side of the FPGA cores: the device layer, the host drivers and model builds.

    >>> import numpy as np, lepton_accel.fpga as fpga
    >>> a = np.random.default_rng().integers(-128, 128, (40, 30), dtype=np.int8)
    >>> b = np.random.default_rng().integers(-128, 128, (30, 20), dtype=np.int8)
    >>> c = fpga.matmul(a, b)            # int32, on the simulated 16x16 int8 core

    >>> x = np.random.default_rng().integers(-128, 128, (1, 8, 12, 12), dtype=np.int8)
    >>> w = np.random.default_rng().integers(-128, 128, (16, 8, 3, 3), dtype=np.int8)
    >>> y = fpga.conv2d(x, w, padding=1)  # int32, on the simulated conv2d core

Modules, from the bottom up:

* :mod:`.toolchain` — where Amaranth's Yosys, Verilator, make and the C++ compiler are;
* :mod:`.device` — :class:`Device`, the interface a core is reached through (registers,
  one generic :meth:`Device.stream` of named input streams, reset);
* :mod:`.driver_base`, :mod:`.matmul_driver`, :mod:`.conv_driver` — the host drivers;
* :mod:`.kinds` — the core kinds (:class:`MatmulConfig`, :class:`Conv2dConfig`): each
  one's parameters, HDL, register map and stream layout, driver and testbench;
* :mod:`.build` — the Verilator model of any configuration, cached;
* :mod:`.verilator_device` — :class:`VerilatorDevice`, the only :class:`Device` today (no
  FPGA board driver exists yet);
* :mod:`.session` — the process state: on/off, the configuration in use, the drivers;
* :mod:`.conv` — conv2d on the conv2d core, or by host im2col on the matmul core.

The ``fpga`` backend of :func:`lepton_accel.matmul` / :func:`lepton_accel.conv2d` offers
the simulated device whenever the toolchain is installed (see :mod:`.session` for the
switches and the configuration). Its cost estimate includes simulation time, so
auto-dispatch picks it only when asked for by name.
"""
from __future__ import annotations

from .build import BuildError, build_model, cache_root
from .conv import conv2d
from .conv_driver import ConvDriver, ConvStats, ConvUnsupported
from .device import Device, DeviceError, DeviceTimeout, InStream, StreamResult
from .driver_base import CoreRun, JobStats
from .kinds import KINDS, Conv2dConfig, CoreConfig, MatmulConfig
from .matmul_driver import QUANTIZE_MODES, MatmulDriver, quantize_symmetric
from .session import (DEFAULT_CONV_DEPTH, config_for, configure, configured, conv_depth,
                      core_size, driver_for, enable, enabled, is_ready, state_token)
from .toolchain import toolchain_missing

__all__ = ["enable", "enabled", "configure", "configured", "core_size", "conv_depth",
           "config_for", "driver_for", "is_ready", "state_token", "DEFAULT_CONV_DEPTH", "matmul",
           "conv2d",
           "CoreConfig", "MatmulConfig", "Conv2dConfig", "KINDS", "Device", "DeviceError",
           "DeviceTimeout", "InStream", "StreamResult", "MatmulDriver", "JobStats",
           "ConvDriver", "ConvStats", "ConvUnsupported", "CoreRun", "BuildError",
           "build_model", "cache_root", "toolchain_missing", "QUANTIZE_MODES",
           "quantize_symmetric", "VerilatorDevice"]


def matmul(a, b, bias=None, *, activation=None, quantize=None, config=None):
    """``activation(a @ b + bias)`` on the simulated matmul core (NumPy semantics).

    int8 / int16 operands: exact int32 result with wrap-around. Float operands need
    ``quantize="per_tensor"`` or ``"per_channel"`` (symmetric; see
    :mod:`lepton_accel.fpga.matmul_driver`) and return float32.
    """
    import numpy as np

    if config is None:
        dts = {np.asarray(a).dtype.name, np.asarray(b).dtype.name}
        config = config_for("matmul", "int16" if "int16" in dts else "int8")
    return driver_for(config).matmul(a, b, bias, activation=activation, quantize=quantize)


def __getattr__(name):
    if name == "VerilatorDevice":
        from .verilator_device import VerilatorDevice

        return VerilatorDevice
    raise AttributeError(name)
