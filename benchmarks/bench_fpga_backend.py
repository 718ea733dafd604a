"""The fpga backend's simulated device: 512x512x512 int8 through lepton_accel.matmul.

    pytest benchmarks/bench_fpga_backend.py --benchmark-only      (needs the sim extra)
    python benchmarks/bench_fpga_backend.py [--cocotb]           (prints a JSON report)

The report gives the model build time (cold when not cached), the 512^3 wall and CPU
time, the core's cycle count, simulated cycles per second, and (with --cocotb) the same
rate for a pure cocotb + cocotbext-axi run of a smaller job on the Verilator build of
sim/, scaled by cycles.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import lepton_accel as la
from lepton_accel import fpga

N = 512


def _setup():
    fpga.enable()
    fpga.configure(16, 16)


@pytest.mark.sim
def test_fpga_matmul_512_int8(benchmark):
    if fpga.toolchain_missing():
        pytest.skip(fpga.toolchain_missing())
    _setup()
    rng = np.random.default_rng()
    a = rng.integers(-128, 128, (N, N), dtype=np.int8)
    b = rng.integers(-128, 128, (N, N), dtype=np.int8)
    drv = fpga.driver_for(fpga.config_for("matmul"))  # build outside the timing
    out = benchmark.pedantic(lambda: la.matmul(a, b, backend="fpga"), rounds=3, iterations=1)
    cycles = drv.last.cycles
    benchmark.extra_info.update(core_cycles=cycles,
                                sim_cycles_per_s=cycles / benchmark.stats.stats.mean)
    np.testing.assert_array_equal(out, la.matmul(a, b, backend="cpu"))


def measure(rounds: int = 3) -> dict:
    _setup()
    cfg = fpga.config_for("matmul")
    t0 = time.perf_counter()
    drv = fpga.driver_for(cfg)
    ready_s = time.perf_counter() - t0
    info = json.loads((drv.device.model_path.parent / "build.json").read_text())
    rng = np.random.default_rng()
    a = rng.integers(-128, 128, (N, N), dtype=np.int8)
    b = rng.integers(-128, 128, (N, N), dtype=np.int8)
    runs = []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        out = la.matmul(a, b, backend="fpga")
        runs.append((time.perf_counter() - w, time.process_time() - c))
    assert np.array_equal(out, la.matmul(a, b, backend="cpu"))
    best_wall = min(r[0] for r in runs)
    cycles = drv.last.cycles
    return {"config": f"{cfg.rows}x{cfg.cols} {cfg.dtype}", "gemm": [N, N, N],
            "model_built_now": drv.device.built_now,
            "model_build_s": info.get("build_seconds"), "driver_ready_s": round(ready_s, 2),
            "wall_s": [round(r[0], 3) for r in runs], "cpu_s": [round(r[1], 3) for r in runs],
            "core_cycles": cycles, "sim_cycles_per_s": round(cycles / best_wall),
            "load_avg": os.getloadavg()[0]}


def measure_cocotb(m=64, n=64, k=64) -> dict:
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "sim"))
    import harness  # sim/harness.py

    out = Path(tempfile.mkdtemp()) / "cocotb.json"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])
    env = {"LEPTON_BENCH_MNK": f"{m},{n},{k}", "LEPTON_BENCH_OUT": str(out)}
    harness.run("verilator", harness.MatmulConfig(16, 16, "int8"), env=env,
                test_module="bench_fpga_cocotb_tb")
    res = json.loads(out.read_text())
    res["sim_cycles_per_s"] = round(res["core_cycles"] / res["wall_s"])
    return res


if __name__ == "__main__":
    report = {"fpga_backend": measure()}
    if "--cocotb" in sys.argv:
        c = measure_cocotb()
        report["cocotb"] = c
        report["speedup_vs_cocotb"] = round(report["fpga_backend"]["sim_cycles_per_s"]
                                            / c["sim_cycles_per_s"], 1)
        report["cocotb_512_projected_s"] = round(report["fpga_backend"]["core_cycles"]
                                                 / c["sim_cycles_per_s"], 1)
    print(json.dumps(report, indent=2))
