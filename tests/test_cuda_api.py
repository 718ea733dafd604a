"""`lepton_accel.matmul(..., backend="cuda")` and auto-dispatch through the public API.

Host (NumPy) operands are copied to the device and back; device operands (PyTorch,
CuPy) arrive by DLPack and are used in place, on the caller's current stream. The
stream tests make a wrong stream visible: the input is written on a side stream behind a
long spin kernel, so a launch on any other stream reads the poison still in the buffer.
Skips without a CUDA device (the reason is the cuda backend's own).
"""
from __future__ import annotations

import numpy as np
import pytest

import lepton_accel as la
from lepton_accel.dtypes import DTYPES as NP_DTYPES
from lepton_accel.api import choose_backend
from lepton_accel.reference import matmul_ref, relative_error
from lepton_accel.ops import matmul_spec

from cuda_device import SKIP_REASON

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]

# (operand dtype, out_dtype argument, allow_tf32, tolerance; 0 = exact)
CASES = [
    ("float32", None, False, 1e-5),
    ("float32", None, True, 1e-3),
    ("float16", None, False, 1e-2),
    ("float16", "float32", False, 1e-2),
    ("bfloat16", None, False, 1e-2),
    ("bfloat16", "float32", False, 1e-2),
    ("int8", None, False, 0),
]
IDS = ["f32", "tf32", "f16", "f16_f32", "bf16", "bf16_f32", "i8"]


def random(rng, shape, dtype):
    if dtype == "int8":
        return rng.integers(-128, 128, shape).astype(np.int8)
    return rng.standard_normal(shape).astype(NP_DTYPES[dtype])


def check(out, ref, tol):
    out = np.asarray(out)
    assert out.shape == ref.shape
    if tol == 0:
        np.testing.assert_array_equal(out, ref)
    else:
        assert np.isfinite(out.astype(np.float64)).all()
        assert relative_error(out, ref) < tol


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("shapes", [((1, 1), (1, 1)), ((37, 61), (61, 29)), ((3, 1, 70, 33), (5, 33, 18)),
                                    ((53,), (53, 40)), ((300, 257), (257,))],
                         ids=["1x1", "primes", "broadcast_batch", "vec_mat", "mat_vec"])
def test_host_arrays(rng, case, shapes):
    dtype, out_dtype, tf32, tol = case
    a, b = random(rng, shapes[0], dtype), random(rng, shapes[1], dtype)
    out = la.matmul(a, b, out_dtype=out_dtype, allow_tf32=tf32, backend="cuda")
    assert isinstance(out, np.ndarray)
    check(out, matmul_ref(a, b), tol)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_host_epilogue(rng, case, activation):
    dtype, out_dtype, tf32, tol = case
    if dtype == "int8" and activation == "gelu":
        pytest.skip("gelu is a float activation")
    a, b = random(rng, (130, 96), dtype), random(rng, (96, 200), dtype)
    bias = (rng.integers(-500, 500, 200).astype(np.int32) if dtype == "int8"
            else rng.standard_normal(200).astype(np.float32))
    out = la.matmul(a, b, bias=bias, activation=activation, out_dtype=out_dtype, allow_tf32=tf32,
                    backend="cuda")
    check(out, matmul_ref(a, b, bias, activation), tol)


def test_auto_dispatch_picks_cuda_for_a_large_product(rng):
    spec = matmul_spec((2048, 2048), "bfloat16", (2048, 2048), "bfloat16")
    assert choose_backend(spec).name == "cuda"


# ---- device operands ----------------------------------------------------------------------
def _torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device")
    return torch


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_tensors_on_the_current_stream(dtype):
    torch = _torch()
    tdt = getattr(torch, dtype)
    M, N, K = 1000, 768, 512
    src = torch.randn(M, K, device="cuda").to(tdt)
    a = torch.full((M, K), float("nan"), device="cuda", dtype=tdt)
    w = torch.randn(N, K, device="cuda").to(tdt)
    bias = torch.randn(N, device="cuda").to(tdt)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keeps the side stream busy for tens of milliseconds
        a.copy_(src)  # only a launch ordered after this on `side` sees the real values
        y = la.matmul(a, w.t(), bias=bias, activation="relu")  # w.t(): a transposed view, no copy
    side.synchronize()
    assert y.device.type == "cuda" and y.dtype == tdt and tuple(y.shape) == (M, N)
    ref = torch.relu(src.double() @ w.double().t() + bias.double())
    err = float(torch.linalg.norm(y.double() - ref) / torch.linalg.norm(ref))
    assert err < (1e-5 if dtype == "float32" else 1e-2)


def test_torch_batched_strided_views(rng):
    torch = _torch()
    x = torch.randn(6, 70, 130, device="cuda", dtype=torch.bfloat16)[:, :, 1:129]  # strided rows
    w = torch.randn(128, 40, device="cuda", dtype=torch.bfloat16)
    y = la.matmul(x, w, backend="cuda")
    ref = x.double() @ w.double()
    assert float(torch.linalg.norm(y.double() - ref) / torch.linalg.norm(ref)) < 1e-2


def test_cupy_arrays_on_the_current_stream():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("CuPy sees no device")
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"CuPy cannot reach a device: {exc}")
    M, N, K = 257, 129, 300
    a_src = cupy.random.standard_normal((M, K), dtype=cupy.float32).astype(cupy.float16)
    b = cupy.random.standard_normal((K, N), dtype=cupy.float32).astype(cupy.float16)
    a = cupy.full((M, K), cupy.nan, dtype=cupy.float16)
    cupy.cuda.Device().synchronize()
    side = cupy.cuda.Stream(non_blocking=True)
    with side:
        # A slow CuPy reduction ahead of the copy, on the same stream.
        cupy.sum(cupy.random.standard_normal((4096, 4096), dtype=cupy.float32) ** 2)
        a[...] = a_src
        c = la.matmul(a, b, out_dtype="float32")
    side.synchronize()
    assert isinstance(c, cupy.ndarray) and c.dtype == cupy.float32
    ref = cupy.asnumpy(a_src).astype(np.float64) @ cupy.asnumpy(b).astype(np.float64)
    assert relative_error(cupy.asnumpy(c), ref) < 1e-2
