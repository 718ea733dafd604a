"""conv2d: 2-D cross-correlation with PyTorch's meaning of ``stride``, ``padding`` (int,
pair, "same", "valid"), ``dilation`` and ``groups``, in NCHW or NHWC; ``w`` is always
(OC, C/groups, KH, KW). Padding on a side may not exceed the dilated kernel extent minus
one: beyond it, output pixels would see no input at all."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import numerics
from ..dtypes import is_integer
from .base import (OpDef, OpSpec, as_int, check_activation, check_bias, check_requant,
                   int_pair, operand_dtype, out_dtype_for, register, shape_of)

LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True, slots=True)
class Conv2dParams:
    stride: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))  # (top, bottom), (left, right)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    layout: str = "NCHW"

    def spatial(self, shape) -> tuple[int, int]:
        """(H, W) of an activation shape in this layout."""
        return (shape[2], shape[3]) if self.layout == "NCHW" else (shape[1], shape[2])

    def to_nhwc(self, shape) -> tuple[int, int, int, int]:
        return (shape[0], shape[2], shape[3], shape[1]) if self.layout == "NCHW" else tuple(shape)


_INT_OR_PAIR = {"oneOf": [{"type": "integer"},
                          {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                           "maxItems": 2}]}


def check_layout(layout) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout: unknown layout {layout!r}; expected 'NCHW' or 'NHWC'"
                         if isinstance(layout, str) else
                         f"layout: expected 'NCHW' or 'NHWC', got {type(layout).__name__}")
    return layout


def conv_geometry(x_shape, w_shape, *, stride=1, padding=0, dilation=1, groups=1,
                  layout="NCHW") -> tuple[Conv2dParams, tuple[int, int, int, int]]:
    """Validated parameters and the output shape of a convolution of x by w."""
    layout = check_layout(layout)
    if len(x_shape) != 4:
        raise ValueError(f"x: expected a 4-D array ({layout}), got rank {len(x_shape)} "
                         f"shape {x_shape}")
    if len(w_shape) != 4:
        raise ValueError(f"w: expected a 4-D array (OC, C/groups, KH, KW), got rank "
                         f"{len(w_shape)} shape {w_shape}")
    try:
        groups = as_int(groups, "groups")
    except TypeError:
        raise ValueError(f"groups: expected a positive int, got {groups!r}") from None
    if groups < 1:
        raise ValueError(f"groups: expected a positive int, got {groups!r}")
    sh, sw = int_pair(stride, "stride")
    dh, dw = int_pair(dilation, "dilation")
    if sh < 1 or sw < 1:
        raise ValueError(f"stride: expected positive values, got {(sh, sw)}")
    if dh < 1 or dw < 1:
        raise ValueError(f"dilation: expected positive values, got {(dh, dw)}")
    n, c, h, w_in = x_shape if layout == "NCHW" else (x_shape[0], x_shape[3], x_shape[1], x_shape[2])
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
            pads = (((ext_h - 1) // 2, ext_h - 1 - (ext_h - 1) // 2),
                    ((ext_w - 1) // 2, ext_w - 1 - (ext_w - 1) // 2))
        else:
            raise ValueError(f"padding: expected an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        ph, pw = int_pair(padding, "padding")
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
    return Conv2dParams((sh, sw), pads, (dh, dw), groups, layout), out


def conv_reference(x, w, p: Conv2dParams, out_hw, integer: bool) -> np.ndarray:
    """Direct convolution in int64/float64, NCHW out: for every kernel tap, a strided
    slice times the tap's weights (independent of the backends' im2col)."""
    t = np.int64 if integer else np.float64
    xn = (np.asarray(x) if p.layout == "NCHW" else np.asarray(x).transpose(0, 3, 1, 2)).astype(t)
    (pt, pb), (pl, pr) = p.padding
    xn = np.pad(xn, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n = xn.shape[0]
    oc, cg, kh, kw = np.shape(w)
    (sh, sw), (dh, dw) = p.stride, p.dilation
    oh, ow = out_hw
    ocg = oc // p.groups
    out = np.zeros((n, oc, oh, ow), t)
    wt = np.asarray(w).astype(t)
    for g in range(p.groups):
        xs = xn[:, g * cg:(g + 1) * cg]
        wg = wt[g * ocg:(g + 1) * ocg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                           j * dw: j * dw + sw * (ow - 1) + 1: sw]
                out[:, g * ocg:(g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    return out


def im2col_windows(x: np.ndarray, spec: OpSpec) -> np.ndarray:
    """(N, H, W, C) -> the strided windows (N, OH, OW, C, KH, KW) of spec's convolution
    (a view; only padding copies). The host kernels of every backend share it."""
    p = spec.params
    (pt, pb), (pl, pr) = p.padding
    if pt or pb or pl or pr:
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    _, _, kh, kw = spec.shapes[1]
    (dh, dw), (sh, sw) = p.dilation, p.stride
    win = np.lib.stride_tricks.sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1),
                                                    axis=(1, 2))
    oh, ow = p.spatial(spec.out_shape)
    return win[:, ::sh, ::sw, :, ::dh, ::dw][:, :oh, :ow]


class Conv2d(OpDef):
    name = "conv2d"
    operands = ("x", "w")
    job_properties = {
        "stride": _INT_OR_PAIR, "dilation": _INT_OR_PAIR,
        "groups": {"type": "integer", "minimum": 1},
        "padding": {"oneOf": [_INT_OR_PAIR, {"enum": ["same", "valid"]}]},
        "layout": {"enum": list(LAYOUTS)},
    }

    def spec(self, shapes, dtypes, *, bias_shape=None, bias_dtype=None, activation=None,
             out_dtype=None, stride=1, padding=0, dilation=1, groups=1,
             layout="NCHW", requant=False) -> OpSpec:
        x_shape, w_shape = shape_of(shapes[0], "x"), shape_of(shapes[1], "w")
        dtype = operand_dtype((("x", dtypes[0]), ("w", dtypes[1])))
        activation = check_activation(activation, dtype)
        requant, out_dtype = check_requant(requant, dtype, activation, out_dtype)
        out_dt, acc = out_dtype_for(dtype, out_dtype)
        params, out = conv_geometry(x_shape, w_shape, stride=stride, padding=padding,
                                    dilation=dilation, groups=groups, layout=layout)
        has_bias = check_bias(bias_shape, bias_dtype, w_shape[0], out_dt)
        if requant:
            out_dt = "int8"
        return OpSpec("conv2d", (x_shape, w_shape), dtype, out, out_dt, acc, has_bias,
                      activation, params, requant)

    def reference(self, spec: OpSpec, arrays, bias=None, requant=None):
        p = spec.params
        integer = is_integer(spec.dtype)
        out = conv_reference(arrays[0], arrays[1], p, p.spatial(spec.out_shape), integer)
        out = numerics.epilogue(out, bias, spec.activation, integer, 1, requant)
        return out if p.layout == "NCHW" else out.transpose(0, 2, 3, 1)

    def channel_axis(self, spec: OpSpec) -> int:
        return 1 if spec.params.layout == "NCHW" else -1

    def gemm_shape(self, spec: OpSpec):
        p = spec.params
        oh, ow = p.spatial(spec.out_shape)
        oc, cg, kh, kw = spec.shapes[1]
        return p.groups, spec.shapes[0][0] * oh * ow, oc // p.groups, cg * kh * kw


CONV2D = register(Conv2d())
