import json
import math

import pytest

from lepton_accel.perf import DEVICES, PerfModel
from lepton_accel.ops import conv2d_spec, matmul_spec


def test_compute_bound_gemm_follows_peak():
    model = PerfModel()
    spec = matmul_spec((8192, 8192), "bfloat16", (8192, 8192), "bfloat16")
    est = model.estimate(spec, "H100-SXM", data_on_host=False)
    h100 = DEVICES["H100-SXM"]
    assert est.compute_s == pytest.approx(2 * 8192**3 / h100.rate("bfloat16"))
    assert est.compute_s > est.memory_s and est.transfer_s == 0


def test_host_data_pays_the_link():
    model = PerfModel()
    spec = matmul_spec((4096, 4096), "float32", (4096, 4096), "float32")
    on_host = model.estimate(spec, "A10G", data_on_host=True)
    on_dev = model.estimate(spec, "A10G", data_on_host=False)
    assert on_host.transfer_s == pytest.approx(3 * 4096 * 4096 * 4 / DEVICES["A10G"].link_bw)
    assert on_host.total_s > on_dev.total_s


def test_fpga_runs_integers_only_and_uses_measured_cycles():
    model = PerfModel()
    f = matmul_spec((512, 512), "float32", (512, 512), "float32")
    assert math.isinf(model.estimate(f, "VU47P").total_s)
    spec = matmul_spec((512, 512), "int8", (512, 512), "int8")
    modelled = model.estimate(spec, "VU47P", data_on_host=False).compute_s
    model.record_fpga_cycles(32, 32, "int8", (512, 512, 512), 140_000)
    measured = model.estimate(spec, "VU47P", data_on_host=False).compute_s
    assert measured == pytest.approx(140_000 / 250e6)
    assert measured != modelled


def test_conv_is_costed_as_implicit_gemm():
    spec = conv2d_spec((32, 56, 56, 64), "bfloat16", (64, 64, 3, 3), "bfloat16", padding=1,
                       layout="NHWC")
    assert spec.gemm_shape == (1, 32 * 56 * 56, 64, 64 * 9)
    assert spec.flops == 2 * 32 * 56 * 56 * 64 * 64 * 9


def test_table_overrides_efficiency(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"efficiency": {"L4": {"float16": 0.5}}}))
    model = PerfModel()
    spec = matmul_spec((4096, 4096), "float16", (4096, 4096), "float16")
    before = model.estimate(spec, "L4", data_on_host=False).compute_s
    model.load_table(str(path))
    after = model.estimate(spec, "L4", data_on_host=False).compute_s
    assert after == pytest.approx(before * DEVICES["L4"].efficiency["float16"] / 0.5)
    with pytest.raises(ValueError, match="fraction"):
        model.set_efficiency("L4", "float16", 1.5)


def test_tf32_permission_uses_tensor_core_rate():
    model = PerfModel()
    exact = matmul_spec((4096, 4096), "float32", (4096, 4096), "float32")
    tf32 = matmul_spec((4096, 4096), "float32", (4096, 4096), "float32", allow_tf32=True)
    h100 = DEVICES["H100-SXM"]
    assert model.estimate(exact, h100, data_on_host=False).compute_s == pytest.approx(
        exact.flops / h100.rate("float32"))
    assert model.estimate(tf32, h100, data_on_host=False).compute_s == pytest.approx(
        tf32.flops / h100.rate("tf32"))
    # a CPU has no TF32 units: the permission changes nothing there
    cpu = DEVICES["host-cpu"]
    assert model.estimate(tf32, cpu).total_s == model.estimate(exact, cpu).total_s
