"""The quantized networks of test_quantize.py with every convolution and dense layer on
the fpga backend (the Verilator models of the 16x16 int8 conv2d and matmul cores),
bit-exact against the int8 NumPy reference. The default selection runs a handful of
held-out images; ``-m slow`` runs the whole held-out split.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.sim

pytest.importorskip("torch")
import lepton_accel as la  # noqa: E402

_fpga = next(b for b in la.backends() if b["name"] == "fpga")
if not _fpga["available"]:
    pytest.skip(f"fpga backend unavailable: {_fpga['reason']}", allow_module_level=True)

from lepton_accel import fpga  # noqa: E402
from lepton_accel.torch import quantize as qz  # noqa: E402
from test_quantize import (digits, edge_images, edge_net, float_logits, quantized,  # noqa: E402
                           trained)


@pytest.fixture(autouse=True)
def default_core():
    """The default 16x16 cores (whatever another module configured), restored after."""
    with fpga.configured(16, 16, conv_depth=fpga.DEFAULT_CONV_DEPTH, enabled=True):
        yield


def run_checked(net, xq):
    """net on the fpga backend: == the reference, every kernel layer on a core."""
    out, stats = net.run(xq, backend="fpga")
    np.testing.assert_array_equal(out, net.reference(xq))
    kern = [l for l in net.layers if isinstance(l, (qz.QConv2d, qz.QLinear))]
    assert [name for name, _ in stats.layers] == [l.name for l in kern]
    for layer, (_, s) in zip(kern, stats.layers):
        assert s.backend == "fpga" and s.simulated and s.cycles > 0
        # convolutions ran on the conv2d core itself, not the matmul-core fallback
        assert s.extra["whole_op"] is isinstance(layer, qz.QConv2d), s.extra
    assert stats.cycles == sum(s.cycles for _, s in stats.layers)
    # every requantized layer did it in the cores' output stage: int8 between layers
    assert stats.requantized == [l.name for l in kern if l.out_scale is not None]
    return out, stats


def test_seed_cnn_on_fpga_is_bit_exact():
    net = quantized()
    _, _, xte, yte = digits()
    xq = net.quantize_input(xte[:4])
    out, stats = run_checked(net, xq)
    # one image alone: the same logits, in fewer cycles than four
    one, s1 = run_checked(net, xq[:1])
    np.testing.assert_array_equal(one, out[:1])
    assert s1.cycles < stats.cycles
    np.testing.assert_array_equal(net.dequantize_logits(out).argmax(1),
                                  net.predict(xte[:4], backend="cpu"))


def test_edge_net_on_fpga_is_bit_exact():
    net = qz.quantize(edge_net(), edge_images(200))
    run_checked(net, net.quantize_input(edge_images(3, seed=7)))


@pytest.mark.slow
def test_seed_cnn_whole_split_on_fpga():
    model, net = trained(), quantized()
    _, _, xte, yte = digits()
    out, stats = run_checked(net, net.quantize_input(xte))
    acc_f = (float_logits(model, xte).argmax(1) == yte).mean()
    acc_q = (net.dequantize_logits(out).argmax(1) == yte).mean()
    assert abs(acc_q - acc_f) <= 0.01, (acc_f, acc_q)
