"""Public operations: validate -> OpSpec -> dispatch to a backend."""
from __future__ import annotations

from . import backends as _backends
from .arrays import ArrayView, as_view
from .backends import BackendUnavailable, UnsupportedOperation
from .spec import OpSpec, conv2d_spec, matmul_spec


def _check_backend_name(backend) -> None:
    if backend != "auto":
        _backends.get(backend)  # raises ValueError naming the known backends


def choose_backend(spec: OpSpec, views: list[ArrayView] | None = None, backend: str = "auto"):
    """The backend that runs ``spec``: the one asked for, or the cheapest by the perf model."""
    if backend != "auto":
        be = _backends.get(backend)
        ok, why = be.available()
        if not ok:
            raise BackendUnavailable(f"backend: {backend!r} is not available: {why}")
        ok, why = be.supports(spec, views)
        if not ok:
            raise UnsupportedOperation(f"backend: {backend!r} does not support this {spec.op}: {why}")
        return be
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


def _bias_view(bias):
    return None if bias is None else as_view(bias, "bias")


def matmul(a, b, *, bias=None, activation=None, out_dtype=None, allow_tf32=False,
           backend="auto"):
    """``activation(a @ b + bias)`` with NumPy's matmul semantics.

    a: (..., M, K) or (K,); b: (..., K, N) or (K,); leading dims broadcast.
    bias: (N,), added along the last output axis. activation: None, "relu" or "gelu"
    (tanh approximation). Dtype rules are in :mod:`lepton_accel.dtypes`. ``allow_tf32``
    lets float32 run on TF32 tensor cores where the backend has them (exact float32 otherwise).
    """
    _check_backend_name(backend)
    va, vb, vbias = as_view(a, "a"), as_view(b, "b"), _bias_view(bias)
    spec = matmul_spec(va.shape, va.dtype, vb.shape, vb.dtype,
                       bias_shape=None if vbias is None else vbias.shape,
                       bias_dtype=None if vbias is None else vbias.dtype,
                       activation=activation, out_dtype=out_dtype, allow_tf32=allow_tf32)
    views = [va, vb] + ([vbias] if vbias is not None else [])
    return choose_backend(spec, views, backend).run(spec, views)


def conv2d(x, w, *, bias=None, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
           activation=None, out_dtype=None, backend="auto"):
    """2-D cross-correlation with PyTorch's meaning of the parameters.

    x: (N, C, H, W) for layout="NCHW" or (N, H, W, C) for "NHWC"; w: (OC, C/groups, KH, KW);
    bias: (OC,); padding: int, pair, "same" or "valid". The output has x's layout.
    """
    _check_backend_name(backend)
    vx, vw, vbias = as_view(x, "x"), as_view(w, "w"), _bias_view(bias)
    spec = conv2d_spec(vx.shape, vx.dtype, vw.shape, vw.dtype,
                       bias_shape=None if vbias is None else vbias.shape,
                       bias_dtype=None if vbias is None else vbias.dtype,
                       stride=stride, padding=padding, dilation=dilation, groups=groups,
                       layout=layout, activation=activation, out_dtype=out_dtype)
    views = [vx, vw] + ([vbias] if vbias is not None else [])
    return choose_backend(spec, views, backend).run(spec, views)
