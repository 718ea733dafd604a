"""MAC utilisation of the conv2d core on ResNet-50-like and depthwise layers (16x16).

    python benchmarks/fpga_conv_util.py [--full]

Runs the layers through the cocotb testbench on Verilator (``test_cycle_count``: full-rate
streams, CYCLES checked against ``conv_regmap.expected_cycles``) and writes
benchmarks/results/fpga_conv_util.json with simulated cycles, load cycles and
utilisation = useful MACs / (R * C * cycles). By default the layers run at a quarter of
their spatial size with the real channel counts (14x14 instead of 56x56 and 28x28);
``--full`` also simulates the full-size layers (a larger image memory, minutes). The
model's cycle count of every full layer is recorded beside them, marked as a model.

The 3x3 depthwise 32-channel layer (MobileNet-style, 56x56, stride 1 and 2; simulated at
28x28) runs in the core's depthwise mode on the int8 array (adjacent columns share a
multiplier: 8 channels x 2 columns per tile) and on the int16 array (16 channels per
tile); the model also gives its cycles on the normal path (one column per channel).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from math import ceil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sim"))

from lepton_accel.hdl import conv_regmap as cr  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "fpga_conv_util.json"
R = C = 16
CLOCK_HZ = 250e6  # F1/F2 kernel clock (assumed, no place-and-route)

FULL = [
    {"name": "resnet50 res2 3x3: 56x56x64 -> 64", "x": [1, 56, 56, 64], "w": [64, 64, 3, 3],
     "stride": 1, "padding": 1},
    {"name": "resnet50 res3 3x3: 28x28x128 -> 128", "x": [1, 28, 28, 128],
     "w": [128, 128, 3, 3], "stride": 1, "padding": 1},
]
SCALED = [dict(L, name=L["name"] + " (simulated at 14x14)", x=[1, 14, 14, L["x"][3]])
          for L in FULL]
DW_FULL = [
    {"name": f"depthwise 3x3 stride {s}: 56x56x32", "x": [1, 56, 56, 32], "w": [32, 1, 3, 3],
     "stride": s, "padding": 1, "groups": 32, "depthwise": True} for s in (1, 2)]
DW_SCALED = [dict(L, name=L["name"] + " (simulated at 28x28)", x=[1, 28, 28, 32])
             for L in DW_FULL]


def _job(L):
    return cr.ConvJob.make(L["x"], L["w"], L.get("stride", 1), L.get("padding", 0),
                           L.get("dilation", 1), L.get("groups", 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also simulate the full layers")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    import harness

    reason = harness.missing("verilator")
    if reason:
        print(f"skipped: {reason}", file=sys.stderr)
        return 1
    xl = cr.default_x_lanes(R)
    runs = ([("scaled", "int8", SCALED + DW_SCALED), ("scaled", "int16", DW_SCALED)]
            + ([("full", "int8", FULL + DW_FULL)] if args.full else []))
    report = {"array": f"{R}x{C}", "dtypes": ["int8", "int16"], "x_lanes": xl,
              "clock_hz_assumed": CLOCK_HZ, "simulator": "verilator (cocotb testbench)",
              "simulated": [], "model_full_layers": []}
    for kind, dtype, layers in runs:
        need = max(L["x"][1] * L["x"][2] * L["x"][3] for L in layers)
        depth = 1 << (ceil(need / xl) - 1).bit_length()
        cfg = harness.Conv2dConfig(R, C, dtype, depth=depth)
        out = harness.build_dir("verilator", cfg) / f"util_{kind}.json"
        t = time.time()
        harness.run("verilator", cfg, name=f"util_{kind}",
                         testcase=["test_cycle_count"],
                         env={"LEPTON_UTIL_LAYERS": json.dumps(layers),
                              "LEPTON_UTIL_OUT": str(out)})
        wall = time.time() - t
        for r in json.loads(out.read_text()):
            r.update(kind=kind, name=r["layer"]["name"], memory_depth=depth,
                     memory_capacity=xl * depth, wall_s_all_layers_incl_build=round(wall, 1),
                     projected_us_at_250mhz=r["cycles"] / CLOCK_HZ * 1e6)
            report["simulated"].append(r)
            print(f"{r['name']} ({dtype}, {r['mode']}): {r['cycles']} cycles "
                  f"(load {r['load_cycles']}), utilisation {r['utilisation']:.4f}", flush=True)
    for L in FULL + DW_FULL:
        job = _job(L)
        for dtype in ("int8", "int16") if L.get("depthwise") else ("int8",):
            modes = [("normal", job)]
            if L.get("depthwise"):
                modes.append(("depthwise", cr.depthwise_job(
                    job, *cr.dw_config(C, xl, dtype == "int8"))))
            for mode, j in modes:
                cyc = cr.expected_cycles(j, R, C, xl)
                load = ceil(j.h * j.w * j.c / xl)
                macs = cr.useful_macs(job)
                report["model_full_layers"].append({
                    "name": L["name"], "layer": L, "dtype": dtype, "mode": mode,
                    "model_cycles": cyc, "load_cycles": load, "useful_macs": macs,
                    "utilisation": macs / (R * C * cyc),
                    "utilisation_without_load": macs / (R * C * (cyc - load)),
                    "projected_us_at_250mhz": cyc / CLOCK_HZ * 1e6,
                    "image_memory_elements": j.h * j.w * j.c})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
