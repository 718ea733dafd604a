"""CPU backend against the library a CPU user would call instead.

matmul vs numpy.matmul (the same BLAS: the ratio is our dispatch + epilogue cost);
conv2d (ResNet-50 layers, MobileNetV2 depthwise layers) vs PyTorch's CPU conv2d (oneDNN)
when PyTorch is installed; dispatch overhead of
lepton_accel.matmul on tiny inputs vs a bare numpy.matmul.

    pytest benchmarks/bench_cpu.py --benchmark-only --benchmark-group-by=param
    lepton-accel bench
"""
import numpy as np
import pytest

import lepton_accel as la

GEMM_SIZES = [256, 512, 1024, 2048]
# ResNet-50 layers (batch 1, NHWC): (H, W, C, OC, K, stride)
RESNET_LAYERS = {
    "conv1_7x7s2": (224, 224, 3, 64, 7, 2),
    "res2_3x3": (56, 56, 64, 64, 3, 1),
    "res3_3x3": (28, 28, 128, 128, 3, 1),
    "res4_1x1": (14, 14, 1024, 256, 1, 1),
    "res5_3x3": (7, 7, 512, 512, 3, 1),
}


@pytest.mark.parametrize("n", GEMM_SIZES)
@pytest.mark.parametrize("impl", ["lepton", "numpy"])
def test_matmul_f32(benchmark, rng, n, impl):
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    fn = (lambda: la.matmul(a, b, backend="cpu")) if impl == "lepton" else (lambda: np.matmul(a, b))
    benchmark.group = f"matmul f32 {n}^3"
    benchmark.extra_info["gflops"] = 2 * n**3 / 1e9
    cost_terms(benchmark, la.matmul_spec(a.shape, "float32", b.shape, "float32"))
    benchmark(fn)


def cost_terms(benchmark, spec) -> None:
    """FLOPs and bytes moved of the benchmarked op, from its spec, for the roofline plot."""
    benchmark.extra_info["flops"] = spec.flops
    benchmark.extra_info["bytes"] = spec.bytes_in + spec.bytes_out


def bench_conv_relu(benchmark, impl, x, wt, bias, stride, pad, groups=1):
    """relu(conv2d(x, w) + bias), NHWC x: ours fused, or PyTorch's conv then ReLU."""
    cost_terms(benchmark, la.conv2d_spec(x.shape, "float32", wt.shape, "float32",
                                         bias_shape=bias.shape, bias_dtype="float32",
                                         stride=stride, padding=pad, groups=groups,
                                         layout="NHWC", activation="relu"))
    if impl == "lepton":
        benchmark(lambda: la.conv2d(x, wt, bias=bias, stride=stride, padding=pad, groups=groups,
                                    layout="NHWC", activation="relu", backend="cpu"))
        return
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    tw, tb = torch.from_numpy(wt), torch.from_numpy(bias)
    with torch.no_grad():
        benchmark(lambda: F.relu(F.conv2d(tx, tw, tb, stride=stride, padding=pad, groups=groups)))


@pytest.mark.parametrize("layer", list(RESNET_LAYERS))
@pytest.mark.parametrize("impl", ["lepton", "torch"])
def test_conv2d_resnet50(benchmark, rng, layer, impl):
    h, w, c, oc, k, s = RESNET_LAYERS[layer]
    x = rng.standard_normal((1, h, w, c), dtype=np.float32)
    wt = rng.standard_normal((oc, c, k, k), dtype=np.float32)
    bias = rng.standard_normal(oc, dtype=np.float32)
    benchmark.group = f"conv2d f32 {layer}"
    bench_conv_relu(benchmark, impl, x, wt, bias, s, k // 2)


# MobileNetV2 depthwise 3x3 layers (batch 1, NHWC): (H=W, C, stride)
MOBILENET_DW = {
    "dw_32_112": (112, 32, 1),
    "dw_144_56": (56, 144, 1),
    "dw_144_56s2": (56, 144, 2),
    "dw_384_14": (14, 384, 1),
    "dw_960_7": (7, 960, 1),
}


@pytest.mark.parametrize("layer", list(MOBILENET_DW))
@pytest.mark.parametrize("impl", ["lepton", "torch"])
def test_conv2d_depthwise(benchmark, rng, layer, impl):
    hw, c, s = MOBILENET_DW[layer]
    x = rng.standard_normal((1, hw, hw, c), dtype=np.float32)
    wt = rng.standard_normal((c, 1, 3, 3), dtype=np.float32)
    bias = rng.standard_normal(c, dtype=np.float32)
    benchmark.group = f"conv2d f32 depthwise {layer}"
    bench_conv_relu(benchmark, impl, x, wt, bias, s, 1, groups=c)


@pytest.mark.parametrize("impl", ["lepton", "numpy"])
def test_dispatch_overhead_tiny(benchmark, impl):
    a = np.ones((4, 4), np.float32)
    benchmark.group = "dispatch overhead 4x4"
    fn = (lambda: la.matmul(a, a)) if impl == "lepton" else (lambda: np.matmul(a, a))
    benchmark(fn)
