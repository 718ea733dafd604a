"""The public API on the inputs careless and hostile callers pass: results that must match
NumPy/PyTorch exactly in shape and within tolerance in value, and refusals that must name
the argument before any work is done."""
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lepton_accel as la
from lepton_accel.reference import conv2d_ref, matmul_ref, relative_error

torch = pytest.importorskip("torch")

F32 = np.float32


def _f(shape, rng, dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


# ---- results ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 9), m=st.integers(1, 5), n=st.integers(1, 5),
       a1=st.booleans(), b1=st.booleans(), seed=st.integers(0, 2**31))
def test_one_dimensional_operands_follow_torch_shapes(k, m, n, a1, b1, seed):
    """torch's 1-D @ 1-D is a 0-d tensor (it was returned as shape (1,))."""
    rng = np.random.default_rng(seed)
    a = torch.from_numpy(_f((k,) if a1 else (m, k), rng))
    b = torch.from_numpy(_f((k,) if b1 else (k, n), rng))
    out = la.matmul(a, b)
    ref = a.double() @ b.double()
    assert isinstance(out, torch.Tensor) and out.shape == ref.shape
    assert relative_error(out.numpy(), ref.numpy()) < 1e-5


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gelu_with_two_vectors(rng, dtype):
    """activation='gelu' with both operands 1-D raised TypeError inside NumPy."""
    dt = la.dtypes.DTYPES[dtype]
    a, b = _f(7, rng).astype(dt), _f(7, rng).astype(dt)
    out = la.matmul(a, b, activation="gelu")
    ref = matmul_ref(a, b, activation="gelu")
    assert np.shape(out) == () and abs(float(out) - float(ref)) <= 2e-2 * max(1.0, abs(float(ref)))


def test_negative_bit_tensor_keeps_its_sign(rng):
    """A tensor with torch's lazy negation bit was read without its sign."""
    t = torch.randn(3, 4, dtype=torch.complex64).conj().imag
    assert t.is_neg()
    w = torch.randn(4, 5)
    out = la.matmul(t, w)
    assert relative_error(out.numpy(), (t.double() @ w.double()).numpy()) < 1e-5


@settings(max_examples=25, deadline=None)
@given(stride=st.integers(1, 3), pad=st.integers(0, 1), groups=st.sampled_from([1, 2]),
       kind=st.sampled_from([np.int64, np.int32, np.int16, int]), seed=st.integers(0, 2**31))
def test_numpy_integer_scalars_as_parameters(stride, pad, groups, kind, seed):
    rng = np.random.default_rng(seed)
    x, w = _f((1, 4, 7, 6), rng), _f((4, 4 // groups, 3, 3), rng)
    out = la.conv2d(x, w, stride=kind(stride), padding=(kind(pad), kind(pad)),
                    dilation=kind(1), groups=kind(groups))
    ref = conv2d_ref(x, w, stride=stride, padding=pad, groups=groups)
    assert relative_error(out, ref) < 1e-5


@pytest.mark.parametrize("out_dtype", ["float32", "f4", np.float32, np.dtype("float32"),
                                       "torch.float32"])
def test_out_dtype_spellings(rng, out_dtype):
    if out_dtype == "torch.float32":
        out_dtype = torch.float32
    a, b = _f((3, 4), rng, np.float16), _f((4, 2), rng, np.float16)
    assert la.matmul(a, b, out_dtype=out_dtype).dtype == np.float32


# ---- refusals that name the argument ----------------------------------------------------
def _refused(exc_type, match, fn):
    with pytest.raises(exc_type, match=match):
        fn()


def test_torch_tensors_that_cannot_cross_are_refused_by_name(rng):
    w = torch.nn.Parameter(torch.randn(8, 4))
    x = torch.randn(3, 8)
    _refused(TypeError, r"^b: .*requires grad.*lepton_accel\.torch", lambda: la.matmul(x, w))
    _refused(TypeError, r"^a: .*sparse.*dense", lambda: la.matmul(torch.randn(2, 2).to_sparse(), x[:2, :2]))
    _refused(TypeError, r"^a: a meta tensor", lambda: la.matmul(torch.empty(2, 2, device="meta"), x[:2, :2]))
    nested = torch.nested.nested_tensor([torch.randn(2, 2), torch.randn(3, 2)])
    _refused(TypeError, r"^a: nested", lambda: la.matmul(nested, x[:2, :2]))
    _refused(TypeError, r"^a: unsupported DLPack dtype.*operands may be",
             lambda: la.matmul(torch.randn(2, 2, dtype=torch.complex64), x[:2, :2]))


def test_bad_argument_types_are_refused_by_name(rng):
    a, b = _f((2, 3), rng), _f((3, 2), rng)
    x, w = _f((1, 2, 5, 5), rng), _f((2, 2, 3, 3), rng)
    _refused(TypeError, r"^out_dtype: expected a dtype", lambda: la.matmul(a, b, out_dtype=5))
    _refused(TypeError, r"^out_dtype: unknown or unsupported dtype", lambda: la.matmul(a, b, out_dtype="f8"))
    _refused(TypeError, r"^backend: expected 'auto' or a backend name", lambda: la.matmul(a, b, backend=["cpu"]))
    _refused(TypeError, r"^backend: ", lambda: la.matmul(a, b, backend=np.array(["cpu"])))
    _refused(TypeError, r"^activation: expected None", lambda: la.matmul(a, b, activation=np.array([1])))
    _refused(ValueError, r"^layout: expected 'NCHW' or 'NHWC'", lambda: la.conv2d(x, w, layout=np.array(["NCHW"])))
    _refused(TypeError, r"^stride: ", lambda: la.conv2d(x, w, stride=np.array([1, 1, 1])))
    _refused(TypeError, r"^a: unsupported dtype float64; operands may be float32.*int16 \(a bias",
             lambda: la.matmul(a.astype(np.float64), b))
    _refused(TypeError, r"^a: unsupported operand dtype int32; operands may be",
             lambda: la.matmul(a.astype(np.int32), b.astype(np.int32)))


def test_size_policy_refuses_before_any_work():
    """A broadcast view of (10**6, 10**6) was computed for hours."""
    big = np.broadcast_to(np.float32(1), (10**6, 10**6))
    t0 = time.perf_counter()
    _refused(ValueError, r"^a: this matmul needs about .* GiB .* more than the .* available",
             lambda: la.matmul(big, big[:, :3]))
    assert time.perf_counter() - t0 < 1.0  # refused from the shapes, not after trying
    _refused(ValueError, r"^x: this conv2d needs",
             lambda: la.conv2d(np.broadcast_to(np.float32(1), (10**4, 64, 1024, 1024)),
                               np.ones((64, 64, 1, 1), np.float32)))
    small = np.broadcast_to(np.float32(2), (300, 200))  # a broadcast view that fits runs
    np.testing.assert_allclose(la.matmul(small, np.ones((200, 3), np.float32)), 400.0)


def test_import_leaves_ml_dtypes_and_the_scheduler_unloaded():
    code = ("import sys, lepton_accel; "
            "print(sorted(m for m in ('ml_dtypes', 'jsonschema', 'yaml', 'lepton_accel.scheduler')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_cached_call_still_sees_a_switched_off_backend(rng):
    """Repeated calls reuse their decision only while the backends' tokens hold."""
    from lepton_accel import fpga

    a = rng.integers(-128, 128, (3, 4), dtype=np.int8)
    b = rng.integers(-128, 128, (4, 2), dtype=np.int8)
    np.testing.assert_array_equal(la.matmul(a, b, backend="cpu"), matmul_ref(a, b))
    was = fpga.enabled()
    try:
        fpga.enable(False)
        with pytest.raises(la.BackendUnavailable, match="switched off"):
            la.matmul(a, b, backend="fpga")
        np.testing.assert_array_equal(la.matmul(a, b), matmul_ref(a, b))  # auto: the cpu
    finally:
        fpga.enable(was)
