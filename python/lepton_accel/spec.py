"""OpSpec: one validated description of an operation.

The same description is validated here, costed by :mod:`lepton_accel.perf`, run by a
backend and placed by the scheduler. It holds shapes and dtypes, never data, so a job
file can describe an operation without its inputs. Every check raises before any
kernel runs, naming the argument and what was expected.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .dtypes import OPERAND_DTYPES, RULES, is_integer

ACTIVATIONS = (None, "relu", "gelu")  # "gelu" is the tanh approximation
LAYOUTS = ("NCHW", "NHWC")
OPS = ("matmul", "conv2d")


@dataclass(frozen=True)
class OpSpec:
    """What to compute: the operation, operand shapes/dtypes, output and epilogue."""

    op: str
    shapes: tuple[tuple[int, ...], ...]   # operand shapes: (a, b) or (x, w); bias separate
    dtype: str                             # operand dtype
    out_shape: tuple[int, ...]
    out_dtype: str
    acc_dtype: str
    bias: bool = False
    activation: str | None = None
    # conv2d only: stride, padding ((top, bottom), (left, right)), dilation, groups, layout
    params: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    @property
    def param(self) -> dict[str, Any]:
        return dict(self.params)

    # ---- sizes used by the cost model ---------------------------------------------
    @property
    def gemm_shape(self) -> tuple[int, int, int, int]:
        """(batch, M, N, K) of the GEMM this operation is (implicit GEMM for conv2d)."""
        if self.op == "matmul":
            a, b = self.shapes
            M = a[-2] if len(a) >= 2 else 1
            N = b[-1] if len(b) >= 2 else 1
            batch = math.prod(_broadcast(a[:-2], b[:-2]))
            return batch, M, N, a[-1]
        p = self.param
        x, w = self.shapes
        n = x[0]
        oh, ow = _spatial(self.out_shape, p["layout"])
        g = p["groups"]
        oc, cg, kh, kw = w
        return g, n * oh * ow, oc // g, cg * kh * kw

    @property
    def flops(self) -> int:
        batch, M, N, K = self.gemm_shape
        return 2 * batch * M * N * K

    @property
    def bytes_in(self) -> int:
        from .dtypes import DTYPES

        item = DTYPES[self.dtype].itemsize
        total = sum(math.prod(s) for s in self.shapes) * item
        if self.bias:
            total += self.out_shape[self._channel_axis()] * DTYPES[self.out_dtype].itemsize
        return total

    @property
    def bytes_out(self) -> int:
        from .dtypes import DTYPES

        return math.prod(self.out_shape) * DTYPES[self.out_dtype].itemsize

    def _channel_axis(self) -> int:
        if self.op == "matmul":
            return -1
        return 1 if self.param["layout"] == "NCHW" else -1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"] = [list(s) for s in self.shapes]
        d["out_shape"] = list(self.out_shape)
        d["params"] = {k: v for k, v in self.params}
        return d


def _spatial(shape, layout):
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


# ---- validation helpers --------------------------------------------------------------
def _check_operand_dtypes(names_dtypes: list[tuple[str, str]]) -> str:
    (first_name, first), *rest = names_dtypes
    for name, dt in names_dtypes:
        if dt not in OPERAND_DTYPES:
            raise TypeError(f"{name}: unsupported dtype {dt}; expected one of "
                            f"{', '.join(OPERAND_DTYPES)}")
    for name, dt in rest:
        if dt != first:
            raise TypeError(f"{name}: dtype {dt} does not match {first_name} dtype {first}; "
                            "operands must share one dtype (unsupported dtype mix)")
    return first


def _resolve_out_dtype(dtype: str, out_dtype) -> tuple[str, str]:
    acc, default, allowed = RULES[dtype]
    if out_dtype is None:
        return default, acc
    from .dtypes import dtype_name

    name = out_dtype if isinstance(out_dtype, str) else dtype_name(out_dtype)
    if name not in allowed:
        raise TypeError(f"out_dtype: {name} is not allowed for {dtype} operands; "
                        f"expected one of {', '.join(allowed)}")
    return name, acc


def _check_activation(activation, dtype: str) -> str | None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: unknown activation {activation!r}; expected one of "
                         "None, 'relu', 'gelu' (tanh approximation)")
    if activation == "gelu" and is_integer(dtype):
        raise ValueError("activation: 'gelu' is not defined for integer (int8 -> int32) "
                         "operations; use None or 'relu'")
    return activation


def _check_bias(bias_shape, bias_dtype, length: int, out_dtype: str) -> bool:
    if bias_shape is None:
        return False
    if tuple(bias_shape) != (length,):
        raise ValueError(f"bias: expected shape ({length},), got {tuple(bias_shape)}")
    ok = (bias_dtype == out_dtype) or (not is_integer(out_dtype) and bias_dtype == "float32")
    if not ok:
        raise TypeError(f"bias: dtype {bias_dtype} does not fit output dtype {out_dtype}; "
                        f"expected {out_dtype}" + ("" if is_integer(out_dtype) else " or float32"))
    return True


# ---- matmul ---------------------------------------------------------------------------
def matmul_spec(a_shape, a_dtype, b_shape, b_dtype, *, bias_shape=None, bias_dtype=None,
                activation=None, out_dtype=None, allow_tf32=False) -> OpSpec:
    """Validate a matmul with NumPy's semantics (1-D promotion, broadcast batch dims).

    ``allow_tf32`` lets float32 operands run on TF32 tensor cores (10-bit mantissa
    products, float32 accumulation) where a backend has them; without it float32 is exact.
    """
    a_shape, b_shape = tuple(int(s) for s in a_shape), tuple(int(s) for s in b_shape)
    if len(a_shape) == 0:
        raise ValueError("a: expected an array of rank >= 1, got a scalar (rank 0)")
    if len(b_shape) == 0:
        raise ValueError("b: expected an array of rank >= 1, got a scalar (rank 0)")
    dtype = _check_operand_dtypes([("a", a_dtype), ("b", b_dtype)])
    out_dt, acc = _resolve_out_dtype(dtype, out_dtype)
    activation = _check_activation(activation, dtype)
    ka = a_shape[-1]
    kb = b_shape[-2] if len(b_shape) >= 2 else b_shape[0]
    if ka != kb:
        raise ValueError(f"b: inner dimensions do not match: a has shape {a_shape} (K={ka}) "
                         f"but b has shape {b_shape} (K={kb}); expected b.shape[-2] == a.shape[-1]")
    a_batch = a_shape[:-2] if len(a_shape) >= 2 else ()
    b_batch = b_shape[:-2] if len(b_shape) >= 2 else ()
    batch = _broadcast(a_batch, b_batch)
    out = list(batch)
    if len(a_shape) >= 2:
        out.append(a_shape[-2])
    if len(b_shape) >= 2:
        out.append(b_shape[-1])
    n = b_shape[-1] if len(b_shape) >= 2 else None
    has_bias = False
    if bias_shape is not None:
        if n is None:
            raise ValueError("bias: a bias needs a 2-D (or batched) b with an N dimension")
        has_bias = _check_bias(bias_shape, bias_dtype, n, out_dt)
    if not isinstance(allow_tf32, bool):
        raise TypeError(f"allow_tf32: expected True or False, got {allow_tf32!r}")
    if allow_tf32 and dtype != "float32":
        raise ValueError(f"allow_tf32: applies to float32 operands only, got {dtype}")
    params = (("allow_tf32", True),) if allow_tf32 else ()
    return OpSpec("matmul", (a_shape, b_shape), dtype, tuple(out), out_dt, acc,
                  has_bias, activation, params)


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            raise ValueError(f"b: batch dimensions {b} cannot be broadcast with a's {a}")
        out.append(y if x == 1 else x)
    return tuple(reversed(out))


# ---- conv2d ---------------------------------------------------------------------------
def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def conv2d_spec(x_shape, x_dtype, w_shape, w_dtype, *, bias_shape=None, bias_dtype=None,
                stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
                activation=None, out_dtype=None) -> OpSpec:
    """Validate a 2-D convolution with PyTorch's meaning of the parameters.

    ``x`` is (N, C, H, W) for NCHW or (N, H, W, C) for NHWC; ``w`` is always
    (OC, C // groups, KH, KW). ``padding`` is an int, a pair, or "same"/"valid".
    Padding on a side may not exceed the dilated kernel extent minus one: beyond it,
    output pixels would see no input at all.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown layout {layout!r}; expected 'NCHW' or 'NHWC'")
    x_shape, w_shape = tuple(int(s) for s in x_shape), tuple(int(s) for s in w_shape)
    if len(x_shape) != 4:
        raise ValueError(f"x: expected a 4-D array ({layout}), got rank {len(x_shape)} "
                         f"shape {x_shape}")
    if len(w_shape) != 4:
        raise ValueError(f"w: expected a 4-D array (OC, C/groups, KH, KW), got rank "
                         f"{len(w_shape)} shape {w_shape}")
    dtype = _check_operand_dtypes([("x", x_dtype), ("w", w_dtype)])
    out_dt, acc = _resolve_out_dtype(dtype, out_dtype)
    activation = _check_activation(activation, dtype)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups: expected a positive int, got {groups!r}")
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    if sh < 1 or sw < 1:
        raise ValueError(f"stride: expected positive values, got {(sh, sw)}")
    if dh < 1 or dw < 1:
        raise ValueError(f"dilation: expected positive values, got {(dh, dw)}")
    if layout == "NCHW":
        n, c, h, w_in = x_shape
    else:
        n, h, w_in, c = x_shape
    oc, cg, kh, kw = w_shape
    if c % groups:
        raise ValueError(f"groups: {groups} does not divide the {c} input channels of x")
    if oc % groups:
        raise ValueError(f"groups: {groups} does not divide the {oc} output channels of w")
    if cg != c // groups:
        raise ValueError(f"w: expected shape (OC, {c // groups}, KH, KW) for {c} input channels "
                         f"in {groups} group(s), got {w_shape}")
    if kh < 1 or kw < 1:
        raise ValueError(f"w: kernel size must be at least 1x1, got {kh}x{kw}")
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0), (0, 0))
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError(f"padding: 'same' needs stride 1, got stride {(sh, sw)}")
            pads = ((ext_h - 1) // 2, ext_h - 1 - (ext_h - 1) // 2), \
                   ((ext_w - 1) // 2, ext_w - 1 - (ext_w - 1) // 2)
        else:
            raise ValueError(f"padding: expected an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        ph, pw = _pair(padding, "padding")
        if ph < 0 or pw < 0:
            raise ValueError(f"padding: expected non-negative values, got {(ph, pw)}")
        pads = ((ph, ph), (pw, pw))
    for (lo, hi), ext, axis in ((pads[0], ext_h, "height"), (pads[1], ext_w, "width")):
        if max(lo, hi) > ext - 1:
            raise ValueError(f"padding: {max(lo, hi)} on the {axis} axis is larger than allowed "
                             f"(at most {ext - 1}, the dilated kernel extent {ext} minus one)")
    oh = (h + pads[0][0] + pads[0][1] - ext_h) // sh + 1
    ow = (w_in + pads[1][0] + pads[1][1] - ext_w) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"x: spatial size {h}x{w_in} is smaller than the dilated kernel "
                         f"{ext_h}x{ext_w} after padding; the output would be empty")
    out = (n, oc, oh, ow) if layout == "NCHW" else (n, oh, ow, oc)
    has_bias = _check_bias(bias_shape, bias_dtype, oc, out_dt)
    params = (("stride", (sh, sw)), ("padding", pads), ("dilation", (dh, dw)),
              ("groups", groups), ("layout", layout))
    return OpSpec("conv2d", (x_shape, w_shape), dtype, out, out_dt, acc, has_bias,
                  activation, params)
