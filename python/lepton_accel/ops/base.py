"""OpSpec, the OpDef every op module fills in, the op registry and the shared checks.

An :class:`OpSpec` is one validated description of an operation: shapes and dtypes, never
data, plus the op's own typed parameters (a frozen dataclass per op). The op module that
defines it (:mod:`.matmul`, :mod:`.conv2d`, ...) owns everything else about the op: its
validation, its float64/exact reference, its cost terms and its job-file fields. Every
check raises before any kernel runs, naming the argument and what was expected.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

from ..dtypes import OPERAND_DTYPES, RULES, is_integer, itemsize, normalize_dtype

ACTIVATIONS = (None, "relu", "gelu")  # "gelu" is the tanh approximation


@dataclass(frozen=True, slots=True)
class OpSpec:
    """What to compute: the op, operand shapes/dtypes, output, epilogue and the op's params."""

    op: str
    shapes: tuple[tuple[int, ...], ...]   # array operands in the op's order; bias separate
    dtype: str                             # operand dtype
    out_shape: tuple[int, ...]
    out_dtype: str
    acc_dtype: str
    bias: bool = False
    activation: str | None = None
    params: Any = None                     # the op's parameter dataclass
    #: the requantization epilogue: per output channel multiplier and shift operands
    #: (after the bias) take the int32 result to int8 (``numerics.requantize``)
    requant: bool = False

    @property
    def definition(self) -> "OpDef":
        return OPS[self.op]

    # ---- cost terms, from the op's definition ---------------------------------------
    @property
    def gemm_shape(self) -> tuple[int, int, int, int]:
        """(batch, M, N, K) of the GEMM this operation is (an implicit GEMM for convs)."""
        return self.definition.gemm_shape(self)

    @property
    def flops(self) -> int:
        return self.definition.flops(self)

    @property
    def bytes_in(self) -> int:
        return self.definition.bytes_in(self)

    @property
    def bytes_out(self) -> int:
        return math.prod(self.out_shape) * itemsize(self.out_dtype)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"op": self.op, "shapes": [list(s) for s in self.shapes], "dtype": self.dtype,
                "out_shape": list(self.out_shape), "out_dtype": self.out_dtype,
                "acc_dtype": self.acc_dtype, "bias": self.bias, "activation": self.activation,
                "requant": self.requant,
                "params": asdict(self.params) if self.params is not None else {}}

    @property
    def operand_names(self) -> tuple[str, ...]:
        """Names of the arrays a run takes: the op's operands, then ``bias`` and
        ``multiplier``, ``shift`` where the spec has them."""
        return (self.definition.operands + (("bias",) if self.bias else ())
                + (("multiplier", "shift") if self.requant else ()))

    @property
    def int32_spec(self) -> "OpSpec":
        """The same op without the requantization epilogue (int32 out, no activation:
        the activation then applies after requantizing, as in ``numerics.requantize``)."""
        from dataclasses import replace

        return replace(self, requant=False, out_dtype="int32", activation=None)


class OpDef:
    """One op: subclasses name it, type its parameters and define validation, reference
    and cost. Instances are registered in :data:`OPS` by :func:`register`."""

    #: the op's name, as in ``OpSpec.op`` and job files
    name: ClassVar[str]
    #: argument names of its array operands, in order (bias is separate)
    operands: ClassVar[tuple[str, ...]]
    #: JSON-schema properties of its parameters in job files (beyond operands, bias,
    #: activation and out_dtype)
    job_properties: ClassVar[dict[str, Any]] = {}

    def spec(self, shapes: tuple, dtypes: tuple, *, bias_shape=None, bias_dtype=None,
             activation=None, out_dtype=None, **params) -> OpSpec:
        """Validate operands and parameters into an OpSpec (raises ValueError/TypeError)."""
        raise NotImplementedError

    def params_from_job(self, doc: dict) -> dict[str, Any]:
        """Keyword parameters for :meth:`spec` from a job document (lists become tuples)."""
        return {k: (tuple(tuple(x) if isinstance(x, list) else x for x in doc[k])
                    if isinstance(doc[k], list) else doc[k])
                for k in self.job_properties if k in doc}

    def reference(self, spec: OpSpec, arrays, bias=None):
        """float64 result for float operands; int32 (wrapped modulo 2**32) for integers."""
        raise NotImplementedError

    # ---- cost terms ---------------------------------------------------------------------
    def gemm_shape(self, spec: OpSpec) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def flops(self, spec: OpSpec) -> int:
        batch, m, n, k = spec.gemm_shape
        return 2 * batch * m * n * k

    def channel_axis(self, spec: OpSpec) -> int:
        """Output axis the bias runs along."""
        return -1

    def bytes_in(self, spec: OpSpec) -> int:
        total = sum(math.prod(s) for s in spec.shapes) * itemsize(spec.dtype)
        if spec.bias:
            total += spec.out_shape[self.channel_axis(spec)] * itemsize(
                "int32" if spec.requant else spec.out_dtype)
        if spec.requant:
            total += 2 * spec.out_shape[self.channel_axis(spec)] * 4
        return total


#: op name -> its definition, filled by the op modules
OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    OPS[opdef.name] = opdef
    return opdef


def get_op(name) -> OpDef:
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise ValueError(f"op: unknown op {name!r}; expected one of {', '.join(OPS)}") from None


# ---- checks shared by the ops ----------------------------------------------------------
def as_int(value, name: str) -> int:
    """An int from an int or a NumPy integer scalar (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    return int(value)


def int_pair(value, name: str) -> tuple[int, int]:
    """An int (used twice) or a pair of ints; NumPy integer scalars accepted."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (int(value), int(value))
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                 for v in pair):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    return (int(pair[0]), int(pair[1]))


def shape_of(shape, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a shape (a sequence of ints), got {shape!r}") from None


def operand_dtype(names_dtypes) -> str:
    """The one operand dtype of an op, checked: every operand has it and it is allowed."""
    (first_name, first), *rest = names_dtypes
    for name, dt in names_dtypes:
        if dt not in OPERAND_DTYPES:
            raise TypeError(f"{name}: unsupported operand dtype {dt}; operands may be "
                            f"{', '.join(OPERAND_DTYPES)}")
    for name, dt in rest:
        if dt != first:
            raise TypeError(f"{name}: dtype {dt} does not match {first_name} dtype {first}; "
                            "operands must share one dtype (unsupported dtype mix)")
    return first


def out_dtype_for(dtype: str, out_dtype) -> tuple[str, str]:
    """(output dtype, accumulation dtype) of operands of ``dtype`` under the dtype rules."""
    acc, default, allowed = RULES[dtype]
    if out_dtype is None:
        return default, acc
    name = normalize_dtype(out_dtype, "out_dtype")
    if name not in allowed:
        raise TypeError(f"out_dtype: {name} is not allowed for {dtype} operands; "
                        f"expected one of {', '.join(allowed)}")
    return name, acc


def check_activation(activation, dtype: str) -> str | None:
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation: expected None, 'relu' or 'gelu', got "
                        f"{type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: unknown activation {activation!r}; expected one of "
                         "None, 'relu', 'gelu' (tanh approximation)")
    if activation == "gelu" and is_integer(dtype):
        raise ValueError(f"activation: 'gelu' is not defined for integer ({dtype} -> int32) "
                         "operations; use None or 'relu'")
    return activation


def check_requant(requant, dtype: str, activation, out_dtype) -> tuple[bool, str | None]:
    """(requant, out_dtype) of the requantization epilogue: integer operands only, the
    activation None or ReLU, the output int8 (``out_dtype`` None or "int8")."""
    if requant is not False and requant is not True:
        raise TypeError(f"requant: expected True or False, got {requant!r}")
    if not requant:
        return False, out_dtype
    if not is_integer(dtype):
        raise ValueError(f"requant: requantization applies to integer operands, got {dtype}")
    if activation not in (None, "relu"):
        raise ValueError(f"activation: {activation!r} cannot precede requantization; "
                         "expected None or 'relu'")
    if out_dtype is not None and normalize_dtype(out_dtype, "out_dtype") != "int8":
        raise TypeError(f"out_dtype: requantization gives int8, got out_dtype={out_dtype!r}")
    return True, None


def check_bias(bias_shape, bias_dtype, length: int, out_dtype: str) -> bool:
    if bias_shape is None:
        return False
    if tuple(bias_shape) != (length,):
        raise ValueError(f"bias: expected shape ({length},), got {tuple(bias_shape)}")
    ok = (bias_dtype == out_dtype) or (not is_integer(out_dtype) and bias_dtype == "float32")
    if not ok:
        raise TypeError(f"bias: dtype {bias_dtype} does not fit output dtype {out_dtype}; "
                        f"expected {out_dtype}" + ("" if is_integer(out_dtype) else " or float32"))
    return True
