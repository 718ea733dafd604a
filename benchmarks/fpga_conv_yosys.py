"""Xilinx UltraScale+ resource estimate of the conv2d core with Yosys.

    python benchmarks/fpga_conv_yosys.py [--sizes 16] [--depth 1024]

Writes the Verilog (``lepton_conv2d``), runs
``yosys -p "synth_xilinx -family xcup -flatten -top lepton_conv2d; stat"`` (the same flow
as benchmarks/fpga_yosys.py for the matmul core) and records LUT, FF, DSP, BRAM/URAM
counts in benchmarks/results/fpga_conv_yosys.json. Pre-placement estimates; no timing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fpga_yosys import load_results, run_yosys, save_results, yosys_version  # noqa: E402

from lepton_accel.hdl import conv_regmap as cr  # noqa: E402
from lepton_accel.hdl.conv_top import generate_verilog  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fpga_conv_yosys.json"
SCRIPT = "read_verilog {src}; synth_xilinx -family xcup -flatten -top lepton_conv2d; stat"


def synth(side: int, dtype: str, depth: int, yosys: str, workdir: Path) -> dict:
    res, t = run_yosys(generate_verilog(side, side, dtype, None, depth, name="lepton_conv2d"),
                       SCRIPT, workdir / f"conv_{side}_{dtype}_d{depth}.v",
                       workdir / f"yosys_conv_{side}_{dtype}_d{depth}.log", yosys)
    xl = cr.default_x_lanes(side)
    res.update(rows=side, cols=side, dtype=dtype, x_lanes=xl, depth=depth,
               image_capacity_elements=xl * depth,
               image_memory_bytes=side * xl * depth * cr.DTYPES[dtype] // 8,
               macs=side * side, seconds=round(time.time() - t, 1))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16])
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--depth", type=int, default=1024)
    ap.add_argument("--yosys", default=shutil.which("yosys") or "/usr/bin/yosys")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    ver = yosys_version(args.yosys)
    results = load_results(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sizes:
            r = synth(side, args.dtype, args.depth, args.yosys, Path(tmp))
            r["yosys"] = ver
            r["command"] = f"yosys -p \"{SCRIPT.format(src='lepton_conv2d.v')}\""
            results[f"{side}x{side}_{args.dtype}_d{args.depth}"] = r
            print(f"{side}x{side} {args.dtype} depth {args.depth}: LUT {r['LUT']} FF {r['FF']} "
                  f"DSP {r['DSP']} BRAM {r['BRAM']} URAM {r['URAM']} LUTRAM {r['LUTRAM']} "
                  f"({r['seconds']} s)", flush=True)
            save_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
