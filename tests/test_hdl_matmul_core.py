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
    """Run jobs back to back through MatmulCore; return (results, cycles per job)."""
    dut = MatmulCore(rows, cols, dtype, pair_macs)
    results, cycles = [], []

    async def bench(ctx):
        for a, b, bias in jobs:
            m, k = a.shape
            n = b.shape[1]
            frames = regmap.pack_job(a, b, bias, rows=rows, cols=cols, dtype=dtype)
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
                      "bias": beats(frames.get("bias", []), w["bias"] // 8)}
            ctx.set(dut.m, m)
            ctx.set(dut.n, n)
            ctx.set(dut.k, k)
            ctx.set(dut.bias_en, bias is not None)
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
