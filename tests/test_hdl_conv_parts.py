"""The conv core's small parts in Amaranth's own simulator: the depthwise mode's lane
delay line and the weight buffer."""

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth.sim import Simulator  # noqa: E402

from lepton_accel.hdl.lane_skew import LaneSkew  # noqa: E402
from lepton_accel.hdl.weight_buffer import WeightBuffer  # noqa: E402


def _sim(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("lanes,base", [(2, 0), (3, 1), (4, 5)])
def test_lane_skew_delays_lane_q_by_base_plus_q(lanes, base):
    rng = np.random.default_rng()
    width = 8
    dut = LaneSkew(lanes, width, base)
    words = rng.integers(0, 256, (40, lanes))
    seen = []

    async def bench(ctx):
        for t in range(len(words)):
            ctx.set(dut.i, sum(int(v) << (q * width) for q, v in enumerate(words[t])))
            o = ctx.get(dut.o)     # combinational view of this cycle
            seen.append([(o >> (q * width)) & 0xFF for q in range(lanes)])
            await ctx.tick()

    _sim(dut, bench)
    for t in range(base + lanes, len(words)):
        for q in range(lanes):
            assert seen[t][q] == words[t - base - q][q], (t, q)


def _buffer_run(depth, tiles, enable=True):
    """Drive a WeightBuffer through pixel tiles of one group: ``tiles`` is a list of step
    counts per pixel tile (the group ends after the last). Each step's stream beat is
    fresh random data; returns (beats in per step, b_out a cycle later, replay per step)."""
    rng = np.random.default_rng()
    width = 16
    dut = WeightBuffer(depth, width)
    log = []

    async def bench(ctx):
        ctx.set(dut.enable, int(enable))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for ti, steps in enumerate(tiles):
            for k in range(steps):
                beat = int(rng.integers(0, 2 ** width))
                ctx.set(dut.b_in, beat)
                ctx.set(dut.fire, 1)
                last = k == steps - 1
                ctx.set(dut.tile_end, int(last))
                ctx.set(dut.group_end, int(last and ti == len(tiles) - 1))
                replay = ctx.get(dut.replay)
                await ctx.tick()
                ctx.set(dut.fire, 0)
                ctx.set(dut.tile_end, 0)
                ctx.set(dut.group_end, 0)
                log.append((ti, k, beat, ctx.get(dut.b_out), replay))
            await ctx.tick()          # a cycle without a step between tiles

    _sim(dut, bench)
    return log


def test_weight_buffer_replays_the_first_pixel_tile():
    log = _buffer_run(16, [12, 12, 12])
    first = {k: beat for ti, k, beat, _, _ in log if ti == 0}
    for ti, k, beat, out, replay in log:
        assert replay == (ti > 0)
        assert out == (beat if ti == 0 else first[k]), (ti, k)


def test_weight_buffer_streams_a_group_too_large_and_when_disabled():
    for log in (_buffer_run(8, [9, 9, 9]), _buffer_run(16, [4, 4], enable=False)):
        for ti, k, beat, out, replay in log:
            assert not replay and out == beat, (ti, k)
    # exactly full: held
    log = _buffer_run(8, [8, 8])
    assert all(r == (ti > 0) for ti, _, _, _, r in log)
