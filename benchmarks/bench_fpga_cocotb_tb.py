"""One matmul job on the core driven from Python by cocotb + cocotbext-axi (for timing).

Run by bench_fpga_backend.py through sim/harness.py; the job size comes from
LEPTON_BENCH_MNK ("M,N,K"), the wall time and the core's cycle count are written to
LEPTON_BENCH_OUT as JSON.
"""
import json
import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import (AxiLiteBus, AxiLiteMaster, AxiStreamBus, AxiStreamFrame,
                           AxiStreamSink, AxiStreamSource)

from lepton_accel.hdl import matmul_regmap as regmap
from lepton_accel.reference import matmul_ref


@cocotb.test()
async def one_job(dut):
    m, n, k = (int(v) for v in os.environ.get("LEPTON_BENCH_MNK", "64,64,64").split(","))
    P = regmap.PORT_PREFIX
    cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
    src = {s: AxiStreamSource(AxiStreamBus.from_prefix(dut, P[s] + "_"), dut.clk, dut.rst)
           for s in ("a", "b")}
    sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, P["c"] + "_"), dut.clk, dut.rst)
    axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, P["ctrl"] + "_"), dut.clk, dut.rst)
    for o in (*src.values(), sink, axil.write_if, axil.read_if):
        o.log.setLevel("WARNING")
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    cfg = await axil.read_dword(regmap.REG["CONFIG"].offset)
    rows = regmap.field_value("CONFIG", "ROWS", cfg)
    cols = regmap.field_value("CONFIG", "COLS", cfg)
    rng = np.random.default_rng()
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    t0 = time.perf_counter()
    frames = regmap.pack_job(a, b, rows=rows, cols=cols, dtype="int8")
    for name, val in (("M", m), ("N", n), ("K", k), ("CTRL", 1)):
        await axil.write_dword(regmap.REG[name].offset, val)
    for s in ("a", "b"):
        for f in frames[s]:
            await src[s].send(AxiStreamFrame(f))
    out = [bytes((await sink.recv()).tdata) for _ in frames["a"]]
    wall = time.perf_counter() - t0
    got = regmap.unpack_c(out, m, n, rows=rows, cols=cols)
    assert np.array_equal(got, matmul_ref(a, b))
    lo = await axil.read_dword(regmap.REG["CYCLES_LO"].offset)
    with open(os.environ["LEPTON_BENCH_OUT"], "w") as f:
        json.dump({"m": m, "n": n, "k": k, "rows": rows, "cols": cols, "wall_s": wall,
                   "core_cycles": lo}, f)
