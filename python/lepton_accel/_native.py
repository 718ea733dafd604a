"""Loads the compiled core, if the build produced one, and says what it holds."""
from __future__ import annotations

try:
    from . import _core as core
    IMPORT_ERROR = ""
except ImportError as exc:  # a source checkout that was never built
    core = None
    IMPORT_ERROR = str(exc)


def cuda_compiled() -> bool:
    return core is not None and bool(core.BUILD_INFO.get("cuda"))
