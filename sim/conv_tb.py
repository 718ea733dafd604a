"""cocotb testbench of the conv2d core (AXIConv2d), run through sim/test_conv_sim.py.

Bus models come from cocotbext-axi; the scoreboard is the package's oracle,
``lepton_accel.reference.conv2d_ref`` (exact, int32 wrap-around), compared bit for bit
(:func:`oracle`). The array size, dtype, image lanes and capacity are read from the
core's registers. Randomness comes from cocotb's seed (logged at start, fresh each run;
COCOTB_RANDOM_SEED reproduces a run).
"""

import json
import os

from dataclasses import replace

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, RisingEdge
from cocotb_coverage import coverage
from cocotbext.axi import AxiStreamFrame
from tb_common import (OUT_MODES, AxiTB, check_coverage, out_mode_name, rand_requant,
                       write_results)

from lepton_accel.hdl import conv_regmap as cr
from lepton_accel.hdl.regmap_common import out_mode_ctrl
from lepton_accel.numerics import requantize
from lepton_accel.reference import conv2d_ref

REG = cr.REG


# --- functional coverage -------------------------------------------------------------

def _kernel(j):
    k = (j["job"].kh, j["job"].kw)
    return {(1, 1): "1x1", (3, 3): "3x3", (7, 7): "7x7"}.get(k, "other")


def _weights(j):
    job = j["job"]
    if not job.wreuse:
        return "streamed"
    return "held" if cr.weights_held(job, j["cols"]) else "too_many"


def _groups(j):
    job = j["job"]
    if job.groups == 1:
        return "dense"
    return "depthwise" if job.cg == 1 else "grouped"


@coverage.CoverPoint("conv.kernel", xf=_kernel, bins=["1x1", "3x3", "7x7", "other"])
@coverage.CoverPoint("conv.stride", xf=lambda j: max(j["job"].stride) > 1, bins=[False, True])
@coverage.CoverPoint("conv.pad", xf=lambda j: max(max(p) for p in j["job"].pad) > 0,
                     bins=[False, True])
@coverage.CoverPoint("conv.dilation", xf=lambda j: max(j["job"].dilation) > 1,
                     bins=[False, True])
@coverage.CoverPoint("conv.groups", xf=_groups, bins=["dense", "grouped", "depthwise"])
@coverage.CoverPoint("conv.ocg", xf=lambda j: "multiple" if j["job"].ocg % j["cols"] == 0
                     else "not_multiple", bins=["multiple", "not_multiple"])
@coverage.CoverPoint("conv.pixels", xf=lambda j: "multiple" if
                     (j["job"].oh * j["job"].ow) % j["rows"] == 0 else "not_multiple",
                     bins=["multiple", "not_multiple"])
@coverage.CoverPoint("conv.batch", xf=lambda j: j["job"].n > 1, bins=[False, True])
@coverage.CoverPoint("conv.bias", xf=lambda j: j["bias"], bins=[False, True])
@coverage.CoverPoint("conv.wraps", xf=lambda j: j["wraps"], bins=[False, True])
@coverage.CoverPoint("conv.backpressure", xf=lambda j: j["pauses"], bins=[False, True])
@coverage.CoverPoint("conv.mode", xf=lambda j: "depthwise" if j["job"].dw else "normal",
                     bins=["normal", "depthwise"])
@coverage.CoverPoint("conv.weights", xf=lambda j: _weights(j),
                     bins=["streamed", "held", "too_many"])
@coverage.CoverCross("conv.kernel_x_groups", items=["conv.kernel", "conv.groups"],
                     ign_bins=[("7x7", "grouped"), ("1x1", "depthwise")])
@coverage.CoverPoint("conv.out_mode", xf=lambda j: j["out_mode"], bins=OUT_MODES)
def sample_job(j):
    pass


# --- testbench -----------------------------------------------------------------------

class TB(AxiTB):
    def __init__(self, dut):
        super().__init__(dut, cr, ("x", "b", "bias", "q"))

    async def start(self):
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 4)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 2)
        cfg, self.rows, self.cols, self.dtype = await self.read_config()
        self.x_lanes = 1 << cr.field_value("CONFIG", "XLANES_LOG2", cfg)
        assert cr.field_value("CONFIG", "ACC_WIDTH", cfg) == cr.ACC_WIDTH
        assert cfg == cr.config_word(self.rows, self.cols, self.dtype, self.x_lanes,
                                     self.out_stage)
        self.capacity = await self.read("CAPACITY")
        dwc = await self.read("DW_CONFIG")
        self.dw = (cr.field_value("DW_CONFIG", "CT", dwc), cr.field_value("DW_CONFIG", "P", dwc))
        assert self.dw[0] >= 1 and self.dw[1] in (1, 2), self.dw
        self.wbuf = await self.read("WBUF_DEPTH")
        assert self.wbuf >= 2
        self.np_dtype = np.int8 if self.dtype == "int8" else np.int16
        self.dut._log.info("core: %dx%d %s, %d image lanes, capacity %d, depthwise %s",
                           self.rows, self.cols, self.dtype, self.x_lanes, self.capacity,
                           self.dw)

    def rand(self, shape, extremes=False):
        info = np.iinfo(self.np_dtype)
        if extremes:
            x = self.rng.choice(np.array([info.min, info.max, info.min, -1, 1]), size=shape)
        else:
            x = self.rng.integers(info.min, info.max + 1, size=shape)
        x.flat[self.rng.integers(x.size)] = info.min if self.rng.random() < 0.5 else info.max
        return x.astype(self.np_dtype)

    def rand_bias(self, n, extremes=False):
        if extremes:  # next to the int32 limits, so that sums wrap in both directions
            return self.rng.choice(np.array([2**31 - 1, -2**31, 2**31 - 2, -1]), size=n)
        return self.rng.integers(-2**31, 2**31, size=n, dtype=np.int64)

    def timeout_for(self, job):
        est = cr.expected_cycles(job, self.rows, self.cols, self.x_lanes)
        return int(est * (25 if self.paused else 2)) + 3000

    async def submit(self, x, w, bias, job, x_tlast=True, relu=False, requant=None):
        frames = cr.pack_job(x, w, bias, job, rows=self.rows, cols=self.cols,
                             dtype=self.dtype, x_lanes=self.x_lanes, requant=requant)
        for name, value in cr.register_values(job).items():
            await self.write(name, value)
        ctrl = cr.field_mask("CTRL", "START")
        if bias is not None:
            ctrl |= cr.field_mask("CTRL", "BIAS_EN")
        ctrl |= out_mode_ctrl(cr, relu, requant is not None)
        if x_tlast:
            for f in frames["x"]:
                self.src["x"].send_nowait(AxiStreamFrame(f))
        else:  # one frame for all images: only the last image's tlast is present
            self.src["x"].send_nowait(AxiStreamFrame(b"".join(frames["x"])))
        for _ in range(job.n):
            for name in ("b", "bias", "q"):
                for f in frames.get(name, []):
                    self.src[name].send_nowait(AxiStreamFrame(f))
        await self.write("CTRL", ctrl)
        return len(list(cr.tile_order(job, self.rows, self.cols))) * job.n

    async def collect(self, job, ntiles, timeout_cycles):
        frames = await self.recv_frames(ntiles, timeout_cycles)
        return cr.unpack_c(frames, job, rows=self.rows, cols=self.cols)

    async def wait_done(self, polls=2000):
        return await self.poll_done(polls)

    async def run_job(self, x, w, bias, job, extremes=False, x_tlast=True, relu=False,
                      requant=None):
        """Run one job, check it bit-exact, return CYCLES. ``relu`` and ``requant``
        ((multiplier, shift) per output channel) select the output stage; its oracle is
        numerics.requantize of the int32 oracle's sums."""
        ntiles = await self.submit(x, w, bias, job, x_tlast, relu, requant)
        got = await self.collect(job, ntiles, self.timeout_for(job))
        await self.wait_done()
        sums = oracle(x, w, bias, job)
        if requant is not None:
            expect = requantize(sums, *requant, axis=3, relu=relu).astype(np.int32)
        else:
            expect = np.maximum(sums, 0) if relu else sums
        mode = out_mode_name(relu, requant)
        cycles = await self.check_job(got, expect, ntiles,
                                      f"{job} bias={bias is not None} {mode}")
        exact = oracle(x, w, bias, job, unwrapped=True)
        sample_job(dict(job=job, rows=self.rows, cols=self.cols, bias=bias is not None,
                        extremes=extremes, wraps=bool((exact != sums).any()),
                        pauses=self.paused, out_mode=mode))
        return cycles

    def random_job(self, i):
        """A random job that fits the memory; kernel and group kinds rotate with i."""
        r = self.rng
        R, C = self.rows, self.cols
        for _ in range(1000):
            kh, kw = [(1, 1), (3, 3), (7, 7), (int(r.integers(1, 6)), int(r.integers(1, 6)))][i % 4]
            kind = ["dense", "grouped", "depthwise"][(i // 4 + i) % 3]
            if kind == "depthwise":
                groups = int(r.integers(2, 2 * R + 3))
                cg, ocg = 1, int(r.integers(1, 3))
            elif kind == "grouped":
                groups = int(r.integers(2, 4))
                cg, ocg = int(r.integers(1, 5)), int(r.integers(1, C + 3))
            else:
                groups = 1
                cg = int(r.integers(1, 2 * R + 3))
                ocg = int(r.choice([C, 2 * C, int(r.integers(1, 2 * C + 3))]))
            c = groups * cg
            sh, sw = int(r.integers(1, 3)), int(r.integers(1, 4))
            dh, dw = (1, 1) if r.random() < 0.6 else (int(r.integers(1, 3)), int(r.integers(1, 3)))
            pt, pb = int(r.integers(0, kh + 1)), int(r.integers(0, kh + 1))
            pl, pr = int(r.integers(0, kw + 1)), int(r.integers(0, kw + 1))
            if r.random() < 0.3:
                pt = pb = pl = pr = 0
            h, w = int(r.integers(1, 12)), int(r.integers(1, 12))
            n = 2 if r.random() < 0.25 else 1
            try:
                job = cr.ConvJob.make((n, h, w, c), (groups * ocg, cg, kh, kw), (sh, sw),
                                      ((pt, pb), (pl, pr)), (dh, dw), groups)
            except ValueError:
                continue
            if job.oh < 1 or job.ow < 1 or h * w * c > self.capacity:
                continue
            if job.n * job.oh * job.ow * job.oc * job.k > 60_000:
                continue
            # the weights kept on chip for half of the jobs
            return replace(job, wreuse=self.wbuf) if r.random() < 0.5 else job
        raise AssertionError("no random job found")

    def random_dw_job(self, i):
        """A random depthwise-mode job (channels padded to CT) that fits the memory."""
        r = self.rng
        ct, _ = self.dw
        for _ in range(1000):
            c = int(r.choice([1, ct, int(r.integers(1, 2 * ct + 4))]))
            mult = int(r.integers(1, 4)) if i % 2 else 1
            kh, kw = [(3, 3), (int(r.integers(1, 6)), int(r.integers(1, 6)))][i % 2]
            s = (int(r.integers(1, 3)), int(r.integers(1, 3)))
            d = (1, 1) if r.random() < 0.5 else (int(r.integers(1, 3)), int(r.integers(1, 3)))
            pad = tuple((int(r.integers(0, k + 1)), int(r.integers(0, k + 1))) for k in (kh, kw))
            h, w = int(r.integers(1, 10)), int(r.integers(1, 10))
            n = 2 if r.random() < 0.25 else 1
            try:
                job = cr.ConvJob.make((n, h, w, c), (c * mult, 1, kh, kw), s, pad, d, c)
            except ValueError:
                continue
            dwj = cr.depthwise_job(job, *self.dw)
            if job.oh < 1 or job.ow < 1 or h * w * dwj.c > self.capacity:
                continue
            if dwj.n * dwj.oh * dwj.ow * dwj.oc * dwj.k > 20_000:
                continue
            return job, replace(dwj, wreuse=self.wbuf) if r.random() < 0.5 else dwj
        raise AssertionError("no random depthwise job found")


def oracle(x, w, bias, job, unwrapped=False):
    """The oracle's answer for an NHWC job. The core takes any padding (the API at most
    the dilated kernel extent - 1 per side, and the same on both sides), so the zero
    padding is made explicit and the convolution asked for without padding.
    ``unwrapped``: the same sums in float64 (exact below 2**53), to see whether a job
    wrapped."""
    (pt, pb), (pl, pr) = job.pad
    xp = np.pad(np.asarray(x), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    w = np.asarray(w)
    if unwrapped:
        xp, w = xp.astype(np.float32), w.astype(np.float32)
    return conv2d_ref(xp, w, bias, stride=job.stride, dilation=job.dilation,
                      groups=job.groups, layout="NHWC")


def edge_jobs(R, C, capacity):
    """Named edge cases (NHWC input shape, weight shape, stride, pad, dilation, groups)."""
    cases = [
        ("1x1", (1, 5, 7, 3), (C + 1, 3, 1, 1), 1, 0, 1, 1),
        ("1x1 one pixel", (1, 1, 1, 1), (1, 1, 1, 1), 1, 0, 1, 1),
        ("3x3 pad 1", (1, 6, 5, R + 1), (2 * C, R + 1, 3, 3), 1, 1, 1, 1),
        ("7x7 stride 2 pad 3", (1, 11, 9, 3), (C - 1, 3, 7, 7), 2, 3, 1, 1),
        ("odd sizes", (1, 7, 3, 5), (3, 5, 2, 3), (2, 1), ((0, 1), (2, 0)), 1, 1),
        ("dilation 2", (1, 9, 8, 2), (C + 3, 2, 3, 3), 1, 2, 2, 1),
        ("depthwise 3x3", (1, 6, 6, 2 * R + 1), (2 * R + 1, 1, 3, 3), 1, 1, 1, 2 * R + 1),
        ("depthwise x2 stride 2", (1, 7, 5, 3), (6, 1, 3, 3), 2, 1, 1, 3),
        ("grouped", (2, 4, 5, 6), (2 * C + 2, 3, 3, 3), 1, 1, 1, 2),
        ("pad wider than kernel", (1, 3, 4, 2), (3, 2, 2, 2), (1, 2), ((3, 2), (4, 1)), 1, 1),
        ("dilation with stride", (1, 10, 10, 3), (5, 3, 3, 2), (3, 2), 1, (2, 3), 1),
    ]
    out = []
    for name, xs, ws, s, p, d, g in cases:
        job = cr.ConvJob.make(xs, ws, s, p, d, g)
        assert job.h * job.w * job.c <= capacity, name
        out.append((name, job))
    return out


# --- tests ---------------------------------------------------------------------------

@cocotb.test()
async def test_registers(dut):
    """ID/VERSION/CONFIG/CAPACITY, read/write registers, W1C errors, refused STARTs."""
    tb = TB(dut)
    await tb.start()
    tb.set_pauses(0.4, 0.4)
    for name in ("STATUS", "ERROR", "N", "H", "KERNEL", "PAD", "CTRL", "CYCLES_LO",
                 "TILES_DONE"):
        assert await tb.read(name) == 0, name
    assert await tb.read("DW_CONFIG") == cr.dw_config_word(*tb.dw)
    for v in (1, 0):
        await tb.write("MODE", v)
        assert await tb.read("MODE") == v
    for name in ("N", "H", "W", "C", "G", "CG", "OCG", "OH", "OW"):
        v = int(tb.rng.integers(1, 2 ** cr.DIM_BITS))
        await tb.write(name, v)
        assert await tb.read(name) == v, name
    for name in ("KERNEL", "STRIDE", "DILATION", "PAD"):
        v = int(tb.rng.integers(1, 2 ** 16))
        await tb.write(name, v)
        assert await tb.read(name) == v, name
    await tb.write("ID", 0x12345678)
    assert await tb.read("ID") == cr.CORE_ID
    assert await tb.axil.read_dword(0xFC) == 0
    await tb.check_strobes("KERNEL")
    bad = cr.field_mask("ERROR", "BAD_DIM")
    # a zero kernel size, then images larger than the memory: too many rows, and one
    # row of twice the capacity (W*C alone over it; its low bits alone would fit)
    job = cr.ConvJob.make((1, 3, 3, 1), (1, 1, 1, 1))
    refused = [{**cr.register_values(job), "KERNEL": 0},
               {**cr.register_values(job), "H": tb.capacity + 1}]
    if 2 * tb.capacity < 2 ** cr.DIM_BITS:
        refused.append({**cr.register_values(job), "H": 1, "W": 2 * tb.capacity})
    for regs in refused:
        for name, value in regs.items():
            await tb.write(name, value)
        await tb.write("CTRL", cr.field_mask("CTRL", "START"))
        st = await tb.read("STATUS")
        assert not cr.field_value("STATUS", "BUSY", st)
        assert cr.field_value("STATUS", "ERROR", st)
        assert await tb.read("ERROR") == bad
        await tb.write("ERROR", bad)
        assert await tb.read("ERROR") == 0


@cocotb.test()
async def test_edges(dut):
    """1x1, 3x3, 7x7 stride 2, odd sizes, padding, dilation, depthwise, groups, batch."""
    tb = TB(dut)
    await tb.start()
    for i, (name, job) in enumerate(edge_jobs(tb.rows, tb.cols, tb.capacity)):
        tb.set_pauses(*[(0.0, 0.0), (0.3, 0.3), (0.1, 0.5), (0.5, 0.1)][i % 4])
        x = tb.rand((job.n, job.h, job.w, job.c))
        w = tb.rand((job.oc, job.cg, job.kh, job.kw))
        bias = tb.rand_bias(job.oc) if i % 2 else None
        dut._log.info("edge %s: %s", name, job)
        await tb.run_job(x, w, bias, job)
    # extremes: the largest products, and a bias that wraps
    info = np.iinfo(tb.np_dtype)
    job = cr.ConvJob.make((1, 4, 4, 3), (tb.cols, 3, 3, 3), 1, 1)
    tb.set_pauses(0.2, 0.2)
    for xv, wv, bv in [(info.min, info.min, 2**31 - 1), (info.max, info.min, -2**31)]:
        x = np.full((1, 4, 4, 3), xv, tb.np_dtype)
        w = np.full((tb.cols, 3, 3, 3), wv, tb.np_dtype)
        await tb.run_job(x, w, np.full(tb.cols, bv, np.int64), job, extremes=True)
    assert await tb.read("ERROR") == 0


@cocotb.test()
async def test_random_jobs(dut):
    """Back-to-back random jobs without reset, random pauses on every port."""
    tb = TB(dut)
    await tb.start()
    njobs = int(os.environ.get("LEPTON_JOBS", "8"))
    for i in range(njobs):
        tb.set_pauses(*[(0.0, 0.0), (0.3, 0.3), (0.1, 0.6), (0.6, 0.1)][i % 4])
        job = tb.random_job(i)
        extremes = bool(tb.rng.random() < 0.3)
        x = tb.rand((job.n, job.h, job.w, job.c), extremes)
        w = tb.rand((job.oc, job.cg, job.kh, job.kw), extremes)
        bias = tb.rand_bias(job.oc, extremes) if (i // 2) % 2 else None
        dut._log.info("job %d: %s bias=%s", i, job, bias is not None)
        await tb.run_job(x, w, bias, job, extremes)
    assert await tb.read("ERROR") == 0


@cocotb.test()
async def test_depthwise_mode(dut):
    """Random depthwise-mode jobs (channels on the columns), back to back with normal
    jobs, random pauses on every port; refused depthwise STARTs."""
    tb = TB(dut)
    await tb.start()
    njobs = int(os.environ.get("LEPTON_DW_JOBS", "4"))
    for i in range(njobs):
        tb.set_pauses(*[(0.0, 0.0), (0.3, 0.3), (0.1, 0.6), (0.6, 0.1)][i % 4])
        job, dwj = tb.random_dw_job(i)
        extremes = bool(tb.rng.random() < 0.3)
        x = tb.rand((job.n, job.h, job.w, job.c), extremes)
        w = tb.rand((job.oc, 1, job.kh, job.kw), extremes)
        bias = tb.rand_bias(job.oc, extremes) if i % 2 else None
        x, w, bias = cr.depthwise_operands(x, w, bias, dwj)
        dut._log.info("depthwise job %d: %s bias=%s", i, dwj, bias is not None)
        await tb.run_job(x, w, bias, dwj, extremes)
        if i == 1:   # a normal job right after: MODE is per job
            job = tb.random_job(2)
            await tb.run_job(tb.rand((job.n, job.h, job.w, job.c)),
                             tb.rand((job.oc, job.cg, job.kh, job.kw)), None, job)
    assert await tb.read("ERROR") == 0
    bad = cr.field_mask("ERROR", "BAD_DIM")
    ct = tb.dw[0]
    good = cr.depthwise_job(cr.ConvJob.make((1, 2, 2, ct), (ct, 1, 1, 1), groups=ct), *tb.dw)
    wrong = [{"CG": 2}, {"G": ct + 1}] + ([{"C": ct + 1, "G": ct + 1}] if ct > 1 else [])
    for regs in wrong:
        for name, value in {**cr.register_values(good), **regs}.items():
            await tb.write(name, value)
        await tb.write("CTRL", cr.field_mask("CTRL", "START"))
        assert await tb.read("ERROR") == bad, regs
        assert not cr.field_value("STATUS", "BUSY", await tb.read("STATUS"))
        await tb.write("ERROR", bad)


@cocotb.test()
async def test_weight_reuse(dut):
    """MODE.WREUSE: weights sent once per group and image and replayed (several pixel
    and channel tiles, groups, batch, depthwise), a group too large for the buffer
    streamed as before; same CYCLES as streaming them at full rate."""
    tb = TB(dut)
    await tb.start()
    R, C, D = tb.rows, tb.cols, tb.wbuf
    cg_over = D // 9 + 1          # 3x3 taps x cg_over channels > D beats
    jobs = [
        cr.ConvJob.make((2, 5, 6, 4), (2 * C + 2, 2, 3, 3), 1, 1, 1, 2),
        cr.ConvJob.make((1, 2, 3, cg_over), (C, cg_over, 3, 3), 1, 1),
        cr.depthwise_job(cr.ConvJob.make((1, 6, 5, tb.dw[0] + 1), (2 * tb.dw[0] + 2, 1, 3, 3),
                                         2, 1, 1, tb.dw[0] + 1), *tb.dw),
    ]
    for i, job in enumerate(jobs):
        job = replace(job, wreuse=D)
        assert cr.weights_held(job, C) == (i != 1)
        assert job.h * job.w * job.c <= tb.capacity
        x = tb.rand((job.n, job.h, job.w, job.c))
        w = tb.rand((job.oc, job.cg, job.kh, job.kw))
        bias = tb.rand_bias(job.oc) if i % 2 == 0 else None
        for pauses in ((0.0, 0.0), (0.3, 0.3)):
            tb.set_pauses(*pauses)
            dut._log.info("weight reuse %d: %s", i, job)
            cycles = await tb.run_job(x, w, bias, job)
            if pauses == (0.0, 0.0):
                assert cycles == cr.expected_cycles(job, R, C, tb.x_lanes), job
                assert await tb.read("STALL_IN") == 0
                held_out = await tb.read("STALL_OUT")
                # the same job with every tile's weights streamed: same counters
                assert await tb.run_job(x, w, bias, replace(job, wreuse=0)) == cycles
                assert await tb.read("STALL_OUT") == held_out
    assert await tb.read("ERROR") == 0


@cocotb.test()
async def test_reset_and_tlast(dut):
    """A reset mid-job leaves a clean core; a missing x tlast is flagged."""
    tb = TB(dut)
    await tb.start()
    C = tb.cols
    tb.set_pauses(0.3, 0.3)
    job = cr.ConvJob.make((1, 6, 6, 3), (2 * C, 3, 3, 3), 1, 1)
    x, w = tb.rand((1, 6, 6, 3)), tb.rand((2 * C, 3, 3, 3))
    await tb.submit(x, w, None, job)
    await tb.wait_progress()
    await RisingEdge(dut.clk)
    await tb.reset()
    for name in ("STATUS", "ERROR", "N", "CTRL", "TILES_DONE", "CYCLES_LO"):
        assert await tb.read(name) == 0, name
    await tb.run_job(x, w, tb.rand_bias(job.oc), job)
    # two images sent as one frame: the first image's tlast is missing
    tb.set_pauses(0.0, 0.0)
    job = cr.ConvJob.make((2, 3, 5, 2), (C, 2, 1, 1))
    x, w = tb.rand((2, 3, 5, 2)), tb.rand((C, 2, 1, 1))
    await tb.run_job(x, w, None, job, x_tlast=False)
    assert await tb.read("ERROR") == cr.field_mask("ERROR", "X_LAST")
    await tb.write("ERROR", 0xFFFFFFFF)


@cocotb.test()
async def test_stall_corners(dut):
    """Stall on TLAST, bias handoff under backpressure, back-to-back jobs."""
    tb = TB(dut)
    await tb.start()
    C = tb.cols
    job = cr.ConvJob.make((1, 4, 4, 2), (3 * C, 2, 1, 1))  # 3 channel tiles per pixel tile

    def args(with_bias):
        x, w = tb.rand((1, 4, 4, 2)), tb.rand((3 * C, 2, 1, 1))
        return x, w, tb.rand_bias(job.oc) if with_bias else None, job

    await tb.stall_corners(args, tb.run_job)


@cocotb.test()
async def test_cycle_count(dut):
    """At full rate CYCLES equals conv_regmap.expected_cycles; report MAC utilisation."""
    tb = TB(dut)
    await tb.start()
    R, C = tb.rows, tb.cols
    tb.set_pauses(0.0, 0.0)
    layers = json.loads(os.environ.get("LEPTON_UTIL_LAYERS", "[]")) or [
        {"x": [1, 5, 5, 2 * R], "w": [2 * C, 2 * R, 3, 3], "stride": 1, "padding": 1},
        {"x": [2, 7, 7, 3], "w": [C + 1, 3, 3, 3], "stride": 2, "padding": 1},
        {"x": [1, 4, 4, 4], "w": [4, 1, 3, 3], "stride": 1, "padding": 1, "groups": 4},
        {"x": [1, 5, 4, 2 * tb.dw[0]], "w": [2 * tb.dw[0], 1, 3, 3], "stride": 1,
         "padding": 1, "groups": 2 * tb.dw[0], "depthwise": True},
        {"x": [1, 6, 5, tb.dw[0]], "w": [2 * tb.dw[0], 1, 3, 3], "stride": 2, "padding": 1,
         "groups": tb.dw[0], "depthwise": True},
    ]
    # The default layers run without and with a bias: the bias stream must cost no cycles.
    variants = (False,) if os.environ.get("LEPTON_UTIL_LAYERS") else (False, True)
    results = []
    for L, with_bias in [(L, wb) for L in layers for wb in variants]:
        job = cr.ConvJob.make(L["x"], L["w"], L.get("stride", 1), L.get("padding", 0),
                              L.get("dilation", 1), L.get("groups", 1))
        x = tb.rand(tuple(L["x"]))
        w = tb.rand(tuple(L["w"]))
        bias = tb.rand_bias(job.oc) if with_bias else None
        macs = cr.useful_macs(job)    # of the layer itself (not of padded channels)
        if L.get("depthwise"):
            job = cr.depthwise_job(job, *tb.dw)
            x, w, bias = cr.depthwise_operands(x, w, bias, job)
        cycles = await tb.run_job(x, w, bias, job)
        expect = cr.expected_cycles(job, R, C, tb.x_lanes)
        util = macs / (R * C * cycles)
        load = await tb.read("LOAD_CYCLES")
        dut._log.info("%s bias=%s on %dx%d: %d cycles (model %d, load %d), utilisation %.4f",
                      job, with_bias, R, C, cycles, expect, load, util)
        assert cycles == expect, (cycles, expect)
        assert await tb.read("STALL_IN") == 0
        results.append(dict(layer=L, rows=R, cols=C, dtype=tb.dtype, cycles=cycles,
                            model_cycles=expect, load_cycles=load,
                            stall_out=await tb.read("STALL_OUT"),
                            useful_macs=macs, utilisation=util,
                            mode="depthwise" if job.dw else "normal"))
    write_results(results)


@cocotb.test()
async def test_output_stage(dut):
    """ReLU and requantization on the conv core: random jobs (groups, batches, so the
    per-channel parameters follow g*OCG + oc0 and repeat per image) with random
    multipliers and shifts, back to back with plain ones, random pauses; saturation and
    shift 0/63 lanes; CYCLES with the stage's delay. A build without the stage refuses
    such a START and still runs plain jobs."""
    tb = TB(dut)
    await tb.start()
    R, C = tb.rows, tb.cols
    if not tb.out_stage:
        await tb.check_stage_refused()
        job = tb.random_job(1)
        x = tb.rand((job.n, job.h, job.w, job.c))
        w = tb.rand((job.oc, job.cg, job.kh, job.kw))
        await tb.run_job(x, w, tb.rand_bias(job.oc), job)
        assert await tb.read("ERROR") == 0
        return
    njobs = int(os.environ.get("LEPTON_JOBS", "8")) // 2
    for i in range(njobs):
        tb.set_pauses(*[(0.3, 0.3), (0.0, 0.0), (0.1, 0.6), (0.6, 0.1)][i % 4])
        job = tb.random_job(i + 1)
        x = tb.rand((job.n, job.h, job.w, job.c))
        w = tb.rand((job.oc, job.cg, job.kh, job.kw))
        bias = tb.rand_bias(job.oc) // 2**12 if i % 2 else None
        relu, mode = i % 3 == 1, i % 4
        rq = None if mode == 3 else rand_requant(tb.rng, oracle(x, w, bias, job), 3)
        dut._log.info("job %d: %s bias=%s relu=%s requant=%s", i, job, bias is not None,
                      relu, rq is not None)
        await tb.run_job(x, w, bias, job, relu=relu, requant=rq)
    # extremes: the largest sums of both signs through saturating / shift 0 / 63 lanes
    info = np.iinfo(tb.np_dtype)
    job = cr.ConvJob.make((2, 3, 3, 2), (C + 1, 2, 3, 3), 1, 1)
    lanes = [(2**31 - 1, 0), (-2**31, 63), (2**30, 40), (-2**31, 62), (1, 1)]
    mult = np.array([lanes[j % 5][0] for j in range(job.oc)], np.int64)
    shift = np.array([lanes[j % 5][1] for j in range(job.oc)], np.int64)
    tb.set_pauses(0.2, 0.2)
    for xv, relu in ((info.min, False), (info.max, True)):
        x = np.full((2, 3, 3, 2), xv, tb.np_dtype)
        x[1] = -x[1] - 1
        w = np.full((job.oc, 2, 3, 3), info.min, tb.np_dtype)
        await tb.run_job(x, w, None, job, extremes=True, relu=relu, requant=(mult, shift))
    # a plain job right after: the stage is off again
    await tb.run_job(x, w, None, job, extremes=True)
    tb.set_pauses(0.0, 0.0)
    job = cr.ConvJob.make((1, 5, 5, 2 * R), (2 * C, 2 * R, 3, 3), 1, 1)
    for relu, with_q in ((True, False), (False, True)):
        x, w = tb.rand((1, 5, 5, 2 * R)), tb.rand((2 * C, 2 * R, 3, 3))
        rq = rand_requant(tb.rng, oracle(x, w, None, job), 3) if with_q else None
        cycles = await tb.run_job(x, w, tb.rand_bias(job.oc), job, relu=relu, requant=rq)
        assert cycles == cr.expected_cycles(job, R, C, tb.x_lanes, out_stage=True), cycles
    assert await tb.read("ERROR") == 0


@cocotb.test()
async def test_coverage_report(dut):
    """Report functional coverage of everything this run sampled (runs last)."""
    check_coverage(dut)
