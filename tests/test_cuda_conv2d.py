"""CUDA conv2d kernels, through the binding `_core.cuda_conv2d` and through the API.

GPU tests draw fresh random inputs, poison the whole output buffer on the device
(NaN for floats, 0x7F7F7F7F for int32), run one kernel family (forced with `kernel=`)
and compare with the float64 / exact-integer reference `conv2d_ref`: relative
Frobenius error under 1e-5 for float32, 1e-2 for float16/bfloat16, exact for int8.
Where the output buffer has gaps (strided outputs) the gaps must still hold the poison.

Without a CUDA device those tests skip with the reason. The first tests run anywhere:
they drive the backend's Python marshalling against a NumPy emulation of the
binding's documented contract (element strides along (n, c, h, w) / (oc, c, kh, kw)).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_accel.dtypes import DTYPES as NP_DTYPES
from lepton_accel.reference import conv2d_ref, relative_error
from lepton_accel.ops import conv2d_spec

from cuda_device import SKIP_REASON, DeviceBuffers, _core



def gpu(fn):
    return pytest.mark.gpu(pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")(fn))


# (id, operand dtype, output dtype, tolerance; 0 means exact)
DTYPES = [
    ("f32", "float32", "float32", 1e-5),
    ("f16", "float16", "float16", 1e-2),
    ("f16_f32", "float16", "float32", 1e-2),
    ("bf16", "bfloat16", "bfloat16", 1e-2),
    ("bf16_f32", "bfloat16", "float32", 1e-2),
    ("i8", "int8", "int32", 0),
]
KERNELS = ["generic", "depthwise", "mma", "wgmma", "auto"]


#: the binding's names exist in every build of the core (CPU-only ones too)
needs_types = pytest.mark.skipif(_core is None or not hasattr(_core, "Conv2dProblem"),
                                 reason="the native core is not built")


def conv_problem(case, oh, ow, x_strides, w_strides, y_strides, dtype, out_dtype,
                 bias_dtype=None, activation=None):
    """The binding's named Conv2dProblem for a test case (dtypes and activation by name)."""
    (sh, sw), (dh, dw) = case["stride"], case["dilation"]
    pad = case["padding"]
    if isinstance(pad, str):  # the spec resolves "same" / "valid" to top/left pads
        pad = (0, 0) if pad == "valid" else (
            (case["dilation"][0] * (case["kh"] - 1)) // 2, (case["dilation"][1] * (case["kw"] - 1)) // 2)
    dt = _core.DType.__members__
    return _core.Conv2dProblem(
        N=case["n"], C=case["c"], H=case["h"], W=case["w"], OC=case["oc"], KH=case["kh"], KW=case["kw"],
        OH=oh, OW=ow, stride_h=sh, stride_w=sw, pad_top=pad[0], pad_left=pad[1], dil_h=dh, dil_w=dw,
        groups=case["groups"], x_strides=x_strides, w_strides=w_strides, y_strides=y_strides,
        in_dtype=dt[dtype], out_dtype=dt[out_dtype], bias_dtype=dt[bias_dtype or out_dtype],
        activation=_core.Activation.__members__[activation or "none"])


def compute_capability() -> tuple[int, int]:
    return tuple(_core.cuda_device_props(0)["compute_capability"])


def hopper_build() -> bool:
    """The Hopper (wgmma) conv kernel can run: a compute-capability 9.0 device and an
    sm_90a pass in this build."""
    archs = str(_core.BUILD_INFO.get("cuda_architectures", ""))
    return compute_capability() == (9, 0) and "90a" in archs.split(",")


def wgmma_eligible(case, dtype, out_dtype) -> bool:
    """What the dispatcher asks of a problem for the wgmma kernel, beyond the device:
    16-bit operands, an output of the same type or float32, C/groups a multiple of 64
    (the small test shapes are far from the 32-bit index limits)."""
    return (dtype in ("float16", "bfloat16") and out_dtype in (dtype, "float32")
            and (case["c"] // case["groups"]) % 64 == 0)


def expected_bn(case, layout="NHWC") -> int:
    """The wgmma tile width the host picks (conv2d_wgmma_sm90.cu, choose_bn): the narrowest
    of 64/128/256 covering OC/groups, halved while the grid has fewer blocks than SMs."""
    spec = case_spec(case, "bfloat16", "bfloat16", layout, False, None)
    oh, ow = spec.out_shape[2:] if layout == "NCHW" else spec.out_shape[1:3]
    m, ocg, g = case["n"] * oh * ow, case["oc"] // case["groups"], case["groups"]
    sms = _core.cuda_device_props(0)["sm_count"]
    bn = 64 if ocg <= 64 else 128 if ocg <= 128 else 256
    while bn > 64 and -(-m // 128) * -(-ocg // bn) * g < sms:
        bn //= 2
    return bn


def check_family(name, case, dtype, out_dtype, kernel):
    """The wgmma kernel runs exactly when asked for (or auto) on a Hopper build and the
    problem allows it; elsewhere a forced 'wgmma' falls back to mma.sync or generic."""
    wg = name.startswith("conv2d_igemm_wgmma_sm90_")
    if kernel in ("wgmma", "auto") and hopper_build() and wgmma_eligible(case, dtype, out_dtype):
        assert wg, f"expected the wgmma kernel, {name} ran"
    elif kernel not in ("wgmma", "auto"):
        assert not wg, f"{kernel} forced, yet {name} ran"
    if not hopper_build():
        assert not wg, f"{name} ran on compute capability {compute_capability()}"
    if kernel == "wgmma" and not wg:
        assert name.startswith(("conv2d_igemm_mma_sm80_", "conv2d_generic")), name


# ---- operands ---------------------------------------------------------------------------
def random_values(rng, shape, dtype):
    if dtype == "int8":
        v = rng.integers(-128, 128, shape, dtype=np.int64).astype(np.int8)
    else:
        v = rng.standard_normal(shape).astype(NP_DTYPES[dtype])
    if v.size and not v.any():
        v.flat[0] = 1
    return v


class Tensor:
    """A 4-D logical tensor inside a flat host buffer: `buf[offset + sum(i * s)]`."""

    def __init__(self, buf, offset, shape, strides):
        self.buf, self.offset, self.shape, self.strides = buf, offset, tuple(shape), tuple(strides)

    @property
    def value(self) -> np.ndarray:
        item = self.buf.itemsize
        return np.lib.stride_tricks.as_strided(self.buf[self.offset:], self.shape,
                                               tuple(s * item for s in self.strides), writeable=False)

    def mask(self) -> np.ndarray:
        m = np.zeros(self.buf.size, bool)
        idx = np.indices(self.shape).reshape(4, -1)
        m[self.offset + (idx * np.array(self.strides)[:, None]).sum(0)] = True
        return m


def layout_strides(logical_shape, order, kind="contig"):
    """(offset, strides, buffer size) in elements for a 4-D tensor of logical shape
    (d0, d1, d2, d3) stored with its axes in `order` (slowest first). kind: contig,
    strided (every other element of the innermost axis), offset (one element past the
    allocation's start, so misaligned), padded (innermost rows padded by 8 elements)."""
    dims = [logical_shape[a] for a in order]
    inner_step = 2 if kind == "strided" else 1
    mem = [0, 0, dims[3] * inner_step + (8 if kind == "padded" else 0), inner_step]
    mem[1] = mem[2] * dims[2]
    mem[0] = mem[1] * dims[1]
    strides = [0] * 4
    for pos, axis in enumerate(order):
        strides[axis] = mem[pos]
    offset = 1 if kind == "offset" else 0
    return offset, tuple(strides), offset + mem[0] * dims[0] + 4


def layout_tensor(rng, logical_shape, dtype, order, kind="contig") -> Tensor:
    offset, strides, size = layout_strides(logical_shape, order, kind)
    return Tensor(random_values(rng, size, dtype), offset, logical_shape, strides)


NCHW_ORDER, NHWC_ORDER = (0, 1, 2, 3), (0, 2, 3, 1)
OIHW_ORDER, OHWI_ORDER = (0, 1, 2, 3), (0, 2, 3, 1)


def case_spec(case, dtype, out_dtype, layout, bias, activation):
    x_shape = ((case["n"], case["c"], case["h"], case["w"]) if layout == "NCHW"
               else (case["n"], case["h"], case["w"], case["c"]))
    w_shape = (case["oc"], case["c"] // case["groups"], case["kh"], case["kw"])
    return conv2d_spec(x_shape, dtype, w_shape, dtype,
                       bias_shape=(case["oc"],) if bias else None,
                       bias_dtype=("int32" if out_dtype == "int32" else "float32") if bias else None,
                       stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                       groups=case["groups"], layout=layout, activation=activation,
                       out_dtype=out_dtype)


def run_case(rng, case, *, dtype="float32", out_dtype=None, layout="NHWC", kernel="auto",
             bias=False, activation=None, x_kind="contig", w_order="oihw", y_kind="contig",
             bias_dtype=None, stream=0):
    """One convolution on the device. Returns (kernel name, error, gaps intact)."""
    out_dtype = out_dtype or {"int8": "int32"}.get(dtype, dtype)
    spec = case_spec(case, dtype, out_dtype, layout, bias, activation)
    n, c, h, w = case["n"], case["c"], case["h"], case["w"]
    oc, kh, kw, g = case["oc"], case["kh"], case["kw"], case["groups"]
    oh, ow = spec.params.spatial(spec.out_shape)
    order = NCHW_ORDER if layout == "NCHW" else NHWC_ORDER
    x = layout_tensor(rng, (n, c, h, w), dtype, order, x_kind)
    wt = layout_tensor(rng, (oc, c // g, kh, kw), dtype,
                       OIHW_ORDER if w_order == "oihw" else OHWI_ORDER)
    y_off, y_strides, y_size = layout_strides((n, oc, oh, ow), order, y_kind)
    out_np = NP_DTYPES[out_dtype]
    bias_host = None
    if bias:
        bias_dtype = bias_dtype or ("int32" if out_dtype == "int32" else "float32")
        bias_host = (rng.integers(-1000, 1000, oc).astype(np.int32) if out_dtype == "int32"
                     else rng.standard_normal(oc).astype(NP_DTYPES[bias_dtype]))
    poison = 0x7F if out_dtype == "int32" else 0xFF
    x_item, y_item = x.buf.itemsize, np.dtype(out_np).itemsize
    problem = conv_problem(case, oh, ow, x.strides, wt.strides, y_strides, dtype, out_dtype,
                           bias_dtype if bias else None, activation)
    (pt, _), (pl, _) = spec.params.padding
    assert (problem.pad_top, problem.pad_left) == (pt, pl)
    with DeviceBuffers() as bufs:
        px, pw = bufs.upload(x.buf), bufs.upload(wt.buf)
        pb = bufs.upload(bias_host) if bias else 0
        py = bufs.alloc(y_size * y_item)
        _core.cuda_memset(py, poison, y_size * y_item, stream)
        name = _core.cuda_conv2d(problem, px + x.offset * x_item, pw, py + y_off * y_item, pb,
                                 stream=stream, kernel=kernel)
        _core.cuda_stream_synchronize(stream)
        y_host = np.empty(y_size, out_np)
        _core.cuda_copy_to_host(y_host.view(np.uint8), py, stream)
    y = Tensor(y_host, y_off, (n, oc, oh, ow), y_strides)
    ref = conv2d_ref(x.value, wt.value, bias_host, stride=case["stride"], padding=case["padding"],
                     dilation=case["dilation"], groups=g, layout="NCHW", activation=activation)
    got = y.value
    if out_dtype == "int32":
        err = float(np.abs(got.astype(np.int64) - ref.astype(np.int64)).max())
    else:
        err = relative_error(got.astype(np.float64), ref)
        if not np.isfinite(got.astype(np.float64)).all():
            err = float("inf")
    gaps = y_host.view(np.uint8).reshape(y_size, y_item)[~y.mask()]
    intact = bool((gaps == poison).all())
    return name, err, intact


def assert_ok(name, err, intact, tol):
    assert intact, f"{name}: wrote outside the output view"
    if tol == 0:
        assert err == 0, f"{name}: int32 result differs by up to {err}"
    else:
        assert err < tol, f"{name}: relative error {err:.3g} >= {tol}"


def case_of(n, c, h, w, oc, kh, kw, stride=1, padding=0, dilation=1, groups=1):
    pair = lambda v: v if isinstance(v, tuple) or isinstance(v, str) else (v, v)  # noqa: E731
    return dict(n=n, c=c, h=h, w=w, oc=oc, kh=kh, kw=kw, stride=pair(stride),
                padding=pair(padding), dilation=pair(dilation), groups=groups)


# ---- strategy ---------------------------------------------------------------------------
@st.composite
def conv_cases(draw):
    """Small and tensor-core-sized cases: channel counts on and off 16-byte multiples,
    groups including depthwise, asymmetric 'same' padding, strides, dilations."""
    mode = draw(st.sampled_from(["dense", "dense", "grouped", "depthwise"]))
    if mode == "depthwise":
        g = draw(st.sampled_from([3, 8, 16, 24, 40]))
        cg, ocg = 1, draw(st.sampled_from([1, 1, 2]))
    else:
        g = 1 if mode == "dense" else draw(st.sampled_from([2, 3, 4]))
        cg = draw(st.sampled_from([1, 3, 5, 8, 16, 24, 32, 40, 64]))
        ocg = draw(st.sampled_from([1, 3, 8, 16, 24, 72, 136]))
    kh, kw = draw(st.sampled_from([1, 2, 3, 5, 7])), draw(st.sampled_from([1, 3, 4]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ext_h, ext_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    padding = draw(st.one_of(
        st.just("valid"),
        st.just("same") if stride == (1, 1) else st.just((0, 0)),
        st.tuples(st.integers(0, ext_h - 1), st.integers(0, ext_w - 1)),
    ))
    pad_h = 0 if padding in ("valid",) else (ext_h - 1 if padding == "same" else 2 * padding[0])
    pad_w = 0 if padding in ("valid",) else (ext_w - 1 if padding == "same" else 2 * padding[1])
    h = draw(st.integers(max(1, ext_h - pad_h), 19))
    w = draw(st.integers(max(1, ext_w - pad_w), 19))
    return dict(n=draw(st.integers(1, 3)), c=cg * g, h=h, w=w, oc=ocg * g, kh=kh, kw=kw,
                stride=stride, dilation=dilation, padding=padding, groups=g)


# ---- marshalling, without a GPU ----------------------------------------------------------
class FakeCore:
    """Host memory standing in for device memory, and `cuda_conv2d` computed in NumPy
    from the documented contract: element strides along (n, c, h, w) for x and y and
    (oc, c, kh, kw) for w. The problem description and enums are the built core's own,
    so the field names the backend uses are checked by the binding itself."""

    BUILD_INFO = {"cuda": True}
    NP = {"float32": np.float32, "float16": np.float16, "bfloat16": NP_DTYPES["bfloat16"],
          "int8": np.int8, "int32": np.int32}

    def __getattr__(self, name):  # DType, Activation, Conv2dProblem, ...: the real ones
        if name in ("DType", "Activation", "GemmProblem", "Conv2dProblem"):
            return getattr(_core, name)
        raise AttributeError(name)

    def __init__(self):
        self.mem, self.next = {}, 4096

    def cuda_malloc(self, nbytes):
        ptr, self.next = self.next, self.next + ((nbytes + 4095) // 4096 + 1) * 4096
        self.mem[ptr] = np.zeros(max(nbytes, 1), np.uint8)
        return ptr

    def cuda_free(self, ptr):
        del self.mem[ptr]

    def _at(self, ptr):
        base = max(b for b in self.mem if b <= ptr)
        return self.mem[base][ptr - base:]

    def cuda_copy_to_device(self, dst, src, stream=0):
        raw = np.asarray(src).reshape(-1).view(np.uint8)
        self._at(dst)[:raw.size] = raw

    def cuda_copy_to_host(self, dst, src, stream=0):
        raw = dst.reshape(-1).view(np.uint8)
        raw[:] = self._at(src)[:raw.size]

    def _view(self, ptr, dt, shape, strides):
        flat = self._at(ptr).view(np.uint8)
        flat = flat[: (flat.size // np.dtype(dt).itemsize) * np.dtype(dt).itemsize].view(dt)
        item = np.dtype(dt).itemsize
        return np.lib.stride_tricks.as_strided(flat, shape, tuple(s * item for s in strides))

    def cuda_memset(self, ptr, byte, nbytes, stream=0):
        self._at(ptr)[:nbytes] = byte

    def cuda_stream_synchronize(self, stream=0):
        pass

    def cuda_conv2d(self, problem, x, w, y, bias=0, *, stream=0, kernel="auto"):
        assert isinstance(problem, _core.Conv2dProblem)
        p = problem
        n, c, h, wd, oc, kh, kw, oh, ow = p.N, p.C, p.H, p.W, p.OC, p.KH, p.KW, p.OH, p.OW
        sh, sw, pt, pl, dh, dw, g = p.stride_h, p.stride_w, p.pad_top, p.pad_left, p.dil_h, p.dil_w, p.groups
        in_dt, out_dt = self.NP[p.in_dtype.name], self.NP[p.out_dtype.name]
        # bottom / right padding is whatever the output size implies
        pb = (oh - 1) * sh + dh * (kh - 1) + 1 - h - pt
        pr = (ow - 1) * sw + dw * (kw - 1) + 1 - wd - pl
        xv = np.pad(self._view(x, in_dt, (n, c, h, wd), p.x_strides),
                    ((0, 0), (0, 0), (pt, max(pb, 0)), (pl, max(pr, 0))))
        xv = xv[:, :, :h + pt + pb, :wd + pl + pr]  # rows past the last window are unused
        wv = np.ascontiguousarray(self._view(w, in_dt, (oc, c // g, kh, kw), p.w_strides))
        bv = self._view(bias, self.NP[p.bias_dtype.name], (oc,), (1,)) if bias else None
        act = None if p.activation.name == "none" else p.activation.name
        ref = conv2d_ref(xv, wv, bv, stride=(sh, sw), dilation=(dh, dw), groups=g, activation=act)
        self._view(y, out_dt, (n, oc, oh, ow), p.y_strides)[...] = ref.astype(out_dt)
        return "fake"


@needs_types
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_host_marshalling_matches_reference(monkeypatch, layout, dtype):
    """The backend's host path (copy in with an OHWI filter, strides per layout, copy
    out) produces conv2d_ref's answer when the binding does what it documents."""
    from lepton_accel.backends import cuda as cuda_backend
    from lepton_accel.arrays import as_view

    fake = FakeCore()
    monkeypatch.setattr(cuda_backend, "core", fake)
    rng = np.random.default_rng()
    x_shape = (2, 6, 9, 7) if layout == "NCHW" else (2, 9, 7, 6)
    x = random_values(rng, x_shape, dtype)
    w = random_values(rng, (8, 3, 3, 2), dtype)
    out_dtype = "int32" if dtype == "int8" else "float32"
    bias = (rng.integers(-9, 9, 8).astype(np.int32) if dtype == "int8"
            else rng.standard_normal(8).astype(np.float32))
    spec = conv2d_spec(x.shape, dtype, w.shape, dtype, bias_shape=(8,),
                       bias_dtype=str(bias.dtype), stride=(2, 1), padding=(1, 1),
                       dilation=(1, 2), groups=2, layout=layout, activation="relu",
                       out_dtype=out_dtype)
    views = [as_view(x, "x"), as_view(w, "w"), as_view(bias, "bias")]
    out = cuda_backend.CudaBackend()._conv_host(spec, views)
    ref = conv2d_ref(x, w, bias, stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2,
                     layout=layout, activation="relu")
    assert out.shape == ref.shape
    if dtype == "int8":
        np.testing.assert_array_equal(out, ref)
    else:
        assert relative_error(out.astype(np.float64), ref) < 1e-5


# ---- GPU: every family, every dtype -------------------------------------------------------
@gpu
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases(), dt=st.sampled_from(DTYPES), layout=st.sampled_from(["NCHW", "NHWC"]),
       kernel=st.sampled_from(KERNELS), bias=st.booleans(),
       activation=st.sampled_from([None, "relu", "gelu"]),
       x_kind=st.sampled_from(["contig", "contig", "strided", "offset"]),
       w_order=st.sampled_from(["oihw", "ohwi"]), y_kind=st.sampled_from(["contig", "padded"]),
       seed=st.integers(0, 2**32 - 1))
def test_property(case, dt, layout, kernel, bias, activation, x_kind, w_order, y_kind, seed):
    _, dtype, out_dtype, tol = dt
    if dtype == "int8" and activation == "gelu":
        activation = "relu"
    try:
        case_spec(case, dtype, out_dtype, layout, bias, activation)
    except ValueError:  # empty output for this draw; the spec tests cover the message
        return
    name, err, intact = run_case(np.random.default_rng(seed), case, dtype=dtype,
                                 out_dtype=out_dtype, layout=layout, kernel=kernel, bias=bias,
                                 activation=activation, x_kind=x_kind, w_order=w_order,
                                 y_kind=y_kind)
    if kernel == "generic":
        assert name == "conv2d_generic"
    check_family(name, case, dtype, out_dtype, kernel)
    assert_ok(name, err, intact, tol)


LAYERS = {
    "stem7x7s2": case_of(2, 3, 33, 31, 64, 7, 7, stride=2, padding=3),
    "1x1_256_64": case_of(2, 256, 14, 14, 64, 1, 1),
    "3x3_64_64": case_of(2, 64, 15, 13, 64, 3, 3, padding=1),
    "3x3s2_128_128": case_of(3, 128, 14, 14, 128, 3, 3, stride=2, padding=1),
    "1x1s2_256_512": case_of(2, 256, 14, 14, 512, 1, 1, stride=2),
    "ragged_oc72_k24": case_of(3, 24, 11, 9, 72, 1, 1),
    "ragged_oc136_5x3": case_of(1, 40, 12, 17, 136, 5, 3, padding=(2, 1), dilation=(1, 2)),
    "grouped_g4": case_of(2, 64, 10, 10, 96, 3, 3, padding=1, groups=4),
    "depthwise_3x3": case_of(2, 96, 17, 15, 96, 3, 3, padding=1, groups=96),
    "depthwise_s2_mult2": case_of(2, 32, 16, 16, 64, 3, 3, stride=2, padding=1, groups=32),
    "depthwise_5x5": case_of(1, 144, 14, 14, 144, 5, 5, padding=2, groups=144),
}


@gpu
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("dt", DTYPES, ids=[d[0] for d in DTYPES])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_layers(rng, layer, dt, layout, kernel):
    _, dtype, out_dtype, tol = dt
    act = "relu" if dtype == "int8" else "gelu"
    name, err, intact = run_case(rng, LAYERS[layer], dtype=dtype, out_dtype=out_dtype,
                                 layout=layout, kernel=kernel, bias=True, activation=act,
                                 y_kind="padded")
    check_family(name, LAYERS[layer], dtype, out_dtype, kernel)
    assert_ok(name, err, intact, tol)


# Shapes aimed at the Hopper kernel (C/groups a multiple of 64): k-steps of one tap and
# 64 channels over Cg = 64, 128, 192; tile widths 64/128/256; M off multiples of 128;
# padding, stride and dilation at the image edges; grouped filters.
WGMMA_CASES = {
    "cg64_3x3_oc64": case_of(2, 64, 12, 11, 64, 3, 3, padding=1),
    "cg128_1x1_oc128": case_of(2, 128, 9, 9, 128, 1, 1),
    "cg192_3x3s2_oc256": case_of(2, 192, 13, 13, 256, 3, 3, stride=2, padding=1),
    "m49_3x3_oc512": case_of(1, 64, 7, 7, 512, 3, 3, padding=1),
    "m49_1x1_oc2048": case_of(1, 128, 7, 7, 2048, 1, 1),
    "ragged_oc136": case_of(2, 64, 9, 9, 136, 1, 1),
    "ragged_oc72_5x3": case_of(1, 64, 12, 17, 72, 5, 3, padding=(2, 1), dilation=(1, 2)),
    "s2_dil2_pad_edges": case_of(2, 64, 11, 10, 96, 3, 3, stride=(2, 1), padding=(2, 0),
                                 dilation=(2, 1)),
    "same_4x4_asym": case_of(1, 64, 8, 9, 64, 4, 4, padding="same"),
    "valid_7x7_s3": case_of(1, 128, 23, 20, 40, 7, 7, stride=3),
    "groups2_cg64": case_of(2, 128, 10, 10, 192, 3, 3, padding=1, groups=2),
    "groups2_cg64_oc64": case_of(3, 128, 6, 7, 128, 1, 1, groups=2),
}
WGMMA_DTYPES = [d for d in DTYPES if d[1] in ("float16", "bfloat16")]


@gpu
@pytest.mark.parametrize("case_name", list(WGMMA_CASES))
@pytest.mark.parametrize("dt", WGMMA_DTYPES, ids=[d[0] for d in WGMMA_DTYPES])
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
@pytest.mark.parametrize("bn", ["auto", "64", "128", "256"])
def test_wgmma_shapes(rng, monkeypatch, case_name, dt, activation, bn):
    """NHWC x and OHWI w: the kernel reads both in place (no transform suffix). Small
    problems pick BN 64 on their own; LEPTON_ACCEL_CONV_WGMMA_BN runs every width."""
    _, dtype, out_dtype, tol = dt
    case = WGMMA_CASES[case_name]
    if bn != "auto":
        monkeypatch.setenv("LEPTON_ACCEL_CONV_WGMMA_BN", bn)
    else:
        monkeypatch.delenv("LEPTON_ACCEL_CONV_WGMMA_BN", raising=False)
    name, err, intact = run_case(rng, case, dtype=dtype, out_dtype=out_dtype, layout="NHWC",
                                 kernel="wgmma", bias=activation is not None,
                                 activation=activation, w_order="ohwi", y_kind="padded")
    check_family(name, case, dtype, out_dtype, "wgmma")
    if name.startswith("conv2d_igemm_wgmma_sm90_"):
        tname = {"float16": "f16", "bfloat16": "bf16"}[dtype]
        want = expected_bn(case) if bn == "auto" else int(bn)
        assert name == f"conv2d_igemm_wgmma_sm90_{tname}_128x{want}x64", name
    assert_ok(name, err, intact, tol)


@gpu
@pytest.mark.parametrize("layout,w_order,x_kind,suffix", [
    ("NCHW", "oihw", "contig", "+x_to_nhwc+w_to_ohwi"),
    ("NHWC", "oihw", "contig", "+w_to_ohwi"),
    ("NHWC", "ohwi", "offset", "+x_to_nhwc"),   # misaligned x base
    ("NHWC", "ohwi", "strided", "+x_to_nhwc"),  # channel stride 2
])
def test_wgmma_operand_transforms(rng, layout, w_order, x_kind, suffix):
    case = WGMMA_CASES["groups2_cg64"]
    name, err, intact = run_case(rng, case, dtype="bfloat16", layout=layout, kernel="auto",
                                 bias=True, activation="relu", w_order=w_order, x_kind=x_kind)
    check_family(name, case, "bfloat16", "bfloat16", "auto")
    if name.startswith("conv2d_igemm_"):
        assert name.endswith(suffix), name
    assert_ok(name, err, intact, 1e-2)


@gpu
@pytest.mark.parametrize("oc,hw,n,bn", [(64, 8, 1, 64), (128, 96, 2, 128), (256, 96, 1, 128),
                                        (256, 96, 2, 256)])
def test_wgmma_tile_width(rng, monkeypatch, oc, hw, n, bn):
    """BN follows OC/groups, halved for small grids (the bn column assumes 132 SMs, an
    H100 SXM; expected_bn re-derives it for the device at hand)."""
    monkeypatch.delenv("LEPTON_ACCEL_CONV_WGMMA_BN", raising=False)
    case = case_of(n, 64, hw, hw, oc, 1, 1)
    name, err, intact = run_case(rng, case, dtype="bfloat16", layout="NHWC", kernel="wgmma",
                                 w_order="ohwi")
    check_family(name, case, "bfloat16", "bfloat16", "wgmma")
    if name.startswith("conv2d_igemm_wgmma_sm90_"):
        want = expected_bn(case)
        if _core.cuda_device_props(0)["sm_count"] == 132:
            assert want == bn
        assert name == f"conv2d_igemm_wgmma_sm90_bf16_128x{want}x64", name
    assert_ok(name, err, intact, 1e-2)


@gpu
def test_paths_taken(rng):
    """The dispatcher picks the family the problem allows, and says so."""
    tc = compute_capability() >= (8, 0)
    # C = 64: the Hopper kernel's problem on a Hopper build, mma.sync's elsewhere
    fast = "conv2d_igemm_wgmma_sm90_bf16" if hopper_build() else "conv2d_igemm_mma_sm80_bf16"
    dense = case_of(2, 64, 12, 12, 128, 3, 3, padding=1)
    name, err, ok = run_case(rng, dense, dtype="bfloat16", layout="NHWC", w_order="ohwi")
    assert_ok(name, err, ok, 1e-2)
    if tc:
        assert name.startswith(fast) and "+" not in name, name
    name, err, ok = run_case(rng, dense, dtype="bfloat16", layout="NCHW", w_order="oihw")
    assert_ok(name, err, ok, 1e-2)
    if tc:
        assert name.startswith(fast) and name.endswith("+x_to_nhwc+w_to_ohwi"), name
    name, err, ok = run_case(rng, dense, dtype="bfloat16", layout="NHWC", w_order="ohwi",
                             kernel="mma")
    assert_ok(name, err, ok, 1e-2)
    if tc:  # mma forced: never the Hopper kernel
        assert name.startswith("conv2d_igemm_mma_sm80_bf16"), name
    narrow = case_of(2, 32, 12, 12, 128, 3, 3, padding=1)  # C = 32: not a 64-channel k-step
    name, err, ok = run_case(rng, narrow, dtype="bfloat16", layout="NHWC", w_order="ohwi",
                             kernel="wgmma")
    assert_ok(name, err, ok, 1e-2)
    if tc:
        assert name.startswith("conv2d_igemm_mma_sm80_bf16"), name
    name, err, ok = run_case(rng, dense, dtype="int8", layout="NHWC", w_order="ohwi")
    assert_ok(name, err, ok, 0)
    if tc:
        assert name.startswith("conv2d_igemm_mma_sm80_i8"), name
    name, err, ok = run_case(rng, dense, dtype="float32", layout="NHWC")
    assert name == "conv2d_generic"
    dw = case_of(2, 64, 9, 9, 64, 3, 3, padding=1, groups=64)
    name, err, ok = run_case(rng, dw, dtype="float16", layout="NHWC")
    assert name == "conv2d_depthwise_nhwc_v8", name
    assert_ok(name, err, ok, 1e-2)
    name, err, ok = run_case(rng, dw, dtype="float16", layout="NCHW", kernel="depthwise")
    assert name == "conv2d_generic", name  # no channels-last vectors: falls back
    stem = case_of(1, 3, 20, 20, 16, 7, 7, stride=2, padding=3)
    for kernel in ["mma", "wgmma"]:
        name, err, ok = run_case(rng, stem, dtype="bfloat16", layout="NHWC", kernel=kernel)
        assert name == "conv2d_generic", name  # 3 channels: not whole 16-byte chunks
        assert_ok(name, err, ok, 1e-2)


@gpu
@pytest.mark.parametrize("bias_dtype", ["float32", "bfloat16"])
def test_bias_in_either_float_dtype(rng, bias_dtype):
    case = case_of(2, 64, 8, 8, 48, 3, 3, padding=1)
    for kernel in ["generic", "mma", "wgmma"]:
        name, err, ok = run_case(rng, case, dtype="bfloat16", bias=True, bias_dtype=bias_dtype,
                                 kernel=kernel, activation="relu")
        assert_ok(name, err, ok, 1e-2)


@gpu
def test_on_a_stream(rng):
    stream = _core.cuda_stream_create()
    try:
        for kernel in KERNELS:
            name, err, ok = run_case(rng, case_of(2, 64, 10, 10, 64, 3, 3, padding=1),
                                     dtype="float16", layout="NCHW", kernel=kernel, stream=stream)
            assert_ok(name, err, ok, 1e-2)
    finally:
        _core.cuda_stream_destroy(stream)


def test_errors_become_cuda_errors():
    """Argument checks come before any CUDA call, so they run without a device too."""
    if _core is None or not hasattr(_core, "cuda_conv2d"):
        pytest.skip("this build has no CUDA kernels")
    dt = _core.DType
    base = dict(N=1, C=4, H=8, W=8, OC=4, KH=3, KW=3, OH=6, OW=6, x_strides=(256, 64, 8, 1),
                w_strides=(36, 9, 3, 1), y_strides=(144, 36, 6, 1), in_dtype=dt.float32,
                out_dtype=dt.float32)
    with pytest.raises(_core.CudaError, match="groups"):  # 3 does not divide 4
        _core.cuda_conv2d(_core.Conv2dProblem(**base, groups=3), 0, 0, 0)
    with pytest.raises(_core.CudaError, match="dtype"):
        _core.cuda_conv2d(_core.Conv2dProblem(**{**base, "out_dtype": dt.float16}), 0, 0, 0)
    with pytest.raises(ValueError, match="kernel"):
        _core.cuda_conv2d(_core.Conv2dProblem(**base), 0, 0, 0, kernel="winograd")
    # 8x8, 3x3, stride 1: OH is 6 with no padding, up to 8 with the implied bottom padding
    # (at most 2 rows); 9 would need more, 5 would drop input rows.
    for oh, ow in [(9, 6), (6, 5), (5, 6)]:
        with pytest.raises(_core.CudaError, match="OH/OW"):
            _core.cuda_conv2d(_core.Conv2dProblem(**{**base, "OH": oh, "OW": ow}), 0, 0, 0)


@needs_types
def test_problem_fields_are_named():
    """Conv2dProblem is built by keyword: missing, unknown or ill-typed fields are
    TypeErrors naming the field; bias_dtype defaults to out_dtype."""
    dt = _core.DType
    base = dict(N=2, C=6, H=9, W=7, OC=8, KH=3, KW=2, OH=4, OW=6, x_strides=(378, 1, 42, 6),
                w_strides=(18, 1, 6, 3), y_strides=(192, 1, 48, 8), in_dtype=dt.bfloat16,
                out_dtype=dt.float32)
    p = _core.Conv2dProblem(**base, stride_h=2, dil_w=2, groups=2, pad_left=1,
                            activation=_core.Activation.gelu)
    assert (p.N, p.C, p.H, p.W, p.OC, p.KH, p.KW, p.OH, p.OW) == (2, 6, 9, 7, 8, 3, 2, 4, 6)
    assert (p.stride_h, p.stride_w, p.pad_top, p.pad_left, p.dil_h, p.dil_w, p.groups) == \
        (2, 1, 0, 1, 1, 2, 2)
    assert p.x_strides == (378, 1, 42, 6) and p.w_strides == (18, 1, 6, 3)
    assert p.bias_dtype == dt.float32 and p.activation == _core.Activation.gelu
    assert "y_strides=(192, 1, 48, 8)" in repr(p)
    with pytest.raises(TypeError, match="missing field.*OW"):
        _core.Conv2dProblem(**{k: v for k, v in base.items() if k != "OW"})
    with pytest.raises(TypeError, match="unknown field 'dims'"):
        _core.Conv2dProblem(**base, dims=(1,) * 9)
    with pytest.raises(TypeError, match="Conv2dProblem.in_dtype"):
        _core.Conv2dProblem(**{**base, "in_dtype": 2})
    with pytest.raises(TypeError, match="Conv2dProblem.x_strides"):
        _core.Conv2dProblem(**{**base, "x_strides": (1, 2, 3)})


def test_conv_kernel_names_are_parsed_in_one_place(monkeypatch):
    """kernel= and LEPTON_ACCEL_CONV_KERNEL share one parser and one list of families;
    an unknown name is refused before any CUDA call (no device needed)."""
    if _core is None or not hasattr(_core, "cuda_conv2d"):
        pytest.skip("this build has no CUDA kernels")
    assert list(_core.ConvKernel.__members__) == KERNELS[-1:] + KERNELS[:-1]
    dt = _core.DType
    p = _core.Conv2dProblem(N=1, C=4, H=8, W=8, OC=4, KH=3, KW=3, OH=6, OW=6, x_strides=(256, 64, 8, 1),
                            w_strides=(36, 9, 3, 1), y_strides=(144, 36, 6, 1), in_dtype=dt.float32,
                            out_dtype=dt.float32)
    with pytest.raises(ValueError, match="kernel must be") as arg_err:
        _core.cuda_conv2d(p, 0, 0, 0, kernel="winograd")
    monkeypatch.setenv("LEPTON_ACCEL_CONV_KERNEL", "nonsense")
    with pytest.raises(_core.CudaError, match="LEPTON_ACCEL_CONV_KERNEL must be") as env_err:
        _core.cuda_conv2d(p, 0, 0, 0)
    for err in (arg_err, env_err):
        assert all(f in str(err.value) for f in _core.ConvKernel.__members__), str(err.value)


@gpu
def test_env_var_names_the_kernel():
    code = ("import numpy as np, lepton_accel as la\n"
            "x = np.ones((1, 8, 5, 5), np.float32); w = np.ones((8, 8, 3, 3), np.float32)\n"
            "la.conv2d(x, w, backend='cuda')\n")
    env = dict(os.environ, LEPTON_ACCEL_CONV_KERNEL="nonsense")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "LEPTON_ACCEL_CONV_KERNEL" in r.stderr
    assert "wgmma" in r.stderr  # the message lists every family


@gpu
def test_env_var_wgmma(rng, monkeypatch):
    """LEPTON_ACCEL_CONV_KERNEL=wgmma steers kernel='auto' like kernel='wgmma'."""
    monkeypatch.setenv("LEPTON_ACCEL_CONV_KERNEL", "wgmma")
    case = WGMMA_CASES["cg64_3x3_oc64"]
    name, err, ok = run_case(rng, case, dtype="float16", layout="NHWC", w_order="ohwi")
    check_family(name, case, "float16", "float16", "wgmma")
    assert_ok(name, err, ok, 1e-2)
    if name.startswith("conv2d_igemm_wgmma_sm90_"):
        monkeypatch.setenv("LEPTON_ACCEL_CONV_WGMMA_BN", "96")
        with pytest.raises(_core.CudaError, match="LEPTON_ACCEL_CONV_WGMMA_BN"):
            run_case(rng, case, dtype="float16", layout="NHWC", w_order="ohwi")


# ---- GPU: through the public API --------------------------------------------------------
@gpu
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dt", DTYPES, ids=[d[0] for d in DTYPES])
def test_api_host_arrays(rng, layout, dt):
    import lepton_accel as la

    _, dtype, out_dtype, tol = dt
    x = random_values(rng, (2, 32, 11, 10) if layout == "NCHW" else (2, 11, 10, 32), dtype)
    w = random_values(rng, (48, 16, 3, 3), dtype)
    bias = (rng.integers(-99, 99, 48).astype(np.int32) if dtype == "int8"
            else rng.standard_normal(48).astype(np.float32))
    act = "relu"
    out = la.conv2d(x, w, bias=bias, padding="same", groups=2, layout=layout, activation=act,
                    out_dtype=out_dtype, backend="cuda")
    ref = conv2d_ref(x, w, bias, padding="same", groups=2, layout=layout, activation=act)
    assert out.shape == ref.shape and str(out.dtype) == out_dtype
    if tol == 0:
        np.testing.assert_array_equal(out, ref)
    else:
        assert relative_error(out.astype(np.float64), ref) < tol


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_api_torch_device_tensors(rng, dtype):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device")
    import lepton_accel as la

    tdt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    x = torch.randn(4, 64, 14, 14, device="cuda").to(tdt).to(memory_format=torch.channels_last)
    w = torch.randn(128, 64, 3, 3, device="cuda").to(tdt).to(memory_format=torch.channels_last)
    b = torch.randn(128, device="cuda").to(tdt)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = la.conv2d(x.permute(0, 2, 3, 1), w, bias=b, padding=1, layout="NHWC",
                      activation="relu", backend="cuda")
        y_nchw = la.conv2d(x, w, bias=b, padding=1, layout="NCHW", activation="relu", backend="cuda")
    s.synchronize()
    ref = torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), b.double(), padding=1))
    tol = 1e-5 if dtype == "float32" else 1e-2
    for got in (y.permute(0, 3, 1, 2), y_nchw):
        assert got.device.type == "cuda" and got.dtype == tdt
        err = float(torch.linalg.norm(got.double() - ref) / torch.linalg.norm(ref))
        assert err < tol
