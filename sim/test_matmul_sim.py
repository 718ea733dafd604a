"""cocotb regression of the matmul core on Verilator and Icarus, driven from pytest.

Default selection: a few small configurations of both dtypes on both simulators, plus
the 64^3 utilisation run on a 16x16 array. ``-m slow`` adds bigger arrays, a long
random regression and the 256^3 / 512^3 utilisation runs.
"""

import json

import pytest

import harness
from axi_checkers import STALL_POINTS
from harness import MatmulConfig

pytestmark = pytest.mark.sim

FAST = [
    ("verilator", 4, 4, "int8"),
    ("verilator", 8, 4, "int16"),
    ("icarus", 4, 4, "int8"),
    ("icarus", 3, 5, "int16"),
]
SLOW = [
    ("verilator", 16, 16, "int16"),
    ("verilator", 32, 32, "int8"),
    ("verilator", 7, 5, "int8"),
    ("icarus", 8, 8, "int8"),
    ("icarus", 8, 8, "int16"),
]
JOB_POINTS = "matmul.m,matmul.n,matmul.k,matmul.bias,matmul.extremes,matmul.wraps," \
             "matmul.backpressure,matmul.k_x_bias"
ALL_POINTS = JOB_POINTS + ",matmul.out_mode,matmul.saturates," + ",".join(STALL_POINTS)
#: what test_random_jobs alone reaches (the output stage has its own test)
LONG_POINTS = JOB_POINTS + "," + ",".join(STALL_POINTS)


def _need(sim):
    reason = harness.missing(sim)
    if reason:
        pytest.skip(reason)


def _coverage(bdir, name):
    return json.loads((bdir / f"coverage_{name}.json").read_text())


def _ids(cfg):
    return "{}-{}x{}-{}".format(*cfg)


@pytest.mark.parametrize(
    "cfg", FAST + [pytest.param(cfg, marks=pytest.mark.slow) for cfg in SLOW], ids=_ids)
def test_matmul(cfg):
    sim, rows, cols, dtype = cfg
    _need(sim)
    _, bdir = harness.run(sim, MatmulConfig(rows, cols, dtype), name="default",
                          env={"LEPTON_COVERAGE_REQUIRE": ALL_POINTS})
    cov = _coverage(bdir, "default")
    assert all(v == 100 for v in cov.values()), cov


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [("verilator", 4, 4, "int8"), ("verilator", 8, 8, "int16"),
                                 ("icarus", 4, 4, "int16")], ids=_ids)
def test_matmul_long_random(cfg):
    sim, rows, cols, dtype = cfg
    _need(sim)
    _, bdir = harness.run(sim, MatmulConfig(rows, cols, dtype), name="long",
                          testcase=["test_random_jobs", "test_coverage_report"],
                          env={"LEPTON_JOBS": "60", "LEPTON_BIG": "1",
                               "LEPTON_COVERAGE_REQUIRE": LONG_POINTS})


def test_matmul_without_output_stage():
    """A build without the output stage (CONFIG.OUT_STAGE = 0): START with RELU or
    REQUANT refused (ERROR.NO_STAGE), plain jobs exact under the protocol checkers,
    every stall corner reached."""
    _need("verilator")
    cfg = MatmulConfig(4, 4, "int8", out_stage=False)
    harness.run("verilator", cfg, name="nostage",
                testcase=["test_registers", "test_output_stage", "test_random_jobs",
                          "test_edges", "test_stall_corners", "test_coverage_report"],
                env={"LEPTON_COVERAGE_REQUIRE": LONG_POINTS})


def _utilisation(sizes, name):
    _need("verilator")
    cfg = MatmulConfig(16, 16, "int8")
    out = harness.build_dir("verilator", cfg) / f"util_{name}.json"
    harness.run("verilator", cfg, name=name,
                testcase=["test_cycle_count"],
                env={"LEPTON_UTIL_SIZES": json.dumps(sizes), "LEPTON_UTIL_OUT": str(out)})
    return json.loads(out.read_text())


def test_utilisation_64():
    (r,) = _utilisation([[64, 64, 64]], "u64")
    # the testbench already checked CYCLES against matmul_regmap.expected_cycles
    assert r["utilisation"] >= 0.95, r


@pytest.mark.slow
def test_utilisation_large():
    res = _utilisation([[256, 256, 256], [512, 512, 512]], "ularge")
    for r in res:
        assert r["utilisation"] >= 0.99, r
