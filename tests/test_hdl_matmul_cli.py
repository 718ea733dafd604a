"""``hdl generate matmul`` writes Verilog and a JSON description that match matmul_regmap."""

import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("amaranth")

from lepton_accel.hdl import matmul_regmap as regmap  # noqa: E402
from test_hdl_support import need_yosys, parse_cli  # noqa: E402


def test_add_commands_plugs_into_a_parent_parser(tmp_path):
    need_yosys()
    args = parse_cli(["hdl", "generate", "matmul", "--rows", "4", "--cols", "6",
                      "--dtype", "int16", "-o", str(tmp_path)])
    assert args.func(args) == 0
    desc = json.loads((tmp_path / "lepton_matmul_r4c6_int16.json").read_text())
    expect = regmap.describe(4, 6, "int16")
    for key in ("config", "registers", "streams", "id", "version"):
        assert desc[key] == expect[key]
    v = (tmp_path / desc["verilog"]).read_text()
    assert re.search(rf"module {desc['top']}\s*\(", v)
    for s in desc["streams"]:
        assert re.search(rf"\[{s['tdata_width'] - 1}:0\] {s['prefix']}__tdata;", v), s["name"]
        for sig in ("tvalid", "tready", "tlast"):
            assert f"{s['prefix']}__{sig}" in v
    for sig in ("awaddr", "wdata", "wstrb", "bresp", "araddr", "rdata", "rresp"):
        assert f"s_axil__{sig}" in v


def test_generate_without_the_output_stage(tmp_path):
    need_yosys()
    args = parse_cli(["hdl", "generate", "matmul", "--rows", "3", "--cols", "5",
                      "--no-out-stage", "-o", str(tmp_path)])
    assert args.func(args) == 0
    desc = json.loads((tmp_path / "lepton_matmul_r3c5_int8_nostage.json").read_text())
    assert desc["config"] == regmap.describe(3, 5, "int8", out_stage=False)["config"]
    assert desc["config"]["out_stage"] is False
    word = desc["config"]["config_word"]
    assert regmap.field_value("CONFIG", "OUT_STAGE", word) == 0
    assert word | regmap.field_mask("CONFIG", "OUT_STAGE") == regmap.config_word(3, 5, "int8")
    v = (tmp_path / desc["verilog"]).read_text()
    full_args = parse_cli(["hdl", "generate", "matmul", "--rows", "3", "--cols", "5",
                           "-o", str(tmp_path / "full")])
    assert full_args.func(full_args) == 0
    full = (tmp_path / "full" / "lepton_matmul_r3c5_int8.v").read_text()
    # the stage's registers and its four partial products per lane are gone
    assert "rq_mid" in full and "rq_mid" not in v
    assert v.count(" * ") < full.count(" * ")


def test_module_entry_point_and_bad_config(tmp_path):
    need_yosys()
    run = [sys.executable, "-m", "lepton_accel.hdl.cli", "hdl", "generate", "matmul"]
    ok = subprocess.run(run + ["--rows", "2", "--cols", "3", "-o", str(tmp_path)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "lepton_matmul_r2c3_int8.v").exists()
    bad = subprocess.run(run + ["--rows", "33", "-o", str(tmp_path)], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "rows" in bad.stderr
