"""Device specs and the cost model, shared by auto-dispatch and the scheduler."""
from .devices import DEVICES, DeviceSpec, device
from .model import MODEL, Estimate, PerfModel

__all__ = ["DEVICES", "DeviceSpec", "device", "MODEL", "Estimate", "PerfModel"]
