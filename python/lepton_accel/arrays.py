"""Array interop: NumPy arrays and any object with ``__dlpack__`` (PyTorch, CuPy, JAX).

Inputs become :class:`ArrayView` objects that describe the memory without copying it:
host memory as a NumPy view (strided, no copy), device memory as a pointer with shape,
element strides and dtype. DLPack capsules are read directly (legacy ``dltensor``
protocol), so every dtype the toolkit uses, bfloat16 included, crosses without a copy.
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from .dtypes import _BY_DTYPE, _ITEMSIZE, DTYPES, OPERAND_DTYPES, dtype_name

# ---- DLPack structures (dlpack.h, ABI version 0.x "dltensor" capsules) -------------
KDL_CPU, KDL_CUDA, KDL_CUDA_HOST, KDL_CUDA_MANAGED = 1, 2, 3, 13
_DL_INT, _DL_UINT, _DL_FLOAT, _DL_BFLOAT = 0, 1, 2, 4


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [
    ("dl_tensor", _DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _DELETER),
]

_capi = ctypes.pythonapi
_capi.PyCapsule_IsValid.restype = ctypes.c_int
_capi.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capi.PyCapsule_GetPointer.restype = ctypes.c_void_p
_capi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capi.PyCapsule_SetName.restype = ctypes.c_int
_capi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]

_DL_DTYPES = {
    (_DL_FLOAT, 32): "float32",
    (_DL_FLOAT, 16): "float16",
    (_DL_BFLOAT, 16): "bfloat16",
    (_DL_INT, 8): "int8",
    (_DL_INT, 16): "int16",
    (_DL_INT, 32): "int32",
}


class _DLPackOwner:
    """Keeps a consumed DLPack tensor alive and calls its deleter exactly once."""

    def __init__(self, managed_ptr: int):
        self._ptr = managed_ptr

    def __del__(self):
        if self._ptr:
            managed = _DLManagedTensor.from_address(self._ptr)
            if managed.deleter:
                managed.deleter(ctypes.cast(self._ptr, ctypes.POINTER(_DLManagedTensor)))
            self._ptr = 0


class ArrayView:
    """One operand: its shape, dtype name, element strides and where it lives.

    ``name`` is the argument's name, for messages; ``host`` the NumPy view when the memory
    is on the host, ``ptr`` the device pointer when it is not; ``stream`` the caller's stream
    (device arrays); ``origin`` the caller's object, to return the same kind. Element strides
    of a host view are worked out when first asked for (most host kernels never ask).
    """

    device = "cpu"
    host = None
    ptr = 0
    stream = None
    origin = None
    _owner = None
    _strides = None

    def __init__(self, name: str, shape, dtype: str, strides, device: str, host=None,
                 ptr: int = 0, stream=None, origin=None, _owner=None):
        self.name, self.shape, self.dtype, self._strides = name, tuple(shape), dtype, strides
        self.device, self.host, self.ptr, self.stream = device, host, ptr, stream
        self.origin, self._owner = origin, _owner

    @classmethod
    def of_host(cls, x: np.ndarray, name: str, dtype: str) -> "ArrayView":
        """A view of a NumPy array (the per-call fast path: only what differs is set)."""
        v = cls.__new__(cls)
        v.name, v.shape, v.dtype, v.host, v.origin = name, x.shape, dtype, x, x
        return v

    @property
    def strides(self) -> tuple[int, ...]:
        """Element strides."""
        if self._strides is None:
            item = self.host.itemsize
            if any(s % item for s in self.host.strides):
                raise ValueError(f"{self.name}: strides {self.host.strides} are not multiples "
                                 "of the item size")
            self._strides = tuple(s // item for s in self.host.strides)
        return self._strides

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_host(self) -> bool:
        return self.host is not None

    def __repr__(self) -> str:
        return (f"ArrayView({self.name!r}, shape={self.shape}, dtype={self.dtype!r}, "
                f"device={self.device!r})")


def _framework(obj) -> str:
    return type(obj).__module__.split(".")[0]


def caller_stream(obj) -> int | None:
    """The framework's current CUDA stream for a device array (None: not known)."""
    fw = _framework(obj)
    try:
        if fw == "torch":
            import torch

            return int(torch.cuda.current_stream(obj.device).cuda_stream)
        if fw == "cupy":
            import cupy

            return int(cupy.cuda.get_current_stream().ptr)
    except Exception:  # pragma: no cover - framework without CUDA
        return None
    return None


def _consume_dlpack(obj, name: str) -> ArrayView:
    device_type, device_id = obj.__dlpack_device__()
    cuda = device_type in (KDL_CUDA, KDL_CUDA_MANAGED)
    stream = caller_stream(obj) if cuda else None
    try:
        # DLPack reserves stream 0 (ambiguous); 1 names the legacy default stream.
        capsule = obj.__dlpack__(stream=stream or 1) if cuda else obj.__dlpack__()
    except (BufferError, RuntimeError, ValueError) as exc:  # the exporter refused
        raise TypeError(f"{name}: the array could not be exported through DLPack: {exc}") from None
    if not _capi.PyCapsule_IsValid(capsule, b"dltensor"):
        raise TypeError(f"{name}: __dlpack__ did not return a 'dltensor' capsule")
    ptr = _capi.PyCapsule_GetPointer(capsule, b"dltensor")
    _capi.PyCapsule_SetName(capsule, b"used_dltensor")  # we own it now
    owner = _DLPackOwner(ptr)
    t = _DLManagedTensor.from_address(ptr).dl_tensor
    key = (t.dtype.code, t.dtype.bits)
    if key not in _DL_DTYPES or t.dtype.lanes != 1:
        raise TypeError(f"{name}: unsupported DLPack dtype (code {t.dtype.code}, "
                        f"{t.dtype.bits} bits, {t.dtype.lanes} lanes); {_ACCEPTED}")
    dtype = _DL_DTYPES[key]
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    if t.strides:
        strides = tuple(int(t.strides[i]) for i in range(t.ndim))
    else:  # NULL strides mean C-contiguous
        strides, acc = [], 1
        for s in reversed(shape):
            strides.append(acc)
            acc *= s
        strides = tuple(reversed(strides))
    data = (t.data or 0) + int(t.byte_offset)
    itemsize = DTYPES[dtype].itemsize
    if device_type in (KDL_CPU, KDL_CUDA_HOST):
        host = _host_view(data, shape, strides, DTYPES[dtype], owner)
        return ArrayView(name, shape, dtype, strides, "cpu", host=host, origin=obj, _owner=owner)
    if device_type in (KDL_CUDA, KDL_CUDA_MANAGED):
        return ArrayView(name, shape, dtype, strides, f"cuda:{device_id}", ptr=data,
                         stream=stream, origin=obj, _owner=owner)
    del itemsize
    raise TypeError(f"{name}: arrays on DLPack device type {device_type} are not supported "
                    "(expected host memory or a CUDA device)")


def _host_view(addr, shape, strides, dtype, owner) -> np.ndarray:
    """A NumPy view over foreign host memory, keeping its owner alive."""
    if any(s == 0 for s in shape):
        return np.empty(shape, dtype)
    lo = sum(min(0, (n - 1) * st) for n, st in zip(shape, strides))
    hi = sum(max(0, (n - 1) * st) for n, st in zip(shape, strides))
    span = (hi - lo + 1) * dtype.itemsize
    buf = (ctypes.c_uint8 * span).from_address(addr + lo * dtype.itemsize)
    buf._lepton_owner = owner  # the ctypes buffer is the NumPy base: it holds the owner
    flat = np.frombuffer(buf, dtype=dtype)
    return np.lib.stride_tricks.as_strided(
        flat[-lo:], shape=shape, strides=tuple(s * dtype.itemsize for s in strides)
    )


def as_view(x, name: str) -> ArrayView:
    """Describe ``x`` (NumPy array, DLPack object, or array-like) without copying it."""
    if isinstance(x, np.ndarray):
        dt = _BY_DTYPE.get(x.dtype) or dtype_name(x.dtype)
        if dt not in _ITEMSIZE:
            raise TypeError(f"{name}: unsupported dtype {x.dtype}; {_ACCEPTED}")
        return ArrayView.of_host(x, name, dt)
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        if _framework(x) == "torch":
            x = _plain_torch_tensor(x, name)
        return _consume_dlpack(x, name)
    if isinstance(x, (list, tuple, int, float)) or np.isscalar(x):
        return as_view(np.asarray(x), name)
    raise TypeError(f"{name}: expected a NumPy array or an object with __dlpack__, "
                    f"got {type(x).__name__}")


#: what an unsupported dtype's message offers instead
_ACCEPTED = (f"operands may be {', '.join(OPERAND_DTYPES)} (a bias may also be int32, "
             "for integer outputs)")


def _plain_torch_tensor(t, name: str):
    """A torch tensor as DLPack can carry it, or a TypeError that says why it cannot."""
    if getattr(t, "requires_grad", False):
        raise TypeError(f"{name}: the tensor requires grad, and this call would cut it out of "
                        "the autograd graph; use the ops in lepton_accel.torch (autograd, "
                        "torch.compile), or pass tensor.detach() to compute without gradients")
    if getattr(t, "is_nested", False):
        raise TypeError(f"{name}: nested tensors are not supported; pass a regular (strided) "
                        "tensor")
    if getattr(t, "is_sparse", False) or str(getattr(t, "layout", "torch.strided")) != "torch.strided":
        raise TypeError(f"{name}: a {t.layout} tensor is not supported; pass a dense "
                        "(strided) tensor, e.g. tensor.to_dense()")
    if getattr(t, "is_meta", False):
        raise TypeError(f"{name}: a meta tensor has no data to compute on")
    if t.is_conj() or t.is_neg():  # lazy sign/conjugate bits that DLPack would drop
        t = t.resolve_conj().resolve_neg()
    return t


def to_caller_kind(result: np.ndarray, like: Any):
    """Return a host result as the same kind of array the caller passed in."""
    if like is None or like.__class__ is np.ndarray or isinstance(like, np.ndarray):
        return result
    fw = _framework(like)
    if fw == "torch":
        import torch

        # (np.ascontiguousarray would turn a 0-d result into shape (1,))
        result = result if result.flags.c_contiguous else result.copy()
        if dtype_name(result.dtype) == "bfloat16":
            return torch.from_numpy(result.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(result)
    if fw in ("jax", "jaxlib"):
        import jax.numpy as jnp

        return jnp.asarray(result)
    if fw == "cupy":  # pragma: no cover - host result for a device caller is not produced
        import cupy

        return cupy.asarray(result)
    return result
