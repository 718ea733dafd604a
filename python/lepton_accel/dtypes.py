"""The dtype table and the arithmetic rules of every operation.

Rules (enforced by :mod:`lepton_accel.spec`, followed by every backend):

=========  ============  ===========  ===========================================
operands   accumulation  default out  allowed ``out_dtype``
=========  ============  ===========  ===========================================
float32    float32       float32      float32
float16    float32       float16      float16, float32
bfloat16   float32       bfloat16     bfloat16, float32
int8       int32 (wrap)  int32        int32
int16      int32 (wrap)  int32        int32
=========  ============  ===========  ===========================================

Both operands must have the same dtype. Integer accumulation wraps modulo 2**32
(two's complement), as int32 hardware accumulators do; bias is added in int32 and
ReLU is applied to the wrapped value. The epilogue (bias, activation) runs on the
float32 accumulator for float operands and is rounded to the output dtype once.
"""
from __future__ import annotations

import numpy as np
import ml_dtypes

bfloat16 = np.dtype(ml_dtypes.bfloat16)

#: name -> NumPy dtype for every dtype the toolkit accepts or returns
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": bfloat16,
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
}

#: operand dtype -> (accumulation dtype, default output dtype, allowed output dtypes)
RULES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "float32": ("float32", "float32", ("float32",)),
    "float16": ("float32", "float16", ("float16", "float32")),
    "bfloat16": ("float32", "bfloat16", ("bfloat16", "float32")),
    "int8": ("int32", "int32", ("int32",)),
    "int16": ("int32", "int32", ("int32",)),
}

OPERAND_DTYPES = tuple(RULES)


def dtype_name(dt) -> str:
    """Canonical name of a NumPy-compatible dtype, or raise TypeError."""
    try:
        d = np.dtype(dt)
    except TypeError as exc:
        raise TypeError(f"unknown dtype {dt!r}") from exc
    for name, known in DTYPES.items():
        if d == known:
            return name
    return str(d)


def is_integer(name: str) -> bool:
    return name.startswith("int")
