"""CUDA backend: our kernels in csrc/cuda/, reached through lepton_accel._core.

Host (NumPy) operands are copied to the device and the result copied back. Device
operands that arrive by DLPack are used in place, and the kernels run on the caller's
current stream (PyTorch's or CuPy's); the output is allocated by the caller's framework
on the same device, so it comes back as the caller's kind of array.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time

import numpy as np

from .._native import IMPORT_ERROR, core, cuda_compiled
from ..arrays import ArrayView, to_caller_kind
from ..dtypes import DTYPES
from ..perf import DEVICES, MODEL, cuda_model
from ..ops import OpSpec
from .base import Backend, RunStats


def _dtype(name: str):
    """The binding's DType for a dtype name ("float16", ...)."""
    return core.DType.__members__[name]


def _activation(name: str | None):
    """The binding's Activation for an activation name (None: none)."""
    return core.Activation.__members__[name or "none"]


@functools.lru_cache(maxsize=None)
@functools.lru_cache(maxsize=None)  # the build and the devices do not change in a process
def _status() -> tuple[bool, str]:
    if core is None:
        return False, f"the native core is not built ({IMPORT_ERROR})"
    if not cuda_compiled():
        return False, "this build has no CUDA kernels (no CUDA compiler was found at build time)"
    if core.cuda_device_count() == 0:
        return False, core.cuda_runtime_status() or "no CUDA device present"
    return True, ""


@functools.lru_cache(maxsize=None)
def device_name(index: int = 0) -> str:
    """The perf model's name for CUDA device ``index``."""
    return cuda_model(core.cuda_device_props(index)["name"])


def _stats_device() -> str:
    return device_name(0)


class _DeviceBuffer:
    """Device memory owned by this backend for the length of one call."""

    def __init__(self, nbytes: int):
        self.ptr = core.cuda_malloc(nbytes)

    def free(self):
        if self.ptr:
            core.cuda_free(self.ptr)
            self.ptr = 0


@contextlib.contextmanager
def _round_trip(hosts, out: np.ndarray):
    """Device copies of the host arrays ``hosts`` and a device buffer for ``out``; yields
    (input pointers, output pointer), copies the output back when the body succeeds,
    and frees every buffer either way. Copies go as bytes: NumPy exports no buffer for
    bfloat16 (ml_dtypes)."""
    buffers = []
    try:
        ptrs = []
        for h in hosts:
            buffers.append(_DeviceBuffer(h.nbytes))
            core.cuda_copy_to_device(buffers[-1].ptr, h.reshape(-1).view(np.uint8))
            ptrs.append(buffers[-1].ptr)
        buffers.append(_DeviceBuffer(out.nbytes))
        yield ptrs, buffers[-1].ptr
        core.cuda_copy_to_host(out.reshape(-1).view(np.uint8), buffers[-1].ptr)
    finally:
        for buf in buffers:
            buf.free()


def _empty_like_framework(origin, shape, dtype: str):
    """Allocate the output with the caller's framework on the caller's device."""
    fw = type(origin).__module__.split(".")[0]
    if fw == "torch":
        import torch

        tdt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
               "int32": torch.int32}[dtype]
        out = torch.empty(shape, dtype=tdt, device=origin.device)
        return out, out.data_ptr()
    if fw == "cupy":
        import cupy

        if dtype == "bfloat16":
            raise TypeError("out_dtype: CuPy has no bfloat16 arrays; ask for out_dtype='float32'")
        out = cupy.empty(shape, dtype=DTYPES[dtype])
        return out, out.data.ptr
    raise TypeError(f"a: device arrays from {fw} are not supported for output allocation; "
                    "pass PyTorch or CuPy arrays, or NumPy arrays")


def _batch_strides(view_shape, view_strides, batch_shape):
    """Element strides of each broadcast batch dim (0 where the operand is broadcast)."""
    nb = len(batch_shape)
    own = len(view_shape) - 2
    out = []
    for i in range(nb):
        j = i - (nb - own)
        out.append(0 if j < 0 or view_shape[j] == 1 else view_strides[j])
    return out


def _collapse(batch_shape, per_operand):
    """One stride per operand for all batch dims, or None when they do not collapse.

    Dims of extent 1 never move the flat batch index, so they are skipped (their
    stride says nothing); the others must nest: each stride is the next inner
    dim's stride times its extent (0 stays 0 for a broadcast operand)."""
    result = []
    for strides in per_operand:
        dims = [(n, s) for n, s in zip(batch_shape, strides) if n != 1]
        if not dims:
            result.append(0)
            continue
        s_inner = dims[-1][1]
        expected = s_inner
        for n, s in reversed(dims):
            if s != expected:
                return None
            expected = s * n
        result.append(s_inner)
    return result


class CudaBackend(Backend):
    name = "cuda"

    def available(self) -> tuple[bool, str]:
        return _status()

    def supports(self, spec: OpSpec, operands: list[ArrayView] | None = None) -> tuple[bool, str]:
        ok, why = self.available()
        if not ok:
            return False, why
        if spec.op not in self.kernels:
            return False, f"no {spec.op} kernel on the cuda backend"
        if spec.requant:
            return False, "no int8 requantization epilogue on the cuda backend"
        if spec.dtype not in core.DType.__members__:
            return False, f"{spec.dtype} operands have no CUDA kernel (int8 is the integer type)"
        if spec.op in _CONV_ROLES:
            geo = _conv_geometry(spec)
            big = [k for k in ("stride_h", "stride_w", "pad_top", "pad_left", "dil_h", "dil_w")
                   if geo[k] >= _PARAM_LIMIT]
            if big:
                return False, (f"{', '.join(big)} beyond the CUDA kernels' index range "
                               f"(at most {_PARAM_LIMIT - 1} where it matters)")
        devices = {v.device for v in operands or () if not v.is_host}
        if len(devices) > 1:
            return False, f"operands are on different devices: {sorted(devices)}"
        if devices and any(v.is_host for v in operands):
            return False, "operands mix host and device memory"
        if devices and spec.bias and operands[2].dtype != spec.out_dtype:
            # conv2d reads a float32 bias for any float output as well
            if not (spec.op == "conv2d" and spec.out_dtype != "int32"
                    and operands[2].dtype == "float32"):
                return False, f"bias on the device must have the output dtype {spec.out_dtype}"
        if devices and spec.bias and operands[2].shape[0] > 1 and operands[2].strides[0] != 1:
            # the kernels read bias[i] with unit stride
            return False, (f"bias on the device must be contiguous (element stride "
                           f"{operands[2].strides[0]})")
        return True, ""

    def estimate(self, spec: OpSpec, operands=None) -> float:
        on_host = not operands or operands[0].is_host
        name = device_name(0) if self.available()[0] else "H100-SXM"
        return MODEL.estimate(spec, DEVICES[name], data_on_host=on_host).total_s

    def _run_matmul(self, spec: OpSpec, operands: list[ArrayView]):
        t0 = time.perf_counter()
        if operands[0].is_host:
            out = to_caller_kind(self._matmul_host(spec, operands), operands[0].origin)
        else:
            out = self._matmul_device(spec, operands)
        return out, RunStats("cuda", time.perf_counter() - t0, _stats_device())

    def _run_conv(self, spec: OpSpec, operands: list[ArrayView]):
        """conv2d and both of its gradients: one host round trip, one device path."""
        t0 = time.perf_counter()
        if operands[0].is_host:
            out = to_caller_kind(self._conv_host(spec, operands), operands[0].origin)
        else:
            out = self._conv_device(spec, operands)
        return out, RunStats("cuda", time.perf_counter() - t0, _stats_device())

    kernels = {"matmul": _run_matmul, "conv2d": _run_conv, "conv2d_grad_input": _run_conv,
               "conv2d_grad_weight": _run_conv}

    # ---- host operands: copy in, run, copy out ---------------------------------------
    def _matmul_host(self, spec: OpSpec, ops: list[ArrayView]) -> np.ndarray:
        out = np.empty(spec.out_shape, DTYPES[spec.out_dtype])
        if out.size == 0:
            return out
        hosts = [np.ascontiguousarray(v.host) for v in ops[:2]]
        if spec.bias:
            hosts.append(np.ascontiguousarray(ops[2].host.astype(DTYPES[spec.out_dtype])))
        views = [(h.shape, tuple(s // h.itemsize for s in h.strides)) for h in hosts[:2]]
        with _round_trip(hosts, out) as (ptrs, c_ptr):
            self._launch(spec, views, ptrs, c_ptr, out.shape, 0)
        return out

    # ---- device operands: in place, on the caller's stream ---------------------------
    def _matmul_device(self, spec: OpSpec, ops: list[ArrayView]):
        out, c_ptr = _empty_like_framework(ops[0].origin, spec.out_shape, spec.out_dtype)
        if int(np.prod(spec.out_shape)) == 0:
            return out
        stream = ops[0].stream or 0
        ptrs = [v.ptr for v in ops[:2]] + ([ops[2].ptr] if spec.bias else [])
        self._launch(spec, [(v.shape, v.strides) for v in ops[:2]], ptrs, c_ptr,
                     spec.out_shape, stream)
        return out

    @staticmethod
    def _launch(spec: OpSpec, views, ptrs, c_ptr: int, out_shape, stream: int) -> str:
        (a_shape, a_str), (b_shape, b_str) = views
        # NumPy's 1-D promotion: a vector a is a 1 x K row, a vector b a K x 1 column.
        if len(a_shape) == 1:
            a_shape, a_str = (1,) + tuple(a_shape), (0,) + tuple(a_str)
        if len(b_shape) == 1:
            b_shape, b_str = tuple(b_shape) + (1,), tuple(b_str) + (0,)
        M, K = a_shape[-2:]
        N = b_shape[-1]
        batch_shape = tuple(np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])))
        c_contig = [1]
        c_shape = batch_shape + (M, N)
        for n in reversed(c_shape[1:]):
            c_contig.insert(0, c_contig[0] * n)
        a_b = _batch_strides(a_shape, a_str, batch_shape)
        b_b = _batch_strides(b_shape, b_str, batch_shape)
        c_b = list(c_contig[:-2])
        bias_ptr = ptrs[2] if spec.bias else 0
        problem = dict(M=M, N=N, K=K, in_dtype=_dtype(spec.dtype), out_dtype=_dtype(spec.out_dtype),
                       activation=_activation(spec.activation), allow_tf32=spec.params.allow_tf32)
        itemsize = {"a": DTYPES[spec.dtype].itemsize, "c": DTYPES[spec.out_dtype].itemsize}
        collapsed = _collapse(batch_shape, [a_b, b_b, c_b]) if batch_shape else [0, 0, 0]
        if collapsed is not None:
            batch = int(np.prod(batch_shape)) if batch_shape else 1
            return core.cuda_gemm(
                core.GemmProblem(batch=batch, a_strides=(collapsed[0], a_str[-2], a_str[-1]),
                                 b_strides=(collapsed[1], b_str[-2], b_str[-1]),
                                 c_strides=(collapsed[2], N, 1), **problem),
                ptrs[0], ptrs[1], c_ptr, bias_ptr, stream=stream)
        one = core.GemmProblem(batch=1, a_strides=(0, a_str[-2], a_str[-1]),
                               b_strides=(0, b_str[-2], b_str[-1]), c_strides=(0, N, 1), **problem)
        name = ""
        for idx in itertools.product(*(range(n) for n in batch_shape)):  # uncollapsible batch
            off = [sum(i * s for i, s in zip(idx, st)) for st in (a_b, b_b, c_b)]
            name = core.cuda_gemm(one, ptrs[0] + off[0] * itemsize["a"], ptrs[1] + off[1] * itemsize["a"],
                                  c_ptr + off[2] * itemsize["c"], bias_ptr, stream=stream)
        return name

    # ---- conv2d and its gradients ----------------------------------------------------
    # One problem description serves all three: x, w and y take the roles below (the
    # gradients' output is x's or w's), and every tensor is passed by element strides
    # along (n, c, h, w) / (oc, c/groups, kh, kw).
    def _conv_host(self, spec: OpSpec, ops: list[ArrayView]) -> np.ndarray:
        """Copy in, run, copy out. A forward filter goes up in OHWI order (a host-side
        transpose), the order the tensor-core kernel reads without a device copy."""
        out = np.empty(spec.out_shape, DTYPES[spec.out_dtype])
        if out.size == 0:
            return out
        if spec.op != "conv2d" and not all(math.prod(v.shape) for v in ops[:2]):
            out[...] = 0  # a gradient summed over nothing
            return out
        roles, out_role = _CONV_ROLES[spec.op]
        hosts, strides = [], {}
        for role, view in zip(roles, ops[:2]):
            if spec.op == "conv2d" and role == "w":
                h = np.ascontiguousarray(view.host.transpose(0, 2, 3, 1))
                oc, kh, kw, cg = h.shape
                strides[role] = (kh * kw * cg, 1, kw * cg, cg)  # along (oc, c, kh, kw)
            else:
                h = np.ascontiguousarray(view.host)
                strides[role] = tuple(st // h.itemsize for st in h.strides)
            hosts.append(h)
        strides[out_role] = tuple(st // out.itemsize for st in out.strides)
        bias_dtype = spec.out_dtype
        if spec.bias:  # float outputs take the bias in float32, exact for any float bias
            bias_dtype = "int32" if spec.out_dtype == "int32" else "float32"
            hosts.append(np.ascontiguousarray(ops[2].host.astype(DTYPES[bias_dtype])))
        with _round_trip(hosts, out) as (ptrs, out_ptr):
            ptr = dict(zip(roles, ptrs))
            ptr[out_role] = out_ptr
            self._conv_launch(spec, ptr, ptrs[2] if spec.bias else 0, bias_dtype, strides, 0)
        return out

    def _conv_device(self, spec: OpSpec, ops: list[ArrayView]):
        """In place on the caller's stream; the output comes from the caller's framework."""
        out, out_ptr = _empty_like_framework(ops[0].origin, spec.out_shape, spec.out_dtype)
        if int(np.prod(spec.out_shape)) == 0:
            return out
        roles, out_role = _CONV_ROLES[spec.op]
        ptr = {role: v.ptr for role, v in zip(roles, ops[:2])}
        strides = {role: tuple(v.strides) for role, v in zip(roles, ops[:2])}
        ptr[out_role], strides[out_role] = out_ptr, _contiguous_strides(spec.out_shape)
        if spec.op != "conv2d" and not all(math.prod(v.shape) for v in ops[:2]):
            nbytes = math.prod(spec.out_shape) * DTYPES[spec.out_dtype].itemsize
            core.cuda_memset(out_ptr, 0, nbytes, ops[0].stream or 0)  # summed over nothing
            return out
        bias_ptr = ops[2].ptr if spec.bias else 0
        bias_dtype = ops[2].dtype if spec.bias else spec.out_dtype
        self._conv_launch(spec, ptr, bias_ptr, bias_dtype, strides, ops[0].stream or 0)
        return out

    @staticmethod
    def _conv_launch(spec: OpSpec, ptr: dict, bias_ptr: int, bias_dtype: str, strides: dict,
                     stream: int) -> str:
        """ptr and strides by role (x, w, y); x and y strides in the spec's layout's own
        axis order, w's along (oc, c, kh, kw). Returns the kernel name."""
        problem = core.Conv2dProblem(**_conv_geometry(spec), **_conv_strides(spec, strides),
                                     in_dtype=_dtype(spec.dtype), out_dtype=_dtype(spec.out_dtype),
                                     bias_dtype=_dtype(bias_dtype),
                                     activation=_activation(spec.activation))
        if spec.op == "conv2d_grad_input":
            return core.cuda_conv2d_grad_input(problem, ptr["y"], ptr["w"], ptr["x"], stream=stream)
        if spec.op == "conv2d_grad_weight":
            return core.cuda_conv2d_grad_weight(problem, ptr["x"], ptr["y"], ptr["w"], stream=stream)
        return core.cuda_conv2d(problem, ptr["x"], ptr["w"], ptr["y"], bias_ptr, stream=stream)


#: op -> (the roles of its two operands, the role of its output) in y = conv2d(x, w)
_CONV_ROLES = {
    "conv2d": (("x", "w"), "y"),
    "conv2d_grad_input": (("y", "w"), "x"),
    "conv2d_grad_weight": (("x", "y"), "w"),
}

#: the kernels keep every extent well inside 64 bits; larger parameters are refused
_PARAM_LIMIT = 2**31


def _contiguous_strides(shape) -> tuple[int, ...]:
    out, step = [], 1
    for n in reversed(tuple(shape)):
        out.insert(0, step)
        step *= n
    return tuple(out)


def _conv_shapes(spec: OpSpec) -> dict:
    """The shapes of x, w and y (x and y in the spec's layout) for any of the conv ops."""
    roles, out_role = _CONV_ROLES[spec.op]
    shapes = dict(zip(roles, spec.shapes))
    shapes[out_role] = spec.out_shape
    return shapes


def _conv_geometry(spec: OpSpec) -> dict:
    """Conv2dProblem's sizes and parameters. A stride with one output row (column) and a
    dilation with one filter tap are never used and go as 1, so any value validation
    accepts there reaches the kernels."""
    p = spec.params
    shapes = _conv_shapes(spec)
    if p.layout == "NCHW":
        (n, c, h, w), (oh, ow) = shapes["x"], shapes["y"][2:]
    else:
        (n, h, w, c), (oh, ow) = shapes["x"], shapes["y"][1:3]
    oc, _, kh, kw = shapes["w"]
    (sh, sw), ((pt, _), (pl, _)), (dh, dw) = p.stride, p.padding, p.dilation
    return dict(N=n, C=c, H=h, W=w, OC=oc, KH=kh, KW=kw, OH=oh, OW=ow,
                stride_h=sh if oh > 1 else 1, stride_w=sw if ow > 1 else 1, pad_top=pt,
                pad_left=pl, dil_h=dh if kh > 1 else 1, dil_w=dw if kw > 1 else 1,
                groups=p.groups)


def _conv_strides(spec: OpSpec, strides: dict) -> dict:
    """x_strides / y_strides along (n, c, h, w) from the layout's own axis order."""
    def nchw(st):
        st = tuple(st)
        return st if spec.params.layout == "NCHW" else (st[0], st[3], st[1], st[2])

    return dict(x_strides=nchw(strides["x"]), w_strides=tuple(strides["w"]),
                y_strides=nchw(strides["y"]))
