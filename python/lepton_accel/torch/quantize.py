"""Post-training int8 quantization of a trained CNN, run with our integer kernels.

    >>> qnet = quantize(model, calibration_images)          # torch model -> QuantizedNet
    >>> logits, stats = qnet.run(qnet.quantize_input(x), backend="fpga")
    >>> ref = qnet.reference(qnet.quantize_input(x))          # int8 NumPy reference
    >>> np.array_equal(logits, ref), stats.cycles

The scheme (docs/quantization.md):

* **Weights**: symmetric, one scale per output channel, ``s_w[o] = max|W[o]| / 127``,
  ``W_q = round(W / s_w)`` in [-127, 127].
* **Activations**: symmetric per tensor, zero point 0, int8. The scale of every tensor a
  convolution or dense layer reads is calibrated on sample images (``max|x| / 127``, or a
  percentile). ReLU outputs therefore use [0, 127]: the cores take signed int8 operands
  and zero-padded convolutions need the zero point at 0.
* **Bias**: int32, ``round(b / (s_x * s_w[o]))``, added by the core before its ReLU.
* **Requantization** between layers: the int32 sums become the next layer's int8 input
  with, per output channel, ``(acc * m + 2**(shift-1)) >> shift`` saturated to
  [-128, 127] (``lepton_accel.numerics.requantize``), where ``m / 2**shift`` approximates
  ``s_x * s_w[o] / s_y`` (``m`` has ``mult_bits`` bits, its top bit set). Rounding is to
  nearest with ties towards +inf; integer-only. It is the epilogue of the layer's op
  (``requant=``), so on the fpga backend the cores' output stage does it (with the
  ReLU) and int8 activations go from layer to layer; a backend without the epilogue
  gets the int32 op and the host requantizes.
* **Max-pool** on int8 on the host (it commutes with the monotone requantization).
* The last layer's int32 sums are the network's output; ``dequantize_logits`` scales them
  to the float model's logits (per output channel).

Every convolution and dense layer runs through :func:`lepton_accel.api.execute` on the
backend asked for (``"fpga"``: the conv2d and matmul cores; ``"cpu"``: our CPU kernels).
:meth:`QuantizedNet.reference` computes the same network independently: the exact
integer convolution and matmul of :mod:`lepton_accel.reference`, and its own
requantization and pooling.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import api
from .. import numerics
from .. import reference as _ref
from ..api import RunStats
from ..backends import UnsupportedOperation
from ..numerics import along
from ..ops import conv2d_spec, matmul_spec

__all__ = ["quantize", "QuantizedNet", "QConv2d", "QLinear", "QMaxPool2d", "QFlatten",
           "QReLU", "ForwardStats", "quantize_multiplier", "requantize", "quantize_weights",
           "INT8_MIN", "INT8_MAX", "WEIGHT_MAX"]

INT8_MIN, INT8_MAX = -128, 127
#: weights use the symmetric range [-WEIGHT_MAX, WEIGHT_MAX]
WEIGHT_MAX = 127
#: the largest shift: |acc * m| < 2**62 and the rounding term 2**(shift-1) stay in int64
MAX_SHIFT = 62
_INT32_MAX = 2**31 - 1


# ---- the integer arithmetic --------------------------------------------------------------
def quantize_multiplier(scale, mult_bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """Integer multipliers and shifts with ``m / 2**shift`` ~= scale (per element).

    ``m`` lies in [2**(mult_bits-1), 2**mult_bits) (relative error at most
    2**-mult_bits), ``shift`` in [1, 62]. A scale so small that the shift would pass 62
    (every int32 sum then rounds to 0) becomes m = 0, shift = 62: the same zeros."""
    if isinstance(mult_bits, bool) or not isinstance(mult_bits, (int, np.integer)) \
            or not 2 <= mult_bits <= 31:
        raise ValueError(f"mult_bits: expected an int in [2, 31], got {mult_bits!r}")
    s = np.atleast_1d(np.asarray(scale, np.float64))
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"scale: expected finite positive values, got {s[~(np.isfinite(s) & (s > 0))][:4]}")
    frac, exp = np.frexp(s)                      # s = frac * 2**exp, frac in [0.5, 1)
    m = np.rint(frac * 2.0**mult_bits).astype(np.int64)
    top = m == 2**mult_bits                      # rounded up to the next power of two
    m[top] //= 2
    exp = exp.astype(np.int64) + top
    shift = mult_bits - exp
    if np.any(shift < 1):
        raise ValueError(f"scale: {s[shift < 1][0]:g} is too large for a {mult_bits}-bit "
                         f"multiplier and a right shift (at most {2.0**(mult_bits - 1):g})")
    tiny = shift > MAX_SHIFT
    m[tiny], shift[tiny] = 0, MAX_SHIFT
    return m, shift


def requantize(acc, multiplier, shift, axis: int = 1) -> np.ndarray:
    """int32 sums -> int8: ``(acc * m + 2**(shift-1)) >> shift`` saturated to [-128, 127],
    with per-channel ``m`` and ``shift`` along ``axis`` (``numerics.requantize``, the
    cores' output stage)."""
    return numerics.requantize(acc, multiplier, shift, axis)


def quantize_weights(w) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel (axis 0) int8 weights and their float64 scales.
    An all-zero channel gets scale 1 (its weights are zeros whatever the scale)."""
    w = np.asarray(w, np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("weight: contains NaN or infinity")
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) if w.size else np.zeros(w.shape[0])
    scale = np.where(amax > 0, amax / WEIGHT_MAX, 1.0)
    q = np.rint(w / along(scale, w.ndim, 0))
    return np.clip(q, -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8), scale


def _quantize_bias(b, s_x: float, s_w: np.ndarray, name: str) -> np.ndarray:
    q = np.rint(np.asarray(b, np.float64) / (s_x * s_w))
    if np.any(np.abs(q) > _INT32_MAX):
        raise ValueError(f"{name}: bias / (input scale * weight scale) exceeds int32 "
                         f"(largest {np.abs(q).max():.3g}); the calibrated scales are degenerate")
    return q.astype(np.int32)


# ---- the quantized layers ----------------------------------------------------------------
@dataclass
class QConv2d:
    """int8 convolution (NCHW) with int32 bias and an optional fused ReLU."""

    name: str
    weight: np.ndarray          # int8 (OC, C/groups, KH, KW)
    bias: np.ndarray            # int32 (OC,)
    w_scale: np.ndarray         # float64 (OC,)
    in_scale: float
    out_scale: float | None     # None: the int32 sums are the layer's output
    relu: bool
    stride: tuple[int, int]
    padding: Any                # as nn.Conv2d gives it: a pair or "same"/"valid"
    dilation: tuple[int, int]
    groups: int
    multiplier: np.ndarray | None = None   # int64 (OC,), with out_scale
    shift: np.ndarray | None = None
    _specs: dict = field(default_factory=dict, repr=False)

    def spec(self, x_shape, requant: bool = False):
        sp = self._specs.get((x_shape, requant))
        if sp is None:
            sp = conv2d_spec(x_shape, "int8", self.weight.shape, "int8", bias_shape=self.bias.shape,
                             bias_dtype="int32", activation="relu" if self.relu else None,
                             stride=self.stride, padding=self.padding, dilation=self.dilation,
                             groups=self.groups, requant=requant)
            self._specs[(x_shape, requant)] = sp
        return sp

    def operands(self, requant: bool = False):
        return (self.weight, self.bias) + (_requant_params(self) if requant else ())


@dataclass
class QLinear:
    """int8 dense layer ``x @ W.T + b`` with int32 bias and an optional fused ReLU."""

    name: str
    weight: np.ndarray          # int8 (OUT, IN)
    bias: np.ndarray            # int32 (OUT,)
    w_scale: np.ndarray
    in_scale: float
    out_scale: float | None
    relu: bool
    multiplier: np.ndarray | None = None
    shift: np.ndarray | None = None
    weight_t: np.ndarray = field(init=False, repr=False)   # (IN, OUT), contiguous
    _specs: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.weight_t = np.ascontiguousarray(self.weight.T)

    def spec(self, x_shape, requant: bool = False):
        sp = self._specs.get((x_shape, requant))
        if sp is None:
            sp = matmul_spec(x_shape, "int8", self.weight_t.shape, "int8",
                             bias_shape=self.bias.shape, bias_dtype="int32",
                             activation="relu" if self.relu else None, requant=requant)
            self._specs[(x_shape, requant)] = sp
        return sp

    def operands(self, requant: bool = False):
        return (self.weight_t, self.bias) + (_requant_params(self) if requant else ())


def _requant_params(layer) -> tuple[np.ndarray, np.ndarray]:
    """The layer's multiplier and shift as the requantization epilogue takes them."""
    p = layer.__dict__.get("_rq")
    if p is None:
        p = layer.__dict__["_rq"] = numerics.check_requant(layer.multiplier, layer.shift,
                                                           layer.weight.shape[0])
    return p


@dataclass
class QMaxPool2d:
    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int]


@dataclass
class QFlatten:
    """(N, C, H, W) -> (N, C*H*W) in C, H, W order (PyTorch's)."""

    name: str


@dataclass
class QReLU:
    """A ReLU not fused into a convolution or dense layer (after a pool, say)."""

    name: str


@dataclass
class ForwardStats:
    """One forward pass: each kernel layer's RunStats and the host's share of the time."""

    backend: str
    images: int
    layers: list[tuple[str, RunStats]] = field(default_factory=list)
    host_s: float = 0.0         # requantization (where the backend lacks it), pooling, flatten
    #: layers whose requantization ran as their op's epilogue on the backend (on fpga:
    #: the cores' output stage), not on the host
    requantized: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def cycles(self) -> int | None:
        """Device cycles of all layers (None unless every layer reported them)."""
        c = [s.cycles for _, s in self.layers]
        return sum(c) if c and all(v is not None for v in c) else None

    @property
    def kernel_s(self) -> float:
        return sum(s.wall_s for _, s in self.layers)


# ---- the network -------------------------------------------------------------------------
class QuantizedNet:
    """A chain of quantized layers; int8 NCHW images in, the last layer's int32 sums out."""

    def __init__(self, input_scale: float, layers: list, input_shape: tuple[int, ...]):
        self.input_scale = float(input_scale)
        self.layers = layers
        self.input_shape = tuple(input_shape)    # (C, H, W) of one image
        kern = [l for l in layers if isinstance(l, (QConv2d, QLinear))]
        if not kern:
            raise ValueError("model: has no convolution or dense layer to quantize")
        self._last = kern[-1]

    def __repr__(self):
        return (f"QuantizedNet(input_scale={self.input_scale:.4g}, "
                f"layers=[{', '.join(type(l).__name__ + ':' + l.name for l in self.layers)}])")

    @property
    def output_scale(self) -> np.ndarray:
        """Float value of one unit of each output channel's int32 sum."""
        return self._last.in_scale * self._last.w_scale

    def quantize_input(self, x) -> np.ndarray:
        """Float images (N, C, H, W) -> int8 with the calibrated input scale (round half
        to even, saturating)."""
        x = _as_images(x, "x", self.input_shape)
        return np.clip(np.rint(x / self.input_scale), INT8_MIN, INT8_MAX).astype(np.int8)

    def _check_input(self, xq) -> np.ndarray:
        if isinstance(xq, torch.Tensor):
            xq = xq.detach().cpu().numpy()
        xq = np.asarray(xq)
        if xq.dtype != np.int8:
            raise TypeError(f"xq: expected int8 images (quantize_input gives them), got {xq.dtype}")
        if xq.ndim != 4 or tuple(xq.shape[1:]) != self.input_shape:
            raise ValueError(f"xq: expected shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(xq.shape)}")
        return np.ascontiguousarray(xq)

    def run(self, xq, backend: str = "fpga") -> tuple[np.ndarray, ForwardStats]:
        """The network on int8 images: every convolution and dense layer on ``backend``
        through :func:`lepton_accel.api.execute`, with its ReLU and requantization as the
        op's epilogue (on the fpga backend the cores' output stage: int8 activations
        from layer to layer); pooling and flattening on the host. A backend without the
        requantization epilogue runs the int32 op and the host requantizes (the same
        arithmetic). Returns (the last layer's int32 sums, ForwardStats)."""
        x = self._check_input(xq)
        stats = ForwardStats(backend, x.shape[0])
        t_start = time.perf_counter()
        if x.shape[0] == 0:
            return np.zeros(self.output_shape(0), np.int32), stats
        layers, i = self.layers, 0
        while i < len(layers):
            layer = layers[i]
            i += 1
            if isinstance(layer, (QConv2d, QLinear)):
                if layer.out_scale is not None:
                    out = self._requantized(layer, x, backend)
                    if out is not None:
                        x, rs = out
                        stats.layers.append((layer.name, rs))
                        stats.requantized.append(layer.name)
                        continue
                spec = layer.spec(tuple(x.shape))
                acc, rs = api.execute(spec, (x,) + layer.operands(), backend=backend)
                stats.layers.append((layer.name, rs))
                t0 = time.perf_counter()
                x = np.asarray(acc)
                if layer.out_scale is not None:
                    # requantization is monotone per channel, so pooling the int32 sums
                    # first gives the same int8 values with a quarter of the work
                    while i < len(layers) and isinstance(layers[i], QMaxPool2d):
                        x = _host_op(layers[i], x)
                        i += 1
                    x = requantize(x, layer.multiplier, layer.shift, axis=1)
            else:
                t0 = time.perf_counter()
                x = _host_op(layer, x)
            stats.host_s += time.perf_counter() - t0
        stats.wall_s = time.perf_counter() - t_start
        return x, stats

    def _requantized(self, layer, x, backend):
        """(int8 output, RunStats) of a layer run with the requantization epilogue, or
        None when ``backend`` does not offer it (the caller then requantizes on the
        host)."""
        spec = layer.spec(tuple(x.shape), requant=True)
        if backend != "auto":
            try:
                api.choose_backend(spec, None, backend)
            except UnsupportedOperation:
                return None
        out, rs = api.execute(spec, (x,) + layer.operands(requant=True), backend=backend)
        return np.asarray(out), rs

    def reference(self, xq) -> np.ndarray:
        """The same int8 network in exact NumPy arithmetic: convolution and matmul by
        :mod:`lepton_accel.reference` (int64 sums wrapped to int32), requantization by
        remainder comparison, pooling window by window (after requantization, as the
        scheme says). Returns the last layer's int32 sums."""
        x = self._check_input(xq)
        if x.shape[0] == 0:
            return np.zeros(self.output_shape(0), np.int32)
        act = {True: "relu", False: None}
        for layer in self.layers:
            if isinstance(layer, QConv2d):
                x = _ref.conv2d_ref(x, layer.weight, layer.bias, stride=layer.stride,
                                    padding=layer.padding, dilation=layer.dilation,
                                    groups=layer.groups, activation=act[layer.relu])
            elif isinstance(layer, QLinear):
                x = _ref.matmul_ref(x, layer.weight.T, layer.bias, activation=act[layer.relu])
            elif isinstance(layer, QMaxPool2d):
                x = _pool_windows(x, layer.kernel, layer.stride)
                continue
            elif isinstance(layer, QFlatten):
                x = x.reshape(x.shape[0], -1)
                continue
            else:
                x = np.maximum(x, x.dtype.type(0))
                continue
            if layer.out_scale is not None:
                x = _requantize_exact(x, layer.multiplier, layer.shift)
        return x

    def _shapes(self, n: int = 1):
        """(layer, its output shape) along the chain for a batch of n images."""
        shape = (n,) + self.input_shape
        for layer in self.layers:
            if isinstance(layer, QConv2d):
                shape = layer.spec((max(n, 1),) + shape[1:]).out_shape[1:]
                shape = (n,) + tuple(shape)
            elif isinstance(layer, QLinear):
                shape = (n, layer.weight.shape[0])
            elif isinstance(layer, QMaxPool2d):
                (kh, kw), (sh, sw) = layer.kernel, layer.stride
                shape = shape[:2] + ((shape[2] - kh) // sh + 1, (shape[3] - kw) // sw + 1)
            elif isinstance(layer, QFlatten):
                shape = (n, int(np.prod(shape[1:])))
            yield layer, shape

    def output_shape(self, n: int) -> tuple[int, ...]:
        """Shape of the network's output for n images."""
        return tuple(list(self._shapes(n))[-1][1])

    def macs_per_image(self) -> int:
        """Multiply-accumulates of one image through the convolutions and dense layers."""
        total = 0
        for layer, out in self._shapes(1):
            if isinstance(layer, QConv2d):
                total += int(np.prod(out[1:])) * int(np.prod(layer.weight.shape[1:]))
            elif isinstance(layer, QLinear):
                total += layer.weight.size
        return total

    def dequantize_logits(self, acc) -> np.ndarray:
        """The last layer's int32 sums as float64 values of the float model's outputs."""
        acc = np.asarray(acc)
        return acc.astype(np.float64) * along(self.output_scale, acc.ndim, 1)

    def predict(self, x, backend: str = "fpga") -> np.ndarray:
        """Class indices of float images (quantized with the input scale first)."""
        acc, _ = self.run(self.quantize_input(x), backend=backend)
        return self.dequantize_logits(acc).argmax(axis=1)


def _host_op(layer, x: np.ndarray) -> np.ndarray:
    if isinstance(layer, QMaxPool2d):
        return _pool_taps(x, layer.kernel, layer.stride)
    if isinstance(layer, QFlatten):
        return x.reshape(x.shape[0], -1)
    return np.maximum(x, x.dtype.type(0))


def _pool_taps(x: np.ndarray, kernel, stride) -> np.ndarray:
    """Max-pool as an elementwise maximum over the kernel's taps (strided slices)."""
    (kh, kw), (sh, sw) = kernel, stride
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            if out is None:
                out = tap.copy()
            else:
                np.maximum(out, tap, out=out)
    return out


def _pool_windows(x: np.ndarray, kernel, stride) -> np.ndarray:
    """Max-pool as the maximum of each window (reference form)."""
    win = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(2, 3))
    return win[:, :, ::stride[0], ::stride[1]].max(axis=(-2, -1))


def _requantize_exact(acc: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Nearest integer to acc * m / 2**s, ties up, saturated to int8: the quotient and
    remainder of the exact product, rounded up when twice the remainder reaches 2**s."""
    a = acc.astype(np.int64)
    p = a * along(m, a.ndim, 1)
    d = along(np.int64(1) << s, a.ndim, 1)
    q, r = np.divmod(p, d)
    q = q + (2 * r >= d)
    return np.minimum(np.maximum(q, INT8_MIN), INT8_MAX).astype(np.int8)


def _as_images(x, argname: str, chw: tuple[int, ...] | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{argname}: expected float images, got {x.dtype}")
    if x.ndim != 4 or (chw is not None and tuple(x.shape[1:]) != chw):
        want = "(N, C, H, W)" if chw is None else f"(N, {', '.join(map(str, chw))})"
        raise ValueError(f"{argname}: expected images of shape {want}, got {tuple(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{argname}: contains NaN or infinity")
    return x.astype(np.float64, copy=False)


# ---- reading a torch model ---------------------------------------------------------------
def _is_conv(m) -> bool:
    return isinstance(m, nn.Conv2d) or (
        type(m).__name__ == "Conv2d" and getattr(m, "weight", None) is not None
        and m.weight.ndim == 4 and all(hasattr(m, a) for a in ("stride", "padding", "dilation",
                                                               "groups")))


def _is_linear(m) -> bool:
    return isinstance(m, nn.Linear) or (
        type(m).__name__ == "Linear" and getattr(m, "weight", None) is not None
        and m.weight.ndim == 2)


_IDENTITY_MODULES = (nn.Identity, nn.Dropout)
_SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax)


class _Tracer(fx.Tracer):
    """Keeps convolution and dense layers (ours or PyTorch's) as single nodes."""

    def is_leaf_module(self, m, qualname):
        return _is_conv(m) or _is_linear(m) or super().is_leaf_module(m, qualname)


def _pair(v, what: str, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(e, int) for e in v):
        raise ValueError(f"model: {name} has an unsupported {what} {v!r}")
    return v


def _pool_layer(name: str, kernel, stride, padding, dilation, ceil_mode) -> QMaxPool2d:
    k = _pair(kernel, "kernel size", name)
    s = k if stride is None or stride == [] or stride == () else _pair(stride, "stride", name)
    if _pair(padding, "padding", name) != (0, 0) or _pair(dilation, "dilation", name) != (1, 1) \
            or ceil_mode:
        raise ValueError(f"model: {name}: only max-pooling without padding, dilation or "
                         f"ceil_mode is supported")
    return QMaxPool2d(name, k, s)


_MAXPOOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                 "return_indices")


def _chain(model: nn.Module):
    """The model as a chain of (kind, name, module-or-args) and its traced GraphModule."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:
        raise ValueError(f"model: could not be traced as a plain chain of layers "
                         f"({type(e).__name__}: {e})") from None
    gm = fx.GraphModule(model, graph)
    steps, cur, shape_nodes, ended = [], None, set(), False
    for node in graph.nodes:
        if node.op == "placeholder":
            if cur is not None:
                raise ValueError("model: forward must take a single input")
            cur = node
            continue
        if node.op == "output":
            if node.args[0] is not cur:
                raise ValueError("model: the output must be the last layer's result")
            continue
        args = list(node.args) + list(node.kwargs.values())
        if node.op == "call_method" and node.target == "size" or \
                node.op == "call_function" and node.target is getattr:
            shape_nodes.add(node)     # x.size(0) / x.shape feeding a view
            continue
        if not node.args or node.args[0] is not cur or any(
                isinstance(a, fx.Node) and a not in shape_nodes for a in args[1:]):
            raise ValueError(f"model: {node.name} is not a plain chain step (only sequential "
                             f"models of Conv2d/Linear/ReLU/MaxPool2d/Flatten are supported)")
        if ended:
            raise ValueError(f"model: {node.name} follows the softmax; softmax must come last")
        step = _step(gm, node)
        if step[0] == "softmax":
            ended = True
        elif step[0] != "identity":
            steps.append(step + (node,))
        if step[0] in ("conv", "linear"):
            # lepton_accel.torch's layers may carry their activation (convert fuses it)
            act = getattr(step[2], "activation", None)
            if act == "relu":
                steps.append(("relu", step[1], None, node))
            elif act is not None:
                raise ValueError(f"model: {step[1]} has activation {act!r} fused; the int8 "
                                 f"layers take ReLU only")
        cur = node
    return steps, gm


def _step(gm, node):
    name = node.name
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        name = node.target
        if _is_conv(m):
            return ("conv", name, m)
        if _is_linear(m):
            return ("linear", name, m)
        if isinstance(m, nn.ReLU):
            return ("relu", name, None)
        if isinstance(m, nn.MaxPool2d):
            return ("pool", name, _pool_layer(name, m.kernel_size, m.stride, m.padding,
                                              m.dilation, m.ceil_mode))
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError(f"model: {name}: only Flatten(start_dim=1) is supported")
            return ("flatten", name, None)
        if isinstance(m, _IDENTITY_MODULES):
            return ("identity", name, None)
        if isinstance(m, _SOFTMAX_MODULES):
            return ("softmax", name, None)
        raise ValueError(f"model: layer {name} ({type(m).__name__}) is not supported; "
                         f"expected Conv2d, Linear, ReLU, MaxPool2d, Flatten")
    if node.op == "call_function":
        t = node.target
        if t in (F.relu, torch.relu):
            return ("relu", name, None)
        if t in (F.max_pool2d, torch.max_pool2d):
            bound = dict(zip(_MAXPOOL_ARGS, node.args), **node.kwargs)
            if bound.get("return_indices"):
                raise ValueError(f"model: {name}: max-pool with return_indices is not supported")
            return ("pool", name, _pool_layer(name, bound["kernel_size"], bound.get("stride"),
                                              bound.get("padding", 0), bound.get("dilation", 1),
                                              bound.get("ceil_mode", False)))
        if t is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise ValueError(f"model: {name}: only flatten from dimension 1 is supported")
            return ("flatten", name, None)
        if t in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax):
            return ("softmax", name, None)
        if t is F.dropout:
            return ("identity", name, None)
        raise ValueError(f"model: {name} calls {getattr(t, '__name__', t)}, which is not "
                         f"supported; expected relu, max_pool2d, flatten")
    if node.op == "call_method":
        t = node.target
        if t == "relu":
            return ("relu", name, None)
        if t in ("view", "reshape", "flatten"):
            dims = node.args[1:]
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = tuple(dims[0])
            if t == "flatten" and tuple(dims) not in ((1,), (1, -1)):
                raise ValueError(f"model: {name}: only flatten from dimension 1 is supported")
            if t != "flatten" and (len(dims) != 2 or dims[1] != -1):
                raise ValueError(f"model: {name}: only {t}(N, -1) is supported")
            return ("flatten", name, None)
        if t in ("softmax", "log_softmax"):
            return ("softmax", name, None)
        raise ValueError(f"model: {name} calls .{t}(), which is not supported")
    raise ValueError(f"model: {name} ({node.op} {node.target}) is not supported")


def _conv_padding(m, name):
    if getattr(m, "padding_mode", "zeros") != "zeros":
        raise ValueError(f"model: {name}: padding_mode {m.padding_mode!r} is not supported "
                         f"(zeros only)")
    p = m.padding
    return p if isinstance(p, str) else _pair(p, "padding", name)


class _Recorder(fx.Interpreter):
    """Runs the traced model, keeping max|value| (or all values) at chosen nodes."""

    def __init__(self, gm, nodes, keep_all: bool):
        super().__init__(gm)
        self.nodes, self.keep_all = set(nodes), keep_all
        self.amax: dict[str, float] = {}
        self.values: dict[str, list] = {}
        self.shapes: dict[str, tuple] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.nodes:
            a = out.detach().abs().to(torch.float64)
            self.shapes[n.name] = tuple(out.shape[1:])
            self.amax[n.name] = max(self.amax.get(n.name, 0.0), float(a.max()) if a.numel() else 0.0)
            if self.keep_all:
                self.values.setdefault(n.name, []).append(a.flatten().numpy())
        return out


def _scale_of(rec: _Recorder, node: str, percentile: float) -> float:
    if percentile >= 100.0:
        amax = rec.amax[node]
    else:
        amax = float(np.percentile(np.concatenate(rec.values[node]), percentile))
    return amax / INT8_MAX if amax > 0 else 1.0


def quantize(model: nn.Module, calibration, *, percentile: float = 100.0,
             mult_bits: int = 31, batch_size: int = 256) -> QuantizedNet:
    """Post-training quantization of a trained ``model`` (a chain of Conv2d, Linear,
    ReLU, MaxPool2d, Flatten, optionally ending in a softmax; PyTorch's layers or
    lepton_accel.torch's) with activation scales calibrated on ``calibration`` images
    (float, (N, C, H, W), a few hundred training images).

    ``percentile``: the activation range is that percentile of |x| per tensor (100:
    the maximum). ``mult_bits``: width of the requantization multipliers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) \
            or not 0 < percentile <= 100:
        raise ValueError(f"percentile: expected a number in (0, 100], got {percentile!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    quantize_multiplier(1.0, mult_bits)     # validates mult_bits
    calib = _as_images(calibration, "calibration")
    if calib.shape[0] == 0:
        raise ValueError("calibration: no images")
    steps, gm = _chain(model)

    # Fuse each ReLU that directly follows a convolution or dense layer; the tensor to
    # calibrate is then that layer's output after the ReLU.
    plan = []   # [kind, name, obj, fused_relu, node whose output is the layer's]
    for kind, name, obj, node in steps:
        if kind == "relu" and plan and plan[-1][0] in ("conv", "linear") and not plan[-1][3]:
            plan[-1][3], plan[-1][4] = True, node
            continue
        plan.append([kind, name, obj, False, node])
    kernel_idx = [i for i, p in enumerate(plan) if p[0] in ("conv", "linear")]
    if not kernel_idx:
        raise ValueError("model: has no Conv2d or Linear layer to quantize")
    input_node = next(n for n in gm.graph.nodes if n.op == "placeholder")
    watch = [input_node.name] + [plan[i][4].name for i in kernel_idx]

    was_training = model.training
    model.eval()
    rec = _Recorder(gm, watch, keep_all=percentile < 100.0)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    try:
        with torch.no_grad():
            for i in range(0, calib.shape[0], batch_size):
                rec.run(torch.from_numpy(calib[i:i + batch_size]).to(dtype))
    finally:
        model.train(was_training)

    s_in = _scale_of(rec, input_node.name, percentile)
    layers, s_x, last = [], s_in, kernel_idx[-1]
    for i, (kind, name, obj, relu, node) in enumerate(plan):
        if kind in ("conv", "linear"):
            w = obj.weight.detach().cpu().to(torch.float64).numpy()
            b = (obj.bias.detach().cpu().to(torch.float64).numpy() if obj.bias is not None
                 else np.zeros(w.shape[0]))
            wq, s_w = quantize_weights(w)
            bq = _quantize_bias(b, s_x, s_w, name)
            s_y = None if i == last else _scale_of(rec, node.name, percentile)
            m = sh = None
            if s_y is not None:
                m, sh = quantize_multiplier(s_x * s_w / s_y, mult_bits)
            if kind == "conv":
                layers.append(QConv2d(name, wq, bq, s_w, s_x, s_y, relu, _pair(obj.stride, "stride", name),
                                      _conv_padding(obj, name), _pair(obj.dilation, "dilation", name),
                                      int(obj.groups), m, sh))
            else:
                layers.append(QLinear(name, wq, bq, s_w, s_x, s_y, relu, m, sh))
            if s_y is not None:
                s_x = s_y
        elif kind == "pool":
            layers.append(obj)
        elif kind == "flatten":
            layers.append(QFlatten(name))
        else:
            layers.append(QReLU(name))
    return QuantizedNet(s_in, layers, tuple(calib.shape[1:]))
