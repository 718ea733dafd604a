"""The public operations: operands -> views -> OpSpec -> a backend's kernel.

Each public function is a thin signature over its op's definition (:mod:`lepton_accel.ops`);
validation, dispatch and the recording of run statistics are shared. A call validates
everything before a kernel runs. Repeated calls with the same shapes, dtypes and
arguments reuse the validated spec, so the layer costs a few microseconds.
"""
from __future__ import annotations

import math
import os

from . import backends as _backends
from . import numerics
from .arrays import ArrayView, as_view
from .backends import BackendUnavailable, RunStats, UnsupportedOperation
from .ops import CONV2D, CONV2D_GRAD_INPUT, CONV2D_GRAD_WEIGHT, MATMUL, OpDef, OpSpec
from .perf import MODEL

#: bound of each decision cache below (cleared when full)
_CACHE_MAX = 1024
#: (spec, backend, perf-model generation, backend tokens) by public call signature
_CALLS: dict[tuple, tuple] = {}
#: auto-dispatch decisions by (spec, operand devices, perf-model generation, backend tokens)
_CHOICE: dict[tuple, object] = {}
#: the backends whose offer can change at run time (they define token())
_TOKENED = [be for be in _backends.REGISTRY.values()
            if type(be).token is not _backends.Backend.token]


def _check_backend_name(backend) -> None:
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected 'auto' or a backend name "
                        f"({', '.join(_backends.REGISTRY)}), got {type(backend).__name__}")
    if backend != "auto":
        _backends.get(backend)  # raises ValueError naming the known backends


def choose_backend(spec: OpSpec, views: list[ArrayView] | None = None, backend: str = "auto"):
    """The backend that runs ``spec``: the one asked for, or the cheapest by the perf model.

    Decisions are cached by (spec, backend, operand devices, backend tokens, and for
    "auto" the perf model's generation), so a repeated call costs one dictionary lookup."""
    key = (spec, backend, tuple([v.device for v in views]) if views else (),
           MODEL.generation if backend == "auto" else 0, tuple([be.token() for be in _TOKENED]))
    be = _CHOICE.get(key)
    if be is not None:
        return be
    be = _weigh(spec, views) if backend == "auto" else _named(spec, views, backend)
    if len(_CHOICE) >= _CACHE_MAX:
        _CHOICE.clear()
    _CHOICE[key] = be
    return be


def _named(spec: OpSpec, views, backend: str) -> "_backends.Backend":
    be = _backends.get(backend)
    ok, why = be.available()
    if not ok:
        raise BackendUnavailable(f"backend: {backend!r} is not available: {why}")
    ok, why = be.supports(spec, views)
    if not ok:
        raise UnsupportedOperation(f"backend: {backend!r} does not support this {spec.op}: {why}")
    return be


def _weigh(spec: OpSpec, views) -> "_backends.Backend":
    candidates, reasons = [], []
    for be in _backends.REGISTRY.values():
        ok, why = be.available()
        if ok:
            ok, why = be.supports(spec, views)
        if ok:
            candidates.append(be)
        else:
            reasons.append(f"{be.name}: {why}")
    if not candidates:
        raise UnsupportedOperation(f"no available backend runs this {spec.op}: " + "; ".join(reasons))
    if len(candidates) == 1:  # nothing to weigh
        return candidates[0]
    return min(candidates, key=lambda be: be.estimate(spec, views))


def _spec(opdef: OpDef, views, activation, out_dtype, params: dict,
          requant: bool = False) -> OpSpec:
    """Validate a call into its OpSpec and apply the size policy. ``views`` are the op's
    operands, then the bias if there is one; ``requant`` asks for the int8 epilogue."""
    n = len(opdef.operands)
    bias = views[n] if len(views) > n else None
    extra = {"requant": True} if requant else {}
    spec = opdef.spec(tuple(v.shape for v in views[:n]), tuple(v.dtype for v in views[:n]),
                      bias_shape=None if bias is None else bias.shape,
                      bias_dtype=None if bias is None else bias.dtype,
                      activation=activation, out_dtype=out_dtype, **params, **extra)
    _check_memory(spec, views)
    return spec


def requant_operands(spec: OpSpec, multiplier, shift):
    """The requantization's per-channel multiplier and shift as int32 arrays, checked
    against the spec's output channels (ValueError/TypeError naming the argument)."""
    channels = spec.out_shape[spec.definition.channel_axis(spec)] if spec.out_shape else 1
    return numerics.check_requant(multiplier, shift, channels)


def available_memory() -> int:
    """Bytes of host memory available now (MemAvailable; the physical size where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _check_memory(spec: OpSpec, views) -> None:
    """The size policy: a call whose operands (as dense arrays: a broadcast view may be
    materialised) and result do not fit in the host memory available now is refused
    before any work, naming the largest operand; device operands are the device's matter."""
    if views and not all(v.is_host for v in views):
        return
    need = spec.bytes_in + spec.bytes_out
    if need < (1 << 30):  # below 1 GiB there is nothing to ask the system
        return
    avail = available_memory()
    if need > avail:
        names = spec.definition.operands
        big = max(range(len(spec.shapes)), key=lambda i: math.prod(spec.shapes[i]))
        raise ValueError(f"{names[big]}: this {spec.op} needs about {need / 2**30:.1f} GiB "
                         f"(operands {', '.join(str(s) for s in spec.shapes)} as dense arrays and "
                         f"a {spec.out_shape} result), more than the {avail / 2**30:.1f} GiB "
                         "of memory available; split the work into smaller calls")


def execute(spec: OpSpec, operands, backend: str = "auto"):
    """Run a validated spec on its operands (the op's arrays in order, then the bias if
    the spec has one, then the multiplier and shift if it requantizes): returns ``(output, RunStats)``. The statistics are the caller's to
    keep; :func:`matmul` and :func:`conv2d` record them in the process's perf model."""
    _check_backend_name(backend)
    names = spec.operand_names
    if len(operands) != len(names):
        raise ValueError(f"operands: {spec.op} with this spec takes {len(names)} arrays "
                         f"({', '.join(names)}), got {len(operands)}")
    operands = list(operands)
    if spec.requant:
        operands[-2:] = requant_operands(spec, operands[-2], operands[-1])
    views = [o if isinstance(o, ArrayView) else as_view(o, n) for o, n in zip(operands, names)]
    for v, shape in zip(views, spec.shapes):
        if tuple(v.shape) != tuple(shape) or v.dtype != spec.dtype:
            raise ValueError(f"{v.name}: expected shape {tuple(shape)} {spec.dtype} as the spec "
                             f"says, got {tuple(v.shape)} {v.dtype}")
    _check_memory(spec, views)
    return choose_backend(spec, views, backend).run(spec, views)


def _call(opdef: OpDef, views: list[ArrayView], backend, activation, out_dtype, requant=None,
          **params):
    # One lookup serves a repeated call: the validated spec and the backend chosen for it,
    # still valid while the backends' tokens (and for "auto" the perf model) are unchanged.
    tokens = [be.token() for be in _TOKENED]
    gen = MODEL.generation if backend == "auto" else 0
    has_requant = requant is not None
    if has_requant and (not isinstance(requant, (tuple, list)) or len(requant) != 2):
        raise TypeError(f"requant: expected (multiplier, shift), per output channel, got "
                        f"{type(requant).__name__}")
    try:
        key = (opdef.name, backend, activation, out_dtype, has_requant, tuple(params.values()),
               tuple([(v.shape, v.dtype, v.device) for v in views]))
        hit = _CALLS.get(key)
    except TypeError:  # an unhashable argument: validated (and refused or run) uncached
        key = hit = None
    if hit is not None and hit[2] == gen and hit[3] == tokens:
        spec = hit[0]
    else:
        if backend.__class__ is not str:
            _check_backend_name(backend)
        spec = _spec(opdef, views, activation, out_dtype, params, requant=has_requant)
    if has_requant:
        mult, shift = requant_operands(spec, *requant)
        views = views + [as_view(mult, "multiplier"), as_view(shift, "shift")]
    if hit is not None and hit[0] is spec and hit[2] == gen and hit[3] == tokens:
        be = hit[1]
    else:
        be = choose_backend(spec, views, backend)
        if key is not None:
            if len(_CALLS) >= _CACHE_MAX:
                _CALLS.clear()
            _CALLS[key] = (spec, be, gen, tokens)
    out, stats = be.run(spec, views)
    if stats.cycles is not None or stats.sim_s_per_cycle is not None:
        MODEL.observe(spec, stats)
    return out


def matmul(a, b, *, bias=None, activation=None, out_dtype=None, allow_tf32=False,
           requant=None, backend="auto"):
    """``activation(a @ b + bias)`` with NumPy's matmul semantics.

    a: (..., M, K) or (K,); b: (..., K, N) or (K,); leading dims broadcast.
    bias: (N,), added along the last output axis. activation: None, "relu" or "gelu"
    (tanh approximation). Dtype rules are in :mod:`lepton_accel.dtypes`. ``allow_tf32``
    lets float32 run on TF32 tensor cores where the backend has them (exact float32 otherwise).
    ``requant=(multiplier, shift)`` (integer operands; per output channel, or scalars)
    requantizes the int32 result to int8 (``numerics.requantize``: round to nearest,
    saturating), a ReLU then clamping the int8 values.
    """
    views = [as_view(a, "a"), as_view(b, "b")]
    if bias is not None:
        views.append(as_view(bias, "bias"))
    return _call(MATMUL, views, backend, activation, out_dtype, requant,
                 allow_tf32=allow_tf32)


def conv2d(x, w, *, bias=None, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
           activation=None, out_dtype=None, requant=None, backend="auto"):
    """2-D cross-correlation with PyTorch's meaning of the parameters.

    x: (N, C, H, W) for layout="NCHW" or (N, H, W, C) for "NHWC"; w: (OC, C/groups, KH, KW);
    bias: (OC,); padding: int, pair, "same" or "valid". The output has x's layout.
    ``requant=(multiplier, shift)``: the int8 epilogue, as for :func:`matmul`.
    """
    views = [as_view(x, "x"), as_view(w, "w")]
    if bias is not None:
        views.append(as_view(bias, "bias"))
    return _call(CONV2D, views, backend, activation, out_dtype, requant, stride=stride,
                 padding=padding, dilation=dilation, groups=groups, layout=layout)


def conv2d_grad_input(dy, w, *, input_hw, stride=1, padding=0, dilation=1, groups=1,
                      layout="NCHW", out_dtype=None, backend="auto"):
    """The gradient of ``conv2d(x, w, ...)`` with respect to x, given the output gradient dy.

    dy: the forward output's shape in ``layout``; w: (OC, C/groups, KH, KW); input_hw: the
    (H, W) of x. Returns dx with x's shape. Float operands only.
    """
    views = [as_view(dy, "dy"), as_view(w, "w")]
    return _call(CONV2D_GRAD_INPUT, views, backend, None, out_dtype, input_hw=input_hw,
                 stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)


def conv2d_grad_weight(x, dy, *, kernel_hw, stride=1, padding=0, dilation=1, groups=1,
                       layout="NCHW", out_dtype=None, backend="auto"):
    """The gradient of ``conv2d(x, w, ...)`` with respect to w, given the output gradient dy.

    x, dy: in ``layout``; kernel_hw: the (KH, KW) of w. Returns dw, (OC, C/groups, KH, KW).
    Float operands only.
    """
    views = [as_view(x, "x"), as_view(dy, "dy")]
    return _call(CONV2D_GRAD_WEIGHT, views, backend, None, out_dtype, kernel_hw=kernel_hw,
                 stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)


__all__ = ["matmul", "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "execute", "choose_backend", "RunStats", "BackendUnavailable",
           "UnsupportedOperation"]
