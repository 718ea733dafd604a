"""conv2d against a direct float64 / exact-integer reference, on every available backend."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lepton_accel as la
from lepton_accel.reference import TOLERANCE, conv2d_ref, relative_error

from operands import random_operand

# The simulated fpga backend runs integers only, at small array sizes, in its own tests
# (tests/test_fpga_backend.py); every other available backend runs the whole contract.
BACKENDS = [b["name"] for b in la.backends() if b["available"] and b["name"] != "fpga"]


def check(out, ref, dtype):
    out = np.asarray(out)
    assert out.shape == ref.shape
    if dtype in ("int8", "int16"):
        np.testing.assert_array_equal(out, ref)
    else:
        err = relative_error(out.astype(np.float64), ref)
        assert err < TOLERANCE[dtype], f"relative error {err:.3g} for {dtype}"


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3, "depthwise"]))
    cg = draw(st.integers(1, 5))
    g = draw(st.integers(2, 6)) if groups == "depthwise" else groups
    if groups == "depthwise":
        cg = 1
    c = cg * g
    oc = g * draw(st.integers(1, 3))
    kh, kw = draw(st.sampled_from([1, 2, 3, 5, 7])), draw(st.sampled_from([1, 3, 4]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ext_h, ext_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    padding = draw(st.one_of(
        st.just("valid"),
        st.just("same") if stride == (1, 1) else st.just(0),
        st.tuples(st.integers(0, ext_h - 1), st.integers(0, ext_w - 1)),
    ))
    h = draw(st.integers(max(1, ext_h - 2 * (ext_h - 1)), 17))
    w = draw(st.integers(max(1, ext_w - 2 * (ext_w - 1)), 17))
    n = draw(st.integers(1, 3))
    return dict(n=n, c=c, h=h, w=w, oc=oc, kh=kh, kw=kw, stride=stride, dilation=dilation,
                padding=padding, groups=g)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=80, deadline=None)
@given(case=conv_cases(), dtype=st.sampled_from(["float32", "float16", "bfloat16", "int8", "int16"]),
       layout=st.sampled_from(["NCHW", "NHWC"]), strided_x=st.booleans(),
       use_bias=st.booleans(), activation=st.sampled_from([None, "relu", "gelu"]),
       seed=st.integers(0, 2**32 - 1))
def test_conv2d_property(backend, case, dtype, layout, strided_x, use_bias, activation, seed):
    rng = np.random.default_rng(seed)
    if dtype == "int16" and backend == "cuda":
        dtype = "int8"  # the CUDA kernels' integer type
    if dtype.startswith("int") and activation == "gelu":
        activation = "relu"
    c = case
    x_shape = (c["n"], c["c"], c["h"], c["w"]) if layout == "NCHW" else (c["n"], c["h"], c["w"], c["c"])
    x = random_operand(rng, x_shape, dtype, "s" if strided_x else "c")
    w = random_operand(rng, (c["oc"], c["c"] // c["groups"], c["kh"], c["kw"]), dtype)
    bias = None
    if use_bias:
        bias = (rng.integers(-2**31, 2**31, c["oc"]).astype(np.int32) if dtype.startswith("int")
                else rng.standard_normal(c["oc"]).astype(np.float32))
    params = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
                  groups=c["groups"], layout=layout, activation=activation)
    try:
        ref = conv2d_ref(x, w, bias, **params)
    except ValueError as exc:  # the drawn case has an empty output: the API must say so too
        with pytest.raises(ValueError, match=str(exc).split(":")[0]):
            la.conv2d(x, w, bias=bias, backend=backend, **params)
        return
    out = la.conv2d(x, w, bias=bias, backend=backend, **params)
    check(out, ref, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_resnet_like_layer(backend, layout, rng):
    x = random_operand(rng, (2, 64, 14, 14) if layout == "NCHW" else (2, 14, 14, 64), "float32")
    w = random_operand(rng, (32, 64, 3, 3), "float32")
    bias = random_operand(rng, (32,), "float32")
    out = la.conv2d(x, w, bias=bias, padding=1, layout=layout, activation="relu", backend=backend)
    check(out, conv2d_ref(x, w, bias, padding=1, layout=layout, activation="relu"), "float32")


def test_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    x = random_operand(rng, (2, 6, 15, 12), "float32")
    w = random_operand(rng, (9, 2, 3, 5), "float32")
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                     stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3)
    out = la.conv2d(x, w, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3)
    assert relative_error(out, ref.numpy()) < 1e-5


def test_zero_batch_gives_empty_result():
    out = la.conv2d(np.ones((0, 3, 8, 8), np.float32), np.ones((4, 3, 3, 3), np.float32))
    assert out.shape == (0, 4, 6, 6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups", [1, 2])
def test_deep_layer_on_a_small_image(backend, groups, rng):
    # more weights than im2col elements: the GEMM reads the weights in place
    x = random_operand(rng, (1, 3, 5, 64), "float32")
    w = random_operand(rng, (128, 64 // groups, 3, 3), "float32")
    out = la.conv2d(x, w, padding=1, groups=groups, layout="NHWC", backend=backend)
    check(out, conv2d_ref(x, w, padding=1, groups=groups, layout="NHWC"), "float32")


@st.composite
def depthwise_cases(draw):
    """Channel counts around the native kernel's 16-channel blocks (blocked, tail, both),
    3x3 (its unrolled interior loop) and other filters, every edge of the padding."""
    c = draw(st.sampled_from([16, 17, 32, 35, 48]))
    mult = draw(st.sampled_from([1, 1, 2]))
    kh, kw = draw(st.sampled_from([(3, 3), (3, 3), (1, 1), (5, 5), (3, 1), (2, 4), (7, 7)]))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ext_h, ext_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    padding = draw(st.one_of(st.just("valid"), st.tuples(st.integers(0, ext_h - 1), st.integers(0, ext_w - 1))))
    h = draw(st.integers(ext_h, ext_h + 12))
    w = draw(st.integers(ext_w, ext_w + 12))
    return dict(n=draw(st.integers(1, 2)), c=c, h=h, w=w, oc=c * mult, kh=kh, kw=kw, stride=stride,
                dilation=dilation, padding=padding, groups=c)


@settings(max_examples=60, deadline=None)
@given(case=depthwise_cases(), dtype=st.sampled_from(["float32", "float16", "bfloat16", "int8", "int16"]),
       layout=st.sampled_from(["NCHW", "NHWC"]), use_bias=st.booleans(),
       activation=st.sampled_from([None, "relu", "gelu"]), seed=st.integers(0, 2**32 - 1))
def test_cpu_depthwise_kernel(case, dtype, layout, use_bias, activation, seed):
    """The native depthwise kernel with its fused bias and ReLU (GELU stays in Python)."""
    rng = np.random.default_rng(seed)
    if dtype.startswith("int") and activation == "gelu":
        activation = "relu"
    c = case
    x_shape = (c["n"], c["c"], c["h"], c["w"]) if layout == "NCHW" else (c["n"], c["h"], c["w"], c["c"])
    x = random_operand(rng, x_shape, dtype)
    w = random_operand(rng, (c["oc"], 1, c["kh"], c["kw"]), dtype)
    bias = None
    if use_bias:
        bias = (rng.integers(-2**31, 2**31, c["oc"]).astype(np.int32) if dtype.startswith("int")
                else rng.standard_normal(c["oc"]).astype(np.float32))
    params = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"],
                  layout=layout, activation=activation)
    out = la.conv2d(x, w, bias=bias, backend="cpu", **params)
    check(out, conv2d_ref(x, w, bias, **params), dtype)


def test_cpu_depthwise_kernel_threads_and_arguments(rng):
    from lepton_accel._native import core

    if core is None or not hasattr(core, "cpu_depthwise_conv2d"):
        pytest.skip("the native core is not built")
    x = rng.standard_normal((2, 30, 31, 48)).astype(np.float32)
    w = rng.standard_normal((3, 3, 48)).astype(np.float32)
    one, many = (np.empty((2, 30, 31, 48), np.float32) for _ in range(2))
    core.cpu_depthwise_conv2d(x, w, one, (1, 1), (1, 1), (1, 1), max_threads=1)
    core.cpu_depthwise_conv2d(x, w, many, (1, 1), (1, 1), (1, 1))
    np.testing.assert_array_equal(one, many)  # each output is summed by one thread, in one order
    with pytest.raises(TypeError, match="C-contiguous"):
        core.cpu_depthwise_conv2d(x[:, :, ::2], w, one, (1, 1), (1, 1), (1, 1))
    with pytest.raises(TypeError, match="float32 or int32"):
        core.cpu_depthwise_conv2d(x.astype(np.float64), w, one, (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="disagree"):
        core.cpu_depthwise_conv2d(x, np.ascontiguousarray(w[:, :, :40]), one, (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="stride"):
        core.cpu_depthwise_conv2d(x, w, one, (0, 1), (1, 1), (1, 1))
