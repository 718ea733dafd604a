"""Whether the GPU tests can run here (the cuda backend's own verdict), and device buffers."""
import numpy as np

from lepton_accel._native import core
from lepton_accel.backends import REGISTRY

_ok, _why = REGISTRY["cuda"].available()
#: None when a CUDA device is usable, else the reason the GPU tests skip
SKIP_REASON = None if _ok else _why
#: the compiled core (None when the package was never built)
_core = core


class DeviceBuffers:
    """Device allocations through the core's own allocator, all freed on exit."""

    def __init__(self):
        self.ptrs = []

    def upload(self, host: np.ndarray) -> int:
        ptr = self.alloc(host.nbytes)
        _core.cuda_copy_to_device(ptr, np.ascontiguousarray(host).reshape(-1).view(np.uint8))
        return ptr

    def alloc(self, nbytes: int) -> int:
        ptr = _core.cuda_malloc(nbytes)
        self.ptrs.append(ptr)
        return ptr

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.ptrs:
            _core.cuda_free(p)
