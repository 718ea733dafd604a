"""lepton_accel: one API over CPU, CUDA and FPGA backends.

    >>> import numpy as np, lepton_accel as la
    >>> la.matmul(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)).shape
    (2, 4)
"""
from __future__ import annotations

import platform

import numpy as np

from . import _native
from .api import choose_backend, conv2d, conv2d_grad_input, conv2d_grad_weight, execute, matmul
from .backends import REGISTRY as _REGISTRY
from .backends import BackendUnavailable, RunStats, UnsupportedOperation
from .ops import OpSpec, conv2d_spec, matmul_spec

__version__ = "0.1.0"


def build_info() -> dict:
    """What this installation was compiled with."""
    info = {"version": __version__, "python": platform.python_version(),
            "numpy": np.__version__, "native_core": _native.core is not None}
    if _native.core is None:
        info.update(cuda=False, cuda_architectures="", cuda_compiler="",
                    cxx_compiler="", native_core_error=_native.IMPORT_ERROR)
    else:
        info.update(dict(_native.core.BUILD_INFO))
    return info


def backends() -> list[dict]:
    """Every backend, whether it is available here and, if not, why."""
    out = []
    for name, be in _REGISTRY.items():
        ok, why = be.available()
        out.append({"name": name, "available": ok, "reason": why})
    return out


def __getattr__(name):
    if name == "bfloat16":  # ml_dtypes loads on first use, not with the package
        from .dtypes import DTYPES

        return DTYPES["bfloat16"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["matmul", "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "execute", "build_info", "backends", "choose_backend",
           "OpSpec", "matmul_spec", "conv2d_spec", "bfloat16", "BackendUnavailable",
           "UnsupportedOperation", "RunStats", "__version__"]
