"""Peak rates and bandwidths of the devices the toolkit runs on or plans for.

Figures are public datasheet numbers (dense, no sparsity); the FPGA entries describe
the part and the core the toolkit deploys on it, with the kernel clock an assumption
(open-source tools give no place-and-route Fmax for these parts).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

T, G = 1e12, 1e9

#: The kinds of hardware, one vocabulary for device specs, instance types and job
#: constraints.
KINDS = ("cpu", "gpu", "fpga")
#: The backend that runs natively on each kind.
NATIVE_BACKEND = {"cpu": "cpu", "gpu": "cuda", "fpga": "fpga"}


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str                          # one of KINDS
    peak: dict[str, float]             # ops/s by operand dtype ("tf32" for fp32 on tensor cores)
    memory_bw: float                   # bytes/s of the device's own memory
    link_bw: float = 0.0               # bytes/s host <-> device (0: data already there)
    call_overhead: float = 5e-6        # seconds per call (launch, dispatch)
    efficiency: dict[str, float] = field(default_factory=dict)  # fraction of peak reached
    # FPGA only: the part and the core deployed on it
    dsp: int = 0
    clock_hz: float = 0.0
    core_rows: int = 0
    core_cols: int = 0
    image_load_s: float = 0.0

    def rate(self, dtype: str) -> float:
        """Sustained ops/s for an operand dtype (0 if the device cannot run it)."""
        return self.peak.get(dtype, 0.0) * self.efficiency.get(dtype, 1.0)


def _cpu_spec() -> DeviceSpec:
    # AVX2/AVX-512 class core at ~3 GHz: 32 float32 flops per cycle from two FMA units.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    f32 = cores * 3e9 * 32
    return DeviceSpec(
        name="host-cpu", kind="cpu",
        # half-precision and int8 are computed through float32 GEMM on the CPU backend,
        # int16 through float64 GEMM (half the float32 rate)
        peak={"float32": f32, "float16": f32, "bfloat16": f32, "int8": f32, "int16": f32 / 2},
        memory_bw=20 * G, call_overhead=15e-6,
        efficiency={"float32": 0.6, "float16": 0.35, "bfloat16": 0.35, "int8": 0.4, "int16": 0.5},
    )


def _gpu(name, f32, tf32, f16, i8, mem, link) -> DeviceSpec:
    return DeviceSpec(
        name=name, kind="gpu",
        peak={"float32": f32, "tf32": tf32, "float16": f16, "bfloat16": f16, "int8": i8},
        memory_bw=mem, link_bw=link, call_overhead=8e-6,
        efficiency={"float32": 0.75, "tf32": 0.7, "float16": 0.75, "bfloat16": 0.75, "int8": 0.7},
    )


def _fpga(name, dsp, mem, link, rows=32, cols=32, clock=250e6, load=8.0) -> DeviceSpec:
    # One MAC per PE per cycle, two ops per MAC; int16 runs at the same PE rate.
    macs = rows * cols * clock
    return DeviceSpec(
        name=name, kind="fpga", peak={"int8": 2 * macs, "int16": 2 * macs},
        memory_bw=mem, link_bw=link, call_overhead=20e-6,
        efficiency={"int8": 0.95, "int16": 0.95},
        dsp=dsp, clock_hz=clock, core_rows=rows, core_cols=cols, image_load_s=load,
    )


#: Every known device by name. The scheduler's catalog refers to these names.
DEVICES: dict[str, DeviceSpec] = {
    "host-cpu": _cpu_spec(),
    "H100-SXM": _gpu("H100-SXM", 67 * T, 495 * T, 989 * T, 1979 * T, 3350 * G, 50 * G),
    "A100-40GB": _gpu("A100-40GB", 19.5 * T, 156 * T, 312 * T, 624 * T, 1555 * G, 25 * G),
    "A10G": _gpu("A10G", 31.2 * T, 62.5 * T, 125 * T, 250 * T, 600 * G, 25 * G),
    "L4": _gpu("L4", 30.3 * T, 60 * T, 121 * T, 242 * T, 300 * G, 25 * G),
    "VU9P": _fpga("VU9P", 6840, 64 * G, 12 * G),
    "VU47P": _fpga("VU47P", 9024, 460 * G, 12 * G),
}


#: Substrings of a CUDA device's reported name -> the spec that stands for it (H200:
#: the H100's chip and compute rates).
_CUDA_MODELS = (("H100", "H100-SXM"), ("H200", "H100-SXM"), ("A100", "A100-40GB"),
                ("A10G", "A10G"), ("L4", "L4"))


def cuda_model(reported_name: str) -> str:
    """The device spec for a CUDA device by the name its driver reports."""
    for key, known in _CUDA_MODELS:
        if key in reported_name:
            return known
    return "A100-40GB"


def device(name: str) -> DeviceSpec:
    try:
        return DEVICES[name]
    except KeyError:
        raise KeyError(f"unknown device {name!r}; known: {', '.join(DEVICES)}") from None


def with_overrides(spec: DeviceSpec, **changes) -> DeviceSpec:
    return replace(spec, **changes)
