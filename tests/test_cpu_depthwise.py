"""The CPU backend's native depthwise kernel on what validation lets through: NaN and
infinities in the operands (ReLU keeps NaN, as np.maximum and PyTorch do) and strides,
paddings and dilations of any size (the kernel walks an axis whose parameters do not fit
64-bit index arithmetic through an exact tap table)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lepton_accel as la
from lepton_accel._native import core
from lepton_accel.ops import conv2d_spec
from lepton_accel.reference import check, conv2d_ref, reference

from operands import random_operand

pytestmark = pytest.mark.skipif(core is None or not hasattr(core, "cpu_depthwise_conv2d"),
                                reason="the native core is not built")


def run(x, w, bias=None, **params):
    """The cpu backend's result, the reference's verdict on it, and the spec."""
    out = la.conv2d(x, w, bias=bias, backend="cpu", **params)
    spec = conv2d_spec(x.shape, str(x.dtype), w.shape, str(w.dtype),
                       bias_shape=None if bias is None else bias.shape,
                       bias_dtype=None if bias is None else str(bias.dtype), **params)
    return out, check(spec, out, reference(spec, [x, w], bias)), spec


# ---- NaN ------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(c=st.sampled_from([16, 17, 31, 32, 48]), mult=st.sampled_from([1, 2]),
       k=st.sampled_from([(3, 3), (1, 1), (5, 3)]), layout=st.sampled_from(["NCHW", "NHWC"]),
       activation=st.sampled_from(["relu", None]), use_bias=st.booleans(),
       special=st.sampled_from([np.nan, np.inf, -np.inf]), seed=st.integers(0, 2**32 - 1))
def test_non_finite_values_propagate(c, mult, k, layout, activation, use_bias, special, seed):
    """A NaN (or an infinity) in x reaches every output that reads it, through the
    16-channel register blocks and the channel tail alike; ReLU does not turn NaN into 0."""
    rng = np.random.default_rng(seed)
    n, h, wd = 2, 9, 8
    x = random_operand(rng, (n, c, h, wd) if layout == "NCHW" else (n, h, wd, c), "float32")
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 5, replace=False)] = special
    w = random_operand(rng, (c * mult, 1) + k, "float32")
    bias = rng.standard_normal(c * mult).astype(np.float32) if use_bias else None
    params = dict(padding=(k[0] // 2, k[1] // 2), groups=c, layout=layout, activation=activation)
    out, verdict, _ = run(x, w, bias, **params)
    assert verdict["verified"], verdict["why"]
    ref = conv2d_ref(x, w, bias, **params)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
    if np.isnan(special) or activation is None:  # (ReLU may map every -inf sum to 0)
        assert not np.isfinite(out).all()  # the special values reached the output


def test_relu_keeps_nan_like_pytorch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((1, 32, 6, 6)).astype(np.float32)
    x[0, 3, 2, 2] = np.nan
    x[0, 20, 0, 5] = np.nan
    w = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    out = la.conv2d(x, w, padding=1, groups=32, activation="relu", backend="cpu")
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1,
                                                groups=32)).numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    assert np.isnan(out).sum() == 9 + 4  # the 3x3 neighbourhood of (2, 2), the 2x2 of corner (0, 5)
    finite = ~np.isnan(ref)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-5, atol=1e-5)


# ---- strides, paddings and dilations of any size ------------------------------------------
HUGE = [2**62, 2**63 - 1, 2**63, 2**64 + 3, 10**30]


@pytest.mark.parametrize("dtype", ["float32", "int8"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("stride", [(s, s) for s in HUGE] + [(2**63, 1), (1, 2**64), (3, 10**40)],
                         ids=str)
def test_huge_strides(rng, dtype, layout, stride):
    """One output row (or column) per huge stride: the depthwise kernel returns the
    shape and values the reference (and the dense path) give."""
    c = 24
    x = random_operand(rng, (2, c, 7, 9) if layout == "NCHW" else (2, 7, 9, c), dtype)
    w = random_operand(rng, (2 * c, 1, 3, 3), dtype)
    params = dict(stride=stride, padding=1, groups=c, layout=layout, activation="relu")
    out, verdict, spec = run(x, w, **params)
    assert out.shape == spec.out_shape
    assert verdict["verified"], verdict["why"]
    # the dense path (the same filters as one block-diagonal group, as GEMMs) agrees
    dense_w = np.zeros((2 * c, c, 3, 3), w.dtype)
    dense_w[np.arange(2 * c), np.arange(2 * c) // 2] = w[:, 0]
    dense = la.conv2d(x, dense_w, backend="cpu", **{**params, "groups": 1})
    np.testing.assert_array_equal(dense.shape, out.shape)
    if dtype == "int8":
        np.testing.assert_array_equal(dense, out)
    else:
        np.testing.assert_allclose(dense, out, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(["float32", "int8"]), k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       taps=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       exps=st.tuples(st.integers(0, 80), st.integers(0, 80)), big=st.sampled_from(["h", "w", "both"]),
       seed=st.integers(0, 2**32 - 1))
def test_huge_dilation_and_padding_match_their_small_equivalent(dtype, k, taps, exps, big, seed):
    """On an axis of extent 1, stride = dilation = D and padding j*D (validation accepts
    any j < K: at most the dilated extent minus one) make output o read the input through
    tap j - o, exactly as stride = dilation = 1 and padding j do, for every D. Up to
    D = 2**80 the kernel walks such an axis by index arithmetic while it fits 64 bits and
    by its tap table beyond; either way it must give the reference's answer for the small
    problem. The other axis stays ordinary unless both are huge."""
    rng = np.random.default_rng(seed)
    c = 20
    axes = {"h": (True, False), "w": (False, True), "both": (True, True)}[big]
    geo_big, geo_small, extent = [], [], []
    for on, kk, j, e in zip(axes, k, taps, exps):
        j = min(j, kk - 1)
        if on:
            j = max(j, (kk - 1 + 1) // 2)  # at least one output: 2j >= K - 1
            d = 2**e
            geo_big.append((d, d, j * d))
            geo_small.append((1, 1, j))
            extent.append(1)
        else:
            geo_big.append((1, 1, (kk - 1) // 2))
            geo_small.append((1, 1, (kk - 1) // 2))
            extent.append(int(rng.integers(kk, kk + 6)))
    x = random_operand(rng, (2, extent[0], extent[1], c), dtype)
    w = random_operand(rng, (c, 1) + tuple(k), dtype)

    def params(geo):
        (sh, dh, ph), (sw, dw, pw) = geo
        return dict(stride=(sh, sw), dilation=(dh, dw), padding=(ph, pw), groups=c, layout="NHWC",
                    activation="relu")

    out_big = la.conv2d(x, w, backend="cpu", **params(geo_big))
    out_small, verdict, _ = run(x, w, **params(geo_small))
    assert verdict["verified"], verdict["why"]
    assert out_big.shape == out_small.shape
    if dtype == "int8":
        np.testing.assert_array_equal(out_big, out_small)
    else:
        np.testing.assert_allclose(out_big, out_small, rtol=1e-6, atol=1e-6)


def test_binding_takes_python_integers_only():
    x = np.zeros((1, 3, 3, 16), np.float32)
    w = np.zeros((3, 3, 16), np.float32)
    y = np.zeros((1, 1, 1, 16), np.float32)
    core.cpu_depthwise_conv2d(x, w, y, (2**80, np.int64(1)), (0, 0), (1, 1))
    with pytest.raises(TypeError, match="stride must be integers"):
        core.cpu_depthwise_conv2d(x, w, y, (1.0, 1), (0, 0), (1, 1))
    with pytest.raises(TypeError, match="padding must be a pair"):
        core.cpu_depthwise_conv2d(x, w, y, (1, 1), (0,), (1, 1))
    with pytest.raises(ValueError, match="padding >= 0"):
        core.cpu_depthwise_conv2d(x, w, y, (1, 1), (-2**70, 0), (1, 1))
