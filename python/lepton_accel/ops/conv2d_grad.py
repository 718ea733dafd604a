"""The two gradients of conv2d, as ops of their own (what a training step's backward runs).

``conv2d_grad_input``  (dy, w) -> dx: the gradient of ``conv2d(x, w)`` with respect to x,
contracted with the output gradient dy; dx has x's shape and dy's layout.
``conv2d_grad_weight`` (x, dy) -> dw: the gradient with respect to w, shape
(OC, C/groups, KH, KW) in either layout.

The parameters mean what they mean for the forward conv2d (:mod:`.conv2d`, whose geometry
checks these reuse); the forward's input size (``input_hw``) or kernel size
(``kernel_hw``) is a parameter because a strided forward maps several input sizes to one
output size. Float operands only (float32, float16, bfloat16), float32 accumulation, no
bias or activation: the caller applies the activation's derivative to dy beforehand.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import OpDef, OpSpec, as_int, int_pair, operand_dtype, out_dtype_for, register, shape_of
from .conv2d import Conv2d, Conv2dParams, check_layout, conv_geometry

_FLOAT = ("float32", "float16", "bfloat16")
_HW = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2,
       "maxItems": 2}


@dataclass(frozen=True, slots=True)
class Conv2dGradInputParams(Conv2dParams):
    input_hw: tuple[int, int] = (1, 1)    # (H, W) of the forward's x


@dataclass(frozen=True, slots=True)
class Conv2dGradWeightParams(Conv2dParams):
    kernel_hw: tuple[int, int] = (1, 1)   # (KH, KW) of the forward's w


def _float_dtype(names_dtypes, op: str) -> str:
    dtype = operand_dtype(names_dtypes)
    if dtype not in _FLOAT:
        raise TypeError(f"{names_dtypes[0][0]}: {op} takes float operands "
                        f"({', '.join(_FLOAT)}), got {dtype}")
    return dtype


def _no_epilogue(op: str, bias_shape, activation) -> None:
    if bias_shape is not None:
        raise ValueError(f"bias: {op} takes no bias (the bias gradient is dy summed over "
                         "batch and space)")
    if activation is not None:
        raise ValueError(f"activation: {op} takes no activation (apply the activation's "
                         "derivative to dy first)")


def _hw(value, name: str) -> tuple[int, int]:
    hw = int_pair(value, name)
    if hw[0] < 1 or hw[1] < 1:
        raise ValueError(f"{name}: expected positive sizes, got {hw}")
    return hw


def _geometry(x_shape, w_shape, rename: dict[str, str], **conv):
    """conv_geometry with the forward's argument names mapped to this op's."""
    try:
        return conv_geometry(x_shape, w_shape, **conv)
    except ValueError as exc:
        head, sep, rest = str(exc).partition(":")
        if sep and head in rename:
            raise ValueError(f"{rename[head]}:{rest}") from None
        raise


def _groups(groups) -> int | None:
    """groups when it is a valid count (else None: conv_geometry then says what is wrong)."""
    try:
        g = as_int(groups, "groups")
    except TypeError:
        return None
    return g if g >= 1 else None


def _check_dy(dy_shape, expected, layout: str) -> None:
    if tuple(dy_shape) != tuple(expected):
        raise ValueError(f"dy: expected shape {tuple(expected)} ({layout}), the forward's "
                         f"output for these parameters, got {tuple(dy_shape)}")


def _dy_channels(dy_shape, layout: str) -> int:
    if len(dy_shape) != 4:
        raise ValueError(f"dy: expected a 4-D array ({layout}), got rank {len(dy_shape)} "
                         f"shape {tuple(dy_shape)}")
    return dy_shape[1] if layout == "NCHW" else dy_shape[3]


def _nchw64(a, layout: str) -> np.ndarray:
    a = np.asarray(a)
    return (a if layout == "NCHW" else a.transpose(0, 3, 1, 2)).astype(np.float64)


def _taps(p: Conv2dParams, kh: int, kw: int, oh: int, ow: int):
    """(i, j, row slice, column slice) of every kernel tap in the padded input."""
    (sh, sw), (dh, dw) = p.stride, p.dilation
    for i in range(kh):
        for j in range(kw):
            yield (i, j, slice(i * dh, i * dh + sh * (oh - 1) + 1, sh),
                   slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))


class _ConvGrad(OpDef):
    job_properties = dict(Conv2d.job_properties)

    def channel_axis(self, spec: OpSpec) -> int:
        return 1 if spec.params.layout == "NCHW" else -1


class Conv2dGradInput(_ConvGrad):
    name = "conv2d_grad_input"
    operands = ("dy", "w")
    job_properties = {**_ConvGrad.job_properties, "input_hw": _HW}

    def spec(self, shapes, dtypes, *, bias_shape=None, bias_dtype=None, activation=None,
             out_dtype=None, input_hw=None, stride=1, padding=0, dilation=1, groups=1,
             layout="NCHW") -> OpSpec:
        dy_shape, w_shape = shape_of(shapes[0], "dy"), shape_of(shapes[1], "w")
        dtype = _float_dtype((("dy", dtypes[0]), ("w", dtypes[1])), self.name)
        out_dt, acc = out_dtype_for(dtype, out_dtype)
        _no_epilogue(self.name, bias_shape, activation)
        if input_hw is None:
            raise TypeError("input_hw: required, the (H, W) of the forward's input x")
        h, w = _hw(input_hw, "input_hw")
        layout = check_layout(layout)
        _dy_channels(dy_shape, layout)
        if len(w_shape) != 4:
            raise ValueError(f"w: expected a 4-D array (OC, C/groups, KH, KW), got rank "
                             f"{len(w_shape)} shape {w_shape}")
        n, c = dy_shape[0], w_shape[1] * (_groups(groups) or 1)
        x_shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
        conv, out = _geometry(x_shape, w_shape, {"x": "input_hw"}, stride=stride,
                              padding=padding, dilation=dilation, groups=groups, layout=layout)
        _check_dy(dy_shape, out, layout)
        params = Conv2dGradInputParams(conv.stride, conv.padding, conv.dilation, conv.groups,
                                       conv.layout, (h, w))
        return OpSpec(self.name, (dy_shape, w_shape), dtype, x_shape, out_dt, acc, False,
                      None, params)

    def reference(self, spec: OpSpec, arrays, bias=None):
        """dx by direct summation: every tap scatters dy times its weights back onto the
        input positions it read (float64)."""
        p = spec.params
        dy = _nchw64(arrays[0], p.layout)
        wt = np.asarray(arrays[1]).astype(np.float64)
        n, _, oh, ow = dy.shape
        oc, cg, kh, kw = wt.shape
        h, w = p.input_hw
        (pt, pb), (pl, pr) = p.padding
        dxp = np.zeros((n, cg * p.groups, h + pt + pb, w + pl + pr))
        ocg = oc // p.groups
        for g in range(p.groups):
            dyg, wg = dy[:, g * ocg:(g + 1) * ocg], wt[g * ocg:(g + 1) * ocg]
            for i, j, rows, cols in _taps(p, kh, kw, oh, ow):
                dxp[:, g * cg:(g + 1) * cg, rows, cols] += np.einsum(
                    "nohw,oc->nchw", dyg, wg[:, :, i, j])
        dx = dxp[:, :, pt:pt + h, pl:pl + w]
        return dx if p.layout == "NCHW" else dx.transpose(0, 2, 3, 1)

    def gemm_shape(self, spec: OpSpec):
        """Per group: dy (N*OH*OW, OC/g) @ w_g (OC/g, C/g*KH*KW), then col2im."""
        p = spec.params
        dy_shape, (oc, cg, kh, kw) = spec.shapes
        oh, ow = p.spatial(dy_shape)
        return p.groups, dy_shape[0] * oh * ow, cg * kh * kw, oc // p.groups


class Conv2dGradWeight(_ConvGrad):
    name = "conv2d_grad_weight"
    operands = ("x", "dy")
    job_properties = {**_ConvGrad.job_properties, "kernel_hw": _HW}

    def spec(self, shapes, dtypes, *, bias_shape=None, bias_dtype=None, activation=None,
             out_dtype=None, kernel_hw=None, stride=1, padding=0, dilation=1, groups=1,
             layout="NCHW") -> OpSpec:
        x_shape, dy_shape = shape_of(shapes[0], "x"), shape_of(shapes[1], "dy")
        dtype = _float_dtype((("x", dtypes[0]), ("dy", dtypes[1])), self.name)
        out_dt, acc = out_dtype_for(dtype, out_dtype)
        _no_epilogue(self.name, bias_shape, activation)
        if kernel_hw is None:
            raise TypeError("kernel_hw: required, the (KH, KW) of the forward's filter w")
        kh, kw = _hw(kernel_hw, "kernel_hw")
        layout = check_layout(layout)
        oc = _dy_channels(dy_shape, layout)
        if len(x_shape) != 4:
            raise ValueError(f"x: expected a 4-D array ({layout}), got rank {len(x_shape)} "
                             f"shape {x_shape}")
        c = x_shape[1] if layout == "NCHW" else x_shape[3]
        g = _groups(groups)
        if g is not None and oc % g:
            raise ValueError(f"groups: {g} does not divide the {oc} output channels of dy")
        cg = c // g if g is not None and c % g == 0 else c
        w_shape = (oc, cg, kh, kw)
        conv, out = _geometry(x_shape, w_shape, {"w": "dy"}, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, layout=layout)
        _check_dy(dy_shape, out, layout)
        params = Conv2dGradWeightParams(conv.stride, conv.padding, conv.dilation, conv.groups,
                                        conv.layout, (kh, kw))
        return OpSpec(self.name, (x_shape, dy_shape), dtype, w_shape, out_dt, acc, False,
                      None, params)

    def reference(self, spec: OpSpec, arrays, bias=None):
        """dw by direct summation: each tap's weights gather dy times the input window it
        read, over batch and output positions (float64)."""
        p = spec.params
        x = _nchw64(arrays[0], p.layout)
        dy = _nchw64(arrays[1], p.layout)
        oc, cg, kh, kw = spec.out_shape
        (pt, pb), (pl, pr) = p.padding
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        _, _, oh, ow = dy.shape
        ocg = oc // p.groups
        dw = np.zeros(spec.out_shape)
        for g in range(p.groups):
            xg, dyg = xp[:, g * cg:(g + 1) * cg], dy[:, g * ocg:(g + 1) * ocg]
            for i, j, rows, cols in _taps(p, kh, kw, oh, ow):
                dw[g * ocg:(g + 1) * ocg, :, i, j] = np.einsum(
                    "nohw,nchw->oc", dyg, xg[:, :, rows, cols])
        return dw

    def gemm_shape(self, spec: OpSpec):
        """Per group: dy_g^T (OC/g, N*OH*OW) @ im2col(x) (N*OH*OW, C/g*KH*KW)."""
        p = spec.params
        x_shape, dy_shape = spec.shapes
        oc, cg, kh, kw = spec.out_shape
        oh, ow = p.spatial(dy_shape)
        return p.groups, oc // p.groups, cg * kh * kw, x_shape[0] * oh * ow

    def channel_axis(self, spec: OpSpec) -> int:
        return 0


CONV2D_GRAD_INPUT = register(Conv2dGradInput())
CONV2D_GRAD_WEIGHT = register(Conv2dGradWeight())
