"""The matmul core in Amaranth's own simulator: fast, no external simulator needed."""

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth.sim import Simulator  # noqa: E402

from lepton_accel.hdl import matmul_regmap as regmap  # noqa: E402
from lepton_accel.hdl.matmul_core import MatmulCore  # noqa: E402
from lepton_accel.reference import matmul_ref  # noqa: E402


def _run_jobs(rows, cols, dtype, jobs, rng, pause_in=0.0, pause_out=0.0, max_cycles=200_000,
              pair_macs=None):
    """Run jobs back to back through MatmulCore; return (results, cycles per job).
    A job is (a, b, bias) or (a, b, bias, relu, requant) with requant None or
    (multiplier, shift) per output channel (the output stage)."""
    dut = MatmulCore(rows, cols, dtype, pair_macs)
    results, cycles = [], []

    async def bench(ctx):
        for job in jobs:
            a, b, bias = job[:3]
            relu, requant = job[3:] if len(job) > 3 else (False, None)
            m, k = a.shape
            n = b.shape[1]
            frames = regmap.pack_job(a, b, bias, rows=rows, cols=cols, dtype=dtype,
                                     requant=requant)
            def beats(frame_list, beat_bytes):
                out = []
                for f in frame_list:
                    nb = len(f) // beat_bytes
                    for i in range(nb):
                        word = int.from_bytes(f[i * beat_bytes:(i + 1) * beat_bytes], "little")
                        out.append((word, int(i == nb - 1)))
                return out

            w = regmap.stream_widths(rows, cols, dtype)
            queues = {"a": beats(frames["a"], w["a"] // 8),
                      "b": beats(frames["b"], w["b"] // 8),
                      "bias": beats(frames.get("bias", []), w["bias"] // 8),
                      "q": beats(frames.get("q", []), w["q"] // 8)}
            ctx.set(dut.m, m)
            ctx.set(dut.n, n)
            ctx.set(dut.k, k)
            ctx.set(dut.bias_en, bias is not None)
            ctx.set(dut.relu_en, relu)
            ctx.set(dut.rq_en, requant is not None)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            out_frames, cur = [], bytearray()
            for _ in range(max_cycles):
                for name in queues:
                    port = getattr(dut, name)
                    if queues[name] and rng.random() >= pause_in:
                        word, last = queues[name][0]
                        ctx.set(port.payload.data, word)
                        ctx.set(port.payload.last, last)
                        ctx.set(port.valid, 1)
                    else:
                        ctx.set(port.valid, 0)
                ctx.set(dut.c.ready, int(rng.random() >= pause_out))
                took = {name: ctx.get(getattr(dut, name).valid) and ctx.get(getattr(dut, name).ready)
                        for name in queues}
                c_fire = ctx.get(dut.c.valid) and ctx.get(dut.c.ready)
                if c_fire:
                    cur += ctx.get(dut.c.payload.data).to_bytes(w["c"] // 8, "little")
                    if ctx.get(dut.c.payload.last):
                        out_frames.append(bytes(cur))
                        cur = bytearray()
                assert not ctx.get(dut.err_a_last) and not ctx.get(dut.err_b_last)
                assert not ctx.get(dut.err_bias_last) and not ctx.get(dut.err_q_last)
                await ctx.tick()
                for name, t in took.items():
                    if t:
                        queues[name].pop(0)
                if not ctx.get(dut.busy):
                    break
            else:
                raise AssertionError("job did not finish")
            assert not any(queues.values()), "core finished with input left over"
            cycles.append(ctx.get(dut.cycles))
            results.append(regmap.unpack_c(out_frames, m, n, rows=rows, cols=cols))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results, cycles


def _rand(rng, shape, dtype):
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, size=shape, dtype=np.int64)
    x.flat[rng.integers(x.size)] = info.min  # keep an extreme and never all-zero
    return x


@pytest.mark.parametrize("rows,cols,dtype,pair_macs", [
    (2, 3, "int8", None), (3, 4, "int8", False), (3, 2, "int16", None)])
def test_core_random_jobs_back_to_back(rows, cols, dtype, pair_macs):
    rng = np.random.default_rng()
    jobs = []
    for m, n, k in [(1, 1, 1), (5, 4, 3), (3, 7, 1), (rows, cols, 2 * (rows + cols))]:
        a = _rand(rng, (m, k), dtype)
        b = _rand(rng, (k, n), dtype)
        bias = rng.integers(-2**31, 2**31, size=n) if rng.random() < 0.5 else None
        jobs.append((a, b, bias))
    got, _ = _run_jobs(rows, cols, dtype, jobs, rng, pause_in=0.3, pause_out=0.3,
                       pair_macs=pair_macs)
    for (a, b, bias), c in zip(jobs, got):
        lane = np.int8 if dtype == "int8" else np.int16
        np.testing.assert_array_equal(c, matmul_ref(a.astype(lane), b.astype(lane), bias))


@pytest.mark.parametrize("pair_macs", [True, False])
def test_core_cycle_model_at_full_rate(pair_macs):
    # the paired array's sums are ready earlier; the drain keeps the one cycle model
    rng = np.random.default_rng()
    rows, cols = 3, 5
    shapes = [(7, 5, 11), (3, 2, 1), (6, 4, 9)]
    jobs = [(_rand(rng, (m, k), "int8"), _rand(rng, (k, n), "int8"), None) for m, n, k in shapes]
    got, cycles = _run_jobs(rows, cols, "int8", jobs, rng, pair_macs=pair_macs)
    for (a, b, _), c, cyc, (m, n, k) in zip(jobs, got, cycles, shapes):
        np.testing.assert_array_equal(c, matmul_ref(a.astype(np.int8), b.astype(np.int8)))
        assert cyc == regmap.expected_cycles(m, n, k, rows, cols), (m, n, k)


@pytest.mark.parametrize("pair_macs", [True, False])
def test_core_extreme_int8_products(pair_macs):
    # the paired cell's borrow between its two products: every sign and extreme pairing
    rng = np.random.default_rng()
    vals = np.array([-128, 127, -1, 0, 1, -127, 64])
    a = rng.choice(vals, size=(4, 97))
    b = rng.choice(vals, size=(97, 6))
    a[0, :], b[:, 0], b[:, 1] = -128, -128, 127     # extreme sums in both columns of a pair
    got, _ = _run_jobs(4, 6, "int8", [(a, b, None)], rng, pair_macs=pair_macs)
    np.testing.assert_array_equal(got[0], matmul_ref(a.astype(np.int8), b.astype(np.int8)))


def _out_stage_ref(a, b, bias, relu, requant, lane):
    from lepton_accel.numerics import requantize
    c = matmul_ref(a.astype(lane), b.astype(lane), bias)
    if requant is not None:
        return requantize(c, *requant, axis=1, relu=relu).astype(np.int32)
    return np.maximum(c, 0) if relu else c


def _rand_requant(rng, n):
    mult = rng.integers(-2**31, 2**31, size=n)
    mult[: n // 2] = rng.integers(2**29, 2**31, size=n // 2)     # quantize_multiplier's range
    shift = rng.integers(0, 64, size=n)
    shift[: n // 2] = rng.integers(28, 48, size=n // 2)          # outputs inside int8, mostly
    return mult, shift


@pytest.mark.parametrize("rows,cols,dtype", [(2, 3, "int8"), (3, 2, "int16")])
def test_core_output_stage_random(rows, cols, dtype):
    """ReLU / requantization on the core, back to back with plain jobs, under random
    pauses: bit-exact with numerics.requantize."""
    rng = np.random.default_rng()
    jobs = []
    for i, (m, n, k) in enumerate([(5, 4, 3), (1, 1, 1), (4, 7, 9), (3, 5, 2), (6, 3, 4)]):
        a = _rand(rng, (m, k), dtype)
        b = _rand(rng, (k, n), dtype)
        bias = rng.integers(-2**20, 2**20, size=n) if i % 2 else None
        relu = i in (1, 2, 4)
        requant = _rand_requant(rng, n) if i != 4 else None
        jobs.append((a, b, bias, relu, requant))
    jobs.insert(2, (_rand(rng, (3, 2), dtype), _rand(rng, (2, 3), dtype), None))
    got, _ = _run_jobs(rows, cols, dtype, jobs, rng, pause_in=0.3, pause_out=0.3)
    lane = np.int8 if dtype == "int8" else np.int16
    for job, c in zip(jobs, got):
        a, b, bias = job[:3]
        relu, requant = job[3:] if len(job) > 3 else (False, None)
        np.testing.assert_array_equal(c, _out_stage_ref(a, b, bias, relu, requant, lane))


def test_core_output_stage_edges_and_cycles():
    """Saturation both ways, rounding ties, shift 0 and 63, negative sums and
    multipliers, ReLU on and off; CYCLES = the model with the stage's delay."""
    rng = np.random.default_rng()
    rows, cols = 3, 4
    # rows of sums: a = [[v]], b = [[1, 1, 1, 1]] gives C[i, j] = v_i
    vals = np.array([[-128], [127], [0], [-1], [3], [5], [-3]])
    b = np.ones((1, cols), np.int64)
    cases = [
        (np.array([1, 1, 1, 1]), np.array([1, 1, 1, 1])),                # ties: x/2
        (np.array([2**31 - 1, -2**31, 2**30, -1]), np.array([0, 0, 63, 63])),  # saturate, 63
        (np.array([3, -5, 1, 2**31 - 1]), np.array([2, 1, 0, 62])),
    ]
    jobs, shapes = [], []
    for mult, shift in cases:
        for relu in (False, True):
            bias = np.array([0, 1, -1, 2**31 - 1])
            jobs.append((vals, b, bias, relu, (mult, shift)))
            shapes.append((vals.shape[0], cols, 1))
    # the int32 edge: the biggest sum times the biggest multiplier at shift 0 and 63
    big_a = np.full((2, 300), 127, np.int64)
    big_b = np.full((300, cols), -128, np.int64)
    big_a[1] = -128
    jobs.append((big_a, big_b, None, False, (np.full(cols, -2**31), np.array([0, 63, 62, 31]))))
    shapes.append((2, cols, 300))
    jobs.append((big_a, big_b, None, True, None))                      # ReLU alone, int32
    shapes.append((2, cols, 300))
    got, cycles = _run_jobs(rows, cols, "int8", jobs, rng)
    for job, c, cyc, (m, n, k) in zip(jobs, got, cycles, shapes):
        a, b_, bias, relu, requant = job
        want = _out_stage_ref(a, b_, bias, relu, requant, np.int8)
        np.testing.assert_array_equal(c, want, err_msg=str((relu, requant)))
        assert cyc == regmap.expected_cycles(m, n, k, rows, cols, out_stage=True)
    # ties round towards +inf: 3/2 -> 2, -3/2 -> -1, -1/2 -> 0, 5/2 -> 3
    np.testing.assert_array_equal(got[0][3:, 0], [0, 2, 3, -1])
    # saturation: 127 * (2**31 - 1) -> 127, -128 * (2**31 - 1) -> -128
    np.testing.assert_array_equal(got[2][:2, 0], [-128, 127])
