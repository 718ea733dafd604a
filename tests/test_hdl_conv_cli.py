"""``hdl generate conv2d`` writes Verilog and a JSON description that match conv_regmap."""

import json
import re

import pytest

pytest.importorskip("amaranth")

from lepton_accel.hdl import conv_regmap  # noqa: E402
from test_hdl_support import need_yosys, parse_cli  # noqa: E402


def test_generate_conv2d(tmp_path):
    need_yosys()
    args = parse_cli(["hdl", "generate", "conv2d", "--rows", "3", "--cols", "5",
                      "--dtype", "int16", "--depth", "64", "-o", str(tmp_path)])
    assert args.func(args) == 0
    (v,) = tmp_path.glob("*.v")
    desc = json.loads(v.with_suffix(".json").read_text())
    assert desc["core"] == "conv2d" and desc["config"]["x_lanes"] == 4
    assert desc["config"]["capacity"] == 256
    text = v.read_text()
    assert re.search(rf"module {desc['top']}\b", text)
    widths = {s["name"]: s["tdata_width"] for s in desc["streams"]}
    assert widths == {"x": 64, "b": 80, "bias": 160, "q": 320, "c": 160}
    for s in desc["streams"]:
        assert re.search(rf"\[{s['tdata_width'] - 1}:0\] {s['prefix']}__tdata", text), s
    names = [r["name"] for r in desc["registers"]]
    assert names == [r.name for r in conv_regmap.REGISTERS]


def test_generate_conv2d_rejects_bad_config(tmp_path, capsys):
    args = parse_cli(["hdl", "generate", "conv2d", "--x-lanes", "12",
                      "-o", str(tmp_path)])
    assert args.func(args) == 2
    assert "x_lanes" in capsys.readouterr().err


def test_generate_conv2d_with_ecp5_multipliers(tmp_path):
    need_yosys()
    args = parse_cli(["hdl", "generate", "conv2d", "--rows", "4", "--cols", "4",
                      "--depth", "64", "--dsp", "ecp5", "-o", str(tmp_path)])
    assert args.func(args) == 0
    (v,) = tmp_path.glob("*_ecp5.v")
    desc = json.loads(v.with_suffix(".json").read_text())
    assert desc["dsp"] == "ecp5"
    # 16 cells unpaired (one multiplier each) + 4 per output lane in the output stage
    assert len(re.findall(r"^\s*MULT18X18D\b", v.read_text(), re.M)) == 16 + 4 * 4
    # no pairing on ECP5: one column per channel in the depthwise mode
    assert desc["config"]["depthwise"]["columns_per_channel"] == 1
    assert desc["config"] == conv_regmap.describe(4, 4, "int8", None, 64,
                                                  pair_macs=False)["config"]
