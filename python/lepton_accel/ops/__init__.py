"""The ops: each defined once, in its own module (typed parameters, validation, float64/
exact reference, cost terms, job-file fields), registered in :data:`OPS`.

    >>> from lepton_accel.ops import get_op
    >>> get_op("matmul").spec(((2, 3), (3, 4)), ("float32", "float32")).out_shape
    (2, 4)
"""
from __future__ import annotations

from .base import ACTIVATIONS, OPS, OpDef, OpSpec, get_op, register
from .conv2d import CONV2D, LAYOUTS, Conv2dParams
from .conv2d_grad import (CONV2D_GRAD_INPUT, CONV2D_GRAD_WEIGHT, Conv2dGradInputParams,
                          Conv2dGradWeightParams)
from .matmul import MATMUL, MatmulParams


def matmul_spec(a_shape, a_dtype, b_shape, b_dtype, **kw) -> OpSpec:
    """The OpSpec of a matmul (see :mod:`.matmul`)."""
    return MATMUL.spec((a_shape, b_shape), (a_dtype, b_dtype), **kw)


def conv2d_spec(x_shape, x_dtype, w_shape, w_dtype, **kw) -> OpSpec:
    """The OpSpec of a conv2d (see :mod:`.conv2d`)."""
    return CONV2D.spec((x_shape, w_shape), (x_dtype, w_dtype), **kw)


__all__ = ["ACTIVATIONS", "LAYOUTS", "OPS", "OpDef", "OpSpec", "get_op", "register",
           "MATMUL", "CONV2D", "MatmulParams", "Conv2dParams", "matmul_spec", "conv2d_spec",
           "CONV2D_GRAD_INPUT", "CONV2D_GRAD_WEIGHT", "Conv2dGradInputParams",
           "Conv2dGradWeightParams"]
