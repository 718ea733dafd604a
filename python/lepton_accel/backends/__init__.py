"""Backends, one module each, and the registry the dispatcher chooses from."""
from __future__ import annotations

from .base import Backend, BackendUnavailable, RunStats, UnsupportedOperation
from .cpu import CpuBackend
from .cuda import CudaBackend
from .fpga import FpgaBackend

#: name -> backend instance, in the order they are listed
REGISTRY: dict[str, Backend] = {b.name: b for b in (CpuBackend(), CudaBackend(), FpgaBackend())}


def get(name: str) -> Backend:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"backend: unknown backend {name!r}; expected 'auto' or one of "
                         f"{', '.join(REGISTRY)}") from None


__all__ = ["Backend", "BackendUnavailable", "RunStats", "UnsupportedOperation", "REGISTRY", "get"]
