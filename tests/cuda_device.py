"""Whether the GPU tests can run here, and why not: the cuda backend's own verdict."""
from lepton_accel._native import core
from lepton_accel.backends import REGISTRY

_ok, _why = REGISTRY["cuda"].available()
#: None when a CUDA device is usable, else the reason the GPU tests skip
SKIP_REASON = None if _ok else _why
#: the compiled core (None when the package was never built)
_core = core
