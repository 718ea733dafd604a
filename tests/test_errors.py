"""Bad input raises before any kernel runs, naming the argument and what was expected."""
import numpy as np
import pytest

import lepton_accel as la

F32 = np.float32


def m(*shape, dtype=F32):
    return np.ones(shape, dtype)


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: la.matmul(m(3, 4), m(5, 2)), ValueError, r"b: inner dimensions do not match.*K=4.*K=5"),
    (lambda: la.matmul(np.float32(1), m(2)), ValueError, r"a: expected an array of rank >= 1"),
    (lambda: la.matmul(m(2), np.float32(1)), ValueError, r"b: expected an array of rank >= 1"),
    (lambda: la.matmul(m(2, 3, 4), m(3, 4, 5)), ValueError, r"b: batch dimensions .* cannot be broadcast"),
    (lambda: la.matmul(m(2, 3, dtype=np.float64), m(3, 2, dtype=np.float64)), TypeError, r"unsupported dtype float64"),
    (lambda: la.matmul(m(2, 3), m(3, 2, dtype=np.float16)), TypeError, r"b: dtype float16 does not match a dtype float32.*dtype mix"),
    (lambda: la.matmul(m(2, 3, dtype=np.int8), m(3, 2, dtype=np.int8), out_dtype="float32"), TypeError, r"out_dtype: float32 is not allowed for int8.*int32"),
    (lambda: la.matmul(m(2, 3), m(3, 2), out_dtype="float16"), TypeError, r"out_dtype: float16 is not allowed for float32"),
    (lambda: la.matmul(m(2, 3), m(3, 2), activation="tanh"), ValueError, r"activation: unknown activation 'tanh'"),
    (lambda: la.matmul(m(2, 3, dtype=np.int8), m(3, 2, dtype=np.int8), activation="gelu"), ValueError, r"activation: 'gelu' is not defined for integer"),
    (lambda: la.matmul(m(2, 3), m(3, 2), bias=m(3)), ValueError, r"bias: expected shape \(2,\), got \(3,\)"),
    (lambda: la.matmul(m(2, 3), m(3, 2), bias=m(2, dtype=np.int32)), TypeError, r"bias: dtype int32 does not fit output dtype float32"),
    (lambda: la.matmul(m(2, 3), m(3, 2), backend="tpu"), ValueError, r"backend: unknown backend 'tpu'.*cpu"),
    (lambda: la.matmul("abc", m(3, 2)), TypeError, r"a: unsupported dtype"),
    (lambda: la.matmul(object(), m(3, 2)), TypeError, r"a: expected a NumPy array or an object with __dlpack__"),
    (lambda: la.matmul(m(2, 3, dtype=np.float16), m(3, 2, dtype=np.float16), allow_tf32=True), ValueError, r"allow_tf32: applies to float32 operands only, got float16"),
    (lambda: la.matmul(m(2, 3), m(3, 2), allow_tf32="yes"), TypeError, r"allow_tf32: expected True or False"),
    # conv2d
    (lambda: la.conv2d(m(1, 3, 8), m(4, 3, 3, 3)), ValueError, r"x: expected a 4-D array \(NCHW\), got rank 3"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3)), ValueError, r"w: expected a 4-D array"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), stride=0), ValueError, r"stride: expected positive values"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), stride=(1, -2)), ValueError, r"stride: expected positive values"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), dilation=0), ValueError, r"dilation: expected positive"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), padding=3), ValueError, r"padding: 3 on the height axis is larger than allowed \(at most 2"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), padding=-1), ValueError, r"padding: expected non-negative"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), padding="full"), ValueError, r"padding: expected an int, a pair, 'same' or 'valid'"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), padding="same", stride=2), ValueError, r"padding: 'same' needs stride 1"),
    (lambda: la.conv2d(m(1, 6, 8, 8), m(4, 3, 3, 3), groups=4), ValueError, r"groups: 4 does not divide the 6 input channels"),
    (lambda: la.conv2d(m(1, 6, 8, 8), m(3, 3, 3, 3), groups=2), ValueError, r"groups: 2 does not divide the 3 output channels"),
    (lambda: la.conv2d(m(1, 6, 8, 8), m(4, 6, 3, 3), groups=2), ValueError, r"w: expected shape \(OC, 3, KH, KW\)"),
    (lambda: la.conv2d(m(1, 6, 8, 8), m(4, 6, 3, 3), groups=0), ValueError, r"groups: expected a positive int"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), layout="CHWN"), ValueError, r"layout: unknown layout 'CHWN'"),
    (lambda: la.conv2d(m(1, 3, 2, 2), m(4, 3, 5, 5)), ValueError, r"x: spatial size 2x2 is smaller than the dilated kernel 5x5"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), activation="swish"), ValueError, r"activation: unknown activation"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), bias=m(3)), ValueError, r"bias: expected shape \(4,\)"),
    (lambda: la.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3, dtype=np.int8)), TypeError, r"w: dtype int8 does not match x dtype float32"),
])
def test_bad_input_is_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_unavailable_backend_says_why(monkeypatch):
    from lepton_accel.backends import REGISTRY

    cuda = REGISTRY["cuda"]
    monkeypatch.setattr(type(cuda), "available", lambda self: (False, "no CUDA device present"))
    with pytest.raises(la.BackendUnavailable, match=r"backend: 'cuda' is not available: no CUDA device present"):
        la.matmul(m(2, 3), m(3, 2), backend="cuda")


def test_validation_runs_before_any_backend(monkeypatch):
    from lepton_accel.backends import cpu

    def fail(*args, **kwargs):
        raise AssertionError("a kernel ran on invalid input")

    monkeypatch.setattr(cpu.CpuBackend, "run", fail)
    with pytest.raises(ValueError, match="inner dimensions"):
        la.matmul(m(3, 4), m(5, 2), backend="cpu")
