"""matmul: ``activation(a @ b + bias)`` with NumPy's semantics (1-D promotion, broadcast
batch dimensions); ``allow_tf32`` lets float32 run on TF32 tensor cores."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import numerics
from ..dtypes import is_integer
from .base import (OpDef, OpSpec, check_activation, check_bias, check_requant, operand_dtype,
                   out_dtype_for, register, shape_of)


@dataclass(frozen=True, slots=True)
class MatmulParams:
    allow_tf32: bool = False   # float32 operands may use TF32 tensor cores (10-bit products)


_NO_TF32 = MatmulParams()


def broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcast of two batch shapes (b is the argument named when they clash)."""
    if a == b:
        return a
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            raise ValueError(f"b: batch dimensions {b} cannot be broadcast with a's {a}")
        out.append(y if x == 1 else x)
    return tuple(reversed(out))


class Matmul(OpDef):
    name = "matmul"
    operands = ("a", "b")
    job_properties = {"allow_tf32": {"type": "boolean"}}

    def spec(self, shapes, dtypes, *, bias_shape=None, bias_dtype=None, activation=None,
             out_dtype=None, allow_tf32=False, requant=False) -> OpSpec:
        a_shape, b_shape = shape_of(shapes[0], "a"), shape_of(shapes[1], "b")
        if len(a_shape) == 0:
            raise ValueError("a: expected an array of rank >= 1, got a scalar (rank 0)")
        if len(b_shape) == 0:
            raise ValueError("b: expected an array of rank >= 1, got a scalar (rank 0)")
        dtype = operand_dtype((("a", dtypes[0]), ("b", dtypes[1])))
        activation = check_activation(activation, dtype)
        requant, out_dtype = check_requant(requant, dtype, activation, out_dtype)
        out_dt, acc = out_dtype_for(dtype, out_dtype)
        ka = a_shape[-1]
        kb = b_shape[-2] if len(b_shape) >= 2 else b_shape[0]
        if ka != kb:
            raise ValueError(f"b: inner dimensions do not match: a has shape {a_shape} (K={ka}) "
                             f"but b has shape {b_shape} (K={kb}); expected b.shape[-2] == "
                             "a.shape[-1]")
        batch = broadcast(a_shape[:-2], b_shape[:-2])
        out = batch + a_shape[-2:-1] + b_shape[-1:] if len(b_shape) >= 2 else batch + a_shape[-2:-1]
        has_bias = False
        if requant and len(b_shape) < 2:
            raise ValueError("requant: per-channel requantization needs a 2-D (or batched) b "
                             "with an N dimension")
        if bias_shape is not None:
            if len(b_shape) < 2:
                raise ValueError("bias: a bias needs a 2-D (or batched) b with an N dimension")
            has_bias = check_bias(bias_shape, bias_dtype, b_shape[-1], out_dt)
        if allow_tf32 is not False and allow_tf32 is not True:
            raise TypeError(f"allow_tf32: expected True or False, got {allow_tf32!r}")
        if allow_tf32 and dtype != "float32":
            raise ValueError(f"allow_tf32: applies to float32 operands only, got {dtype}")
        params = MatmulParams(True) if allow_tf32 else _NO_TF32
        if requant:
            out_dt = "int8"
        return OpSpec("matmul", (a_shape, b_shape), dtype, out, out_dt, acc, has_bias,
                      activation, params, requant)

    def reference(self, spec: OpSpec, arrays, bias=None, requant=None):
        a, b = (np.asarray(v) for v in arrays)
        integer = is_integer(spec.dtype)
        t = np.int64 if integer else np.float64
        acc = np.matmul(a.astype(t), b.astype(t))
        return numerics.epilogue(acc, bias, spec.activation, integer, -1, requant)

    def gemm_shape(self, spec: OpSpec):
        a, b = spec.shapes
        m = a[-2] if len(a) >= 2 else 1
        n = b[-1] if len(b) >= 2 else 1
        return math.prod(broadcast(a[:-2], b[:-2])), m, n, a[-1]


MATMUL = register(Matmul())
