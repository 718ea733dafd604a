"""The fpga backend on the Verilator model of the matmul core (small arrays, quick builds).

Models are built once per configuration into the user's cache (LEPTON_ACCEL_CACHE);
the cache tests build a 2x2 core into a temporary cache of their own.
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
from lepton_accel.fpga import build  # noqa: E402
from lepton_accel.hdl import matmul_regmap as regmap  # noqa: E402
from lepton_accel.perf import MODEL  # noqa: E402
from lepton_accel.reference import matmul_ref  # noqa: E402
from test_fpga_support import SIZE, ints, small_core  # noqa: E402,F401


def ref(a, b, bias=None, relu=False):
    return matmul_ref(a, b, bias, "relu" if relu else None)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (4, 4, 4), (7, 13, 5), (13, 1, 11),
                                   (2, 31, 3), (17, 9, 23), (8, 64, 12)])
def test_matmul_int8_bit_exact(rng, m, k, n):
    a, b = ints(rng, (m, k)), ints(rng, (k, n))
    out = la.matmul(a, b, backend="fpga")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ref(a, b))


def test_extremes_and_wrap(rng):
    # -128 * -128 products, mixed signs, and a bias that wraps the int32 sum
    a = np.full((5, 6), -128, np.int8)
    b = np.full((6, 7), -128, np.int8)
    b[0, :3] = 127
    bias = np.full(7, 2**31 - 1000, np.int64).astype(np.int32)
    out = la.matmul(a, b, bias=bias, backend="fpga")
    np.testing.assert_array_equal(out, ref(a, b, bias))
    assert (out < 0).any()  # the bias add wrapped


def test_bias_relu(rng):
    a, b = ints(rng, (9, 10)), ints(rng, (10, 6))
    bias = rng.integers(-2**31, 2**31, 6).astype(np.int32)
    out = la.matmul(a, b, bias=bias, activation="relu", backend="fpga")
    np.testing.assert_array_equal(out, ref(a, b, bias, relu=True))
    np.testing.assert_array_equal(out, la.matmul(a, b, bias=bias, activation="relu",
                                                 backend="cpu"))


def test_batched_and_vectors(rng):
    a, b = ints(rng, (3, 5, 7)), ints(rng, (7, 6))       # batch folded into M
    np.testing.assert_array_equal(la.matmul(a, b, backend="fpga"), ref(a, b))
    a2, b2 = ints(rng, (2, 1, 5, 7)), ints(rng, (3, 7, 2))  # broadcast batch, one job each
    np.testing.assert_array_equal(la.matmul(a2, b2, backend="fpga"), ref(a2, b2))
    v, w = ints(rng, (7,)), ints(rng, (7, 5))
    np.testing.assert_array_equal(la.matmul(v, w, backend="fpga"), ref(v, w))
    np.testing.assert_array_equal(la.matmul(w.T.copy(), v, backend="fpga"), ref(w.T, v))


def test_strided_operands(rng):
    base = ints(rng, (10, 24))
    a = base[:, ::2]                      # non-contiguous
    b = ints(rng, (6, 12)).T              # column-major
    np.testing.assert_array_equal(la.matmul(a, b[:, :5], backend="fpga"), ref(a, b[:, :5]))


def test_int16_native(rng):
    a, b = ints(rng, (9, 33), "int16"), ints(rng, (33, 7), "int16")
    a[0, :] = -32768
    b[:, 0] = -32768                      # products of 2**30 that wrap the int32 sum
    out = fpga.matmul(a, b)
    np.testing.assert_array_equal(out, ref(a, b))
    # the public API reaches the same core
    np.testing.assert_array_equal(la.matmul(a, b, backend="fpga"), ref(a, b))
    # int8 operands also run on the int16 core
    a8, b8 = ints(rng, (5, 6)), ints(rng, (6, 4))
    np.testing.assert_array_equal(fpga.matmul(a8, b8, config=fpga.config_for("matmul", "int16")),
                                  ref(a8, b8))


def test_k_split_and_small_jobs(rng):
    """Jobs split along K and M (tiny job size) give the same exact result."""
    drv = fpga.driver_for(fpga.config_for("matmul"))
    small = fpga.MatmulDriver(drv.device, max_job_bytes=256)
    a, b = ints(rng, (23, 19)), ints(rng, (19, 9))
    bias = rng.integers(-10**9, 10**9, 9).astype(np.int32)
    np.testing.assert_array_equal(small.gemm(a, b, bias), ref(a, b, bias))
    assert small.last.jobs > 1


def test_backpressure(rng):
    """Random pauses on every stream: same result, more cycles."""
    dev = fpga.VerilatorDevice(fpga.config_for("matmul"), pause_in=0.3, pause_out=0.4,
                               seed=int(rng.integers(1, 2**31)), quiet=True)
    drv = fpga.MatmulDriver(dev)
    a, b = ints(rng, (11, 14)), ints(rng, (14, 9))
    bias = rng.integers(-1000, 1000, 9).astype(np.int32)
    np.testing.assert_array_equal(drv.gemm(a, b, bias), ref(a, b, bias))
    assert drv.last.cycles > regmap.expected_cycles(11, 9, 14, *SIZE)
    dev.close()


def test_cycles_recorded_and_match_model(rng):
    a, b = ints(rng, (12, 20)), ints(rng, (20, 8))
    la.matmul(a, b, backend="fpga")
    cyc = MODEL._fpga_cycles[(SIZE[0], SIZE[1], "int8", (12, 8, 20))]
    # full rate (START written while the streams are presented): the core's counter
    # equals the protocol's formula
    assert cyc == regmap.expected_cycles(12, 8, 20, *SIZE)
    # the perf model now estimates an F2-clocked core of this size from those cycles
    assert "fpga" in {b["name"] for b in la.backends()}
    from lepton_accel.backends import REGISTRY
    spec = la.matmul_spec((12, 20), "int8", (20, 8), "int8")
    assert REGISTRY["fpga"].core_cycles(spec) == pytest.approx(cyc)


def test_auto_dispatch_prefers_cpu():
    spec = la.matmul_spec((256, 256), "int8", (256, 256), "int8")
    assert la.choose_backend(spec).name == "cpu"
    from lepton_accel.backends import REGISTRY
    assert REGISTRY["fpga"].estimate(spec) > REGISTRY["cpu"].estimate(spec)


def test_backend_can_be_switched_off():
    from lepton_accel.backends import REGISTRY

    fpga.enable(False)
    ok, why = REGISTRY["fpga"].available()
    assert not ok and "LEPTON_ACCEL_FPGA=off" in why
    with pytest.raises(la.BackendUnavailable, match="switched off"):
        la.matmul(np.ones((2, 2), np.int8), np.ones((2, 2), np.int8), backend="fpga")
    fpga.enable()
    assert REGISTRY["fpga"].available() == (True, "")


def test_float_needs_quantize(rng):
    a = rng.standard_normal((6, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="quantize"):
        fpga.matmul(a, b)
    with pytest.raises(TypeError, match="^a: .*quantize="):
        fpga.matmul(a, ints(rng, (5, 4)))
    with pytest.raises(la.UnsupportedOperation, match="quantize"):
        la.matmul(a, b, backend="fpga")
    with pytest.raises(ValueError, match="quantize"):
        fpga.matmul(a, b, quantize="per_row")


@pytest.mark.parametrize("mode", ["per_tensor", "per_channel"])
def test_quantized_float(rng, mode):
    a = rng.standard_normal((10, 16)).astype(np.float32)
    b = (rng.standard_normal((16, 7)) * np.linspace(0.01, 10, 7)).astype(np.float32)
    bias = rng.standard_normal(7).astype(np.float32)
    out = fpga.matmul(a, b, bias, quantize=mode, activation="relu")
    assert out.dtype == np.float32
    # exact for the quantized values
    qa, sa = fpga.quantize_symmetric(a, 127, None if mode == "per_tensor" else 0)
    qb, sb = fpga.quantize_symmetric(b, 127, None if mode == "per_tensor" else 1)
    expect = np.maximum(ref(qa.astype(np.int8), qb.astype(np.int8)).astype(np.float32)
                        * sa * sb + bias, 0)
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)
    # and close to the float product
    exact = np.maximum(a @ b + bias, 0)
    assert np.abs(out - exact).max() <= 0.05 * np.abs(exact).max() + 1e-3


def test_conv2d_on_the_conv_core(rng):
    x = ints(rng, (2, 6, 9, 8))
    w = ints(rng, (6, 3, 3, 3))
    bias = rng.integers(-5000, 5000, 6).astype(np.int32)
    for kw in (dict(stride=2, padding=1, groups=2), dict(dilation=2, padding="same", groups=2),
               dict(stride=(1, 2), padding=(2, 0), groups=2, activation="relu")):
        out = la.conv2d(x, w, bias=bias, backend="fpga", **kw)
        np.testing.assert_array_equal(out, la.conv2d(x, w, bias=bias, backend="cpu", **kw))
    xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    dw = ints(rng, (6, 1, 3, 3))                            # depthwise
    out = la.conv2d(xn, dw, layout="NHWC", groups=6, padding=1, backend="fpga")
    np.testing.assert_array_equal(out, la.conv2d(xn, dw, layout="NHWC", groups=6, padding=1,
                                                 backend="cpu"))


def test_device_registers_and_errors():
    drv = fpga.driver_for(fpga.config_for("matmul"))
    dev = drv.device
    assert dev.read("ID") == regmap.CORE_ID
    assert dev.read("CONFIG") == regmap.config_word(*SIZE, "int8")
    # a job whose streams never come: the harness gives up instead of hanging
    dev.write("M", 4)
    dev.write("N", 4)
    dev.write("K", 3)
    dev.write("CTRL", regmap.field_mask("CTRL", "START"))
    old = dev.idle_limit
    dev.idle_limit = 200
    try:
        with pytest.raises(fpga.DeviceTimeout):
            dev.stream({}, 4)
        with pytest.raises(ValueError, match="no input stream 'x'"):
            dev.stream({"x": fpga.InStream(b"\0" * 4)}, 4)
        with pytest.raises(ValueError, match="whole number"):
            dev.stream({"a": fpga.InStream(b"\0" * 3, 1)}, 4)
    finally:
        dev.idle_limit = old
        dev.reset()
    # the device still works after the reset
    a = np.arange(12, dtype=np.int8).reshape(3, 4)
    np.testing.assert_array_equal(drv.gemm(a, a.T.copy()), ref(a, a.T))


def test_cache_hit_and_rebuild_on_rtl_change(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("LEPTON_ACCEL_CACHE", str(tmp_path))
    cfg = fpga.MatmulConfig(2, 2, "int8")
    lib, built = build.build_model(cfg)
    assert built and lib.exists() and str(lib).startswith(str(tmp_path))
    assert "building the Verilator model" in capfd.readouterr().err
    lib2, built2 = build.build_model(cfg)
    assert (lib2, built2) == (lib, False)
    assert "building" not in capfd.readouterr().err
    real = build.generate_sources

    def changed(c):
        src = real(c)
        src[f"{c.top}.v"] += "\n// changed RTL\n"
        return src

    monkeypatch.setattr(build, "generate_sources", changed)
    # an RTL change changes the Python sources the index keys on
    real_key = build._input_key
    monkeypatch.setattr(build, "_input_key", lambda c: real_key(c)[::-1])
    lib3, built3 = build.build_model(cfg, quiet=True)
    assert built3 and lib3 != lib and lib3.exists()
    drv = fpga.MatmulDriver(fpga.VerilatorDevice(cfg, quiet=True))
    a = np.array([[1, -2, 3]], np.int8)
    np.testing.assert_array_equal(drv.gemm(a, a.T.copy()), [[14]])


ZERO_SIZE = [((3, 0), (0, 4), True), ((2, 3, 0), (2, 0, 4), True), ((0, 3, 4), (4, 5), True),
             ((0, 3, 4), (0, 4, 5), False), ((0, 3, 0), (0, 5), True), ((2, 0, 4), (4, 5), False),
             ((3, 4), (4, 0), False), ((0,), (0,), False), ((5, 0), (0,), False),
             ((0,), (0, 3), True)]


@pytest.mark.parametrize("a_shape,b_shape,with_bias", ZERO_SIZE)
def test_zero_size_matmul_like_the_cpu(rng, a_shape, b_shape, with_bias):
    """K = 0, an empty batch, M = 0 or N = 0: the CPU's answer, without touching the core."""
    a, b = ints(rng, a_shape), ints(rng, b_shape)
    n = b_shape[-1] if len(b_shape) >= 2 else None
    bias = rng.integers(-2**31, 2**31, n).astype(np.int32) if with_bias and n else None
    dev = fpga.driver_for(fpga.config_for("matmul")).device
    before = dev.clock_cycles
    out = la.matmul(a, b, bias=bias, activation="relu" if with_bias else None, backend="fpga")
    expect = la.matmul(a, b, bias=bias, activation="relu" if with_bias else None, backend="cpu")
    assert out.shape == expect.shape and out.dtype == np.int32
    np.testing.assert_array_equal(out, expect)
    assert dev.clock_cycles == before


def test_a_failed_job_does_not_poison_the_next(rng):
    """A job the device gives up on (no handshake for idle_limit cycles) resets the core:
    the next job on the same device is exact."""
    dev = fpga.VerilatorDevice(fpga.config_for("matmul"), pause_in=0.95, idle_limit=2,
                               seed=int(rng.integers(1, 2**31)), quiet=True)
    drv = fpga.MatmulDriver(dev)
    a, b = ints(rng, (13, 40)), ints(rng, (40, 11))
    with pytest.raises(fpga.DeviceError):
        drv.gemm(a, b)
    dev.pause_in, dev.idle_limit = 0.0, 10_000
    for _ in range(2):
        np.testing.assert_array_equal(drv.gemm(a, b), ref(a, b))
    dev.close()


def test_threads_sharing_a_driver_get_their_own_exact_results(rng):
    """Calls from several threads on the one driver of a configuration run one job at a
    time (the driver's lock), each with its own result and counters."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    cases = [(ints(rng, (m, k)), ints(rng, (k, n)))
             for m, k, n in [(9, 20, 7), (5, 33, 12), (17, 3, 4), (6, 6, 6)] * 2]
    spec_of = {i: la.matmul_spec(a.shape, "int8", b.shape, "int8")
               for i, (a, b) in enumerate(cases)}
    drv = fpga.driver_for(fpga.config_for("matmul"))

    def one(i):
        a, b = cases[i]
        return drv.run(spec_of[i], a, b)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # switch threads often, so that unlocked jobs would interleave
    try:
        for _ in range(3):
            with ThreadPoolExecutor(4) as pool:
                runs = list(pool.map(one, range(len(cases))))
    finally:
        sys.setswitchinterval(switch)
    for (a, b), run in zip(cases, runs):
        np.testing.assert_array_equal(run.out, ref(a, b))
        assert run.stats.jobs == 1
        assert run.stats.cycles == regmap.expected_cycles(a.shape[0], b.shape[1], a.shape[1], *SIZE)
