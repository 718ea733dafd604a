"""cocotb testbench of the matmul core (AXIMatmul), run through sim/test_matmul_sim.py.

Bus models come from cocotbext-axi; the scoreboard is the package's oracle,
``lepton_accel.reference.matmul_ref`` (exact, int32 wrap-around), compared bit for bit.
The array size and dtype are read from the core's CONFIG register, so the same tests
run on every build. Randomness comes from cocotb's seed (logged at start, fresh each
run; COCOTB_RANDOM_SEED reproduces a run).
"""

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge
from cocotb_coverage import coverage
from cocotbext.axi import AxiStreamFrame
from tb_common import (OUT_MODES, AxiTB, check_coverage, out_mode_name, rand_requant,
                       write_results)

from lepton_accel.hdl import matmul_regmap as regmap
from lepton_accel.hdl.regmap_common import out_mode_ctrl
from lepton_accel.numerics import requantize
from lepton_accel.reference import matmul_ref

REG = regmap.REG


# --- functional coverage -----------------------------------------------------------

def _dim_class(d, side):
    if d == 1:
        return "one"
    if d < side:
        return "below_side"
    return "multiple" if d % side == 0 else "not_multiple"


_DIM_BINS = ["one", "below_side", "multiple", "not_multiple"]


def _drain_bound(rows, cols):
    """K below which a full tile waits for the previous one's drain (the cycle model)."""
    return 2 * rows + cols + regmap.DEPOSIT_DELAY


@coverage.CoverPoint("matmul.m", xf=lambda j: _dim_class(j["m"], j["rows"]), bins=_DIM_BINS)
@coverage.CoverPoint("matmul.n", xf=lambda j: _dim_class(j["n"], j["cols"]), bins=_DIM_BINS)
@coverage.CoverPoint("matmul.k", xf=lambda j: "one" if j["k"] == 1 else
                     ("short" if j["k"] < _drain_bound(j["rows"], j["cols"]) else "long"),
                     bins=["one", "short", "long"])
@coverage.CoverPoint("matmul.bias", xf=lambda j: j["bias"], bins=[False, True])
@coverage.CoverPoint("matmul.extremes", xf=lambda j: j["extremes"], bins=[False, True])
@coverage.CoverPoint("matmul.wraps", xf=lambda j: j["wraps"], bins=[False, True])
@coverage.CoverPoint("matmul.backpressure", xf=lambda j: j["pauses"], bins=[False, True])
@coverage.CoverCross("matmul.k_x_bias", items=["matmul.k", "matmul.bias"])
@coverage.CoverPoint("matmul.out_mode", xf=lambda j: j["out_mode"], bins=OUT_MODES)
@coverage.CoverPoint("matmul.saturates", xf=lambda j: j["saturates"], bins=[False, True])
def sample_job(job):
    pass


# --- testbench ---------------------------------------------------------------------

class TB(AxiTB):
    def __init__(self, dut):
        super().__init__(dut, regmap, ("a", "b", "bias", "q"))
        self.rows = self.cols = None
        self.dtype = None

    async def start(self):
        self.dut.rst.value = 0
        await self.reset()
        await self.read_config()

    async def read_config(self):
        cfg, self.rows, self.cols, self.dtype = await super().read_config()
        assert regmap.field_value("CONFIG", "ACC_WIDTH", cfg) == regmap.ACC_WIDTH
        assert cfg == regmap.config_word(self.rows, self.cols, self.dtype, self.out_stage)
        self.dut._log.info("core: %dx%d %s", self.rows, self.cols, self.dtype)

    # random data
    def rand_matrix(self, shape, extremes=False):
        info = np.iinfo(np.int8 if self.dtype == "int8" else np.int16)
        if extremes:
            x = self.rng.choice(np.array([info.min, info.max, info.min, -1, 1]), size=shape)
        else:
            x = self.rng.integers(info.min, info.max + 1, size=shape, dtype=np.int64)
        # never all-zero, always one extreme
        x.flat[self.rng.integers(x.size)] = info.min if self.rng.random() < 0.5 else info.max
        return x.astype(np.int64)

    def reference(self, a, b, bias=None, relu=False, requant=None):
        """The oracle's answer for the core's operands (int64 arrays of lane values),
        through the output stage's NumPy model (numerics.requantize) when asked."""
        lane = np.int8 if self.dtype == "int8" else np.int16
        c = matmul_ref(a.astype(lane), b.astype(lane), bias)
        if requant is not None:
            return requantize(c, *requant, axis=1, relu=relu).astype(np.int32)
        return np.maximum(c, 0) if relu else c

    def rand_bias(self, n, extremes=False):
        if extremes:
            return self.rng.choice(np.array([2**31 - 1, -2**31, 2**31 - 2, -1]), size=n)
        return self.rng.integers(-2**31, 2**31, size=n, dtype=np.int64)

    async def submit(self, a, b, bias=None, tlast_per_tile=True, relu=False, requant=None):
        """Program and start a job and queue its input frames."""
        m, k = a.shape
        n = b.shape[1]
        frames = regmap.pack_job(a, b, bias, rows=self.rows, cols=self.cols,
                                 dtype=self.dtype, requant=requant)
        await self.write("M", m)
        await self.write("N", n)
        await self.write("K", k)
        ctrl = regmap.field_mask("CTRL", "START")
        if bias is not None:
            ctrl |= regmap.field_mask("CTRL", "BIAS_EN")
        ctrl |= out_mode_ctrl(regmap, relu, requant is not None)
        for name, fl in frames.items():
            if tlast_per_tile:
                for f in fl:
                    self.src[name].send_nowait(AxiStreamFrame(f))
            else:
                self.src[name].send_nowait(AxiStreamFrame(b"".join(fl)))
        await self.write("CTRL", ctrl)
        return len(list(regmap.tile_order(m, n, self.rows, self.cols)))

    async def collect(self, a, b, ntiles, timeout_cycles):
        m, n = a.shape[0], b.shape[1]
        frames = await self.recv_frames(ntiles, timeout_cycles)
        return regmap.unpack_c(frames, m, n, rows=self.rows, cols=self.cols)

    async def wait_done(self, timeout_cycles=10_000):
        return await self.poll_done(timeout_cycles // 8)

    def timeout_for(self, m, n, k, pauses):
        tiles = len(list(regmap.tile_order(m, n, self.rows, self.cols)))
        est = regmap.expected_cycles(m, n, k, self.rows, self.cols) + 64 * tiles
        return int(est * (20 if pauses else 2)) + 2000

    async def run_job(self, a, b, bias=None, extremes=False, tlast_per_tile=True,
                      relu=False, requant=None):
        """Run one job, check it bit-exact against NumPy, return CYCLES. ``relu`` and
        ``requant`` ((multiplier, shift) per output channel) select the output stage."""
        m, k = a.shape
        n = b.shape[1]
        ntiles = await self.submit(a, b, bias, tlast_per_tile, relu, requant)
        got = await self.collect(a, b, ntiles, self.timeout_for(m, n, k, self.paused))
        await self.wait_done()
        sums = self.reference(a, b, bias)
        expect = self.reference(a, b, bias, relu, requant)
        # the same sums in float64, unwrapped (exact: |sum| < 2**53), to see a wrap
        wide = matmul_ref(a.astype(np.float32), b.astype(np.float32))
        if bias is not None:
            wide = wide + bias[None, :]
        mode = out_mode_name(relu, requant)
        cycles = await self.check_job(got, expect, ntiles,
                                      f"job {m}x{n}x{k} bias={bias is not None} {mode}")
        saturates = False
        if requant is not None:
            raw = requantize(sums, *requant, axis=1)
            wide_q = np.rint(sums.astype(np.float64) * requant[0][None, :]
                             / 2.0 ** requant[1][None, :])
            saturates = bool(((raw == 127) & (wide_q > 127)).any()
                             and ((raw == -128) & (wide_q < -128)).any())
        sample_job(dict(m=m, n=n, k=k, rows=self.rows, cols=self.cols, bias=bias is not None,
                        extremes=extremes, wraps=bool((wide != sums).any()),
                        pauses=self.paused, out_mode=mode, saturates=saturates))
        return cycles

    def dim_of_class(self, cls, side, lim):
        r = self.rng
        if cls == "one" or (cls == "below_side" and side <= 2):
            return 1
        if cls == "below_side":
            return int(r.integers(2, side))
        if cls == "multiple":
            return side * int(r.integers(1, lim + 1))
        return side * int(r.integers(1, lim)) + int(r.integers(1, side))

    def random_job_shape(self, i, big=False):
        """Shape of random job i: classes rotate so a few jobs reach every bin."""
        R, C = self.rows, self.cols
        lim = 4 if big else 2
        m = self.dim_of_class(_DIM_BINS[i % 4], R, lim)
        n = self.dim_of_class(_DIM_BINS[(i + 1 + i // 4) % 4], C, lim)
        short = _drain_bound(R, C)  # below this a tile waits for the previous one to drain
        k_cls = i % 3
        if k_cls == 0:
            k = 1
        elif k_cls == 1:
            k = int(self.rng.integers(2, short))
        else:
            k = int(self.rng.integers(short, short + (8 if big else 2) * (R + C)))
        with_bias = (i // 3) % 2 == 1
        return m, n, k, with_bias


# --- tests -------------------------------------------------------------------------

@cocotb.test()
async def test_registers(dut):
    """ID/VERSION/CONFIG, reset values, read/write registers, W1C errors, bad dims."""
    tb = TB(dut)
    await tb.start()
    tb.set_pauses(0.4, 0.4)  # AW, W, AR, B and R channels all stall at random
    for name in ("STATUS", "ERROR", "M", "N", "K", "CTRL", "CYCLES_LO", "TILES_DONE"):
        assert await tb.read(name) == 0, name
    for name in ("M", "N", "K"):
        v = int(tb.rng.integers(1, 2**regmap.DIM_BITS))
        await tb.write(name, v)
        assert await tb.read(name) == v, name
    await tb.write("CTRL", regmap.field_mask("CTRL", "BIAS_EN"))
    assert await tb.read("CTRL") == regmap.field_mask("CTRL", "BIAS_EN")
    await tb.write("CTRL", 0)
    # read-only registers ignore writes
    await tb.write("ID", 0x12345678)
    assert await tb.read("ID") == regmap.CORE_ID
    # unmapped addresses read 0
    assert await tb.axil.read_dword(0xFC) == 0
    await tb.check_strobes("M")

    # START with a zero dimension is refused and flagged
    await tb.write("K", 0)
    await tb.write("CTRL", regmap.field_mask("CTRL", "START"))
    st = await tb.read("STATUS")
    assert not regmap.field_value("STATUS", "BUSY", st)
    assert regmap.field_value("STATUS", "ERROR", st)
    assert await tb.read("ERROR") == regmap.field_mask("ERROR", "BAD_DIM")
    await tb.write("ERROR", regmap.field_mask("ERROR", "BAD_DIM"))
    assert await tb.read("ERROR") == 0
    assert not regmap.field_value("STATUS", "ERROR", await tb.read("STATUS"))


@cocotb.test()
async def test_random_jobs(dut):
    """Back-to-back random jobs without reset, random pauses on every port."""
    tb = TB(dut)
    await tb.start()
    njobs = int(os.environ.get("LEPTON_JOBS", "6"))
    for i in range(njobs):
        tb.set_pauses(*[(0.0, 0.0), (0.3, 0.3), (0.1, 0.6), (0.6, 0.1)][i % 4])
        m, n, k, with_bias = tb.random_job_shape(i, big=os.environ.get("LEPTON_BIG") == "1")
        extremes = bool(tb.rng.random() < 0.3)
        a, b = tb.rand_matrix((m, k), extremes), tb.rand_matrix((k, n), extremes)
        bias = tb.rand_bias(n, extremes) if with_bias else None
        dut._log.info("job %d: M=%d N=%d K=%d bias=%s extremes=%s", i, m, n, k,
                      bias is not None, extremes)
        await tb.run_job(a, b, bias, extremes)
    assert await tb.read("ERROR") == 0


@cocotb.test()
async def test_edges(dut):
    """K=1, 1x1x1, primes / non-multiples of the array, extremes and wrap-around."""
    tb = TB(dut)
    await tb.start()
    R, C = tb.rows, tb.cols
    info = np.iinfo(np.int8 if tb.dtype == "int8" else np.int16)
    tb.set_pauses(0.2, 0.2)
    for m, n, k in [(1, 1, 1), (R + 1, C + 1, 1), (2 * R - 1, 3, 7), (5, 2 * C + 3, 13)]:
        a, b = tb.rand_matrix((m, k)), tb.rand_matrix((k, n))
        await tb.run_job(a, b, None)
    # All-extreme operands: the largest products; for int16 the sum wraps at K >= 2.
    for av, bv in [(info.min, info.min), (info.max, info.min), (info.max, info.max)]:
        m, n, k = R + 1, C, 5
        a = np.full((m, k), av, dtype=np.int64)
        b = np.full((k, n), bv, dtype=np.int64)
        await tb.run_job(a, b, None, extremes=True)
    # Bias that wraps: C + bias overflows int32 in both directions.
    a = np.full((R, 3), info.max, dtype=np.int64)
    b = np.full((3, C), info.max, dtype=np.int64)
    bias = np.full(C, 2**31 - 1, dtype=np.int64)
    await tb.run_job(a, b, bias, extremes=True)
    a = np.full((R, 3), info.min, dtype=np.int64)
    bias = np.full(C, -2**31, dtype=np.int64)
    await tb.run_job(a, b, bias, extremes=True)
    if tb.dtype == "int16":
        # (-32768)^2 * 2 = 2^31: the first value that does not fit; it wraps to -2^31.
        a = np.full((1, 2), info.min, dtype=np.int64)
        b = np.full((2, 1), info.min, dtype=np.int64)
        ntiles = await tb.submit(a, b)
        got = await tb.collect(a, b, ntiles, 1000)
        assert got[0, 0] == -2**31
        await tb.wait_done()


@cocotb.test()
async def test_status_while_busy(dut):
    """STATUS/TILES_DONE/CYCLES read while a job runs; START while busy is refused."""
    tb = TB(dut)
    await tb.start()
    R, C = tb.rows, tb.cols
    tb.set_pauses(0.5, 0.5)
    m, n, k = 2 * R + 1, 2 * C, 2 * (R + C)
    a, b = tb.rand_matrix((m, k)), tb.rand_matrix((k, n))
    ntiles = await tb.submit(a, b)
    collector = cocotb.start_soon(tb.collect(a, b, ntiles, tb.timeout_for(m, n, k, True)))
    seen_busy, last_tiles, last_cycles, refused = 0, 0, 0, False
    while True:
        st = await tb.read("STATUS")
        if not regmap.field_value("STATUS", "BUSY", st):
            break
        seen_busy += 1
        assert not regmap.field_value("STATUS", "DONE", st)
        tiles = await tb.read("TILES_DONE")
        cycles = await tb.read("CYCLES_LO")
        assert last_tiles <= tiles <= ntiles
        assert cycles > last_cycles
        last_tiles, last_cycles = tiles, cycles
        if not refused and tiles >= 1:
            # a second START mid-job is ignored and flagged
            await tb.write("CTRL", regmap.field_mask("CTRL", "START"))
            refused = True
    got = await collector
    np.testing.assert_array_equal(got, tb.reference(a, b))
    assert seen_busy >= 3, "status was not read while busy"
    assert refused
    st = await tb.read("STATUS")
    assert regmap.field_value("STATUS", "DONE", st) and regmap.field_value("STATUS", "ERROR", st)
    assert await tb.read("ERROR") == regmap.field_mask("ERROR", "START_BUSY")
    assert await tb.read("TILES_DONE") == ntiles
    await tb.write("ERROR", 0xFFFFFFFF)
    # START clears DONE
    a, b = tb.rand_matrix((R, 4)), tb.rand_matrix((4, C))
    await tb.run_job(a, b)


@cocotb.test()
async def test_reset_mid_job(dut):
    """A reset in the middle of a job leaves a clean core that runs the next job."""
    tb = TB(dut)
    await tb.start()
    R, C = tb.rows, tb.cols
    tb.set_pauses(0.3, 0.3)
    m, n, k = 2 * R + 3, 2 * C + 1, R + C + 5
    a, b = tb.rand_matrix((m, k)), tb.rand_matrix((k, n))
    await tb.submit(a, b, tb.rand_bias(n))
    # wait until the job is well under way
    await tb.wait_progress()
    assert regmap.field_value("STATUS", "BUSY", await tb.read("STATUS"))
    await RisingEdge(dut.clk)
    await tb.reset()
    for name in ("STATUS", "ERROR", "M", "N", "K", "CTRL", "TILES_DONE", "CYCLES_LO"):
        assert await tb.read(name) == 0, name
    assert not int(dut.m_axis_c__tvalid.value)
    # nothing of the old job may come out: the next job's output must match exactly
    for m, n, k in [(R, C, 3), (R + 2, 3, k)]:
        a, b = tb.rand_matrix((m, k)), tb.rand_matrix((k, n))
        await tb.run_job(a, b, tb.rand_bias(n))


@cocotb.test()
async def test_tlast_checks(dut):
    """Missing per-tile tlast sets A_LAST/B_LAST but the core still counts beats."""
    tb = TB(dut)
    await tb.start()
    R, C = tb.rows, tb.cols
    tb.set_pauses(0.0, 0.0)
    m, n, k = R + 1, C, 4  # two tiles: a single frame misses the first tile's tlast
    a, b = tb.rand_matrix((m, k)), tb.rand_matrix((k, n))
    await tb.run_job(a, b, tlast_per_tile=False)
    err = await tb.read("ERROR")
    assert err == regmap.field_mask("ERROR", "A_LAST") | regmap.field_mask("ERROR", "B_LAST")
    await tb.write("ERROR", err)
    assert await tb.read("ERROR") == 0


@cocotb.test()
async def test_stall_corners(dut):
    """Stall on TLAST, bias handoff under backpressure, back-to-back jobs."""
    tb = TB(dut)
    await tb.start()
    R, C = tb.rows, tb.cols

    def job(with_bias):  # 3x3 tiles, K short of the drain: the inputs wait on it too
        a, b = tb.rand_matrix((3 * R, 2)), tb.rand_matrix((2, 3 * C))
        return a, b, tb.rand_bias(3 * C) if with_bias else None

    await tb.stall_corners(job, tb.run_job)


@cocotb.test()
async def test_cycle_count(dut):
    """At full rate CYCLES equals the documented model; report MAC utilisation."""
    tb = TB(dut)
    await tb.start()
    R, C = tb.rows, tb.cols
    tb.set_pauses(0.0, 0.0)
    sizes = json.loads(os.environ.get("LEPTON_UTIL_SIZES", "[]")) or \
        [[2 * R + 1, 2 * C, 4 * (R + C)], [R, C, 1]]
    results = []
    # The default sizes run without and with a bias: the bias stream must cost no cycles.
    variants = (False,) if os.environ.get("LEPTON_UTIL_SIZES") else (False, True)
    for (m, n, k), with_bias in [(s, wb) for s in sizes for wb in variants]:
        a, b = tb.rand_matrix((m, k)), tb.rand_matrix((k, n))
        cycles = await tb.run_job(a, b, tb.rand_bias(n) if with_bias else None)
        expect = regmap.expected_cycles(m, n, k, R, C)
        util = m * n * k / (R * C * cycles)
        dut._log.info("M=%d N=%d K=%d bias=%s on %dx%d: %d cycles (model %d), utilisation %.4f",
                      m, n, k, with_bias, R, C, cycles, expect, util)
        assert cycles == expect
        assert await tb.read("STALL_IN") == 0
        results.append(dict(m=m, n=n, k=k, rows=R, cols=C, dtype=tb.dtype, cycles=cycles,
                            stall_in=0, stall_out=await tb.read("STALL_OUT"),
                            utilisation=util))
    write_results(results)


@cocotb.test()
async def test_output_stage(dut):
    """ReLU and requantization (CTRL.RELU / REQUANT, the q stream): random jobs with
    random per-channel multipliers and shifts, back to back with plain ones, random
    pauses; saturation both ways, rounding ties, shift 0 and 63, negative sums; a q
    packet without per-tile tlast (Q_LAST); CYCLES with the stage's delay. A build
    without the stage refuses such a START and still runs plain jobs."""
    tb = TB(dut)
    await tb.start()
    R, C = tb.rows, tb.cols
    if not tb.out_stage:
        await tb.check_stage_refused()
        a, b = tb.rand_matrix((R + 1, 5)), tb.rand_matrix((5, C + 1))
        await tb.run_job(a, b, tb.rand_bias(C + 1))
        assert await tb.read("ERROR") == 0
        return
    njobs = int(os.environ.get("LEPTON_JOBS", "6"))
    for i in range(njobs + 2):
        tb.set_pauses(*[(0.0, 0.0), (0.3, 0.3), (0.1, 0.6), (0.6, 0.1)][i % 4])
        m, n, k, with_bias = tb.random_job_shape(i + 1)
        extremes = i % 3 == 2
        a, b = tb.rand_matrix((m, k), extremes), tb.rand_matrix((k, n), extremes)
        bias = tb.rand_bias(n) // 2**12 if with_bias else None
        relu, mode = bool(i % 2), i % 4
        requant = None if mode == 3 else rand_requant(tb.rng, tb.reference(a, b, bias), 1)
        dut._log.info("job %d: M=%d N=%d K=%d bias=%s relu=%s requant=%s", i, m, n, k,
                      bias is not None, relu, requant is not None)
        await tb.run_job(a, b, bias, extremes, relu=relu, requant=requant)
        if i % 3 == 0:
            await tb.run_job(tb.rand_matrix((2, 3)), tb.rand_matrix((3, 2)))  # plain again
    # Edges: C[i, j] = v_i + bias_j, per lane a multiplier/shift pair.
    tb.set_pauses(0.2, 0.2)
    v = np.array([[-128], [127], [0], [-1], [3], [5], [-3], [1]], np.int64)
    ones = np.ones((1, C), np.int64)
    lanes = [(1, 1), (2**31 - 1, 0), (-2**31, 0), (2**31 - 1, 63), (-2**31, 63), (3, 1),
             (-1, 1), (2**30, 31)]
    mult = np.array([lanes[j % len(lanes)][0] for j in range(C)], np.int64)
    shift = np.array([lanes[j % len(lanes)][1] for j in range(C)], np.int64)
    bias = np.array([(0, 1, -1, 2**31 - 1 - 127)[j % 4] for j in range(C)], np.int64)
    for relu in (False, True):
        await tb.run_job(v, ones, bias, True, relu=relu, requant=(mult, shift))
    await tb.run_job(v, ones, None, True, requant=(np.ones(C, np.int64), np.ones(C, np.int64)))
    # the largest sums times the largest multipliers, int32 sums of both signs
    lo = np.iinfo(np.int8 if tb.dtype == "int8" else np.int16).min
    big = np.full((2, 64), lo, np.int64)
    big[1] = -lo - 1
    bigb = np.full((64, C), big[0, 0], np.int64)
    await tb.run_job(big, bigb, None, True, requant=(np.full(C, -2**31, np.int64),
                                                     np.array([[0, 62, 63, 31][j % 4]
                                                               for j in range(C)])))
    # q sent as one packet over two tiles: Q_LAST is flagged, the result still exact
    tb.set_pauses(0.0, 0.0)
    a, b = tb.rand_matrix((R + 1, 3)), tb.rand_matrix((3, C))
    frames = regmap.pack_job(a, b, rows=R, cols=C, dtype=tb.dtype)
    rq = rand_requant(tb.rng, tb.reference(a, b), 1)
    assert await tb.read("ERROR") == 0
    await tb.write("M", R + 1)
    await tb.write("N", C)
    await tb.write("K", 3)
    for name in ("a", "b"):
        for f in frames[name]:
            tb.src[name].send_nowait(AxiStreamFrame(f))
    tb.src["q"].send_nowait(AxiStreamFrame(b"".join(regmap.pack_q(*rq, R + 1, rows=R, cols=C))))
    await tb.write("CTRL", regmap.field_mask("CTRL", "START") | out_mode_ctrl(regmap, False, True))
    got = await tb.collect(a, b, 2, 5000)
    await tb.wait_done()
    np.testing.assert_array_equal(got, tb.reference(a, b, None, False, rq))
    assert await tb.read("ERROR") == regmap.field_mask("ERROR", "Q_LAST")
    await tb.write("ERROR", regmap.field_mask("ERROR", "Q_LAST"))
    # cycles at full rate: the model plus the stage's delay, with and without requant
    for relu, with_q in ((True, False), (False, True), (True, True)):
        m, n, k = 2 * R + 1, 2 * C, 4 * (R + C)
        a, b = tb.rand_matrix((m, k)), tb.rand_matrix((k, n))
        rq = rand_requant(tb.rng, tb.reference(a, b), 1) if with_q else None
        cycles = await tb.run_job(a, b, tb.rand_bias(n), relu=relu, requant=rq)
        assert cycles == regmap.expected_cycles(m, n, k, R, C, out_stage=True), cycles
        assert await tb.read("STALL_IN") == 0
    assert await tb.read("ERROR") == 0


@cocotb.test()
async def test_coverage_report(dut):
    """Report functional coverage of everything this run sampled (runs last)."""
    check_coverage(dut)
