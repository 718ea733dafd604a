"""lepton_accel.torch: the custom operators (opcheck), their gradients against PyTorch's own
conv2d/linear in float64, the drop-in layers, convert() and torch.compile."""
import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
lt = pytest.importorskip("lepton_accel.torch")

import lepton_accel as la  # noqa: E402
from lepton_accel.reference import TOLERANCE, relative_error  # noqa: E402

OPS = torch.ops.lepton_accel
F64 = torch.float64
TOL = TOLERANCE["float32"]


def rel(a, b) -> float:
    """||a - b|| / ||b||; outputs that are all but zero (a GELU far below 0, where float32
    underflows) are judged on an absolute floor of 1e-6 per element instead."""
    a, b = a.detach().double().numpy(), b.detach().double().numpy()
    if np.linalg.norm(b) < 1e-3 * np.sqrt(b.size):
        return float(np.linalg.norm(a - b) / (0.1 * np.sqrt(b.size)))
    return relative_error(a, b)


def _leaf(*shape, gen):
    return torch.randn(*shape, generator=gen).requires_grad_(True)


# ---- opcheck: schema, fake implementation, autograd registration, AOT dispatch -----------
def _opcheck_cases():
    g = torch.Generator().manual_seed(1)
    a, b, bias = _leaf(5, 7, gen=g), _leaf(7, 3, gen=g), _leaf(3, gen=g)
    x, w, cb = _leaf(2, 3, 7, 6, gen=g), _leaf(4, 3, 3, 3, gen=g), _leaf(4, gen=g)
    xh = _leaf(2, 7, 6, 3, gen=g)
    dy = torch.randn(2, 4, 7, 2, generator=g)
    geo = ([1, 2], [1, 1, 0, 0], [1, 1], 1, "NCHW")
    return {
        "matmul relu": (OPS.matmul, (a, b, bias, "relu", "auto")),
        "matmul gelu": (OPS.matmul, (a, b, bias, "gelu", "auto")),
        "matmul batched 1-D": (OPS.matmul, (_leaf(2, 4, 7, gen=g), _leaf(7, gen=g), None, None,
                                            "auto")),
        "conv2d NCHW relu": (OPS.conv2d, (x, w, cb, *geo, "relu", "auto")),
        "conv2d NHWC gelu same": (OPS.conv2d, (xh, _leaf(6, 1, 2, 2, gen=g), None, [1, 1],
                                               [0, 1, 0, 1], [1, 1], 3, "NHWC", "gelu", "auto")),
        "conv2d_grad_input": (OPS.conv2d_grad_input, (dy, w.detach(), [7, 6], *geo, "auto")),
        "conv2d_grad_weight": (OPS.conv2d_grad_weight, (x.detach(), dy, [3, 3], *geo, "auto")),
        "gelu_grad": (OPS.gelu_grad, (torch.randn(3, 4, generator=g),)),
    }


@pytest.mark.parametrize("case", list(_opcheck_cases()))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


# ---- gradients against PyTorch's own ops in float64 ---------------------------------------
@st.composite
def conv_cases(draw):
    g = draw(st.sampled_from([1, 1, 2]))
    cg, ocg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = (draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 3])))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), 1)
    ext = (dilation[0] * (k[0] - 1) + 1, k[1])
    padding = draw(st.one_of(st.just("same") if stride == (1, 1) else st.just("valid"),
                             st.tuples(st.integers(0, ext[0] - 1), st.integers(0, ext[1] - 1))))
    hw = (draw(st.sampled_from([ext[0], 5, 7])), draw(st.sampled_from([ext[1], 4, 6])))
    return dict(n=draw(st.integers(1, 3)), c=cg * g, oc=ocg * g, k=k, hw=hw, stride=stride,
                dilation=dilation, padding=padding, groups=g)


def _torch_conv(x, w, b, c, activation):
    y = torch.nn.functional.conv2d(x, w, b, stride=c["stride"], padding=c["padding"],
                                   dilation=c["dilation"], groups=c["groups"])
    return {"relu": torch.relu, "gelu": lambda t: torch.nn.functional.gelu(
        t, approximate="tanh"), None: lambda t: t}[activation](y)


@settings(max_examples=25, deadline=None)
@given(case=conv_cases(), bias=st.booleans(), activation=st.sampled_from([None, "relu", "gelu"]),
       layout=st.sampled_from(["NCHW", "NHWC"]), seed=st.integers(0, 2**31 - 1))
def test_conv2d_grads_match_pytorch_float64(case, bias, activation, layout, seed):
    g = torch.Generator().manual_seed(seed)
    c = case
    x = _leaf(c["n"], c["c"], *c["hw"], gen=g)
    w = _leaf(c["oc"], c["c"] // c["groups"], *c["k"], gen=g)
    b = _leaf(c["oc"], gen=g) if bias else None
    xi = x.detach().permute(0, 2, 3, 1).requires_grad_(True) if layout == "NHWC" else x
    y = lt.conv2d(xi, w, b, stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
                  groups=c["groups"], layout=layout, activation=activation)
    if layout == "NHWC":
        y = y.permute(0, 3, 1, 2)
    x64, w64 = x.detach().to(F64).requires_grad_(True), w.detach().to(F64).requires_grad_(True)
    b64 = b.detach().to(F64).requires_grad_(True) if bias else None
    y64 = _torch_conv(x64, w64, b64, c, activation)
    assert rel(y, y64) < TOL
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy)
    y64.backward(dy.to(F64))
    assert rel(xi.grad.permute(0, 3, 1, 2) if layout == "NHWC" else xi.grad, x64.grad) < TOL
    assert rel(w.grad, w64.grad) < TOL
    if bias:
        assert rel(b.grad, b64.grad) < TOL


@settings(max_examples=25, deadline=None)
@given(batch=st.sampled_from([(), (1,), (3,), (2, 3)]), m=st.sampled_from([1, 2, 7]),
       k=st.sampled_from([1, 5, 16]), n=st.sampled_from([1, 3, 13]), bias=st.booleans(),
       activation=st.sampled_from([None, "relu", "gelu"]), seed=st.integers(0, 2**31 - 1))
def test_linear_grads_match_pytorch_float64(batch, m, k, n, bias, activation, seed):
    g = torch.Generator().manual_seed(seed)
    x, w = _leaf(*batch, m, k, gen=g), _leaf(n, k, gen=g)
    b = _leaf(n, gen=g) if bias else None
    y = lt.linear(x, w, b, activation=activation)
    x64, w64 = x.detach().to(F64).requires_grad_(True), w.detach().to(F64).requires_grad_(True)
    b64 = b.detach().to(F64).requires_grad_(True) if bias else None
    y64 = torch.nn.functional.linear(x64, w64, b64)
    y64 = {"relu": torch.relu, "gelu": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
           None: lambda t: t}[activation](y64)
    assert rel(y, y64) < TOL
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy)
    y64.backward(dy.to(F64))
    for ours, ref in ((x.grad, x64.grad), (w.grad, w64.grad)) + (((b.grad, b64.grad),) if bias else ()):
        assert rel(ours, ref) < TOL


@pytest.mark.parametrize("a_shape, b_shape", [((7,), (7, 3)), ((4, 7), (7,)), ((7,), (7,)),
                                               ((2, 1, 4, 7), (3, 7, 5)), ((4, 7), (2, 7, 5))])
def test_matmul_grads_broadcast_and_vectors(a_shape, b_shape):
    g = torch.Generator().manual_seed(0)
    a, b = _leaf(*a_shape, gen=g), _leaf(*b_shape, gen=g)
    y = lt.matmul(a, b)
    a64, b64 = (t.detach().to(F64).requires_grad_(True) for t in (a, b))
    y64 = torch.matmul(a64, b64)
    assert y.shape == y64.shape and rel(y, y64) < TOL
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy)
    y64.backward(dy.to(F64))
    assert a.grad.shape == a.shape and rel(a.grad, a64.grad) < TOL
    assert b.grad.shape == b.shape and rel(b.grad, b64.grad) < TOL


def test_only_the_needed_gradients_are_computed(monkeypatch):
    """A first layer's input needs no gradient: its grad-input op never runs."""
    calls = []
    real = la.api.conv2d_grad_input
    monkeypatch.setattr(la.api, "conv2d_grad_input", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv = lt.Conv2d(2, 3, 3)
    conv(torch.randn(1, 2, 5, 5)).sum().backward()
    assert calls == [] and conv.weight.grad is not None
    conv(torch.randn(1, 2, 5, 5, requires_grad=True)).sum().backward()
    assert calls == [1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_and_backward(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 6, generator=g).to(dtype).requires_grad_(True)
    conv = lt.Conv2d(3, 4, 3, padding=1, dtype=dtype, activation="relu")
    y = conv(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == dtype and conv.weight.grad.dtype == dtype
    x64, w64 = (t.detach().to(F64).requires_grad_(True) for t in (x, conv.weight))
    y64 = torch.relu(torch.nn.functional.conv2d(x64, w64, conv.bias.detach().to(F64), padding=1))
    y64.sum().backward()
    tol = TOLERANCE[str(dtype).split(".")[1]]
    assert rel(y, y64) < tol and rel(x.grad, x64.grad) < tol and rel(conv.weight.grad, w64.grad) < tol


# ---- the layers and convert() -------------------------------------------------------------
def _net():
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 6, 3, padding="same"), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 4, 2, stride=2, padding=1, bias=False), torch.nn.Flatten(),
        torch.nn.Linear(36, 5), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(5, 3))


def test_convert_swaps_in_place_and_keeps_parameters_and_state_dict():
    torch.manual_seed(0)
    model = _net()
    ref = copy.deepcopy(model)
    params = [id(p) for p in model.parameters()]
    rng_state = torch.random.get_rng_state()
    assert lt.convert(model) is model
    assert torch.equal(rng_state, torch.random.get_rng_state())   # no re-initialisation
    assert [id(p) for p in model.parameters()] == params          # optimizers keep working
    assert list(model.state_dict()) == list(ref.state_dict())
    assert isinstance(model[0], lt.Conv2d) and model[0].activation == "relu"
    assert isinstance(model[1], torch.nn.Identity)
    assert isinstance(model[5], lt.Linear) and model[5].activation == "gelu"
    assert isinstance(model[7], lt.Linear) and model[7].activation is None
    x = torch.randn(3, 2, 8, 8)
    assert rel(model(x), ref(x)) < TOL


def test_layers_are_drop_in():
    torch.manual_seed(0)
    ours, theirs = lt.Conv2d(3, 5, (3, 2), stride=2, padding=1, dilation=(1, 2)), None
    torch.manual_seed(0)
    theirs = torch.nn.Conv2d(3, 5, (3, 2), stride=2, padding=1, dilation=(1, 2))
    assert torch.equal(ours.weight, theirs.weight)             # same init from the same seed
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 9, 8)
    assert rel(ours(x), theirs(x)) < TOL
    assert rel(ours(x[0]), theirs(x[0])) < TOL                 # unbatched input too
    lin, tlin = lt.Linear(6, 4, bias=False), torch.nn.Linear(6, 4, bias=False)
    tlin.load_state_dict(lin.state_dict())
    assert rel(lin(torch.ones(6)), tlin(torch.ones(6))) < TOL


@pytest.mark.parametrize("make, argname", [
    (lambda: lt.Conv2d(2, 2, 3, padding_mode="reflect"), "padding_mode"),
    (lambda: lt.Conv2d(2, 2, 3, padding=3), "padding"),      # our ops: at most kernel - 1
    (lambda: lt.Linear(2, 2, activation="tanh"), "activation"),
    (lambda: lt.Linear(2, 2, backend="tpu"), "backend"),
    (lambda: lt.convert(torch.nn.Linear(2, 2)), "model"),
])
def test_bad_layer_arguments_name_the_argument(make, argname):
    with pytest.raises((ValueError, TypeError), match=rf"^{argname}:"):
        make()


def test_bad_operands_name_the_argument():
    with pytest.raises(ValueError, match="^b:"):
        lt.matmul(torch.randn(2, 3), torch.randn(4, 5))
    with pytest.raises(TypeError, match="^x:"):
        lt.conv2d(torch.randn(1, 2, 5, 5, dtype=F64), torch.randn(3, 2, 3, 3, dtype=F64))
    with pytest.raises(ValueError, match="^padding:"):
        OPS.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), None, [1, 1], [2, 0, 1, 1],
                   [1, 1], 1, "NCHW", None, "auto")


def test_convert_leaves_what_our_ops_cannot_run():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"),
                                torch.nn.Linear(3, 3).double(), torch.nn.Conv2d(2, 2, 3, padding=3))
    lt.convert(model)
    assert [type(m) for m in model] == [torch.nn.Conv2d, torch.nn.Linear, torch.nn.Conv2d]


# ---- torch.compile --------------------------------------------------------------------------
def test_compile_fullgraph_traces_our_ops_with_the_same_numbers():
    torch.manual_seed(0)
    model = lt.convert(_net())
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 2, 8, 8)
    y, yc = model(x), compiled(x)
    assert torch.equal(y, yc)                    # the same kernels run, so the same bits
    y.square().sum().backward()
    yc.square().sum().backward()
    for (name, p), pc in zip(model.named_parameters(), compiled.parameters()):
        assert torch.equal(p.grad, pc.grad), name
    # the functional form resolves 'same' padding while tracing, without a break
    f = torch.compile(lambda a, w: lt.conv2d(a, w, padding="same", activation="relu"),
                      fullgraph=True, backend="aot_eager")
    w = torch.randn(4, 2, 3, 2)
    assert torch.equal(f(x, w), lt.conv2d(x, w, padding="same", activation="relu"))


def test_compile_without_graph_breaks_inductor():
    """The default backend too (Inductor fuses PyTorch's ops around our opaque ones)."""
    torch.manual_seed(0)
    model = lt.convert(_net())
    explanation = torch._dynamo.explain(model)(torch.randn(2, 2, 8, 8))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 2, 8, 8)
    assert rel(compiled(x), model(x)) < TOL
    f = torch.compile(lambda a, b: lt.matmul(a, b, activation="relu"), fullgraph=True)
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    assert rel(f(a, b), torch.relu(a @ b)) < TOL


# ---- CUDA (our cuda backend, in place on PyTorch's current stream) --------------------------
def _cuda_ready():
    if not torch.cuda.is_available():
        return False
    return any(b["name"] == "cuda" and b["available"] for b in la.backends())


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ready(), reason="needs a CUDA device and our cuda backend")
def test_cuda_forward_on_the_current_stream():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 3, 8, 8, generator=g), torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g)
    ref = torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), b.double(), padding=1))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = lt.conv2d(x.cuda(), w.cuda(), b.cuda(), padding=1, activation="relu")
        m = lt.linear(x.reshape(2, -1).cuda(), torch.randn(5, 192).cuda())
    s.synchronize()
    assert y.device.type == "cuda" and m.device.type == "cuda"
    assert rel(y.cpu(), ref) < TOL


# ---- packaging ----------------------------------------------------------------------------
def test_import_lepton_accel_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, lepton_accel; "
            "assert 'torch' not in sys.modules and 'lepton_accel.torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_submodules_load_on_first_use():
    import importlib

    assert lt.cnn is importlib.import_module("lepton_accel.torch.cnn")
    with pytest.raises(AttributeError, match="no attribute 'keras'"):
        lt.keras  # noqa: B018
