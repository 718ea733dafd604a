"""The dtype table and the arithmetic rules of every operation.

Rules (enforced by :mod:`lepton_accel.ops`, followed by every backend):

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

bfloat16 comes from ``ml_dtypes``, whose extension takes about half a second to load:
it is imported the first time a bfloat16 dtype is needed, not with the package.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping

import numpy as np

#: operand dtype -> (accumulation dtype, default output dtype, allowed output dtypes)
RULES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "float32": ("float32", "float32", ("float32",)),
    "float16": ("float32", "float16", ("float16", "float32")),
    "bfloat16": ("float32", "bfloat16", ("bfloat16", "float32")),
    "int8": ("int32", "int32", ("int32",)),
    "int16": ("int32", "int32", ("int32",)),
}

OPERAND_DTYPES = tuple(RULES)
#: every dtype the toolkit accepts or returns
NAMES = ("float32", "float16", "bfloat16", "int8", "int16", "int32")
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "int16": 2, "int32": 4}
_EAGER = {n: np.dtype(n) for n in NAMES if n != "bfloat16"}
#: NumPy dtype -> name, for the dtypes NumPy knows without ml_dtypes
_BY_DTYPE: dict[np.dtype, str] = {d: n for n, d in _EAGER.items()}
_ALL: dict[str, np.dtype] = dict(_EAGER)   # grows by bfloat16 once it is loaded


def _bfloat16() -> np.dtype:
    import ml_dtypes

    d = np.dtype(ml_dtypes.bfloat16)
    _BY_DTYPE.setdefault(d, "bfloat16")
    return d


class _DtypeTable(Mapping):
    """name -> NumPy dtype; bfloat16 is resolved (ml_dtypes imported) on first use."""

    def __getitem__(self, name: str) -> np.dtype:
        d = _ALL.get(name)
        if d is not None:
            return d
        if name == "bfloat16":
            _ALL["bfloat16"] = d = _bfloat16()
            return d
        raise KeyError(name)

    def __iter__(self):
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)

    def __contains__(self, name) -> bool:
        return name in _ITEMSIZE


#: name -> NumPy dtype for every dtype the toolkit accepts or returns
DTYPES: Mapping[str, np.dtype] = _DtypeTable()


def __getattr__(name):
    if name == "bfloat16":
        return _bfloat16()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def itemsize(name: str) -> int:
    return _ITEMSIZE[name]


def dtype_name(dt) -> str:
    """Canonical name of a NumPy-compatible dtype (``str(dtype)`` for ones outside the
    table), or raise TypeError."""
    if isinstance(dt, np.dtype):
        d = dt
    else:
        try:
            d = np.dtype(dt)
        except TypeError as exc:
            raise TypeError(f"unknown dtype {dt!r}") from exc
    name = _BY_DTYPE.get(d)
    if name is None and "ml_dtypes" in sys.modules:  # a bfloat16 array exists: register it
        _bfloat16()
        name = _BY_DTYPE.get(d)
    return name or str(d)


def normalize_dtype(value, argname: str) -> str:
    """A dtype argument as its canonical name: a name ('float32', 'f4'), a NumPy dtype or
    type, or a framework dtype such as ``torch.float32``."""
    if isinstance(value, str) and value in _ITEMSIZE:
        return value
    mod = type(value).__module__.split(".")[0]
    if mod in ("torch", "jax", "jaxlib", "cupy") and not isinstance(value, type):
        text = str(value).rsplit(".", 1)[-1]
        if text in _ITEMSIZE:
            return text
    if isinstance(value, (str, np.dtype)) or (isinstance(value, type) and issubclass(value, np.generic)):
        try:
            name = dtype_name(value)
        except TypeError:
            name = None
        if name in _ITEMSIZE:
            return name
        raise TypeError(f"{argname}: unknown or unsupported dtype {value!r}; expected one of "
                        f"{', '.join(NAMES)}")
    raise TypeError(f"{argname}: expected a dtype (a name such as 'float32', a NumPy dtype or a "
                    f"torch dtype), got {type(value).__name__} {value!r}")


def is_integer(name: str) -> bool:
    return name.startswith("int")
