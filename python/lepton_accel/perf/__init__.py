"""Device specs and the cost model, shared by auto-dispatch and the scheduler."""
from .devices import DEVICES, KINDS, NATIVE_BACKEND, DeviceSpec, cuda_model, device
from .model import MODEL, Estimate, PerfModel

__all__ = ["DEVICES", "KINDS", "NATIVE_BACKEND", "DeviceSpec", "cuda_model", "device", "MODEL", "Estimate", "PerfModel"]
