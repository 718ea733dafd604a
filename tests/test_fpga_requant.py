"""The requantization epilogue (``requant=``) and ReLU on the fpga backend: the cores'
output stage on the Verilator models of the 4x4 cores, bit-exact with the CPU backend
and the op's reference (``numerics.requantize``)."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.sim

from lepton_accel.fpga.toolchain import toolchain_missing  # noqa: E402

_missing = toolchain_missing()
if _missing:
    pytest.skip(f"fpga backend unavailable: {_missing}", allow_module_level=True)

import lepton_accel as la  # noqa: E402
from lepton_accel import numerics  # noqa: E402
from lepton_accel.fpga import session  # noqa: E402
from lepton_accel.hdl import conv_regmap as cr  # noqa: E402
from lepton_accel.hdl import matmul_regmap as regmap  # noqa: E402
from lepton_accel.ops import CONV2D, MATMUL  # noqa: E402
from test_fpga_support import SIZE, ints, small_core  # noqa: E402,F401


def params(rng, n, acc=None):
    """Per-channel (multiplier, shift): mostly quantize_multiplier-like, scaled to the
    sums so outputs spread over int8 (some saturating), plus any int32 multiplier and
    shifts 0 and 63."""
    mult = rng.integers(2**30, 2**31, n)
    amax = np.maximum(np.abs(acc).reshape(-1, n).max(0), 1) if acc is not None else 2**14
    shift = np.clip(np.ceil(np.log2(amax * mult / rng.uniform(90, 300, n))), 0, 63)
    shift = shift.astype(np.int64)
    if n >= 4:
        mult[0], shift[0] = -2**31, 63
        mult[1], shift[1] = rng.integers(-2**31, 0), rng.integers(20, 40)
        shift[2] = 0
    return mult, shift


def drivers():
    m = session.driver_for(session.config_for("matmul", "int8"))
    c = session.driver_for(session.config_for("conv2d", "int8"))
    return m, c


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 7, 6), (9, 3, 13), (4, 20, 4)])
@pytest.mark.parametrize("relu", [False, True])
def test_matmul_requant_on_the_core(rng, m, k, n, relu):
    a, b = ints(rng, (m, k)), ints(rng, (k, n))
    bias = rng.integers(-2**14, 2**14, n).astype(np.int32)
    acc = la.matmul(a, b, bias=bias, backend="cpu")
    mult, shift = params(rng, n, acc)
    act = "relu" if relu else None
    out = la.matmul(a, b, bias=bias, activation=act, requant=(mult, shift), backend="fpga")
    assert out.dtype == np.int8 and out.shape == (m, n)
    want = numerics.requantize(acc, mult, shift, relu=relu)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(out, la.matmul(a, b, bias=bias, activation=act,
                                                 requant=(mult, shift), backend="cpu"))
    spec = MATMUL.spec((a.shape, b.shape), ("int8", "int8"), bias_shape=(n,),
                       bias_dtype="int32", activation=act, requant=True)
    np.testing.assert_array_equal(out, MATMUL.reference(spec, (a, b), bias, (mult, shift)))
    # one job, and the core's output stage ran: its cycles include the stage's delay
    drv, _ = drivers()
    assert drv.out_stage and drv.last.jobs == 1
    assert drv.last.cycles == regmap.expected_cycles(m, n, k, *SIZE, out_stage=True)


def test_matmul_relu_int32_on_the_core(rng):
    a, b = ints(rng, (6, 9)), ints(rng, (9, 5))
    out = la.matmul(a, b, activation="relu", backend="fpga")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.maximum(la.matmul(a, b, backend="cpu"), 0))
    drv, _ = drivers()
    assert drv.last.cycles == regmap.expected_cycles(6, 5, 9, *SIZE, out_stage=True)


def test_matmul_requant_saturation_ties_and_batches(rng):
    # sums exactly -2, -1, 1, 3, 5 (times 1 / 2**1: ties), and the extremes
    a = np.array([[-2], [-1], [1], [3], [5], [127], [-128]], np.int8)
    b = np.ones((1, 4), np.int8)
    mult = np.array([1, 2**31 - 1, -2**31, 1])
    shift = np.array([1, 0, 0, 63])
    out = la.matmul(a, b, requant=(mult, shift), backend="fpga")
    np.testing.assert_array_equal(out[:5, 0], [-1, 0, 1, 2, 3])     # ties towards +inf
    np.testing.assert_array_equal(out[5:, 1], [127, -128])          # saturation
    np.testing.assert_array_equal(out[5:, 2], [-128, 127])
    np.testing.assert_array_equal(out[:, 3], 0)
    # batched b: one job per batch entry, each with the stage
    a3, b3 = ints(rng, (3, 5, 6)), ints(rng, (3, 6, 7))
    mult, shift = params(rng, 7, la.matmul(a3, b3, backend="cpu"))
    out = la.matmul(a3, b3, activation="relu", requant=(mult, shift), backend="fpga")
    np.testing.assert_array_equal(out, la.matmul(a3, b3, activation="relu",
                                                 requant=(mult, shift), backend="cpu"))


def test_cores_built_without_the_stage_give_the_same_bits(rng):
    """Cores built without the output stage (CONFIG.OUT_STAGE = 0): the drivers see it
    and do the same arithmetic on the host, after the core's int32 job."""
    from lepton_accel.fpga import Conv2dConfig, MatmulConfig

    mdrv = session.driver_for(MatmulConfig(*SIZE, "int8", out_stage=False))
    cdrv = session.driver_for(Conv2dConfig(*SIZE, "int8", depth=64, out_stage=False))
    assert not mdrv.out_stage and not cdrv.out_stage
    a, b = ints(rng, (7, 11)), ints(rng, (11, 6))
    bias = rng.integers(-2**12, 2**12, 6).astype(np.int32)
    acc = la.matmul(a, b, bias=bias, backend="cpu")
    mult, shift = params(rng, 6, acc)
    for relu in (False, True):
        got = mdrv.gemm(a, b, bias, relu=relu, requant=(mult, shift))
        np.testing.assert_array_equal(got, numerics.requantize(acc, mult, shift, relu=relu))
        # the core ran the plain job: no stage delay in its cycles
        assert mdrv.last.cycles == regmap.expected_cycles(7, 6, 11, *SIZE)
    np.testing.assert_array_equal(mdrv.gemm(a, b, relu=True), np.maximum(acc - bias, 0))

    x, w = ints(rng, (2, 5, 6, 3)), ints(rng, (5, 3, 3, 3))
    job = cr.ConvJob.make(x.shape, w.shape, 1, 1)
    acc = np.moveaxis(la.conv2d(np.moveaxis(x, -1, 1), w, padding=1, backend="cpu"), 1, -1)
    mult, shift = params(rng, 5, acc)
    got = cdrv.conv_nhwc(x, w, None, job, relu=True, requant=(mult, shift))
    np.testing.assert_array_equal(got, numerics.requantize(acc, mult, shift, relu=True))
    assert cdrv.last.cycles == cr.expected_cycles(job, *SIZE, cdrv.x_lanes)


@pytest.mark.parametrize("kw", [dict(padding=1), dict(groups=2, stride=2, padding=1),
                                dict(groups=6)])
def test_conv2d_requant_on_the_core(rng, kw):
    g = kw.get("groups", 1)
    x = ints(rng, (2, 6, 5, 5))
    w = ints(rng, (6, 6 // g, 3, 3))
    bias = rng.integers(-2**12, 2**12, 6).astype(np.int32)
    acc = la.conv2d(x, w, bias=bias, backend="cpu", **kw)
    mult, shift = params(rng, 6, np.moveaxis(acc, 1, -1))
    for relu in (False, True):
        act = "relu" if relu else None
        out = la.conv2d(x, w, bias=bias, activation=act, requant=(mult, shift), backend="fpga",
                        **kw)
        assert out.dtype == np.int8
        np.testing.assert_array_equal(out, numerics.requantize(acc, mult, shift, axis=1,
                                                               relu=relu))
        spec = CONV2D.spec((x.shape, w.shape), ("int8", "int8"), bias_shape=(6,),
                           bias_dtype="int32", activation=act, requant=True, **kw)
        np.testing.assert_array_equal(out, CONV2D.reference(spec, (x, w), bias, (mult, shift)))
    _, drv = drivers()
    assert drv.out_stage


def test_conv2d_requant_banded_and_nhwc(rng):
    # an image larger than the 64-word memory: row bands, each job with the stage
    x = ints(rng, (1, 3, 13, 11))
    w = ints(rng, (5, 3, 3, 3))
    acc = la.conv2d(x, w, padding=1, backend="cpu")
    mult, shift = params(rng, 5, np.moveaxis(acc, 1, -1))
    out = la.conv2d(x, w, padding=1, requant=(mult, shift), backend="fpga")
    np.testing.assert_array_equal(out, numerics.requantize(acc, mult, shift, axis=1))
    _, drv = drivers()
    assert drv.last.bands > 1
    assert [c for _, c in drv.last.job_cycles] == \
        [cr.expected_cycles(j, *SIZE, drv.x_lanes, out_stage=True) for j, _ in drv.last.job_cycles]
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    out_h = la.conv2d(xh, w, padding=1, layout="NHWC", activation="relu",
                      requant=(mult, shift), backend="fpga")
    np.testing.assert_array_equal(out_h, numerics.requantize(
        np.ascontiguousarray(acc.transpose(0, 2, 3, 1)), mult, shift, axis=-1, relu=True))


def test_requant_arguments_are_checked(rng):
    a, b = ints(rng, (3, 4)), ints(rng, (4, 5))
    m, s = np.full(5, 2**30), np.full(5, 20)
    with pytest.raises(ValueError, match="multiplier"):
        la.matmul(a, b, requant=(m[:3], s), backend="fpga")
    with pytest.raises(ValueError, match="shift"):
        la.matmul(a, b, requant=(m, s + 60), backend="fpga")
    with pytest.raises(ValueError, match="multiplier"):
        la.matmul(a, b, requant=(m * 4, s), backend="fpga")
    with pytest.raises(TypeError, match="multiplier"):
        la.matmul(a, b, requant=(m * 0.5, s), backend="fpga")
    with pytest.raises(TypeError, match="requant"):
        la.matmul(a, b, requant=m, backend="fpga")
    with pytest.raises(TypeError, match="out_dtype"):
        la.matmul(a, b, requant=(m, s), out_dtype="int32", backend="fpga")
    with pytest.raises(ValueError, match="requant"):
        la.matmul(a.astype(np.float32), b.astype(np.float32), requant=(m, s), backend="cpu")
    with pytest.raises(ValueError, match="shift"):
        la.conv2d(ints(rng, (1, 2, 4, 4)), ints(rng, (3, 2, 3, 3)),
                  requant=(2**30, np.array([1, 2, -1])), backend="fpga")
    # scalars apply to every channel
    out = la.matmul(a, b, requant=(2**30, 10), backend="fpga")
    np.testing.assert_array_equal(out, numerics.requantize(la.matmul(a, b, backend="cpu"),
                                                           np.full(5, 2**30), np.full(5, 10)))


def test_conv2d_requant_on_the_matmul_fallback(rng):
    # one output row needs 3 input rows of 40 x 4 elements, more than the 64-word
    # memory: host im2col on the matmul core, one GEMM per group, each with the stage
    x, w = ints(rng, (1, 4, 5, 40)), ints(rng, (6, 2, 3, 3))
    bias = rng.integers(-2**12, 2**12, 6).astype(np.int32)
    acc = la.conv2d(x, w, bias=bias, padding=1, groups=2, backend="cpu")
    mult, shift = params(rng, 6, np.moveaxis(acc, 1, -1))
    out = la.conv2d(x, w, bias=bias, padding=1, groups=2, activation="relu",
                    requant=(mult, shift), backend="fpga")
    np.testing.assert_array_equal(out, numerics.requantize(acc, mult, shift, axis=1,
                                                           relu=True))
    drv, _ = drivers()
    assert drv.last.jobs == 2      # the fallback ran: one matmul job per group
