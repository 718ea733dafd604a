"""cocotb regression of the conv2d core on Verilator and Icarus, driven from pytest.

Default selection: small arrays of both dtypes on both simulators and a cycle-count
check against the documented model. ``-m slow`` adds bigger arrays, a long random
regression and the ResNet-50-like utilisation layers on a 16x16 array.
"""

import json

import pytest

import harness
from axi_checkers import STALL_POINTS
from harness import Conv2dConfig

pytestmark = pytest.mark.sim

# (simulator, rows, cols, dtype, x_lanes, depth)
FAST = [
    ("verilator", 4, 4, "int8", None, 256),
    ("verilator", 3, 5, "int16", None, 512),
    ("icarus", 4, 4, "int8", None, 256),
    ("icarus", 4, 3, "int16", 2, 512),
]
SLOW = [
    ("verilator", 16, 16, "int8", None, 256),
    ("verilator", 8, 8, "int16", 4, 512),
    ("verilator", 5, 7, "int8", 1, 1024),
    ("icarus", 8, 8, "int8", None, 256),
]
POINTS = ",".join(f"conv.{p}" for p in ("kernel", "stride", "pad", "dilation", "groups",
                                        "ocg", "pixels", "batch", "bias", "wraps",
                                        "backpressure", "mode", "weights")) + "," + \
    ",".join(STALL_POINTS)
#: the default run also reaches every output-stage mode (test_output_stage)
ALL_POINTS = POINTS + ",conv.out_mode"


def _need(sim):
    reason = harness.missing(sim)
    if reason:
        pytest.skip(reason)


def _ids(cfg):
    sim, r, c, dt, xl, d = cfg
    return f"{sim}-{r}x{c}-{dt}-xl{xl or 'auto'}-d{d}"


def _config(cfg):
    _, rows, cols, dtype, xl, depth = cfg
    return Conv2dConfig(rows, cols, dtype, x_lanes=xl or 0, depth=depth)


def _run(cfg, name, **kw):
    _need(cfg[0])
    return harness.run(cfg[0], _config(cfg), name=name, **kw)


@pytest.mark.parametrize("cfg", FAST, ids=_ids)
def test_conv(cfg):
    _, bdir = _run(cfg, "default", env={"LEPTON_COVERAGE_REQUIRE": ALL_POINTS})
    cov = json.loads((bdir / "coverage_default.json").read_text())
    assert all(cov[p] == 100 for p in ALL_POINTS.split(",")), cov


def test_conv_without_output_stage():
    """A build without the output stage (CONFIG.OUT_STAGE = 0): START with RELU or
    REQUANT refused (ERROR.NO_STAGE), plain jobs exact under the protocol checkers."""
    _need("verilator")
    harness.run("verilator", Conv2dConfig(4, 4, "int8", depth=256, out_stage=False),
                name="nostage", testcase=["test_registers", "test_output_stage",
                                          "test_random_jobs", "test_cycle_count"])


@pytest.mark.slow
@pytest.mark.parametrize("cfg", SLOW, ids=_ids)
def test_conv_more_configs(cfg):
    _run(cfg, "more", env={"LEPTON_COVERAGE_REQUIRE": ALL_POINTS})


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [FAST[0], FAST[1], FAST[3]], ids=_ids)
def test_conv_long_random(cfg):
    _run(cfg, "long",
         testcase=["test_random_jobs", "test_depthwise_mode", "test_weight_reuse",
                   "test_coverage_report"],
         env={"LEPTON_JOBS": "60", "LEPTON_COVERAGE_REQUIRE": POINTS})


def utilisation(layers, name, depth):
    """Run layers through test_cycle_count on a 16x16 int8 core; return its results."""
    _need("verilator")
    cfg = ("verilator", 16, 16, "int8", None, depth)
    out = harness.build_dir("verilator", _config(cfg)) / f"util_{name}.json"
    _run(cfg, name, testcase=["test_cycle_count"],
         env={"LEPTON_UTIL_LAYERS": json.dumps(layers), "LEPTON_UTIL_OUT": str(out)})
    return json.loads(out.read_text())


#: ResNet-50-like layers at a quarter of their spatial size (same channel counts)
SCALED = [
    {"name": "res2 3x3 (14x14 of 56x56)", "x": [1, 14, 14, 64], "w": [64, 64, 3, 3],
     "stride": 1, "padding": 1},
    {"name": "res3 3x3 (14x14 of 28x28)", "x": [1, 14, 14, 128], "w": [128, 128, 3, 3],
     "stride": 1, "padding": 1},
]


@pytest.mark.slow
def test_utilisation_resnet_scaled():
    for r in utilisation(SCALED, "uscaled", 2048):
        # the testbench already checked CYCLES against conv_regmap.expected_cycles
        assert r["utilisation"] >= 0.90, r
