"""Our ops as PyTorch operators: ``torch.ops.lepton_accel.{matmul, conv2d,
conv2d_grad_input, conv2d_grad_weight}``, each with a fake (shape) implementation and, for
the two forward ops, an autograd formula whose backward runs on our kernels too.

The operators are opaque to ``torch.compile``: Dynamo records a call, the fake
implementation gives the output's shape and dtype, and the real one runs our backend.
CPU tensors go to our ``cpu`` backend; CUDA tensors to our ``cuda`` backend, in place on
PyTorch's current stream (``backend="auto"`` picks by device; a name forces one).

Activations in the backward pass: ReLU's derivative is read off the fused output
(``y > 0`` exactly when the pre-activation is positive), so nothing extra is kept. GELU is
not invertible, so its pre-activation is recomputed in the backward pass by the same op
without the epilogue: one more GEMM per GELU layer instead of a second output from every
backend's fused epilogue and a second activation-sized tensor kept per layer.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import api, numerics
from ..dtypes import normalize_dtype
from ..ops import CONV2D, CONV2D_GRAD_INPUT, CONV2D_GRAD_WEIGHT, MATMUL

_TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16, "int32": torch.int32}
Tensor = torch.Tensor


def _dtype(t: Tensor, name: str) -> str:
    return normalize_dtype(t.dtype, name)


def _host(t: Optional[Tensor]):
    """What our API reads, cut from autograd (the custom op owns the gradient), never
    copied: a NumPy view of a CPU tensor (cheaper to hand over than a DLPack capsule;
    NumPy has no bfloat16, so those go by DLPack), the tensor itself elsewhere."""
    if t is None:
        return None
    t = t.detach()
    if t.device.type == "cpu" and t.dtype != torch.bfloat16:
        return t.numpy()
    return t


def _tensor(out) -> Tensor:
    """Our API's result as a tensor (NumPy results wrap without a copy)."""
    return torch.from_numpy(out) if isinstance(out, np.ndarray) else out


def _pads(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    t, b, l, r = (int(p) for p in padding)
    return (t, b), (l, r)


def _api_padding(padding, kernel, dilation):
    """The core API's padding argument for resolved (t, b, l, r): a pair when even, 'same'
    for the uneven split 'same' makes; other uneven paddings have no core form."""
    (t, b), (l, r) = _pads(padding)
    if t == b and l == r:
        return (t, l)
    ext = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    if (t, b, l, r) == ((ext[0] - 1) // 2, ext[0] // 2, (ext[1] - 1) // 2, ext[1] // 2):
        return "same"
    raise ValueError(f"padding: uneven padding {(t, b, l, r)} (top, bottom, left, right) is "
                     "only supported as the split padding='same' makes")


def _conv_kw(stride, padding, dilation, groups, kernel):
    return dict(stride=tuple(stride), padding=_api_padding(padding, kernel, dilation),
                dilation=tuple(dilation), groups=groups, layout="NHWC")


# Our kernels compute in NHWC. NCHW tensors go in as NHWC views (no copy when they are
# channels_last) and NCHW results come back as NCHW views of NHWC memory (channels_last,
# as PyTorch's own CPU convolution returns for channels_last input), so a network of our
# layers and PyTorch's pooling never transposes activations between layers.
def _nhwc(t, layout: str):
    """An NCHW array (tensor or NumPy view) as its NHWC view."""
    if layout != "NCHW":
        return t
    return t.transpose(0, 2, 3, 1) if isinstance(t, np.ndarray) else t.permute(0, 2, 3, 1)


def _from_nhwc(t, layout: str) -> Tensor:
    t = _tensor(t)
    return t.permute(0, 3, 1, 2) if layout == "NCHW" else t


def _nhwc_shape(shape, layout: str):
    return (shape[0], shape[2], shape[3], shape[1]) if layout == "NCHW" else tuple(shape)


# ---- matmul ------------------------------------------------------------------------------
@torch.library.custom_op("lepton_accel::matmul", mutates_args=())
def _matmul(a: Tensor, b: Tensor, bias: Optional[Tensor], activation: Optional[str],
            backend: str) -> Tensor:
    return _tensor(api.matmul(_host(a), _host(b), bias=_host(bias), activation=activation,
                              backend=backend))


@_matmul.register_fake
def _matmul_fake(a, b, bias, activation, backend):
    spec = MATMUL.spec((tuple(a.shape), tuple(b.shape)), (_dtype(a, "a"), _dtype(b, "b")),
                       bias_shape=None if bias is None else tuple(bias.shape),
                       bias_dtype=None if bias is None else _dtype(bias, "bias"),
                       activation=activation)
    return a.new_empty(spec.out_shape, dtype=_TORCH_DTYPE[spec.out_dtype])


def _matmul_setup(ctx, inputs, output):
    a, b, bias, activation, backend = inputs
    ctx.activation, ctx.backend, ctx.has_bias = activation, backend, bias is not None
    ctx.save_for_backward(a, b, bias, output if activation == "relu" else None)


def _sum_to(grad: Tensor, shape) -> Tensor:
    """A broadcast operand's gradient: summed over the axes it was broadcast along."""
    lead = grad.dim() - len(shape)
    if lead:
        grad = grad.sum(dim=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(dim=axes, keepdim=True) if axes else grad


@torch.library.custom_op("lepton_accel::gelu_grad", mutates_args=())
def _gelu_grad(z: Tensor) -> Tensor:
    """d gelu(z)/dz (tanh form) by lepton_accel.numerics.gelu_grad, in float32 on the host
    (a device tensor makes the round trip), in z's dtype."""
    g = numerics.gelu_grad(z.detach().float().cpu().numpy())
    return torch.from_numpy(g).to(device=z.device, dtype=z.dtype)


@_gelu_grad.register_fake
def _gelu_grad_fake(z):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _activation_grad(dy: Tensor, activation, out: Optional[Tensor], recompute) -> Tensor:
    """dy through the activation's derivative: ReLU from the fused output, GELU from the
    recomputed pre-activation."""
    if activation == "relu":   # PyTorch's own ReLU backward: dy where out > 0, in one pass
        return torch.ops.aten.threshold_backward(dy, out, 0)
    if activation == "gelu":
        return dy * torch.ops.lepton_accel.gelu_grad(recompute())
    return dy


def _matmul_backward(ctx, dy):
    a, b, bias, out = ctx.saved_tensors
    need_a, need_b, need_bias = ctx.needs_input_grad[:3]
    dz = _activation_grad(dy, ctx.activation, out,
                          lambda: torch.ops.lepton_accel.matmul(a, b, bias, None, ctx.backend))
    mm = torch.ops.lepton_accel.matmul
    a2 = a.unsqueeze(0) if a.dim() == 1 else a            # NumPy's 1-D promotion, undone below
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    dz2 = dz.unsqueeze(-1) if b.dim() == 1 else dz
    if a.dim() == 1:
        dz2 = dz2.unsqueeze(-2)
    da = db = dbias = None
    if need_a:   # dz @ b^T: b's transposed view, no copy
        da = _sum_to(mm(dz2, b2.mT, None, None, ctx.backend), a2.shape)
        da = da.squeeze(0) if a.dim() == 1 else da
    if need_b:   # a^T @ dz, one GEMM over the flattened batch when b is not batched
        if b2.dim() == 2 and a2.dim() > 2:
            db = mm(a2.reshape(-1, a2.shape[-1]).mT, dz2.reshape(-1, dz2.shape[-1]), None, None,
                    ctx.backend)
        else:
            db = _sum_to(mm(a2.mT, dz2, None, None, ctx.backend), b2.shape)
        db = db.squeeze(-1) if b.dim() == 1 else db
    if need_bias:
        dbias = dz.reshape(-1, dz.shape[-1]).sum(0).to(bias.dtype)
    return da, db, dbias, None, None


_matmul.register_autograd(_matmul_backward, setup_context=_matmul_setup)


# ---- conv2d --------------------------------------------------------------------------------
@torch.library.custom_op("lepton_accel::conv2d", mutates_args=())
def _conv2d(x: Tensor, w: Tensor, bias: Optional[Tensor], stride: list[int],
            padding: list[int], dilation: list[int], groups: int, layout: str,
            activation: Optional[str], backend: str) -> Tensor:
    y = api.conv2d(_nhwc(_host(x), layout), _host(w), bias=_host(bias), activation=activation,
                   backend=backend, **_conv_kw(stride, padding, dilation, groups, w.shape[2:]))
    return _from_nhwc(y, layout)


def _conv_spec(opdef, shapes, dtypes, stride, padding, dilation, groups, layout, **kw):
    """The op's spec from the operators' arguments (also what validates them)."""
    return opdef.spec(shapes, dtypes, layout=layout, stride=tuple(stride),
                      padding=_api_padding(padding, kw.pop("kernel"), dilation),
                      dilation=tuple(dilation), groups=groups, **kw)


@_conv2d.register_fake
def _conv2d_fake(x, w, bias, stride, padding, dilation, groups, layout, activation, backend):
    spec = _conv_spec(CONV2D, (tuple(x.shape), tuple(w.shape)), (_dtype(x, "x"), _dtype(w, "w")),
                      stride, padding, dilation, groups, layout, kernel=tuple(w.shape[2:]),
                      bias_shape=None if bias is None else tuple(bias.shape),
                      bias_dtype=None if bias is None else _dtype(bias, "bias"),
                      activation=activation)
    return _from_nhwc(x.new_empty(_nhwc_shape(spec.out_shape, layout),
                                  dtype=_TORCH_DTYPE[spec.out_dtype]), layout)


def _conv2d_setup(ctx, inputs, output):
    x, w, bias, stride, padding, dilation, groups, layout, activation, backend = inputs
    ctx.geometry = (list(stride), list(padding), list(dilation), groups, layout)
    ctx.activation, ctx.backend = activation, backend
    ctx.input_hw = tuple(x.shape[2:4]) if layout == "NCHW" else tuple(x.shape[1:3])
    ctx.save_for_backward(x, w, bias, output if activation == "relu" else None)


def _conv2d_backward(ctx, dy):
    x, w, bias, out = ctx.saved_tensors
    stride, padding, dilation, groups, layout = ctx.geometry
    need_x, need_w, need_bias = ctx.needs_input_grad[:3]
    dz = _activation_grad(dy, ctx.activation, out, lambda: torch.ops.lepton_accel.conv2d(
        x, w, bias, stride, padding, dilation, groups, layout, None, ctx.backend))
    dz = dz.to(x.dtype)
    dx = dw = dbias = None
    if need_x:
        dx = torch.ops.lepton_accel.conv2d_grad_input(
            dz, w, list(ctx.input_hw), stride, padding, dilation, groups, layout, ctx.backend)
    if need_w:
        dw = torch.ops.lepton_accel.conv2d_grad_weight(
            x, dz, list(w.shape[2:]), stride, padding, dilation, groups, layout, ctx.backend)
    if need_bias:
        dbias = dz.sum(dim=(0, 2, 3) if layout == "NCHW" else (0, 1, 2)).to(bias.dtype)
    return dx, dw, dbias, None, None, None, None, None, None, None


_conv2d.register_autograd(_conv2d_backward, setup_context=_conv2d_setup)


# ---- the two conv2d gradients (no autograd of their own: no double backward) -------------
@torch.library.custom_op("lepton_accel::conv2d_grad_input", mutates_args=())
def _conv2d_grad_input(dy: Tensor, w: Tensor, input_hw: list[int], stride: list[int],
                       padding: list[int], dilation: list[int], groups: int, layout: str,
                       backend: str) -> Tensor:
    dx = api.conv2d_grad_input(_nhwc(_host(dy), layout), _host(w), input_hw=tuple(input_hw),
                               backend=backend,
                               **_conv_kw(stride, padding, dilation, groups, w.shape[2:]))
    return _from_nhwc(dx, layout)


@_conv2d_grad_input.register_fake
def _conv2d_grad_input_fake(dy, w, input_hw, stride, padding, dilation, groups, layout, backend):
    spec = _conv_spec(CONV2D_GRAD_INPUT, (tuple(dy.shape), tuple(w.shape)),
                      (_dtype(dy, "dy"), _dtype(w, "w")), stride, padding, dilation, groups,
                      layout, kernel=tuple(w.shape[2:]), input_hw=tuple(input_hw))
    return _from_nhwc(dy.new_empty(_nhwc_shape(spec.out_shape, layout),
                                   dtype=_TORCH_DTYPE[spec.out_dtype]), layout)


@torch.library.custom_op("lepton_accel::conv2d_grad_weight", mutates_args=())
def _conv2d_grad_weight(x: Tensor, dy: Tensor, kernel_hw: list[int], stride: list[int],
                        padding: list[int], dilation: list[int], groups: int, layout: str,
                        backend: str) -> Tensor:
    return _tensor(api.conv2d_grad_weight(
        _nhwc(_host(x), layout), _nhwc(_host(dy), layout), kernel_hw=tuple(kernel_hw),
        backend=backend, **_conv_kw(stride, padding, dilation, groups, kernel_hw)))


@_conv2d_grad_weight.register_fake
def _conv2d_grad_weight_fake(x, dy, kernel_hw, stride, padding, dilation, groups, layout,
                             backend):
    spec = _conv_spec(CONV2D_GRAD_WEIGHT, (tuple(x.shape), tuple(dy.shape)),
                      (_dtype(x, "x"), _dtype(dy, "dy")), stride, padding, dilation, groups,
                      layout, kernel=tuple(kernel_hw), kernel_hw=tuple(kernel_hw))
    return x.new_empty(spec.out_shape, dtype=_TORCH_DTYPE[spec.out_dtype])


# ---- the public functions -----------------------------------------------------------------
def resolve_padding(padding, kernel_size, stride=1, dilation=1) -> list[int]:
    """PyTorch's padding argument (int, pair, 'same', 'valid') as the operators' resolved
    [top, bottom, left, right], checked by the core conv2d's geometry."""
    from ..ops.conv2d import conv_geometry

    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    x_shape = (1, 1, dh * (kh - 1) + 1, dw * (kw - 1) + 1)   # the smallest valid input
    params, _ = conv_geometry(x_shape, (1, 1, kh, kw), stride=stride, padding=padding,
                              dilation=dilation)
    (t, b), (l, r) = params.padding
    return [t, b, l, r]


def _pair(v, name: str) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return [v, v]
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return [int(v[0]), int(v[1])]
    raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")


def matmul(a: Tensor, b: Tensor, *, bias: Optional[Tensor] = None, activation=None,
           backend: str = "auto") -> Tensor:
    """``activation(a @ b + bias)`` on our kernels, differentiable; see lepton_accel.matmul."""
    return torch.ops.lepton_accel.matmul(a, b, bias, activation, backend)


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, activation=None,
           backend: str = "auto") -> Tensor:
    """torch.nn.functional.linear (weight (out, in)) on our matmul: x @ weight^T as a view."""
    return torch.ops.lepton_accel.matmul(x, weight.mT, bias, activation, backend)


def conv2d(x: Tensor, w: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0,
           dilation=1, groups: int = 1, *, layout: str = "NCHW", activation=None,
           backend: str = "auto") -> Tensor:
    """torch.nn.functional.conv2d's arguments (plus layout, a fused activation and the
    backend) on our conv2d, differentiable. ``padding`` may also be the resolved
    [top, bottom, left, right]."""
    if isinstance(padding, (list, tuple)) and len(padding) == 4:
        pads = [int(p) for p in padding]
    else:
        pads = resolve_padding(padding, tuple(w.shape[2:]), stride, dilation)
    return torch.ops.lepton_accel.conv2d(x, w, bias, _pair(stride, "stride"), pads,
                                         _pair(dilation, "dilation"), groups, layout,
                                         activation, backend)


__all__ = ["matmul", "linear", "conv2d", "resolve_padding"]
