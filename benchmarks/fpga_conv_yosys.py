"""Xilinx UltraScale+ resource estimate of the conv2d core with Yosys.

    python benchmarks/fpga_conv_yosys.py [--sizes 16] [--depth 1024]

Writes the Verilog (``lepton_conv2d``), runs
``yosys -p "synth_xilinx -family xcup -flatten -top lepton_conv2d; stat"`` (the same flow
as benchmarks/fpga_yosys.py for the matmul core) and records LUT, FF, DSP, BRAM/URAM
counts in benchmarks/results/fpga_conv_yosys.json. Pre-placement estimates; no timing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fpga_yosys import parse_stat  # noqa: E402

from lepton_accel.hdl import conv_regmap as cr  # noqa: E402
from lepton_accel.hdl.conv import generate_verilog  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fpga_conv_yosys.json"
SCRIPT = "read_verilog {src}; synth_xilinx -family xcup -flatten -top lepton_conv2d; stat"


def synth(side: int, dtype: str, depth: int, yosys: str, workdir: Path) -> dict:
    src = workdir / f"conv_{side}_{dtype}_d{depth}.v"
    src.write_text(generate_verilog(side, side, dtype, None, depth, name="lepton_conv2d"))
    logf = workdir / f"yosys_conv_{side}_{dtype}_d{depth}.log"
    t = time.time()
    proc = subprocess.run([yosys, "-q", "-l", str(logf), "-p", SCRIPT.format(src=src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"yosys failed:\n{proc.stderr[-2000:]}")
    res = parse_stat(logf.read_text())  # raises when the log has no statistics
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
    ver = subprocess.run([args.yosys, "-V"], capture_output=True, text=True).stdout.strip()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sizes:
            r = synth(side, args.dtype, args.depth, args.yosys, Path(tmp))
            r["yosys"] = ver
            r["command"] = f"yosys -p \"{SCRIPT.format(src='lepton_conv2d.v')}\""
            results[f"{side}x{side}_{args.dtype}_d{args.depth}"] = r
            print(f"{side}x{side} {args.dtype} depth {args.depth}: LUT {r['LUT']} FF {r['FF']} "
                  f"DSP {r['DSP']} BRAM {r['BRAM']} URAM {r['URAM']} LUTRAM {r['LUTRAM']} "
                  f"({r['seconds']} s)", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
