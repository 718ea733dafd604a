"""matmul against a float64 / exact-integer NumPy reference, on every available backend."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lepton_accel as la
from lepton_accel.reference import TOLERANCE, matmul_ref, relative_error

from operands import random_operand

SIZES = st.sampled_from([1, 2, 3, 7, 13, 16, 31, 32, 33, 64, 67, 97])
# The simulated fpga backend runs integers only, at small array sizes, in its own tests
# (tests/test_fpga_backend.py); every other available backend runs the whole contract.
BACKENDS = [b["name"] for b in la.backends() if b["available"] and b["name"] != "fpga"]


def check(out, ref, dtype, bound=None):
    """``bound``: the reference computed on |a|, |b|, |bias| without activation. A float
    GEMM's rounding error scales with it, not with the result, which cancellation can make
    much smaller (a sum of 13 products ending near zero), so the error is taken against the
    larger of the two."""
    out = np.asarray(out)
    assert out.shape == ref.shape
    if dtype in ("int8", "int16"):
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, ref)
    else:
        diff = out.astype(np.float64) - ref
        scale = max(np.linalg.norm(ref), np.linalg.norm(bound) if bound is not None else 0.0)
        if scale < 1e-6:  # every output in GELU's underflowing tail: absolute
            assert np.abs(diff).max() < 1e-6
            return
        err = np.linalg.norm(diff) / scale
        assert err < TOLERANCE[dtype], f"relative error {err:.3g} for {dtype}"


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(
    m=SIZES, n=SIZES, k=SIZES,
    batch=st.sampled_from([(), (3,), (2, 1), (1, 4)]),
    b_batched=st.booleans(),
    dtype=st.sampled_from(["float32", "float16", "bfloat16", "int8", "int16"]),
    layouts=st.tuples(st.sampled_from("cts"), st.sampled_from("cts")),
    use_bias=st.booleans(),
    activation=st.sampled_from([None, "relu", "gelu"]),
    wide_out=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_property(backend, m, n, k, batch, b_batched, dtype, layouts, use_bias,
                         activation, wide_out, seed):
    rng = np.random.default_rng(seed)
    if dtype == "int16" and backend == "cuda":
        dtype = "int8"  # the CUDA kernels' integer type; int16 is refused (tested below)
    if dtype.startswith("int") and activation == "gelu":
        activation = "relu"
    a = random_operand(rng, batch + (m, k), dtype, layouts[0])
    b_shape = (batch[-1:] if b_batched else ()) + (k, n)
    b = random_operand(rng, b_shape, dtype, layouts[1])
    out_dtype = "float32" if (wide_out and dtype in ("float16", "bfloat16")) else None
    bias = None
    if use_bias:
        bias = (rng.integers(-2**31, 2**31, n).astype(np.int32) if dtype.startswith("int")
                else rng.standard_normal(n).astype(np.float32))
    out = la.matmul(a, b, bias=bias, activation=activation, out_dtype=out_dtype, backend=backend)
    expected_dtype = "int32" if dtype.startswith("int") else (out_dtype or dtype)
    assert np.asarray(out).dtype == la.dtypes.DTYPES[expected_dtype]
    bound = None
    if not dtype.startswith("int"):
        bound = np.abs(np.asarray(a, dtype=np.float64)) @ np.abs(np.asarray(b, dtype=np.float64))
        if bias is not None:
            bound = bound + np.abs(np.asarray(bias, dtype=np.float64))
    check(out, matmul_ref(a, b, bias, activation), dtype, bound)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a_shape,b_shape", [((5,), (5,)), ((5,), (5, 3)), ((4, 5), (5,)),
                                             ((2, 4, 5), (5,)), ((5,), (3, 5, 2))])
def test_matmul_vectors_follow_numpy(backend, rng, a_shape, b_shape):
    a = random_operand(rng, a_shape, "float32")
    b = random_operand(rng, b_shape, "float32")
    out = la.matmul(a, b, backend=backend)
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert np.shape(out) == ref.shape
    assert relative_error(out, ref) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_extremes_are_exact_and_wrap(backend, rng):
    # K = 2**17 of (-128)*(-128) = 2**31 overflows int32: it must wrap to -2**31.
    k = 2 ** 17
    a = np.full((2, k), -128, np.int8)
    b = np.full((k, 3), -128, np.int8)
    b[:, 1] = 127
    out = la.matmul(a, b, backend=backend)
    assert out[0, 0] == np.int32(-2**31)
    np.testing.assert_array_equal(out, matmul_ref(a, b))
    # a large random K far beyond one float32-exact chunk
    a = rng.integers(-128, 128, (5, 5000), dtype=np.int8)
    b = rng.integers(-128, 128, (5000, 7), dtype=np.int8)
    np.testing.assert_array_equal(la.matmul(a, b, backend=backend), matmul_ref(a, b))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "cuda"])
def test_int16_extremes_are_exact_and_wrap(backend, rng):
    # 5 products of (-32768)**2 = 5 * 2**30 wraps to 2**30; 3 of them to -2**30.
    a = np.full((2, 5), -32768, np.int16)
    b = np.full((5, 2), -32768, np.int16)
    b[:2, 1] = 0
    out = la.matmul(a, b, backend=backend)
    assert out[0, 0] == 2**30 and out[0, 1] == -2**30
    np.testing.assert_array_equal(out, matmul_ref(a, b))
    # K far beyond what float32 sums exactly for int16 products
    a = rng.integers(-32768, 32768, (4, 3000), dtype=np.int16)
    b = rng.integers(-32768, 32768, (3000, 6), dtype=np.int16)
    np.testing.assert_array_equal(la.matmul(a, b, backend=backend), matmul_ref(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a_shape,b_shape,out_shape", [
    ((0, 5), (5, 3), (0, 3)), ((4, 5), (5, 0), (4, 0)), ((2, 0, 5), (5, 3), (2, 0, 3)),
])
def test_zero_size_dims(backend, a_shape, b_shape, out_shape):
    out = la.matmul(np.ones(a_shape, np.float32), np.ones(b_shape, np.float32), backend=backend)
    assert np.shape(out) == out_shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_k_gives_bias(backend, rng):
    bias = rng.standard_normal(3).astype(np.float32)
    out = la.matmul(np.ones((4, 0), np.float32), np.ones((0, 3), np.float32), bias=bias,
                    backend=backend)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, (4, 3)))


def test_auto_dispatch_picks_an_available_backend(rng):
    a = random_operand(rng, (8, 8), "float32")
    spec = la.matmul_spec(a.shape, "float32", a.shape, "float32")
    chosen = la.choose_backend(spec)
    assert dict((b["name"], b["available"]) for b in la.backends())[chosen.name]


@pytest.mark.parametrize("backend", BACKENDS)
def test_allow_tf32_stays_within_tf32_tolerance(backend, rng):
    a = random_operand(rng, (130, 257), "float32")
    b = random_operand(rng, (257, 67), "float32", "t")
    out = la.matmul(a, b, allow_tf32=True, backend=backend)
    assert out.dtype == np.float32
    assert relative_error(out, matmul_ref(a, b)) < 1e-3
