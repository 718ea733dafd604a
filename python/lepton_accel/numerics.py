"""The arithmetic every op shares: GELU (tanh form), the int32 wrap, a per-channel add,
the int32 -> int8 requantization of the cores' output stage.

One definition each, used by the float64/exact reference and by the host kernels, so the
constant and the wrap rule cannot drift apart.
"""
from __future__ import annotations

import numpy as np

#: sqrt(2 / pi), the tanh-form GELU's inner scale
GELU_C = 0.7978845608028654
#: the cubic coefficient of the tanh-form GELU
GELU_A = 0.044715


def gelu(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in x's float type."""
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + GELU_A * x ** 3)))


def gelu_(x: np.ndarray) -> np.ndarray:
    """GELU in place on a float array (no temporaries beyond one), returns x."""
    inner = x * x
    inner *= GELU_A * x
    inner += x
    inner *= x.dtype.type(GELU_C)
    np.tanh(inner, out=inner)
    inner += 1.0
    x *= inner
    x *= 0.5
    return x


def gelu_grad(x: np.ndarray) -> np.ndarray:
    """d gelu(x) / dx of the tanh form."""
    u = GELU_C * (x + GELU_A * x ** 3)
    t = np.tanh(u)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x)


def wrap_int32(v: np.ndarray) -> np.ndarray:
    """Integers reduced modulo 2**32 into int32's range (two's complement), as int32."""
    return np.asarray(v).astype(np.int64, copy=False).astype(np.int32)


def along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A 1-D vector shaped to broadcast along ``axis`` of an ndim-array."""
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return np.asarray(v).reshape(shape)


def activate(acc: np.ndarray, activation: str | None) -> np.ndarray:
    """The epilogue's activation on an accumulator (a new array)."""
    if activation == "relu":
        return np.maximum(acc, 0)
    if activation == "gelu":
        return gelu(acc)
    return acc


def epilogue(acc: np.ndarray, bias, activation, integer: bool, channel_axis: int,
             requant=None) -> np.ndarray:
    """The reference epilogue on an int64/float64 accumulator: the bias (added in int32,
    wrapping, for integers), then the activation; integers come back as int32. With
    ``requant`` = (multiplier, shift) per channel (integers only) the int32 sums are
    requantized to int8 and a ReLU clamps the int8 values (:func:`requantize`)."""
    if integer:
        acc = wrap_int32(acc).astype(np.int64)
        if bias is not None:
            acc = acc + along(np.asarray(bias, np.int64), acc.ndim, channel_axis)
        if requant is not None:
            return requantize(wrap_int32(acc), requant[0], requant[1], channel_axis,
                              relu=activation == "relu")
        return activate(wrap_int32(acc), activation)
    if bias is not None:
        acc = acc + along(np.asarray(bias, np.float64), acc.ndim, channel_axis)
    return activate(acc, activation)


#: int8 saturation bounds of :func:`requantize`
INT8_MIN, INT8_MAX = -128, 127
#: range of a requantization shift (the cores' 6-bit field)
REQUANT_SHIFT_MAX = 63


def check_requant(multiplier, shift, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel requantization parameters as int32 (channels,) arrays: ``multiplier``
    an integer in int32's range, ``shift`` an integer in [0, 63]; a scalar applies to
    every channel. ValueError/TypeError naming the argument otherwise."""
    out = []
    for name, v, lo, hi in (("multiplier", multiplier, -2**31, 2**31 - 1),
                            ("shift", shift, 0, REQUANT_SHIFT_MAX)):
        a = np.asarray(v)
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integers, got {a.dtype}")
        if a.ndim == 0:
            a = np.full(channels, a, np.int64)
        if a.shape != (channels,):
            raise ValueError(f"{name}: expected shape ({channels},) (one per output "
                             f"channel) or a scalar, got {a.shape}")
        if a.size and (a.min() < lo or a.max() > hi):
            raise ValueError(f"{name}: values must lie in [{lo}, {hi}], got "
                             f"[{a.min()}, {a.max()}]")
        out.append(np.ascontiguousarray(a, np.int32))
    return out[0], out[1]


def requantize(acc, multiplier, shift, axis: int = -1, relu: bool = False) -> np.ndarray:
    """The cores' output stage: int32 ``acc`` times the per-channel int32 ``multiplier``
    (exact, 64 bits), divided by ``2**shift`` rounding to nearest with ties towards +inf
    (``(p + 2**(shift-1)) >> shift``; no rounding for shift 0), saturated to [-128, 127],
    then, with ``relu``, clamped at 0. Channels lie along ``axis``. Returns int8.

    Computed as ``(p >> shift) + bit shift-1 of p``, which equals the rounding add
    without its carry out of 64 bits, for every shift in [0, 63]."""
    a = np.asarray(acc)
    if a.dtype != np.int32:
        raise TypeError(f"acc: expected int32 sums, got {a.dtype}")
    m = along(np.asarray(multiplier, np.int64), a.ndim, axis)
    s = along(np.asarray(shift, np.int64), a.ndim, axis)
    p = a.astype(np.int64) * m                  # |p| <= 2**62
    y = p >> s
    y += (p >> np.maximum(s - 1, 0)) & (s > 0)  # the rounding bit
    np.clip(y, 0 if relu else INT8_MIN, INT8_MAX, out=y)
    return y.astype(np.int8)
