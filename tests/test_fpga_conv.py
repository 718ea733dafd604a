"""conv2d on the fpga backend: the Verilator model of the conv2d core (4x4 int8, 4 image
lanes, 64-word image memory = 256 elements, so row bands are exercised on small images).
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.sim

from lepton_accel.fpga.toolchain import toolchain_missing  # noqa: E402

_missing = toolchain_missing()
if _missing:
    pytest.skip(f"fpga backend unavailable: {_missing}", allow_module_level=True)

import lepton_accel as la  # noqa: E402
from lepton_accel import fpga  # noqa: E402
from lepton_accel.api import execute  # noqa: E402
from lepton_accel.fpga.conv_driver import ConvUnsupported, job_of_spec, row_bands  # noqa: E402
from lepton_accel.hdl import conv_regmap as cr  # noqa: E402
from lepton_accel.perf import MODEL  # noqa: E402
from lepton_accel.perf.model import fpga_cycle_key  # noqa: E402
from lepton_accel.reference import conv2d_ref  # noqa: E402
from test_fpga_support import DEPTH, SIZE, ints, small_core  # noqa: E402,F401

CAPACITY = 4 * DEPTH


def conv_driver(dtype="int8"):
    return fpga.driver_for(fpga.config_for("conv2d", dtype))


def run_fpga(x, w, bias=None, **kw):
    """conv2d on the fpga backend through the API's execute: (output, RunStats)."""
    spec = la.conv2d_spec(x.shape, x.dtype.name, w.shape, w.dtype.name,
                          bias_shape=None if bias is None else bias.shape,
                          bias_dtype=None if bias is None else "int32", **kw)
    return execute(spec, [x, w] + ([bias] if bias is not None else []), "fpga")


def check(x, w, bias=None, route="conv2d", **kw):
    """fpga conv2d == the oracle == the cpu backend, on the core ``route`` names; returns
    (output, the run's route)."""
    out = la.conv2d(x, w, bias=bias, backend="fpga", **kw)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, conv2d_ref(x, w, bias, **kw))
    np.testing.assert_array_equal(out, la.conv2d(x, w, bias=bias, backend="cpu", **kw))
    again, stats = run_fpga(x, w, bias, **kw)
    np.testing.assert_array_equal(again, out)
    assert stats.extra["route"]["core"] == route, stats.extra
    return out, stats.extra["route"]


CASES = [
    # (x NCHW shape, w shape, kwargs)
    ((1, 8, 5, 5), (6, 8, 1, 1), {}),                                   # 1x1
    ((1, 3, 6, 7), (5, 3, 3, 3), dict(padding=1)),                      # 3x3 pad 1
    ((1, 2, 11, 9), (3, 2, 7, 7), dict(stride=2, padding=3)),           # 7x7 stride 2
    ((1, 3, 9, 8), (4, 3, 3, 3), dict(dilation=2, padding=2)),          # dilation
    ((1, 6, 7, 5), (6, 1, 3, 3), dict(groups=6, padding=1)),            # depthwise
    ((1, 6, 5, 6), (12, 1, 3, 3), dict(groups=6, stride=2)),            # depthwise x2
    ((2, 6, 5, 7), (4, 3, 3, 2), dict(groups=2, stride=(1, 2), padding=(1, 0))),  # groups
    ((3, 5, 7, 3), (7, 5, 2, 3), dict(dilation=(2, 1), padding=(1, 2))),  # odd, batch 3
]


@pytest.mark.parametrize("xs,ws,kw", CASES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_bit_exact(rng, xs, ws, kw, layout):
    x, w = ints(rng, xs), ints(rng, ws)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    check(x, w, layout=layout, **kw)


def test_extremes_bias_wrap_relu(rng):
    x = np.full((1, 4, 5, 5), -128, np.int8)
    w = np.full((5, 4, 3, 3), -128, np.int8)
    w[0] = 127
    bias = np.full(5, 2**31 - 1000, np.int64).astype(np.int32)
    out, _ = check(x, w, bias, padding=1)
    assert (out < 0).any()                    # the bias add wrapped
    out, _ = check(x, w, bias, padding=1, activation="relu")
    assert (out == 0).any() and (out > 0).any()
    b2 = rng.integers(-2**31, 2**31, 5).astype(np.int32)
    check(ints(rng, (2, 4, 6, 5)), ints(rng, (5, 4, 3, 3)), b2, padding=1, activation="relu")


def test_row_bands(rng):
    # 3 x 13 x 11 = 429 elements > 256: bands of output rows (pad 1 top/bottom, stride 1)
    x, w = ints(rng, (2, 3, 13, 11)), ints(rng, (5, 3, 3, 3))
    bias = rng.integers(-2**20, 2**20, 5).astype(np.int32)
    _, route = check(x, w, bias, padding=1, activation="relu")
    assert route["bands"] > 1 and route["reason"] == ""
    drv = conv_driver()
    assert drv.capacity == CAPACITY and drv.last.bands == route["bands"]
    assert all(j.h * j.w * j.c <= CAPACITY for j, _ in drv.last.job_cycles)
    # stride 2, dilation 2, NHWC, and bands of a grouped conv
    xn = np.ascontiguousarray(ints(rng, (1, 4, 17, 9)).transpose(0, 2, 3, 1))
    _, route = check(xn, ints(rng, (6, 2, 3, 3)), layout="NHWC", stride=2, dilation=2,
                     padding=2, groups=2)
    assert route["bands"] > 1


def test_band_split_covers_every_row():
    job = cr.ConvJob.make((1, 40, 6, 4), (3, 4, 5, 5), stride=3, padding=2, dilation=1)
    bands = list(row_bands(job, 150))
    assert [b[0] for b in bands] == sorted(b[0] for b in bands)
    assert sum(b[2].oh for b in bands) == job.oh
    assert bands[0][2].pad[0][0] == 2 and all(b[2].pad[0][0] == 0 for b in bands[1:])
    with pytest.raises(ConvUnsupported, match="image memory"):
        list(row_bands(cr.ConvJob.make((1, 8, 30, 4), (3, 4, 3, 3)), 100))


def test_fallback_to_matmul_core_when_a_row_does_not_fit(rng):
    # one output row needs 3 input rows of 40 x 4 = 480 elements > 256
    x, w = ints(rng, (1, 4, 5, 40)), ints(rng, (3, 4, 3, 3))
    bias = rng.integers(-2**31, 2**31, 3).astype(np.int32)
    _, route = check(x, w, bias, route="matmul", padding=1, activation="relu")
    assert "image memory" in route["reason"] and route["bands"] == 0
    # the matmul core's cycles are recorded per GEMM, not as the whole convolution
    _, stats = run_fpga(x, w, bias, padding=1, activation="relu")
    assert stats.extra["whole_op"] is False and stats.cycles > 0


def test_cycles_recorded_equal_model(rng):
    for xs, ws, kw in [((2, 5, 6, 7), (6, 5, 3, 3), dict(padding=1)),
                       ((1, 4, 7, 7), (4, 1, 3, 3), dict(groups=4, stride=2))]:
        x, w = ints(rng, xs), ints(rng, ws)
        check(x, w, **kw)
        spec = la.conv2d_spec(xs, "int8", ws, "int8", **kw)
        job = job_of_spec(spec)
        drv = conv_driver()
        assert drv.last.jobs == 1
        # the depthwise layer runs in the core's depthwise mode: its job's model
        assert drv.last.depthwise_mode == (job.groups > 1)
        expect = cr.expected_cycles(drv.depthwise_job(job) or job, *SIZE, drv.x_lanes)
        cyc = MODEL._fpga_cycles[(*SIZE, "int8", fpga_cycle_key(spec))]
        assert cyc == drv.last.cycles == expect
        from lepton_accel.backends import REGISTRY
        assert REGISTRY["fpga"].core_cycles(spec) == pytest.approx(cyc)
    # banded: the recorded cycles are the sum of the band jobs' CYCLES, each as modelled
    x, w = ints(rng, (1, 3, 13, 11)), ints(rng, (5, 3, 3, 3))
    check(x, w, padding=1)
    drv = conv_driver()
    assert drv.last.jobs > 1
    assert [c for _, c in drv.last.job_cycles] == \
        [cr.expected_cycles(j, *SIZE, drv.x_lanes) for j, _ in drv.last.job_cycles]


def test_auto_dispatch_prefers_cpu():
    from lepton_accel.backends import REGISTRY

    spec = la.conv2d_spec((1, 64, 28, 28), "int8", (64, 64, 3, 3), "int8", padding=1)
    assert la.choose_backend(spec).name == "cpu"
    assert REGISTRY["fpga"].estimate(spec) > REGISTRY["cpu"].estimate(spec)


def test_int16_on_the_int16_core(rng):
    x, w = ints(rng, (1, 3, 5, 6), "int16"), ints(rng, (4, 3, 3, 3), "int16")
    bias = rng.integers(-2**31, 2**31, 4).astype(np.int32)
    out = fpga.conv2d(x, w, bias=bias, padding=1, activation="relu")
    np.testing.assert_array_equal(out, conv2d_ref(x, w, bias, padding=1, activation="relu"))
    assert conv_driver("int16").dtype == "int16"
    # and through the API (int16 conv2d is an API op too)
    np.testing.assert_array_equal(
        la.conv2d(x, w, bias=bias, padding=1, activation="relu", backend="fpga"), out)


def test_simulator_timeout_raises():
    drv = conv_driver()
    dev = drv.device
    job = cr.ConvJob.make((1, 4, 4, 4), (4, 4, 3, 3), padding=1)
    for name, value in cr.register_values(job).items():
        dev.write(name, value)
    old = dev.idle_limit
    dev.idle_limit = 200
    try:
        # the image is sent, the weights never come: the harness gives up, no hang
        x = cr.pack_x(np.ones((1, 4, 4, 4), np.int8), dtype="int8", x_lanes=drv.x_lanes)[0]
        with pytest.raises(fpga.DeviceTimeout, match="no stream handshake"):
            dev.stream({"x": fpga.InStream(x, len(x) // drv.x_lanes)}, 16,
                       ctrl=cr.field_mask("CTRL", "START"))
    finally:
        dev.idle_limit = old
        dev.reset()
    x, w = np.arange(64, dtype=np.int8).reshape(1, 4, 4, 4), np.ones((4, 4, 3, 3), np.int8)
    check(x, w, padding=1)   # the device still works after the reset


@pytest.mark.parametrize("xs,ws", [((1, 3, 5, 5), (0, 3, 3, 3)), ((1, 0, 5, 5), (2, 0, 3, 3)),
                                   ((0, 3, 5, 5), (2, 3, 3, 3)), ((2, 0, 4, 6), (0, 0, 3, 3))])
@pytest.mark.parametrize("with_bias", [False, True])
def test_zero_channels_like_the_cpu_and_no_poison(rng, xs, ws, with_bias):
    """OC = 0, C = 0 or N = 0: the CPU's answer without touching the core, and the next
    call is not affected."""
    x, w = ints(rng, xs), ints(rng, ws)
    bias = rng.integers(-2**31, 2**31, ws[0]).astype(np.int32) if with_bias else None
    dev = conv_driver().device
    before = dev.clock_cycles
    for act in (None, "relu"):
        out = la.conv2d(x, w, bias=bias, padding=1, activation=act, backend="fpga")
        expect = la.conv2d(x, w, bias=bias, padding=1, activation=act, backend="cpu")
        assert out.shape == expect.shape and out.dtype == np.int32
        np.testing.assert_array_equal(out, expect)
    assert dev.clock_cycles == before
    check(ints(rng, (1, 3, 5, 5)), ints(rng, (2, 3, 3, 3)))


def test_a_failed_job_does_not_poison_the_next(rng):
    """A conv job the device gives up on resets the core: the next job is exact."""
    dev = fpga.VerilatorDevice(fpga.config_for("conv2d"), pause_in=0.95, idle_limit=2,
                               seed=int(rng.integers(1, 2**31)), quiet=True)
    drv = fpga.ConvDriver(dev)
    x, w = ints(rng, (1, 5, 6, 7)), ints(rng, (6, 5, 3, 3))
    spec = la.conv2d_spec(x.shape, "int8", w.shape, "int8", padding=1)
    with pytest.raises(fpga.DeviceError):
        drv.run(spec, x, w)
    dev.pause_in, dev.idle_limit = 0.0, 10_000
    for _ in range(2):
        np.testing.assert_array_equal(drv.run(spec, x, w).out, conv2d_ref(x, w, padding=1))
    dev.close()


#: depthwise layers (x NCHW, multiplier, kwargs): channel counts below, at and above the
#: core's channels per tile, primes, one channel, stride, dilation, padding, batch
DEPTHWISE = [
    ((1, 1, 5, 6), 1, dict(padding=1)),
    ((1, 2, 6, 5), 1, dict(padding=1)),
    ((2, 5, 6, 7), 1, dict(padding=1)),
    ((1, 7, 7, 6), 1, dict(stride=2, padding=1)),
    ((1, 8, 6, 6), 2, dict(dilation=2, padding=2)),
    ((1, 3, 9, 7), 3, dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2))),
    ((1, 13, 5, 5), 1, dict(padding=2)),
]


@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("xs,mult,kw", DEPTHWISE)
def test_depthwise_mode_bit_exact(rng, dtype, xs, mult, kw):
    """Depthwise layers run in the core's depthwise mode, bit-exact with the oracle, with
    CYCLES as modelled for the depthwise job; an older core (no DW_CONFIG) gives the same
    answer on the normal path."""
    c = xs[1]
    x, w = ints(rng, xs, dtype), ints(rng, (c * mult, 1, 3, 3), dtype)
    bias = rng.integers(-2**31, 2**31, c * mult).astype(np.int32)
    kw = dict(kw, groups=c)
    expect = conv2d_ref(x, w, bias, **kw)
    drv = conv_driver(dtype)
    out, route = check(x, w, bias, **kw)
    np.testing.assert_array_equal(out, expect)
    assert route["depthwise"] == drv.last.depthwise_mode
    job = job_of_spec(la.conv2d_spec(xs, dtype, w.shape, dtype, bias_shape=bias.shape,
                                     bias_dtype="int32", **kw))
    dwj = drv.depthwise_job(job)
    assert drv.last.depthwise_mode == (dwj is not None)
    if c > 1 and mult == 1:   # (with a larger multiplier the model may prefer the normal mode)
        assert dwj is not None and dwj.c % dwj.dw[0] == 0
    for j, cyc in drv.last.job_cycles:
        assert bool(j.dw) == drv.last.depthwise_mode
        assert cyc == cr.expected_cycles(j, *SIZE, drv.x_lanes)
    # the depthwise mode forced, whatever the model prefers (NHWC, padded channels)
    forced = cr.depthwise_job(job, *drv.dw)
    xp, wp, bp = cr.depthwise_operands(x.transpose(0, 2, 3, 1), w, bias, forced)
    got = drv.conv_nhwc(xp, wp, bp, forced)
    np.testing.assert_array_equal(got[..., :c * mult], expect.transpose(0, 2, 3, 1))
    assert all(cyc == cr.expected_cycles(j, *SIZE, drv.x_lanes) and j.dw
               for j, cyc in drv.last.job_cycles)
    saved = drv.dw
    drv.dw = None   # as an interface 1.0 core answers
    try:
        np.testing.assert_array_equal(la.conv2d(x, w, bias=bias, backend="fpga", **kw), expect)
        assert not drv.last.depthwise_mode
    finally:
        drv.dw = saved


def test_depthwise_mode_refuses_bad_jobs():
    """MODE.DW with CG != 1, G != C or C not a multiple of CT is refused (BAD_DIM)."""
    drv = conv_driver()
    dev = drv.device
    ct, _ = drv.dw
    bad = cr.field_mask("ERROR", "BAD_DIM")
    good = cr.depthwise_job(cr.ConvJob.make((1, 3, 3, 2 * ct), (2 * ct, 1, 3, 3),
                                            groups=2 * ct), *drv.dw)
    for regs in ({"CG": 2}, {"G": ct}, {"C": 2 * ct + 1, "G": 2 * ct + 1}):
        for name, value in {**cr.register_values(good), **regs}.items():
            dev.write(name, value)
        dev.write("CTRL", cr.field_mask("CTRL", "START"))
        assert dev.read("ERROR") == bad, regs
        assert not cr.field_value("STATUS", "BUSY", dev.read("STATUS"))
        dev.write("ERROR", bad)
    dev.write("MODE", 0)


@pytest.mark.parametrize("xs,ws,kw", [
    ((2, 4, 9, 7), (6, 2, 3, 3), dict(groups=2, padding=1)),     # held: 18 x 2 beats
    ((1, 8, 4, 7), (5, 8, 3, 3), dict(padding=1)),               # 72 beats > 64: streamed
    ((1, 6, 5, 7), (6, 1, 3, 3), dict(groups=6, padding=1)),     # depthwise mode, held
])
def test_weight_reuse_same_result_and_cycles(rng, xs, ws, kw):
    """MODE.WREUSE (weights once per group and image, replayed from the core's buffer)
    gives the same output and CYCLES as streaming them for every pixel tile."""
    x, w = ints(rng, xs), ints(rng, ws)
    bias = rng.integers(-2**31, 2**31, ws[0]).astype(np.int32)
    drv = conv_driver()
    assert drv.wbuf == DEPTH
    runs = {}
    for keep in (True, False):
        drv.keep_weights = keep
        try:
            out, _ = check(x, w, bias, **kw)
        finally:
            drv.keep_weights = True
        runs[keep] = (out, [(j, c) for j, c in drv.last.job_cycles])
    np.testing.assert_array_equal(runs[True][0], runs[False][0])
    assert [c for _, c in runs[True][1]] == [c for _, c in runs[False][1]]
    (job, _), = runs[True][1]
    assert job.wreuse == DEPTH and not runs[False][1][0][0].wreuse
    sent = cr.b_tiles(job, *SIZE)
    held = cr.weights_held(job, SIZE[1])
    assert held == (cr.group_weight_beats(job, SIZE[1]) <= DEPTH)
    assert (sum(sent) < len(sent)) == held
    assert held == (ws[1] * 9 <= DEPTH)


@pytest.mark.parametrize("c,mult", [(5, 1), (3, 2)])
def test_depthwise_mode_with_the_output_stage(rng, c, mult):
    """Depthwise mode with requantization and ReLU on the core's output stage: the padded
    channels get zero parameters and are dropped; bit-exact with numerics.requantize."""
    from lepton_accel import numerics

    x, w = ints(rng, (1, c, 6, 5)), ints(rng, (c * mult, 1, 3, 3))
    bias = rng.integers(-2**12, 2**12, c * mult).astype(np.int32)
    kw = dict(groups=c, padding=1)
    acc = la.conv2d(x, w, bias=bias, backend="cpu", **kw)
    m = rng.integers(2**30, 2**31, c * mult)
    s = rng.integers(8, 14, c * mult)
    drv = conv_driver()
    for act in (None, "relu"):
        out = la.conv2d(x, w, bias=bias, activation=act, requant=(m, s), backend="fpga", **kw)
        assert out.dtype == np.int8
        assert drv.last.depthwise_mode and drv.out_stage
        np.testing.assert_array_equal(out, numerics.requantize(acc, m, s, axis=1,
                                                               relu=act == "relu"))
