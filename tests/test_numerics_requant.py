"""numerics.requantize, the model of the cores' output stage, against Python's exact
integers, and its parameter checks."""
from __future__ import annotations

import numpy as np
import pytest

from lepton_accel import numerics


def exact(acc, m, s, relu=False):
    """Round(acc * m / 2**s), ties towards +inf, saturated to int8, in Python ints."""
    p = int(acc) * int(m)
    y = (p + ((1 << int(s)) >> 1)) >> int(s)
    y = max(-128, min(127, y))
    return max(y, 0) if relu else y


@pytest.mark.parametrize("relu", [False, True])
def test_requantize_matches_exact_integers(rng, relu):
    acc = rng.integers(-2**31, 2**31, (40, 16)).astype(np.int32)
    acc[0] = [-2**31, 2**31 - 1, 0, -1, 1, 3, -3, 5, -5, 2**30, -2**30, 7, -7, 255, -256, 128]
    mult = rng.integers(-2**31, 2**31, 16)
    mult[:4] = [-2**31, 2**31 - 1, 1, 0]
    shift = rng.integers(0, 64, 16)
    shift[:6] = [0, 63, 62, 1, 31, 0]
    # a block of realistic scales (outputs inside int8, few saturating)
    mult[8:] = rng.integers(2**30, 2**31, 8)
    shift[8:] = rng.integers(54, 59, 8)                  # |acc| up to 2**31
    got = numerics.requantize(acc, mult, shift, axis=1, relu=relu)
    assert got.dtype == np.int8
    want = np.array([[exact(acc[i, j], mult[j], shift[j], relu) for j in range(16)]
                     for i in range(acc.shape[0])])
    np.testing.assert_array_equal(got, want)
    # the realistic block is not all saturated: the test sees rounding, not only clamps
    assert (np.abs(want[:, 8:]) < 127).mean() > 0.2


def test_requantize_ties_and_extremes():
    acc = np.array([[-3, -1, 1, 3, 5]], np.int32).T          # x / 2 with ties
    np.testing.assert_array_equal(numerics.requantize(acc, 1, 1, axis=1).ravel(),
                                  [-1, 0, 1, 2, 3])
    big = np.array([[-2**31], [2**31 - 1]], np.int32)
    # (-2**31)**2 = 2**62, >> 63 rounds up to 1 (the rounding bit is bit 62)
    np.testing.assert_array_equal(numerics.requantize(big, -2**31, 63, axis=1).ravel(), [1, 0])
    np.testing.assert_array_equal(numerics.requantize(big, -2**31, 0, axis=1).ravel(),
                                  [127, -128])
    np.testing.assert_array_equal(numerics.requantize(big, -2**31, 0, axis=1, relu=True)
                                  .ravel(), [127, 0])
    with pytest.raises(TypeError, match="acc"):
        numerics.requantize(big.astype(np.int64), 1, 1)


def test_check_requant():
    m, s = numerics.check_requant(2**30, 7, 3)
    assert m.dtype == s.dtype == np.int32 and list(s) == [7, 7, 7]
    with pytest.raises(ValueError, match="multiplier"):
        numerics.check_requant([1, 2], [1, 2, 3], 3)
    with pytest.raises(ValueError, match="multiplier"):
        numerics.check_requant(2**31, 1, 3)
    with pytest.raises(ValueError, match="shift"):
        numerics.check_requant(1, 64, 3)
    with pytest.raises(ValueError, match="shift"):
        numerics.check_requant(1, -1, 3)
    with pytest.raises(TypeError, match="shift"):
        numerics.check_requant(1, 1.5, 3)
    with pytest.raises(TypeError, match="multiplier"):
        numerics.check_requant(np.array([True, False, True]), 1, 3)
