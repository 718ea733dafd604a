"""conv2d_grad_input / conv2d_grad_weight: CPU kernels against the ops' float64 tap-sum
references and against PyTorch's own convolution gradients (float64), plus bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lepton_accel as la
from lepton_accel.backends import REGISTRY
from lepton_accel.ops import get_op
from lepton_accel.reference import check, reference, relative_error

from operands import random_operand

BACKENDS = [b["name"] for b in la.backends()
            if b["available"] and "conv2d_grad_input" in REGISTRY[b["name"]].kernels]
EDGE = [1, 2, 3, 5, 7, 11, 13]  # 1 and primes


@st.composite
def grad_cases(draw):
    g = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and g > 1
    cg = 1 if depthwise else draw(st.sampled_from([1, 2, 3, 5]))
    oc = g * draw(st.integers(1, 3))
    kh, kw = draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 2, 3]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ext_h, ext_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    padding = draw(st.one_of(
        st.just("valid"),
        st.just("same") if stride == (1, 1) else st.just(0),   # "same" pads unevenly for even kernels
        st.tuples(st.integers(0, ext_h - 1), st.integers(0, ext_w - 1)),
    ))
    if padding == "same":
        pads = (ext_h - 1, ext_w - 1)                      # total over both sides
    elif isinstance(padding, tuple):
        pads = (2 * padding[0], 2 * padding[1])
    else:
        pads = (0, 0)
    h = draw(st.sampled_from([v for v in EDGE + [ext_h] if v + pads[0] >= ext_h]))
    w = draw(st.sampled_from([v for v in EDGE + [ext_w] if v + pads[1] >= ext_w]))
    return dict(n=draw(st.sampled_from([1, 2, 3])), c=cg * g, h=h, w=w, oc=oc, kh=kh, kw=kw,
                stride=stride, dilation=dilation, padding=padding, groups=g)


def _operands(rng, c, dtype, layout):
    x_nchw = (c["n"], c["c"], c["h"], c["w"])
    x_shape = x_nchw if layout == "NCHW" else (c["n"], c["h"], c["w"], c["c"])
    w = random_operand(rng, (c["oc"], c["c"] // c["groups"], c["kh"], c["kw"]), dtype)
    x = random_operand(rng, x_shape, dtype)
    conv = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
                groups=c["groups"], layout=layout)
    fwd = la.conv2d_spec(x.shape, dtype, w.shape, dtype, **conv)
    dy = random_operand(rng, fwd.out_shape, dtype, "s")           # strided: views are read as such
    return x, w, dy, conv, fwd


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(case=grad_cases(), dtype=st.sampled_from(["float32", "float32", "float16", "bfloat16"]),
       layout=st.sampled_from(["NCHW", "NHWC"]), f32_out=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_grads_match_op_reference(backend, case, dtype, layout, f32_out, seed):
    rng = np.random.default_rng(seed)
    x, w, dy, conv, _ = _operands(rng, case, dtype, layout)
    out_dtype = "float32" if f32_out else None
    gi = get_op("conv2d_grad_input").spec((dy.shape, w.shape), (dtype, dtype), out_dtype=out_dtype,
                                          input_hw=(case["h"], case["w"]), **conv)
    gw = get_op("conv2d_grad_weight").spec((x.shape, dy.shape), (dtype, dtype), out_dtype=out_dtype,
                                           kernel_hw=(case["kh"], case["kw"]), **conv)
    dx = la.conv2d_grad_input(dy, w, input_hw=(case["h"], case["w"]), out_dtype=out_dtype,
                              backend=backend, **conv)
    dw = la.conv2d_grad_weight(x, dy, kernel_hw=(case["kh"], case["kw"]), out_dtype=out_dtype,
                               backend=backend, **conv)
    assert dx.shape == x.shape and str(dx.dtype) == gi.out_dtype
    assert dw.shape == w.shape and str(dw.dtype) == gw.out_dtype
    for spec, out, ops in ((gi, dx, (dy, w)), (gw, dw, (x, dy))):
        verdict = check(spec, out, reference(spec, ops))
        assert verdict["verified"], (spec.op, verdict)


def _torch_grads(torch, x, w, dy, conv):
    """dx, dw from PyTorch in float64: torch.nn.grad for symmetric padding, autograd
    through an explicit pad for the uneven padding of 'same' with even kernels."""
    fwd = la.conv2d_spec(x.shape, "float32", w.shape, "float32", **conv)
    p = fwd.params
    nchw = (lambda a: a) if p.layout == "NCHW" else (lambda a: a.transpose(0, 3, 1, 2))
    xt, wt, dyt = (torch.tensor(nchw(np.asarray(a, np.float64))) for a in (x, w, dy))
    wt = torch.tensor(np.asarray(w, np.float64))
    (pt, pb), (pl, pr) = p.padding
    kw = dict(stride=p.stride, dilation=p.dilation, groups=p.groups)
    if pt == pb and pl == pr:
        dx = torch.nn.grad.conv2d_input(xt.shape, wt, dyt, padding=(pt, pl), **kw)
        dw = torch.nn.grad.conv2d_weight(xt, wt.shape, dyt, padding=(pt, pl), **kw)
    else:
        xt.requires_grad_(True)
        wt.requires_grad_(True)
        y = torch.nn.functional.conv2d(torch.nn.functional.pad(xt, (pl, pr, pt, pb)), wt, **kw)
        y.backward(dyt)
        dx, dw = xt.grad, wt.grad
    back = (lambda a: a) if p.layout == "NCHW" else (lambda a: a.permute(0, 2, 3, 1))
    return back(dx).numpy(), dw.numpy()


@settings(max_examples=60, deadline=None)
@given(case=grad_cases(), layout=st.sampled_from(["NCHW", "NHWC"]), seed=st.integers(0, 2**32 - 1))
def test_grads_match_pytorch(case, layout, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    x, w, dy, conv, _ = _operands(rng, case, "float32", layout)
    dx_ref, dw_ref = _torch_grads(torch, x, w, dy, conv)
    gi = get_op("conv2d_grad_input").spec((dy.shape, w.shape), ("float32",) * 2,
                                          input_hw=(case["h"], case["w"]), **conv)
    gw = get_op("conv2d_grad_weight").spec((x.shape, dy.shape), ("float32",) * 2,
                                           kernel_hw=(case["kh"], case["kw"]), **conv)
    # the ops' references agree with PyTorch to float64 rounding
    assert relative_error(reference(gi, (dy, w)), dx_ref) < 1e-12
    assert relative_error(reference(gw, (x, dy)), dw_ref) < 1e-12
    dx = la.conv2d_grad_input(dy, w, input_hw=(case["h"], case["w"]), backend="cpu", **conv)
    dw = la.conv2d_grad_weight(x, dy, kernel_hw=(case["kh"], case["kw"]), backend="cpu", **conv)
    assert relative_error(dx, dx_ref) < 1e-5
    assert relative_error(dw, dw_ref) < 1e-5


def test_grads_are_what_a_finite_difference_says(rng):
    """Independent of both references: <dy, conv(x + e, w) - conv(x - e, w)> / 2 = <dx, e>."""
    x = rng.standard_normal((2, 3, 9, 8))
    w = rng.standard_normal((4, 3, 3, 2))
    conv = dict(stride=(2, 1), padding=(1, 1), dilation=(1, 2))
    fwd = la.conv2d_spec(x.shape, "float32", w.shape, "float32", **conv)
    dy = rng.standard_normal(fwd.out_shape)
    ex, ew = rng.standard_normal(x.shape), rng.standard_normal(w.shape)

    def f(xx, ww):  # the forward's float64 reference on float64 operands
        return float(np.sum(dy * reference(fwd, (xx, ww))))

    dx = la.conv2d_grad_input(dy.astype(np.float32), w.astype(np.float32), input_hw=(9, 8), **conv)
    dw = la.conv2d_grad_weight(x.astype(np.float32), dy.astype(np.float32), kernel_hw=(3, 2), **conv)
    # conv is linear in each argument, so the central difference is exact up to rounding
    assert np.isclose((f(x + ex, w) - f(x - ex, w)) / 2, np.sum(dx * ex), rtol=1e-5)
    assert np.isclose((f(x, w + ew) - f(x, w - ew)) / 2, np.sum(dw * ew), rtol=1e-5)


def test_empty_batch():
    dy = np.zeros((0, 2, 3, 3), np.float32)
    w = np.ones((2, 4, 3, 3), np.float32)
    assert la.conv2d_grad_input(dy, w, input_hw=(5, 5)).shape == (0, 4, 5, 5)
    assert not la.conv2d_grad_weight(np.zeros((0, 4, 5, 5), np.float32), dy, kernel_hw=3).any()


F32 = np.float32
DY, W, X = np.ones((2, 4, 5, 5), F32), np.ones((4, 3, 3, 3), F32), np.ones((2, 3, 7, 7), F32)


@pytest.mark.parametrize("call, exc, argname", [
    (lambda: la.conv2d_grad_input(DY, W, input_hw=(2, 2)), ValueError, "input_hw"),
    (lambda: la.conv2d_grad_input(DY, W, input_hw=(0, 7)), ValueError, "input_hw"),
    (lambda: la.conv2d_grad_input(DY, W, input_hw=None), TypeError, "input_hw"),
    (lambda: la.conv2d_grad_input(DY, W, input_hw=(8, 8)), ValueError, "dy"),
    (lambda: la.conv2d_grad_input(DY[0], W, input_hw=(7, 7)), ValueError, "dy"),
    (lambda: la.conv2d_grad_input(DY, W[0], input_hw=(7, 7)), ValueError, "w"),
    (lambda: la.conv2d_grad_input(DY.astype(np.int8), W.astype(np.int8), input_hw=(7, 7)),
     TypeError, "dy"),
    (lambda: la.conv2d_grad_input(DY, W.astype(np.float16), input_hw=(7, 7)), TypeError, "w"),
    (lambda: la.conv2d_grad_input(DY, W, input_hw=(7, 7), groups=0), ValueError, "groups"),
    (lambda: la.conv2d_grad_input(DY, W, input_hw=(7, 7), layout="NWHC"), ValueError, "layout"),
    (lambda: la.conv2d_grad_input(DY, W, input_hw=(7, 7), padding=5), ValueError, "padding"),
    (lambda: la.conv2d_grad_input(DY, W, input_hw=(7, 7), out_dtype="float16"), TypeError,
     "out_dtype"),
    (lambda: la.conv2d_grad_weight(X, DY, kernel_hw=(2, 3)), ValueError, "dy"),
    (lambda: la.conv2d_grad_weight(X, DY, kernel_hw=(0, 3)), ValueError, "kernel_hw"),
    (lambda: la.conv2d_grad_weight(X, DY, kernel_hw="a"), TypeError, "kernel_hw"),
    (lambda: la.conv2d_grad_weight(X, DY, kernel_hw=None), TypeError, "kernel_hw"),
    (lambda: la.conv2d_grad_weight(X, DY, kernel_hw=(9, 9)), ValueError, "x"),
    (lambda: la.conv2d_grad_weight(X, DY, kernel_hw=3, groups=3), ValueError, "groups"),
    (lambda: la.conv2d_grad_weight(X, DY, kernel_hw=3, groups=2), ValueError, "groups"),
    (lambda: la.conv2d_grad_weight(X[0], DY, kernel_hw=3), ValueError, "x"),
    (lambda: la.conv2d_grad_weight(X, DY[0], kernel_hw=3), ValueError, "dy"),
    (lambda: la.conv2d_grad_weight(X, DY, kernel_hw=3, stride=0), ValueError, "stride"),
    (lambda: la.conv2d_grad_weight(X, DY.astype(np.float16), kernel_hw=3), TypeError, "dy"),
    (lambda: la.conv2d_grad_weight(X, DY, kernel_hw=3, backend="fpga"), ValueError, "backend"),
])
def test_bad_input_names_the_argument(call, exc, argname):
    with pytest.raises(exc, match=rf"^{argname}:"):
        call()


def test_no_epilogue_in_the_spec():
    op = get_op("conv2d_grad_input")
    with pytest.raises(ValueError, match="^bias:"):
        op.spec((DY.shape, W.shape), ("float32",) * 2, bias_shape=(3,), bias_dtype="float32",
                input_hw=(7, 7))
    with pytest.raises(ValueError, match="^activation:"):
        op.spec((DY.shape, W.shape), ("float32",) * 2, activation="relu", input_hw=(7, 7))


def test_cost_terms_and_job_fields():
    fwd = la.conv2d_spec(X.shape, "float32", W.shape, "float32", padding=1, stride=2)
    gi = get_op("conv2d_grad_input").spec((fwd.out_shape, W.shape), ("float32",) * 2,
                                          input_hw=(7, 7), padding=1, stride=2)
    gw = get_op("conv2d_grad_weight").spec((X.shape, fwd.out_shape), ("float32",) * 2,
                                           kernel_hw=(3, 3), padding=1, stride=2)
    # each gradient is as many multiply-adds as the forward, laid out as a different GEMM
    assert gi.flops == gw.flops == fwd.flops
    assert gi.gemm_shape == (1, 2 * 4 * 4, 3 * 9, 4)
    assert gw.gemm_shape == (1, 4, 3 * 9, 2 * 4 * 4)
    assert gi.out_shape == X.shape and gw.out_shape == W.shape
    assert gi.params.input_hw == (7, 7) and gw.params.kernel_hw == (3, 3)
    assert gi.params.padding == ((1, 1), (1, 1))
    doc = {"input_hw": [7, 7], "padding": [1, 1], "stride": 2}
    assert get_op("conv2d_grad_input").params_from_job(doc) == {"input_hw": (7, 7),
                                                                 "padding": (1, 1), "stride": 2}
    assert "kernel_hw" in get_op("conv2d_grad_weight").job_properties
