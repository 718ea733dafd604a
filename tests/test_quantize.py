"""Post-training int8 quantization (lepton_accel.torch.quantize) on the host: the integer
arithmetic against exact rationals, the scheme's parameters, the int8 network on the cpu
backend against its NumPy reference, and the accuracy of a small trained seed CNN.

The FPGA runs of the same networks are in test_quantize_fpga.py, which imports the
helpers below (the names that do not start with ``test``).
"""
from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lepton_accel.torch import quantize as qz  # noqa: E402

EPOCHS = 6


# ---- shared helpers ----------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _data():
    pytest.importorskip("sklearn")
    from lepton_accel.torch import cnn

    return cnn.load_digits(cnn.INPUT_SIZE)


def digits():
    """The seed's data: scikit-learn's digits, upsampled and standardised, with the
    held-out split; (x_train, y_train, x_test, y_test) as NumPy arrays."""
    d = _data()
    return d.train.x.numpy(), d.train.y.numpy(), d.test.x.numpy(), d.test.y.numpy()


def seed_cnn() -> nn.Module:
    """The seed's CNN on PyTorch's layers: Conv(32, 3x3, ReLU), pool, Conv(64, 3x3, ReLU),
    pool, Dense(64, ReLU), Dense(10) (the softmax is in the loss)."""
    from lepton_accel.torch import cnn

    return cnn.build_model("torch", seed=0)


@functools.lru_cache(maxsize=None)
def trained():
    """The seed CNN after a short fixed-seed Adam run on the digits (a few seconds on
    PyTorch's layers, one thread)."""
    from lepton_accel.torch import cnn

    model, _ = cnn.fit(dataset=_data(), epochs=EPOCHS, layers="torch", seed=0,
                       progress=False, threads=1)
    return model.eval()


@functools.lru_cache(maxsize=None)
def quantized():
    xtr = digits()[0]
    return qz.quantize(trained(), xtr[:300])


def float_logits(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x, np.float32))).double().numpy()


class EdgeNet(nn.Module):
    """Layers off the seed's beaten path: stride 2 with padding, a convolution without
    ReLU (signed int8 out), groups with dilation, no biases, a ReLU after a 3x3/2 pool of
    an odd size, functional calls, a softmax at the end."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=2, dilation=2, groups=2, bias=False)
        self.pool = nn.MaxPool2d(3, stride=2)
        self.fc1 = nn.Linear(8 * 2 * 2, 7, bias=False)
        self.fc2 = nn.Linear(7, 5)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = self.c2(x)                    # signed: no ReLU
        x = torch.relu(self.pool(x))
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        return F.softmax(self.fc2(x), dim=1)


def edge_net():
    torch.manual_seed(1)
    return EdgeNet().eval()


def edge_images(n, seed=2):
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, 2, 11, 9)).astype(np.float32)


# ---- the integer arithmetic --------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 15, 31])
def test_multiplier_approximates_scale(rng, bits):
    scales = np.exp(rng.uniform(np.log(1e-12), np.log(2.0**(bits - 2)), 500))
    scales[:3] = [1.0, 0.5, 2.0**-30]
    m, s = qz.quantize_multiplier(scales, bits)
    assert m.dtype == np.int64 and s.dtype == np.int64
    ok = m > 0
    assert np.all((m[ok] >= 2**(bits - 1)) & (m[ok] < 2**bits))
    assert np.all((s >= 1) & (s <= qz.MAX_SHIFT))
    approx = m[ok] / np.exp2(s[ok].astype(np.float64))
    assert np.max(np.abs(approx - scales[ok]) / scales[ok]) <= 2.0**-bits
    # only scales whose shift would pass 62 become m = 0, and those round every sum to 0
    assert np.all(scales[~ok] < 2.0**(bits - qz.MAX_SHIFT))


def test_multiplier_limits():
    m, s = qz.quantize_multiplier(1e-30)
    assert (m[0], s[0]) == (0, qz.MAX_SHIFT)
    acc = np.array([[-2**31, 2**31 - 1]], np.int32).T
    assert not qz.requantize(acc, m, s).any()
    with pytest.raises(ValueError, match="scale"):
        qz.quantize_multiplier(2.0**31)
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="scale"):
            qz.quantize_multiplier(bad)
    for bad in (1, 32, 8.0, True):
        with pytest.raises(ValueError, match="mult_bits"):
            qz.quantize_multiplier(0.5, bad)


def _exact(acc, m, s):
    """round(acc * m / 2**s), ties up, saturated to int8, in Python's rationals."""
    v = Fraction(int(acc) * int(m), 2**int(s)) + Fraction(1, 2)
    return max(-128, min(127, v.numerator // v.denominator))


@pytest.mark.parametrize("impl", ["host", "reference"])
def test_requantize_is_exact_rounding(rng, impl):
    f = qz.requantize if impl == "host" else (lambda a, m, s, axis=1: qz._requantize_exact(a, m, s))
    ch = 7
    m, s = qz.quantize_multiplier(np.exp(rng.uniform(np.log(1e-9), np.log(4.0), ch)))
    acc = rng.integers(-2**31, 2**31, (50, ch), dtype=np.int64)
    acc[:, ::2] //= 2**rng.integers(0, 31, (50, 1))     # small sums too, not only saturating
    acc[0], acc[1], acc[2] = -2**31, 2**31 - 1, 0
    acc = acc.astype(np.int32)
    out = f(acc, m, s, axis=1)
    assert out.dtype == np.int8
    want = np.array([[_exact(a, m[j], s[j]) for j, a in enumerate(row)] for row in acc])
    np.testing.assert_array_equal(out, want)
    assert 0 < np.count_nonzero((out > -128) & (out < 127))    # not all saturated


def test_requantize_ties_round_up():
    m, s = qz.quantize_multiplier(0.5)
    assert (m[0], s[0]) == (2**30, 31)
    acc = np.array([[-5, -3, -1, 1, 3, 5, 300, -300]], np.int32)
    np.testing.assert_array_equal(qz.requantize(acc, m, s, axis=0),
                                  [[-2, -1, 0, 1, 2, 3, 127, -128]])
    np.testing.assert_array_equal(qz._requantize_exact(acc.T, m, s).T,
                                  [[-2, -1, 0, 1, 2, 3, 127, -128]])
    with pytest.raises(TypeError, match="acc"):
        qz.requantize(acc.astype(np.int64), m, s, axis=0)


def test_weights_per_output_channel(rng):
    w = rng.normal(0, 1, (6, 3, 3, 3)) * np.array([1e-3, 0.1, 1, 10, 100, 0])[:, None, None, None]
    q, scale = qz.quantize_weights(w)
    assert q.dtype == np.int8 and scale.shape == (6,)
    for o in range(5):
        assert np.abs(q[o]).max() == 127
        assert np.all(np.abs(q[o] * scale[o] - w[o]) <= scale[o] / 2 * (1 + 1e-12))
    assert scale[5] == 1.0 and not q[5].any()
    with pytest.raises(ValueError, match="weight"):
        qz.quantize_weights(np.full((2, 2), np.nan))


# ---- the quantized seed CNN --------------------------------------------------------------
def test_seed_cnn_parameters():
    model, net = trained(), quantized()
    kinds = [type(l).__name__ for l in net.layers]
    assert kinds == ["QConv2d", "QMaxPool2d", "QConv2d", "QMaxPool2d", "QFlatten", "QLinear",
                     "QLinear"]
    kern = [l for l in net.layers if isinstance(l, (qz.QConv2d, qz.QLinear))]
    assert [l.relu for l in kern] == [True, True, True, False]
    assert kern[-1].out_scale is None and kern[-1].multiplier is None
    # 14x14x32 outputs of 9 taps, 5x5x64 of 3x3x32, 256 -> 64, 64 -> 10
    assert net.macs_per_image() == 196 * 32 * 9 + 25 * 64 * 288 + 256 * 64 + 64 * 10
    calib = digits()[0][:300].astype(np.float64)
    assert net.input_scale == pytest.approx(np.abs(calib).max() / 127, rel=1e-6)
    for a, b in zip(kern, kern[1:]):
        assert b.in_scale == a.out_scale
    mods = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    for l, m in zip(kern, mods):
        w = m.weight.detach().double().numpy()
        s_w = np.abs(w.reshape(len(w), -1)).max(1) / 127
        np.testing.assert_allclose(l.w_scale, s_w, rtol=1e-12)
        np.testing.assert_array_equal(l.weight, np.rint(w / s_w.reshape((-1,) + (1,) * (w.ndim - 1))))
        np.testing.assert_array_equal(l.bias, np.rint(m.bias.detach().double().numpy()
                                                      / (l.in_scale * s_w)))
        if l.out_scale is not None:
            approx = l.multiplier / np.exp2(l.shift.astype(float))
            np.testing.assert_allclose(approx, l.in_scale * s_w / l.out_scale, rtol=2.0**-31)


def test_seed_cnn_int8_on_cpu_is_its_reference_and_as_accurate():
    """Every logit of the held-out split: the cpu backend's int8 network == the NumPy
    reference; its accuracy within 1 point of the float model's."""
    model, net = trained(), quantized()
    _, _, xte, yte = digits()
    xq = net.quantize_input(xte)
    out, stats = net.run(xq, backend="cpu")
    ref = net.reference(xq)
    assert out.dtype == np.int32 and out.shape == (len(yte), 10)
    np.testing.assert_array_equal(out, ref)
    assert [name for name, _ in stats.layers] == ["0", "3", "7", "9"]
    assert all(s.backend == "cpu" for _, s in stats.layers)
    fl = float_logits(model, xte)
    acc_f = (fl.argmax(1) == yte).mean()
    acc_q = (net.dequantize_logits(out).argmax(1) == yte).mean()
    assert acc_f > 0.8, acc_f           # the short training run learned something
    assert abs(acc_q - acc_f) <= 0.01, (acc_f, acc_q)
    deq = net.dequantize_logits(out)
    assert np.linalg.norm(deq - fl) / np.linalg.norm(fl) < 0.05
    np.testing.assert_array_equal(net.predict(xte[:7], backend="cpu"), deq[:7].argmax(1))


def test_requantization_epilogue_and_host_path_agree(monkeypatch):
    """run() requantizes as each layer's op epilogue where the backend has it (cpu:
    numerics.requantize after its int32 kernel); the host path (int32 op, pool, then
    requantize) gives the same int8 values and logits."""
    net = quantized()
    _, _, xte, _ = digits()
    xq = net.quantize_input(xte[:12])
    out, stats = net.run(xq, backend="cpu")
    assert stats.requantized == ["0", "3", "7"]
    monkeypatch.setattr(qz.QuantizedNet, "_requantized", lambda self, layer, x, backend: None)
    host, hstats = net.run(xq, backend="cpu")
    assert hstats.requantized == []
    np.testing.assert_array_equal(out, host)
    np.testing.assert_array_equal(out, net.reference(xq))


def test_functional_forward_quantizes_like_sequential():
    seq = trained()

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3)
            self.fc1, self.fc2 = nn.Linear(256, 64), nn.Linear(64, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(self.conv2(x).relu(), kernel_size=2, stride=2)
            x = torch.flatten(x, 1)
            return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)

    fn = Functional()
    fn.load_state_dict({k2: v for k2, v in zip(fn.state_dict(), seq.state_dict().values())})
    _same_layers(quantized(), qz.quantize(fn, digits()[0][:300]))


class _ActConv(nn.Conv2d):
    """A Conv2d carrying its activation, as lepton_accel.torch.convert leaves them."""

    def __init__(self, *a, activation=None, **kw):
        super().__init__(*a, **kw)
        self.activation = activation

    def forward(self, x):
        y = super().forward(x)
        return F.relu(y) if self.activation == "relu" else y


class _ActLinear(nn.Linear):
    def __init__(self, *a, activation=None, **kw):
        super().__init__(*a, **kw)
        self.activation = activation

    def forward(self, x):
        y = super().forward(x)
        return F.relu(y) if self.activation == "relu" else y


def _same_layers(a, b, exact=True):
    """Two quantized nets have the same layers and integers (exact), or, when their float
    activations were computed by different kernels (not exact), the same weights and
    scales to float32 rounding, biases and multipliers within one unit of rounding."""
    assert [type(l) for l in a.layers] == [type(l) for l in b.layers]
    assert a.input_scale == b.input_scale
    for la_, lb in zip(a.layers, b.layers):
        for f in ("weight", "relu", "kernel", "stride", "padding"):
            np.testing.assert_array_equal(getattr(la_, f, None), getattr(lb, f, None))
        if exact:
            for f in ("bias", "multiplier", "shift", "out_scale"):
                np.testing.assert_array_equal(getattr(la_, f, None), getattr(lb, f, None))
        elif isinstance(la_, (qz.QConv2d, qz.QLinear)):
            assert np.abs(la_.bias.astype(np.int64) - lb.bias).max() <= 1
            if la_.out_scale is not None:
                assert lb.out_scale == pytest.approx(la_.out_scale, rel=1e-5)
                np.testing.assert_array_equal(la_.shift, lb.shift)
                np.testing.assert_allclose(lb.multiplier, la_.multiplier, rtol=1e-5)


def test_fused_activation_attribute_is_the_relu():
    seq = trained()
    fused = nn.Sequential(_ActConv(1, 32, 3, activation="relu"), nn.Identity(), nn.MaxPool2d(2),
                          _ActConv(32, 64, 3, activation="relu"), nn.Identity(), nn.MaxPool2d(2),
                          nn.Flatten(), _ActLinear(256, 64, activation="relu"), nn.Identity(),
                          _ActLinear(64, 10))
    fused.load_state_dict(seq.state_dict())
    _same_layers(quantized(), qz.quantize(fused, digits()[0][:300]))
    fused[0].activation = "gelu"
    with pytest.raises(ValueError, match="gelu"):
        qz.quantize(fused, digits()[0][:300])


def test_lepton_layers_quantize_like_torch_layers():
    """The seed CNN moved onto lepton_accel.torch's layers (ReLUs fused by convert)
    quantizes to the same integers as on PyTorch's."""
    lt = pytest.importorskip("lepton_accel.torch.nn")
    seq = trained()
    ours = seed_cnn()
    ours.load_state_dict(seq.state_dict())
    lt.convert(ours)
    assert isinstance(ours[0], lt.Conv2d) and ours[0].activation == "relu"
    _same_layers(quantized(), qz.quantize(ours, digits()[0][:300]), exact=False)


# ---- layers off the seed's path, and sizes -----------------------------------------------
def test_edge_net_cpu_is_reference_and_close_to_float():
    model = edge_net()
    net = qz.quantize(model, edge_images(200))
    kinds = [type(l).__name__ for l in net.layers]
    assert kinds == ["QConv2d", "QConv2d", "QMaxPool2d", "QReLU", "QFlatten", "QLinear",
                     "QLinear"]
    c2 = net.layers[1]
    assert not c2.relu and c2.groups == 2 and c2.dilation == (2, 2) and not c2.bias.any()
    x = edge_images(13, seed=3)
    xq = net.quantize_input(x)
    assert xq.min() < 0 < xq.max()
    for n in (0, 1, 5, 13):
        out, _ = net.run(xq[:n], backend="cpu")
        assert out.shape == (n, 5)
        np.testing.assert_array_equal(out, net.reference(xq[:n]))
    # the signed layer's output really is signed, and the scales chain correctly:
    # the dequantized logits follow the float model's (softmax is monotone, so compare
    # the pre-softmax logits)
    with torch.no_grad():
        t = torch.from_numpy(x)
        h = F.relu(model.fc1(torch.relu(model.pool(model.c2(F.relu(model.c1(t))))).flatten(1)))
        fl = model.fc2(h).double().numpy()
    deq = net.dequantize_logits(out)
    assert np.linalg.norm(deq - fl) / np.linalg.norm(fl) < 0.05


def test_convolution_last_net():
    """A net whose last layer is a convolution: its int32 sums, pooled, are the output."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).eval()
    net = qz.quantize(model, edge_images(50))
    assert net.output_shape(4) == (4, 3, 5, 4)
    assert net.macs_per_image() == 11 * 9 * 3 * 2 * 3 * 3
    xq = net.quantize_input(edge_images(4, seed=6))
    for n in (0, 1, 4):
        out, _ = net.run(xq[:n], backend="cpu")
        assert out.shape == (n, 3, 5, 4) and out.dtype == np.int32
        np.testing.assert_array_equal(out, net.reference(xq[:n]))
    assert out.any()


def test_percentile_calibration_clips_more():
    model, x = edge_net(), edge_images(200)
    a, b = qz.quantize(model, x), qz.quantize(model, x, percentile=99.0)
    assert b.input_scale < a.input_scale
    assert b.input_scale == pytest.approx(np.percentile(np.abs(x.astype(np.float64)), 99.0) / 127)
    xq = b.quantize_input(edge_images(4, seed=5))
    np.testing.assert_array_equal(b.run(xq, backend="cpu")[0], b.reference(xq))


# ---- bad input ---------------------------------------------------------------------------
def test_bad_arguments():
    model, x = edge_net(), edge_images(8)
    with pytest.raises(TypeError, match="model"):
        qz.quantize("model", x)
    with pytest.raises(TypeError, match="calibration"):
        qz.quantize(model, x.astype(np.int32))
    with pytest.raises(ValueError, match="calibration"):
        qz.quantize(model, x[0])
    with pytest.raises(ValueError, match="calibration"):
        qz.quantize(model, x[:0])
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="calibration"):
        qz.quantize(model, bad)
    for p in (0, 101, "max"):
        with pytest.raises(ValueError, match="percentile"):
            qz.quantize(model, x, percentile=p)
    with pytest.raises(ValueError, match="mult_bits"):
        qz.quantize(model, x, mult_bits=40)
    with pytest.raises(ValueError, match="batch_size"):
        qz.quantize(model, x, batch_size=0)
    net = qz.quantize(model, x)
    xq = net.quantize_input(x)
    with pytest.raises(TypeError, match="xq"):
        net.run(x, backend="cpu")
    with pytest.raises(ValueError, match="xq"):
        net.run(xq[:, :1], backend="cpu")
    with pytest.raises(ValueError, match="x"):
        net.quantize_input(x[:, :, :5])
    with pytest.raises(ValueError, match="backend"):
        net.run(xq, backend="tpu")


@pytest.mark.parametrize("model,what", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()), "BatchNorm2d"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sigmoid()), "Sigmoid"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect")), "padding_mode"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2, padding=1)), "padding"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2, ceil_mode=True)), "ceil_mode"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(2)), "Flatten"),
    (nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)), "no Conv2d or Linear"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Softmax(1), nn.ReLU()), "softmax"),
])
def test_unsupported_models(model, what):
    with pytest.raises(ValueError, match=what):
        qz.quantize(model, np.random.default_rng().random((4, 1, 8, 8), np.float32))


def test_branching_model_is_refused():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.c(x) + x

    with pytest.raises(ValueError, match="chain"):
        qz.quantize(Residual(), np.random.default_rng().random((4, 2, 6, 6), np.float32))
