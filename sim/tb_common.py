"""Testbench machinery shared by matmul_tb and conv_tb.

The clock, the cocotbext-axi bus models on a core's ports (from its register map's
PORT_PREFIX), the protocol checkers of axi_checkers on every channel, register access by
name, random backpressure, output-frame collection, DONE polling, the WSTRB and
stall-corner checks and the functional-coverage report. Each testbench keeps its own jobs,
random data, scoreboard and coverage points.
"""

import json
import os
import random
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, with_timeout
from axi_checkers import STALL_POINTS, start_checkers
from cocotb_coverage import coverage
from cocotbext.axi import (AxiLiteBus, AxiLiteMaster, AxiResp, AxiStreamBus,
                           AxiStreamSink, AxiStreamSource)

CLK_NS = 4  # 250 MHz, the F1/F2 kernel clock

#: the output stage's modes as the coverage names them
OUT_MODES = ["int32", "relu", "requant", "relu_requant"]


def out_mode_name(relu, requant):
    return OUT_MODES[int(bool(relu)) + 2 * int(requant is not None)]


def rand_requant(rng, acc, axis):
    """Per-channel (multiplier, shift) for int32 sums ``acc`` with channels along
    ``axis``: most channels as quantize_multiplier makes them (m in [2**30, 2**31),
    a shift that maps the channel's largest |sum| to about 100..400, so some outputs
    saturate), the rest anywhere in the hardware's range (any int32 multiplier, shift
    0..63), and one channel's shift 0 or 63 when there are a few."""
    a = np.moveaxis(np.asarray(acc, np.int64), axis, 0).reshape(np.shape(acc)[axis], -1)
    n = a.shape[0]
    amax = np.maximum(np.abs(a).max(axis=1) if a.size else np.ones(n), 1)
    mult = rng.integers(2**30, 2**31, size=n)
    target = rng.uniform(100.0, 400.0, size=n)
    shift = np.clip(np.ceil(np.log2(amax * mult / target)), 0, 63).astype(np.int64)
    wild = rng.random(n) < 0.25
    mult[wild] = rng.integers(-2**31, 2**31, size=int(wild.sum()))
    shift[wild] = rng.integers(0, 64, size=int(wild.sum()))
    if n >= 3:
        shift[rng.integers(n)] = rng.choice([0, 63])
    return mult, shift


def report_coverage(dut, name):
    """Log the coverage database and write it as YAML and as a JSON summary of the
    cover points (``coverage_<name>.*`` in LEPTON_COVERAGE_DIR)."""
    coverage.coverage_db.report_coverage(dut._log.info, bins=True)
    out = Path(os.environ.get("LEPTON_COVERAGE_DIR", "."))
    out.mkdir(parents=True, exist_ok=True)
    coverage.coverage_db.export_to_yaml(str(out / f"coverage_{name}.yml"))
    summary = {k: coverage.coverage_db[k].cover_percentage
               for k in coverage.coverage_db if k.count(".") == 1}
    (out / f"coverage_{name}.json").write_text(json.dumps(summary, indent=2))
    return summary


def check_coverage(dut):
    """Report the run's coverage (named by LEPTON_COVERAGE_NAME) and require 100 % of the
    points listed in LEPTON_COVERAGE_REQUIRE (comma-separated)."""
    summary = report_coverage(dut, os.environ.get("LEPTON_COVERAGE_NAME", "run"))
    dut._log.info("coverage: %s", summary)
    # points whose every bin the selected tests reach on purpose
    required = [p for p in os.environ.get("LEPTON_COVERAGE_REQUIRE", "").split(",") if p]
    for point in required:
        assert summary[point] == 100, (point, summary[point])


def write_results(results):
    """Write the cycle-count results as JSON to LEPTON_UTIL_OUT, if set."""
    out = os.environ.get("LEPTON_UTIL_OUT")
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")


class AxiTB:
    """Bus models and register access for a core described by register map ``rmap``;
    ``inputs`` are its input stream names, ``output`` its output stream."""

    def __init__(self, dut, rmap, inputs, output="c"):
        self.dut = dut
        self.rmap = rmap
        self.rng = np.random.default_rng(random.getrandbits(64))
        cocotb.start_soon(Clock(dut.clk, CLK_NS, unit="ns").start())
        P = rmap.PORT_PREFIX
        sep = "_"  # cocotb-bus adds one more "_": "<prefix>__<signal>"
        self.src = {
            name: AxiStreamSource(AxiStreamBus.from_prefix(dut, P[name] + sep), dut.clk,
                                  dut.rst)
            for name in inputs
        }
        self.sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, P[output] + sep), dut.clk,
                                  dut.rst)
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, P["ctrl"] + sep), dut.clk,
                                  dut.rst)
        for obj in (*self.src.values(), self.sink):
            obj.log.setLevel("WARNING")
        self.axil.write_if.log.setLevel("WARNING")
        self.axil.read_if.log.setLevel("WARNING")
        self.paused = False
        # protocol checkers on every channel: a violation fails the running test
        self.checkers = start_checkers(dut, rmap, inputs, output)

    async def reset(self, cycles=4):
        """Reset for ``cycles`` cycles, dropping whatever the bus models still hold."""
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, cycles)
        for s in self.src.values():
            s.clear()
        self.sink.clear()
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 2)

    async def wait_progress(self, polls=2000):
        """Poll TILES_DONE until the running job has sent a tile."""
        for _ in range(polls):
            if await self.read("TILES_DONE") >= 1:
                break
        else:
            raise AssertionError("job made no progress")

    async def read(self, name):
        return await self.axil.read_dword(self.rmap.REG[name].offset)

    async def write(self, name, value):
        await self.axil.write_dword(self.rmap.REG[name].offset, value)

    async def check_strobes(self, name):
        """A full-strobe write to register ``name`` is answered OKAY and taken; a write
        with some WSTRB bits low is answered SLVERR and changes nothing."""
        off = self.rmap.REG[name].offset
        value = int(self.rng.integers(1, 2**16)) | 1
        resp = await self.axil.write(off, value.to_bytes(4, "little"))
        assert resp.resp == AxiResp.OKAY, resp
        assert await self.read(name) == value
        for lane, nbytes in ((0, 1), (1, 1), (2, 2), (0, 3)):
            resp = await self.axil.write(off + lane, bytes([0xA5] * nbytes))
            assert resp.resp == AxiResp.SLVERR, (lane, nbytes, resp)
            assert await self.read(name) == value, (lane, nbytes)
        await self.write(name, 0)
        # a START in a partial write starts nothing and flags nothing
        ctrl = self.rmap.REG["CTRL"].offset
        start = self.rmap.field_mask("CTRL", "START")
        assert start < 0x100
        resp = await self.axil.write(ctrl, bytes([start]))
        assert resp.resp == AxiResp.SLVERR, resp
        st = await self.read("STATUS")
        assert not self.rmap.field_value("STATUS", "BUSY", st), st
        assert await self.read("ERROR") == 0

    async def stall_corners(self, make_job, run_job, attempts=8):
        """Jobs that reach every stall.* coverage bin: a many-tile job with bias while
        the sink stalls half the cycles (held TLAST beats, bias handoffs under
        backpressure), then one at full rate right after it (back-to-back, TLAST taken
        at once). The stalls are random, so the pair repeats until every bin is hit.
        ``make_job(with_bias)`` returns a job's arguments for ``run_job(*args)``."""
        for _ in range(attempts):
            self.set_pauses(0.0, 0.5)
            await run_job(*make_job(True))
            self.set_pauses(0.0, 0.0)
            await run_job(*make_job(True))
            await run_job(*make_job(False))
            missing = [p for p in STALL_POINTS
                       if coverage.coverage_db[p].cover_percentage < 100]
            if not missing:
                return
        raise AssertionError(f"stall corners not reached: {missing}")

    async def read_config(self):
        """Check ID and VERSION; return (CONFIG word, rows, cols, dtype)."""
        rm = self.rmap
        assert await self.read("ID") == rm.CORE_ID
        assert await self.read("VERSION") == rm.VERSION_WORD
        cfg = await self.read("CONFIG")
        rows = rm.field_value("CONFIG", "ROWS", cfg)
        cols = rm.field_value("CONFIG", "COLS", cfg)
        code = rm.field_value("CONFIG", "DTYPE", cfg)
        dtype = {v: k for k, v in rm.DTYPE_CODES.items()}[code]
        self.out_stage = bool(rm.field_value("CONFIG", "OUT_STAGE", cfg))
        return cfg, rows, cols, dtype

    async def check_stage_refused(self):
        """A build without the output stage: a START with RELU or with REQUANT is
        refused (the core stays idle, ERROR.NO_STAGE, cleared by writing it back)."""
        rm = self.rmap
        assert not self.out_stage
        for mode in ("RELU", "REQUANT"):
            assert await self.read("ERROR") == 0
            await self.write("CTRL", rm.field_mask("CTRL", "START") | rm.field_mask("CTRL", mode))
            assert not rm.field_value("STATUS", "BUSY", await self.read("STATUS")), mode
            assert await self.read("ERROR") == rm.field_mask("ERROR", "NO_STAGE"), mode
            await self.write("ERROR", rm.field_mask("ERROR", "NO_STAGE"))
        assert await self.read("ERROR") == 0
        await self.write("CTRL", 0)

    def set_pauses(self, p_in, p_out):
        """Random pauses: every channel into the core with probability p_in, every
        channel out of it (c, AXI4-Lite B and R) with p_out."""
        def gen(p, seed):
            r = random.Random(seed)
            while True:
                yield r.random() < p
        wr, rd = self.axil.write_if, self.axil.read_if
        into = [*self.src.values(), wr.aw_channel, wr.w_channel, rd.ar_channel]
        out_of = [self.sink, wr.b_channel, rd.r_channel]
        for chans, p in ((into, p_in), (out_of, p_out)):
            for ch in chans:
                if p:
                    ch.set_pause_generator(gen(p, random.getrandbits(32)))
                else:
                    ch.clear_pause_generator()
                    ch.pause = False  # the generator may have been stopped mid-pause
        self.paused = bool(p_in or p_out)

    async def recv_frames(self, ntiles, timeout_cycles):
        """tdata of the next ``ntiles`` output frames, each within ``timeout_cycles``."""
        frames = []
        for _ in range(ntiles):
            fr = await with_timeout(self.sink.recv(), timeout_cycles * CLK_NS, "ns")
            frames.append(fr.tdata)
        return frames

    async def check_job(self, got, expect, ntiles, err_msg):
        """After a job: its output must equal ``expect`` with nothing left over, and
        TILES_DONE must count its ``ntiles`` tiles; return its CYCLES."""
        np.testing.assert_array_equal(got, expect, err_msg=err_msg)
        assert self.sink.empty(), "core sent more output than the job has"
        lo = await self.read("CYCLES_LO")
        hi = await self.read("CYCLES_HI")
        assert await self.read("TILES_DONE") == ntiles
        return (hi << 32) | lo

    async def poll_done(self, polls):
        """Read STATUS until DONE (at most ``polls`` reads); DONE must come with ~BUSY."""
        rm = self.rmap
        for _ in range(polls):
            st = await self.read("STATUS")
            if rm.field_value("STATUS", "DONE", st):
                assert not rm.field_value("STATUS", "BUSY", st)
                return st
        raise AssertionError("core never reported DONE")
