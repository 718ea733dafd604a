"""CUDA conv2d gradients (csrc/cuda/conv2d_grad.cu): conv2d_grad_input (dy, w -> dx) and
conv2d_grad_weight (x, dy -> dw), through the binding and the cuda backend.

Without a GPU, the kernels' index arithmetic is checked here on its own: the NumPy models
below walk the same row, column and k-step tables, divisibility tests, landing ranges,
load mappings, K splits and store offsets as the kernels (keep them in step with the
.cu file), on flat buffers with every tensor's element strides, and must give the ops'
float64 references, read only inside their buffers and write every output element
exactly once. The cuda backend's host path runs against a fake core whose gradient
entry points are these models. The GPU tests (marked gpu) run the real kernels against
the same references and skip, with the reason, without a device.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lepton_accel.dtypes import DTYPES as NP_DTYPES
from lepton_accel.ops import OPS
from lepton_accel.reference import check, reference

from cuda_device import SKIP_REASON, DeviceBuffers, _core

try:  # the gradient ops' module (the op layer defines their specs and references)
    import lepton_accel.ops.conv2d_grad  # noqa: F401
except ImportError:
    pass

needs_ops = pytest.mark.skipif("conv2d_grad_input" not in OPS,
                               reason="the conv2d_grad ops are not in this tree")
needs_types = pytest.mark.skipif(_core is None or not hasattr(_core, "Conv2dProblem"),
                                 reason="the native core is not built")
needs_cuda_build = pytest.mark.skipif(_core is None or not hasattr(_core, "cuda_conv2d_grad_input"),
                                      reason="this build has no CUDA kernels")


def gpu(fn):
    return pytest.mark.gpu(pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")(fn))


FLOAT_DTYPES = [("f32", "float32", "float32"), ("f16", "float16", "float16"),
                ("f16_f32", "float16", "float32"), ("bf16", "bfloat16", "bfloat16"),
                ("bf16_f32", "bfloat16", "float32")]
FAMILIES = ["generic", "simt", "auto"]


# ---- geometry of a case ------------------------------------------------------------------
class Geo:
    """One convolution's sizes and parameters as the kernels see them (Conv2dArgs), with
    PyTorch's symmetric padding or "same" (which pads the bottom/right more for even
    dilated extents)."""

    def __init__(self, n, c, h, w, oc, kh, kw, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1,
                 same=False, oh=None, ow=None):
        self.N, self.C, self.H, self.W, self.OC, self.KH, self.KW = n, c, h, w, oc, kh, kw
        (self.sh, self.sw), (self.dh, self.dw) = stride, dilation
        self.groups, self.Cg, self.OCg, self.same = groups, c // groups, oc // groups, same
        ext_h, ext_w = self.dh * (kh - 1) + 1, self.dw * (kw - 1) + 1
        if same:
            assert stride == (1, 1)
            self.pt, self.pl = (ext_h - 1) // 2, (ext_w - 1) // 2
            self.OH, self.OW = h, w
        else:
            self.pt, self.pl = pad
            self.OH = (h + 2 * self.pt - ext_h) // self.sh + 1
            self.OW = (w + 2 * self.pl - ext_w) // self.sw + 1
        if oh is not None or ow is not None:  # as a problem states them (may be inconsistent)
            self.OH, self.OW = oh if oh is not None else self.OH, ow if ow is not None else self.OW

    @property
    def params(self):
        """The ops' keyword parameters."""
        return dict(stride=(self.sh, self.sw), dilation=(self.dh, self.dw), groups=self.groups,
                    padding="same" if self.same else (self.pt, self.pl))


@st.composite
def geometries(draw):
    """Strides, dilations, padding up to the limit ("same" too), groups (depthwise too),
    channel and pixel counts on both sides of the 64-wide tiles and 16-deep k-steps."""
    mode = draw(st.sampled_from(["dense", "dense", "grouped", "depthwise"]))
    if mode == "depthwise":
        g, cg, ocg = draw(st.sampled_from([3, 16, 17])), 1, draw(st.sampled_from([1, 2]))
    else:
        g = 1 if mode == "dense" else draw(st.sampled_from([2, 3]))
        cg = draw(st.sampled_from([1, 5, 16, 17, 70]))
        ocg = draw(st.sampled_from([1, 3, 16, 65]))
        if cg * ocg > 1200:  # keeps the NumPy models quick
            ocg = 3
    kh, kw = draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 3, 4]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    same = stride == (1, 1) and draw(st.booleans())
    pt, pl = draw(st.integers(0, ext_h - 1)), draw(st.integers(0, ext_w - 1))
    if same:
        pt, pl = (ext_h - 1) // 2, (ext_w - 1) // 2
    h_min = max(1, ext_h - (ext_h - 1 if same else 2 * pt))
    w_min = max(1, ext_w - (ext_w - 1 if same else 2 * pl))
    h, w = draw(st.integers(h_min, max(h_min, 12))), draw(st.integers(w_min, max(w_min, 12)))
    return Geo(draw(st.integers(1, 3)), cg * g, h, w, ocg * g, kh, kw, stride, (pt, pl), (dh, dw), g,
               same=same)


def specs(geo: Geo, layout, dtype, out_dtype):
    """The two gradient specs of a geometry (from the op layer)."""
    x_shape = ((geo.N, geo.C, geo.H, geo.W) if layout == "NCHW" else (geo.N, geo.H, geo.W, geo.C))
    dy_shape = ((geo.N, geo.OC, geo.OH, geo.OW) if layout == "NCHW" else (geo.N, geo.OH, geo.OW, geo.OC))
    w_shape = (geo.OC, geo.Cg, geo.KH, geo.KW)
    kw = dict(geo.params, layout=layout, out_dtype=out_dtype)
    gi = OPS["conv2d_grad_input"].spec((dy_shape, w_shape), (dtype, dtype), input_hw=(geo.H, geo.W), **kw)
    gw = OPS["conv2d_grad_weight"].spec((x_shape, dy_shape), (dtype, dtype), kernel_hw=(geo.KH, geo.KW),
                                        **kw)
    return gi, gw


# ---- tensors in flat buffers --------------------------------------------------------------
ORDER = {"NCHW": (0, 1, 2, 3), "NHWC": (0, 2, 3, 1), "OIHW": (0, 1, 2, 3), "OHWI": (0, 2, 3, 1)}


def strides_for(logical, order, gap=0):
    """Element strides along the logical axes of a tensor stored with its axes in
    `order` (slowest first), rows of the innermost axis padded by `gap` elements."""
    dims = [logical[a] for a in order]
    mem = [0, 0, dims[3] + gap, 1]
    mem[1] = mem[2] * dims[2]
    mem[0] = mem[1] * dims[1]
    st_ = [0] * 4
    for pos, axis in enumerate(order):
        st_[axis] = mem[pos]
    size = 1 + sum((n - 1) * s for n, s in zip(logical, st_)) if all(logical) else 0
    return tuple(st_), size


def logical_view(flat, logical, strides):
    return np.lib.stride_tricks.as_strided(flat, logical, tuple(s * flat.itemsize for s in strides),
                                           writeable=False)


def in_layout(nchw_view, layout):
    return nchw_view if layout == "NCHW" else nchw_view.transpose(0, 2, 3, 1)


# ---- models of the kernels' indexing --------------------------------------------------------
BM, BN, BK, THREADS = 64, 64, 16, 256
INT_MIN = -2**31


def read(flat, idx, what):
    """Gathers flat[idx], checking every index lies in the buffer (a kernel read)."""
    idx = np.asarray(idx, np.int64)
    assert idx.size == 0 or (idx.min() >= 0 and idx.max() < flat.size), f"{what}: read outside its buffer"
    return flat[idx]


class Written:
    """An output buffer that records how often each element is written."""

    def __init__(self, size):
        self.data = np.full(size, np.nan)
        self.count = np.zeros(size, np.int64)

    def store(self, idx, values, what):
        idx = np.asarray(idx, np.int64).ravel()
        assert idx.size == 0 or (idx.min() >= 0 and idx.max() < self.data.size), f"{what}: write outside"
        np.add.at(self.count, idx, 1)
        self.data[idx] = np.asarray(values, np.float64).ravel()


def load_mapping(k_fast: bool, mn_extent: int):
    """(mn, k) of the four elements each thread loads of a BM x BK (or BK x BN) tile."""
    tid = np.arange(THREADS)
    mn0 = tid // BK if k_fast else tid % mn_extent
    k0 = tid % BK if k_fast else tid // mn_extent
    mn_step, k_step = (THREADS // BK, 0) if k_fast else (0, THREADS // mn_extent)
    i = np.arange(4)[:, None]
    return (mn0 + i * mn_step).ravel(), (k0 + i * k_step).ravel()


def choose_splits(base_blocks, k_tiles, sm_count):
    want = 4 * max(sm_count, 1)
    s = (want + base_blocks - 1) // base_blocks
    s = min(s, max(1, k_tiles // 8))
    return max(1, min(s, 4096))


def simt_grad_input(geo, dy, w, xs, ws, ys, out_size):
    """conv2d_grad_simt_kernel<GradInputOp>: per group a (N*H*W) x Cg x (KH*KW*OCg) GEMM
    whose A is dy gathered at each tap's output position (0 where the tap misses)."""
    g = geo
    M, Ncols, K = g.N * g.H * g.W, g.Cg, g.KH * g.KW * g.OCg
    tiles_m, tiles_n, k_tiles = -(-M // BM), -(-Ncols // BN), -(-K // BK)
    unit = g.sh == 1 and g.sw == 1
    dx = Written(out_size)
    m = np.arange(tiles_m * BM)
    kk = np.arange(k_tiles * BK)
    for grp in range(g.groups):
        # rows: off0 = n*ys0, off1 = dx offset, i0 = h + pt, i1 = w + pl
        iw, t = m % g.W, m // g.W
        ih, n = t % g.H, t // g.H
        r_ok = m < M
        r_off0, r_off1 = n * ys[0], n * xs[0] + ih * xs[2] + iw * xs[3]
        r_i0, r_i1 = ih + g.pt, iw + g.pl
        # columns: off0 = c*ws1, off1 = (grp*Cg + c)*xs1
        c = np.arange(tiles_n * BN)
        c_ok = c < Ncols
        c_off0, c_off1 = c * ws[1], (grp * g.Cg + c) * xs[1]
        # k: off0 = oc*ys1, off1 = oc*ws0 + kh*ws2 + kw*ws3, i0 = kh*dh, i1 = kw*dw
        o, t = kk % g.OCg, kk // g.OCg
        kw_, kh_ = t % g.KW, t // g.KW
        oc = grp * g.OCg + o
        k_ok = kk < K
        k_off0, k_off1 = oc * ys[1], oc * ws[0] + kh_ * ws[2] + kw_ * ws[3]
        k_i0, k_i1 = kh_ * g.dh, kw_ * g.dw
        # A(m, k)
        th = r_i0[:, None] - k_i0[None, :]
        tw = r_i1[:, None] - k_i1[None, :]
        ok = r_ok[:, None] & k_ok[None, :] & (th >= 0) & (tw >= 0)
        if not unit:
            ok &= (th % g.sh == 0) & (tw % g.sw == 0)
            th, tw = th // g.sh, tw // g.sw
        ok &= (th < g.OH) & (tw < g.OW)
        idx = r_off0[:, None] + k_off0[None, :] + th * ys[2] + tw * ys[3]
        A = np.zeros(ok.shape)
        A[ok] = read(dy, idx[ok], "dy").astype(np.float64)
        # B(k, n)
        okb = k_ok[:, None] & c_ok[None, :]
        B = np.zeros(okb.shape)
        B[okb] = read(w, (k_off1[:, None] + c_off0[None, :])[okb], "w").astype(np.float64)
        acc = A @ B
        st_ok = r_ok[:, None] & c_ok[None, :]
        dx.store((r_off1[:, None] + c_off1[None, :])[st_ok], acc[st_ok], "dx")
    return dx


def simt_grad_weight(geo, x, dy, xs, ys, sm_count=132):
    """conv2d_grad_simt_kernel<GradWeightOp>: per group an OCg x (KH*KW*Cg) x (N*OH*OW)
    GEMM, K split over blocks adding into a float32 workspace; then the finishing cast.
    Returns the workspace (OC x KH*KW*Cg) and the number of adds per element."""
    g = geo
    M, Ncols, K = g.OCg, g.KH * g.KW * g.Cg, g.N * g.OH * g.OW
    tiles_m, tiles_n, k_tiles = -(-M // BM), -(-Ncols // BN), -(-K // BK)
    splits = choose_splits(tiles_m * tiles_n * g.groups, k_tiles, sm_count)
    ws = np.zeros(g.OC * Ncols)
    adds = np.zeros(g.OC * Ncols, np.int64)
    m = np.arange(tiles_m * BM)
    j = np.arange(tiles_n * BN)
    seen = np.zeros(k_tiles, np.int64)
    for grp in range(g.groups):
        r_ok = m < M
        oc = grp * g.OCg + m
        r_off0, r_off1 = oc * ys[1], oc * Ncols
        c_ok = j < Ncols
        cc, t = j % g.Cg, j // g.Cg
        kw_, kh_ = t % g.KW, t // g.KW
        c_off0, c_i0, c_i1 = (grp * g.Cg + cc) * xs[1], kh_ * g.dh, kw_ * g.dw
        for split in range(splits):
            kt0, kt1 = split * k_tiles // splits, (split + 1) * k_tiles // splits
            if grp == 0:
                seen[kt0:kt1] += 1
            kk = np.arange(kt0 * BK, kt1 * BK)
            k_ok = kk < K
            ow, t = kk % g.OW, kk // g.OW
            oh, n = t % g.OH, t // g.OH
            k_off0, k_off1 = n * ys[0] + oh * ys[2] + ow * ys[3], n * xs[0]
            k_i0, k_i1 = oh * g.sh - g.pt, ow * g.sw - g.pl
            oka = r_ok[:, None] & k_ok[None, :]
            A = np.zeros(oka.shape)
            A[oka] = read(dy, (r_off0[:, None] + k_off0[None, :])[oka], "dy").astype(np.float64)
            ih = k_i0[:, None] + c_i0[None, :]
            iw = k_i1[:, None] + c_i1[None, :]
            okb = k_ok[:, None] & c_ok[None, :] & (ih >= 0) & (ih < g.H) & (iw >= 0) & (iw < g.W)
            idx = k_off1[:, None] + c_off0[None, :] + ih * xs[2] + iw * xs[3]
            B = np.zeros(okb.shape)
            B[okb] = read(x, idx[okb], "x").astype(np.float64)
            part = A @ B
            st_ok = r_ok[:, None] & c_ok[None, :]
            where = (r_off1[:, None] + j[None, :])[st_ok]
            np.add.at(ws, where, part[st_ok])
            np.add.at(adds, where, 1)
    assert (seen == 1).all(), "the K splits must cover every k-step exactly once"
    return ws, adds, splits


def finish_grad_weight(geo, ws, wstr, out_size):
    """grad_weight_finish_kernel: dw(oc, c, kh, kw) = workspace[oc][(kh*KW + kw)*Cg + c]."""
    g = geo
    e = np.arange(g.OC * g.Cg * g.KH * g.KW)
    c, r = e % g.Cg, e // g.Cg
    kw_, r = r % g.KW, r // g.KW
    kh_, oc = r % g.KH, r // g.KH
    dw = Written(out_size)
    ncols = g.KH * g.KW * g.Cg
    dw.store(oc * wstr[0] + c * wstr[1] + kh_ * wstr[2] + kw_ * wstr[3],
             ws[oc * ncols + (kh_ * g.KW + kw_) * g.Cg + c], "dw")
    return dw


def generic_grad_input(geo, dy, w, xs, ws, ys, out_size, c_fast):
    """grad_input_generic_kernel: per dx element, the taps whose (h + pt - kh*dh) / sh and
    (w + pl - kw*dw) / sw are whole and inside dy, then every oc of the group."""
    g = geo
    e = np.arange(g.N * g.C * g.H * g.W)
    if c_fast:
        c, r = e % g.C, e // g.C
        iw, r = r % g.W, r // g.W
        ih, n = r % g.H, r // g.H
    else:
        iw, r = e % g.W, e // g.W
        ih, r = r % g.H, r // g.H
        c, n = r % g.C, r // g.C
    grp, cl = c // g.Cg, c % g.Cg
    oc0 = grp * g.OCg
    acc = np.zeros(e.size)
    o = np.arange(g.OCg)[None, :]
    for kh in range(g.KH):
        th = ih + g.pt - kh * g.dh
        okh = (th >= 0) & (th % g.sh == 0) & (th // g.sh < g.OH)
        for kw in range(g.KW):
            tw = iw + g.pl - kw * g.dw
            ok = okh & (tw >= 0) & (tw % g.sw == 0) & (tw // g.sw < g.OW)
            if not ok.any():
                continue
            dyi = (n * ys[0] + oc0 * ys[1] + (th // g.sh) * ys[2] + (tw // g.sw) * ys[3])[ok][:, None] + o * ys[1]
            wi = (oc0 * ws[0] + cl * ws[1] + kh * ws[2] + kw * ws[3])[ok][:, None] + o * ws[0]
            acc[ok] += (read(dy, dyi, "dy").astype(np.float64) * read(w, wi, "w").astype(np.float64)).sum(1)
    dx = Written(out_size)
    dx.store(n * xs[0] + c * xs[1] + ih * xs[2] + iw * xs[3], acc, "dx")
    return dx


def landing_range(size, out, s, p, t):
    """First and last o in [0, out) with o*s - p + t in [0, size)."""
    q = p - t
    first = 0 if q <= 0 else (q + s - 1) // s
    hi = q + size - 1
    last = -1 if hi < 0 else min(out - 1, hi // s)
    return first, last


def generic_grad_weight(geo, x, dy, xs, wstr, ys, out_size):
    """grad_weight_generic_kernel: per dw element, the output pixels of its tap's landing
    rectangle, i -> (n, oh, ow) (no bounds test inside it: the model asserts every input
    is in the image). Vectorised over (oc, c) for each tap."""
    g = geo
    dw = Written(out_size)
    oc = np.arange(g.OC)
    c_of = (oc[:, None] // g.OCg) * g.Cg + np.arange(g.Cg)[None, :]   # (OC, Cg) input channels
    for kh in range(g.KH):
        for kw in range(g.KW):
            oh0, oh1 = landing_range(g.H, g.OH, g.sh, g.pt, kh * g.dh)
            ow0, ow1 = landing_range(g.W, g.OW, g.sw, g.pl, kw * g.dw)
            nh, nw = max(oh1 - oh0 + 1, 0), max(ow1 - ow0 + 1, 0)
            i = np.arange(g.N * nh * nw)
            ow = ow0 + i % max(nw, 1)
            q = i // max(nw, 1)
            oh, n = oh0 + q % max(nh, 1), q // max(nh, 1)
            ih, iw = oh * g.sh - g.pt + kh * g.dh, ow * g.sw - g.pl + kw * g.dw
            assert ((ih >= 0) & (ih < g.H) & (iw >= 0) & (iw < g.W)).all(), "outside the image"
            x_tap = c_of * xs[1] + (kh * g.dh - g.pt) * xs[2] + (kw * g.dw - g.pl) * xs[3]
            xi = x_tap[:, :, None] + (n * xs[0] + oh * g.sh * xs[2] + ow * g.sw * xs[3])[None, None, :]
            dyi = (n * ys[0] + oh * ys[2] + ow * ys[3])[None, :] + (oc * ys[1])[:, None]
            X = read(x, xi, "x").astype(np.float64)              # (OC, Cg, P)
            DY = read(dy, dyi, "dy").astype(np.float64)          # (OC, P)
            total = np.einsum("ocp,op->oc", X, DY)
            where = oc[:, None] * wstr[0] + np.arange(g.Cg)[None, :] * wstr[1] + kh * wstr[2] + kw * wstr[3]
            dw.store(where, total, "dw")
    return dw


# ---- the models against the references ------------------------------------------------------
def buffers(rng, geo, layout, w_order, dtype, gap):
    """Random dy, w, x in flat buffers (rows padded by `gap`), with their strides."""
    nchw_y, nchw_x = (geo.N, geo.OC, geo.OH, geo.OW), (geo.N, geo.C, geo.H, geo.W)
    w_shape = (geo.OC, geo.Cg, geo.KH, geo.KW)
    out = {}
    for name, logical, order in (("y", nchw_y, ORDER[layout]), ("x", nchw_x, ORDER[layout]),
                                 ("w", w_shape, ORDER[w_order])):
        strides, size = strides_for(logical, order, gap)
        flat = rng.standard_normal(size + 3).astype(NP_DTYPES[dtype])
        out[name] = (flat, strides, logical)
    return out


@needs_ops
@settings(max_examples=40, deadline=None)
@given(geo=geometries(), layout=st.sampled_from(["NCHW", "NHWC"]), w_order=st.sampled_from(["OIHW", "OHWI"]),
       gap=st.sampled_from([0, 3]), sm_count=st.sampled_from([1, 132]), seed=st.integers(0, 2**32 - 1))
def test_kernel_index_models_match_the_references(geo, layout, w_order, gap, sm_count, seed):
    rng = np.random.default_rng(seed)
    b = buffers(rng, geo, layout, w_order, "float32", gap)
    (dyf, ys, yl), (xf, xs, xl), (wf, wst, wl) = b["y"], b["x"], b["w"]
    gi, gw = specs(geo, layout, "float32", "float32")
    dy_v, x_v, w_v = (in_layout(logical_view(dyf, yl, ys), layout), in_layout(logical_view(xf, xl, xs), layout),
                      logical_view(wf, wl, wst))
    ref_dx = reference(gi, [dy_v, w_v])
    ref_dw = reference(gw, [x_v, dy_v])
    dx_size, dw_size = xf.size, wf.size

    def dx_of(written):
        assert (written.count[mask_x] == 1).all(), "dx: every element written exactly once"
        assert (written.count[~mask_x] == 0).all(), "dx: written outside the tensor"
        return in_layout(logical_view(written.data, xl, xs), layout)
    mask_x = np.zeros(dx_size, bool)
    mask_x[(np.indices(xl).reshape(4, -1) * np.array(xs)[:, None]).sum(0)] = True
    for dx in (simt_grad_input(geo, dyf, wf, xs, wst, ys, dx_size),
               generic_grad_input(geo, dyf, wf, xs, wst, ys, dx_size, c_fast=layout == "NHWC"),
               generic_grad_input(geo, dyf, wf, xs, wst, ys, dx_size, c_fast=layout != "NHWC")):
        got = dx_of(dx)
        assert np.allclose(got, ref_dx, rtol=1e-9, atol=1e-9), np.abs(got - ref_dx).max()

    mask_w = np.zeros(dw_size, bool)
    mask_w[(np.indices(wl).reshape(4, -1) * np.array(wst)[:, None]).sum(0)] = True
    ws, adds, splits = simt_grad_weight(geo, xf, dyf, xs, ys, sm_count)
    assert (adds >= 1).all() and adds.max() <= splits
    for dw in (finish_grad_weight(geo, ws, wst, dw_size), generic_grad_weight(geo, xf, dyf, xs, wst, ys, dw_size)):
        assert (dw.count[mask_w] == 1).all() and (dw.count[~mask_w] == 0).all()
        got = logical_view(dw.data, wl, wst)
        assert np.allclose(got, ref_dw, rtol=1e-9, atol=1e-9), np.abs(got - ref_dw).max()


@needs_ops
@pytest.mark.parametrize("geo,layout", [
    (Geo(3, 16, 12, 12, 16, 3, 3, pad=(1, 1)), "NCHW"),
    (Geo(2, 24, 20, 18, 70, 3, 2, stride=(1, 2), pad=(1, 1), dilation=(2, 1)), "NHWC"),
    (Geo(4, 6, 16, 16, 9, 5, 1, pad=(2, 0), groups=3), "NCHW"),
], ids=["dense", "dilated_strided", "grouped"])
def test_split_k_model_matches_the_reference(geo, layout):
    """grad-weight with its long reduction split over several blocks (as on a 132-SM part)."""
    rng = np.random.default_rng()
    b = buffers(rng, geo, layout, "OIHW", "float32", 0)
    (dyf, ys, yl), (xf, xs, xl), (wf, wst, wl) = b["y"], b["x"], b["w"]
    _, gw = specs(geo, layout, "float32", "float32")
    ws, adds, splits = simt_grad_weight(geo, xf, dyf, xs, ys, sm_count=132)
    assert splits > 1 and adds.max() == splits
    dw = finish_grad_weight(geo, ws, wst, wf.size)
    ref = reference(gw, [in_layout(logical_view(xf, xl, xs), layout), in_layout(logical_view(dyf, yl, ys), layout)])
    assert np.allclose(logical_view(dw.data, wl, wst), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k_fast", [False, True])
@pytest.mark.parametrize("extent", [BM, BN])
def test_simt_load_and_store_mappings_cover_each_tile_once(k_fast, extent):
    """The four loads per thread of A (64 x 16) and B (16 x 64) tiles, in either walking
    order, and the 4 x 4 outputs per thread (rows 4*ty + i, columns 4*tx + j)."""
    mn, k = load_mapping(k_fast, extent)
    cells = mn * BK + k
    assert mn.max() < extent and k.max() < BK
    assert np.bincount(cells, minlength=extent * BK).tolist() == [1] * (extent * BK)
    tid = np.arange(THREADS)
    tx, ty = tid % 16, tid // 16
    rows = (4 * ty[:, None] + np.arange(4)[None, :])[:, :, None]
    cols = (4 * tx[:, None] + np.arange(4)[None, :])[:, None, :]
    out = (rows * BN + cols).ravel()
    assert np.bincount(out, minlength=BM * BN).tolist() == [1] * (BM * BN)


@pytest.mark.parametrize("base,k_tiles,sms", [(1, 1, 132), (1, 10_000, 132), (500, 10_000, 132),
                                              (3, 20, 1), (1, 7, 132), (2, 10**7, 132)])
def test_k_splits_partition_the_reduction(base, k_tiles, sms):
    splits = choose_splits(base, k_tiles, sms)
    assert 1 <= splits <= max(1, k_tiles // 8) or splits == 1
    bounds = [(s * k_tiles // splits, (s + 1) * k_tiles // splits) for s in range(splits)]
    assert bounds[0][0] == 0 and bounds[-1][1] == k_tiles
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(hi - lo >= min(8, k_tiles) for lo, hi in bounds)


# ---- the binding, without a device --------------------------------------------------------------
def problem(geo, xs, ws, ys, dtype="float32", out_dtype="float32", **extra):
    dt = _core.DType.__members__
    return _core.Conv2dProblem(N=geo.N, C=geo.C, H=geo.H, W=geo.W, OC=geo.OC, KH=geo.KH, KW=geo.KW,
                               OH=geo.OH, OW=geo.OW, stride_h=geo.sh, stride_w=geo.sw, pad_top=geo.pt,
                               pad_left=geo.pl, dil_h=geo.dh, dil_w=geo.dw, groups=geo.groups,
                               x_strides=xs, w_strides=ws, y_strides=ys, in_dtype=dt[dtype],
                               out_dtype=dt[out_dtype], **extra)


@needs_cuda_build
def test_bad_arguments_are_refused_before_any_cuda_call(monkeypatch):
    geo = Geo(1, 4, 8, 8, 6, 3, 3, pad=(1, 1))
    xs, _ = strides_for((1, 4, 8, 8), ORDER["NCHW"])
    ws, _ = strides_for((6, 4, 3, 3), ORDER["OIHW"])
    ys, _ = strides_for((1, 6, 8, 8), ORDER["NCHW"])
    for fn in (_core.cuda_conv2d_grad_input, _core.cuda_conv2d_grad_weight):
        with pytest.raises(_core.CudaError, match="float operands only"):
            fn(problem(geo, xs, ws, ys, "int8", "int32"), 0, 0, 0)
        with pytest.raises(_core.CudaError, match="operands' dtype or float32"):
            fn(problem(geo, xs, ws, ys, "float32", "float16"), 0, 0, 0)
        with pytest.raises(_core.CudaError, match="no activation"):
            fn(problem(geo, xs, ws, ys, activation=_core.Activation.relu), 0, 0, 0)
        with pytest.raises(_core.CudaError, match="OH/OW"):
            fn(problem(Geo(1, 4, 8, 8, 6, 3, 3, pad=(1, 1), oh=11), xs, ws, ys), 0, 0, 0)
        with pytest.raises(_core.CudaError, match="groups"):
            fn(problem(Geo(1, 4, 8, 8, 6, 3, 3, groups=4), xs, ws, ys), 0, 0, 0)
        with pytest.raises(ValueError, match="kernel must be auto, generic or simt, not 'mma'"):
            fn(problem(geo, xs, ws, ys), 0, 0, 0, kernel="mma")
        monkeypatch.setenv("LEPTON_ACCEL_CONV_GRAD_KERNEL", "fast")
        with pytest.raises(_core.CudaError, match="LEPTON_ACCEL_CONV_GRAD_KERNEL must be auto, generic or simt"):
            fn(problem(geo, xs, ws, ys), 0, 0, 0)
        monkeypatch.delenv("LEPTON_ACCEL_CONV_GRAD_KERNEL")
    assert list(_core.ConvGradKernel.__members__) == ["auto", "generic", "simt"]


# ---- the backend's marshalling, against a fake core running the models ----------------------
class FakeGradCore:
    """Host memory for device memory; the gradient entry points run the NumPy models
    above on it with the problem's own fields (the binding's real Conv2dProblem)."""

    BUILD_INFO = {"cuda": True}

    def __init__(self, family="simt"):
        self.mem, self.next, self.family, self.calls = {}, 4096, family, []

    def __getattr__(self, name):
        if name in ("DType", "Activation", "Conv2dProblem"):
            return getattr(_core, name)
        raise AttributeError(name)

    def cuda_malloc(self, nbytes):
        ptr, self.next = self.next, self.next + ((nbytes + 4095) // 4096 + 1) * 4096
        self.mem[ptr] = np.zeros(max(nbytes, 1), np.uint8)
        return ptr

    def cuda_free(self, ptr):
        del self.mem[ptr]

    def cuda_copy_to_device(self, dst, src, stream=0):
        raw = np.asarray(src).reshape(-1).view(np.uint8)
        self.mem[dst][:raw.size] = raw

    def cuda_copy_to_host(self, dst, src, stream=0):
        raw = dst.reshape(-1).view(np.uint8)
        raw[:] = self.mem[src][:raw.size]

    def _flat(self, ptr, dtype):
        buf = self.mem[ptr]
        item = np.dtype(dtype).itemsize
        return buf[:buf.size // item * item].view(dtype)

    def _geo(self, p):
        return Geo(p.N, p.C, p.H, p.W, p.OC, p.KH, p.KW, (p.stride_h, p.stride_w), (p.pad_top, p.pad_left),
                   (p.dil_h, p.dil_w), p.groups, oh=p.OH, ow=p.OW)

    def cuda_conv2d_grad_input(self, p, dy, w, dx, *, stream=0, kernel="auto"):
        geo, in_dt, out_dt = self._geo(p), NP_DTYPES[p.in_dtype.name], NP_DTYPES[p.out_dtype.name]
        out = self._flat(dx, out_dt)
        args = (geo, self._flat(dy, in_dt), self._flat(w, in_dt), p.x_strides, p.w_strides, p.y_strides, out.size)
        res = simt_grad_input(*args) if self.family == "simt" else generic_grad_input(*args, c_fast=True)
        out[res.count > 0] = res.data[res.count > 0].astype(out_dt)
        self.calls.append(("grad_input", p))
        return "fake"

    def cuda_conv2d_grad_weight(self, p, x, dy, dw, *, stream=0, kernel="auto"):
        geo, in_dt, out_dt = self._geo(p), NP_DTYPES[p.in_dtype.name], NP_DTYPES[p.out_dtype.name]
        out = self._flat(dw, out_dt)
        xf, dyf = self._flat(x, in_dt), self._flat(dy, in_dt)
        if self.family == "simt":
            ws, _, _ = simt_grad_weight(geo, xf, dyf, p.x_strides, p.y_strides)
            res = finish_grad_weight(geo, ws, p.w_strides, out.size)
        else:
            res = generic_grad_weight(geo, xf, dyf, p.x_strides, p.w_strides, p.y_strides, out.size)
        out[res.count > 0] = res.data[res.count > 0].astype(out_dt)
        self.calls.append(("grad_weight", p))
        return "fake"


@needs_ops
@needs_types
@pytest.mark.parametrize("family", ["simt", "generic"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=[d[0] for d in FLOAT_DTYPES])
def test_host_marshalling_matches_reference(monkeypatch, family, layout, dt):
    """The backend's host path for both gradients (copies, strides per layout and role,
    the problem's fields) gives the reference's answer when the binding does what it
    documents and the kernels index as modelled."""
    from lepton_accel.arrays import as_view
    from lepton_accel.backends import cuda as cuda_backend

    _, dtype, out_dtype = dt
    fake = FakeGradCore(family)
    monkeypatch.setattr(cuda_backend, "core", fake)
    rng = np.random.default_rng()
    geo = Geo(2, 6, 9, 7, 8, 3, 2, stride=(2, 1), pad=(1, 1), dilation=(1, 2), groups=2)
    gi, gw = specs(geo, layout, dtype, out_dtype)
    x = rng.standard_normal(gw.shapes[0]).astype(NP_DTYPES[dtype])
    dy = rng.standard_normal(gi.shapes[0]).astype(NP_DTYPES[dtype])
    w = rng.standard_normal(gi.shapes[1]).astype(NP_DTYPES[dtype])
    backend = cuda_backend.CudaBackend()
    dx = backend._conv_host(gi, [as_view(dy, "dy"), as_view(w, "w")])
    dw = backend._conv_host(gw, [as_view(x, "x"), as_view(dy, "dy")])
    assert [c[0] for c in fake.calls] == ["grad_input", "grad_weight"]
    assert fake.calls[0][1].activation == _core.Activation.none
    for spec, out, ops in ((gi, dx, (dy, w)), (gw, dw, (x, dy))):
        assert out.shape == spec.out_shape and str(out.dtype) == spec.out_dtype
        verdict = check(spec, out, reference(spec, ops))
        assert verdict["verified"], (spec.op, verdict)


@needs_ops
@needs_types
def test_backend_takes_the_gradients_and_refuses_what_it_cannot_index(monkeypatch):
    from lepton_accel.backends.cuda import CudaBackend

    monkeypatch.setattr(CudaBackend, "available", lambda self: (True, ""))
    assert {"conv2d_grad_input", "conv2d_grad_weight"} <= set(CudaBackend.kernels)
    geo = Geo(1, 4, 5, 5, 4, 1, 3, pad=(0, 1))
    gi, gw = specs(geo, "NCHW", "bfloat16", None)
    assert CudaBackend().supports(gi)[0] and CudaBackend().supports(gw)[0]
    # a stride beyond 2**31 with several output columns: refused with the reason
    big = OPS["conv2d_grad_input"].spec(((1, 4, 1, 2), (4, 4, 1, 3)), ("float32", "float32"),
                                        input_hw=(1, 2**33 + 3), stride=(1, 2**33), padding=(0, 1))
    ok, why = CudaBackend().supports(big)
    assert not ok and "stride_w" in why
    # a huge stride that one output row never uses is passed as 1
    one_row = OPS["conv2d_grad_input"].spec(((1, 4, 1, 5), (4, 4, 1, 3)), ("float32", "float32"),
                                            input_hw=(3, 5), stride=(2**70, 1), padding=(0, 1))
    assert CudaBackend().supports(one_row)[0]


# ---- GPU: the real kernels ------------------------------------------------------------------
def run_on_device(rng, geo, layout, w_order, dtype, out_dtype, family, gap=0, stream=0):
    """Both gradients on the device through the binding, outputs poisoned first.
    Returns [(spec, kernel name, result in the spec's layout, gaps intact)]."""
    b = buffers(rng, geo, layout, w_order, dtype, gap)
    (dyf, ys, yl), (xf, xs, xl), (wf, wst, wl) = b["y"], b["x"], b["w"]
    gi, gw = specs(geo, layout, dtype, out_dtype)
    prob = problem(geo, xs, wst, ys, dtype, out_dtype)
    out_np = NP_DTYPES[out_dtype]
    results = []
    with DeviceBuffers() as bufs:
        p_dy, p_w, p_x = bufs.upload(dyf), bufs.upload(wf), bufs.upload(xf)
        for spec, size, logical, strides, call in (
                (gi, xf.size, xl, xs, lambda out: _core.cuda_conv2d_grad_input(
                    prob, p_dy, p_w, out, stream=stream, kernel=family)),
                (gw, wf.size, wl, wst, lambda out: _core.cuda_conv2d_grad_weight(
                    prob, p_x, p_dy, out, stream=stream, kernel=family))):
            nbytes = size * np.dtype(out_np).itemsize
            p_out = bufs.alloc(nbytes)
            _core.cuda_memset(p_out, 0xFF, nbytes, stream)  # NaN in every float type
            name = call(p_out)
            _core.cuda_stream_synchronize(stream)
            host = np.empty(size, out_np)
            _core.cuda_copy_to_host(host.view(np.uint8), p_out, stream)
            mask = np.zeros(size, bool)
            mask[(np.indices(logical).reshape(4, -1) * np.array(strides)[:, None]).sum(0)] = True
            intact = bool((host.view(np.uint8).reshape(size, -1)[~mask] == 0xFF).all())
            view = logical_view(host, logical, strides)
            results.append((spec, name, in_layout(view, layout) if spec.op == "conv2d_grad_input" else view,
                            intact))
    dy_v = in_layout(logical_view(dyf, yl, ys), layout)
    refs = {"conv2d_grad_input": reference(gi, [dy_v, logical_view(wf, wl, wst)]),
            "conv2d_grad_weight": reference(gw, [in_layout(logical_view(xf, xl, xs), layout), dy_v])}
    return [(spec, name, out, intact, refs[spec.op]) for spec, name, out, intact in results]


def assert_family(name, family, spec):
    if family == "generic":
        assert name == f"{spec.op}_generic", name
    elif family == "simt":  # forced: runs whenever the indices fit (always, at these sizes)
        assert name.startswith(f"{spec.op}_simt_64x64x16"), name


@needs_ops
@gpu
@settings(max_examples=150, deadline=None)
@given(geo=geometries(), dt=st.sampled_from(FLOAT_DTYPES), layout=st.sampled_from(["NCHW", "NHWC"]),
       w_order=st.sampled_from(["OIHW", "OHWI"]), family=st.sampled_from(FAMILIES),
       gap=st.sampled_from([0, 0, 5]), seed=st.integers(0, 2**32 - 1))
def test_property(geo, dt, layout, w_order, family, gap, seed):
    _, dtype, out_dtype = dt
    for spec, name, out, intact, ref in run_on_device(np.random.default_rng(seed), geo, layout, w_order,
                                                      dtype, out_dtype, family, gap):
        assert_family(name, family, spec)
        assert intact, f"{name}: wrote outside the output view"
        verdict = check(spec, out, ref)
        assert verdict["verified"], (name, verdict)


LAYERS = {  # (geometry) shapes of training steps: dense, strided, grouped, depthwise
    "3x3_64_64": Geo(4, 64, 14, 14, 64, 3, 3, pad=(1, 1)),
    "3x3s2_32_64": Geo(3, 32, 15, 15, 64, 3, 3, stride=(2, 2), pad=(1, 1)),
    "1x1s2_128_256": Geo(2, 128, 9, 9, 256, 1, 1, stride=(2, 2)),
    "7x7s2_stem": Geo(2, 3, 33, 31, 64, 7, 7, stride=(2, 2), pad=(3, 3)),
    "dil2_5x3": Geo(2, 40, 12, 17, 72, 5, 3, pad=(4, 2), dilation=(2, 2)),
    "grouped_g4": Geo(2, 64, 10, 10, 96, 3, 3, pad=(1, 1), groups=4),
    "depthwise_3x3": Geo(2, 96, 17, 15, 96, 3, 3, pad=(1, 1), groups=96),
    "depthwise_s2_mult2": Geo(2, 32, 16, 16, 64, 3, 3, stride=(2, 2), pad=(1, 1), groups=32),
    "many_pixels_split_k": Geo(8, 16, 64, 64, 32, 3, 3, pad=(1, 1)),
}


@needs_ops
@gpu
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=[d[0] for d in FLOAT_DTYPES])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("family", FAMILIES)
def test_layers(rng, layer, dt, layout, family):
    _, dtype, out_dtype = dt
    for spec, name, out, intact, ref in run_on_device(rng, LAYERS[layer], layout, "OIHW", dtype, out_dtype,
                                                      family):
        assert_family(name, family, spec)
        assert intact
        verdict = check(spec, out, ref)
        assert verdict["verified"], (name, verdict)


@needs_ops
@gpu
def test_auto_picks_simt_for_wide_problems_and_generic_for_depthwise(rng):
    for layer, wide in (("3x3_64_64", True), ("depthwise_3x3", False)):
        for spec, name, out, intact, ref in run_on_device(rng, LAYERS[layer], "NHWC", "OHWI", "float32",
                                                          "float32", "auto"):
            assert ("simt" in name) == wide, name
            assert check(spec, out, ref)["verified"]


@needs_ops
@gpu
def test_on_a_stream(rng):
    stream = _core.cuda_stream_create()
    try:
        for family in FAMILIES:
            for spec, name, out, intact, ref in run_on_device(rng, LAYERS["3x3s2_32_64"], "NCHW", "OIHW",
                                                              "bfloat16", "float32", family, stream=stream):
                assert intact and check(spec, out, ref)["verified"], name
    finally:
        _core.cuda_stream_destroy(stream)


@needs_ops
@gpu
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=[d[0] for d in FLOAT_DTYPES])
def test_backend_host_arrays(rng, layout, dt):
    from lepton_accel.api import execute
    from lepton_accel.arrays import as_view

    _, dtype, out_dtype = dt
    geo = LAYERS["grouped_g4"]
    gi, gw = specs(geo, layout, dtype, out_dtype)
    x = rng.standard_normal(gw.shapes[0]).astype(NP_DTYPES[dtype])
    dy = rng.standard_normal(gi.shapes[0]).astype(NP_DTYPES[dtype])
    w = rng.standard_normal(gi.shapes[1]).astype(NP_DTYPES[dtype])
    for spec, ops in ((gi, (dy, w)), (gw, (x, dy))):
        out, stats = execute(spec, [as_view(ops[0], spec.definition.operands[0]),
                                    as_view(ops[1], spec.definition.operands[1])], "cuda")
        assert stats.backend == "cuda" and isinstance(out, np.ndarray)
        verdict = check(spec, out, reference(spec, ops))
        assert verdict["verified"], (spec.op, verdict)


@needs_ops
@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_device_tensors_match_autograd(dtype):
    """Against PyTorch's own gradients, on the caller's stream, channels_last views."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device")
    from lepton_accel.api import execute
    from lepton_accel.arrays import as_view

    tdt = getattr(torch, dtype)
    x = torch.randn(4, 32, 13, 11, device="cuda", dtype=torch.float64, requires_grad=True)
    w = torch.randn(48, 16, 3, 3, device="cuda", dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(x, w, stride=2, padding=1, dilation=(1, 2), groups=2)
    dy = torch.randn_like(y)
    y.backward(dy)
    geo = Geo(4, 32, 13, 11, 48, 3, 3, stride=(2, 2), pad=(1, 1), dilation=(1, 2), groups=2,
              oh=y.shape[2], ow=y.shape[3])
    gi, gw = specs(geo, "NHWC", dtype, "float32")
    dy_l = dy.to(tdt).permute(0, 2, 3, 1)              # an NHWC view of NCHW memory
    x_l = x.detach().to(tdt).to(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        dx, _ = execute(gi, [as_view(dy_l, "dy"), as_view(w.detach().to(tdt), "w")], "cuda")
        dw, _ = execute(gw, [as_view(x_l, "x"), as_view(dy_l, "dy")], "cuda")
    s.synchronize()
    tol = 1e-5 if dtype == "float32" else 1e-2
    for got, ref in ((dx.permute(0, 3, 1, 2), x.grad), (dw, w.grad)):
        err = float(torch.linalg.norm(got.double() - ref) / torch.linalg.norm(ref))
        assert err < tol, err
