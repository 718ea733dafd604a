"""Xilinx UltraScale+ resource estimates of the matmul core with Yosys.

    python benchmarks/fpga_yosys.py [--sizes 8 16 32] [--dtype int8]

For each size it writes the Verilog (``lepton_matmul``), runs
``yosys -p "synth_xilinx -family xcup -flatten -top lepton_matmul; stat"`` and records
LUT, FF, DSP, BRAM/URAM and SRL counts in benchmarks/results/fpga_yosys.json.
Counts are pre-placement estimates; no timing is claimed (UltraScale+ timing needs the
vendor tools). int8 cores are built with their default ``pair_macs`` (two MACs on one
DSP48E2, recorded as ``pair_macs``), so the target there is 0.5 DSP per MAC.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lepton_accel.hdl.matmul_top import generate_verilog

RESULTS = Path(__file__).resolve().parent / "results" / "fpga_yosys.json"
SCRIPT = "read_verilog {src}; synth_xilinx -family xcup -flatten -top lepton_matmul; stat"


def parse_stat(log: str) -> dict:
    """Cell counts from the last 'Number of cells' block of a Yosys log."""
    idx = log.rfind("Number of cells:")
    if idx < 0:
        raise RuntimeError("yosys log has no statistics (did synthesis finish?)")
    cells = {}
    for line in log[idx:].splitlines()[1:]:
        m = re.match(r"\s+(\S+)\s+(\d+)\s*$", line)
        if not m:
            if cells:
                break
            continue
        cells[m.group(1)] = int(m.group(2))
    lut = sum(v for k, v in cells.items() if re.fullmatch(r"LUT[1-6]", k))
    ff = sum(v for k, v in cells.items() if re.fullmatch(r"FD[CPRSE]E?", k))
    srl = sum(v for k, v in cells.items() if k.startswith("SRL"))
    dsp = sum(v for k, v in cells.items() if k.startswith("DSP"))
    bram = sum(v for k, v in cells.items() if k.startswith("RAMB"))
    uram = sum(v for k, v in cells.items() if k.startswith("URAM"))
    lutram = sum(v for k, v in cells.items() if k.startswith("RAM") and not k.startswith("RAMB"))
    carry = sum(v for k, v in cells.items() if k.startswith("CARRY"))
    return {"LUT": lut, "FF": ff, "SRL": srl, "DSP": dsp, "BRAM": bram, "URAM": uram,
            "LUTRAM": lutram, "CARRY": carry, "cells": cells}


def run_yosys(verilog: str, script: str, src: Path, logf: Path, yosys: str):
    """Write ``verilog`` to src, run ``script`` (with ``{src}``) on it logging to logf;
    return (cell counts, start time). Raises when Yosys fails or prints no statistics."""
    src.write_text(verilog)
    t = time.time()
    proc = subprocess.run([yosys, "-q", "-l", str(logf), "-p", script.format(src=src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"yosys failed:\n{proc.stderr[-2000:]}")
    return parse_stat(logf.read_text()), t


def yosys_version(yosys: str) -> str:
    return subprocess.run([yosys, "-V"], capture_output=True, text=True).stdout.strip()


def load_results(out: Path) -> dict:
    return json.loads(out.read_text()) if out.exists() else {}


def save_results(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def synth(rows: int, cols: int, dtype: str, yosys: str, workdir: Path) -> dict:
    res, t = run_yosys(generate_verilog(rows, cols, dtype, name="lepton_matmul"), SCRIPT,
                       workdir / f"matmul_{rows}x{cols}_{dtype}.v",
                       workdir / f"yosys_{rows}x{cols}_{dtype}.log", yosys)
    # int8 cores pair two MACs on one multiplier by default (MatmulCore's pair_macs)
    res.update(rows=rows, cols=cols, dtype=dtype, macs=rows * cols,
               pair_macs=dtype == "int8",
               dsp_per_mac=res["DSP"] / (rows * cols), seconds=round(time.time() - t, 1))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--yosys", default=shutil.which("yosys") or "/usr/bin/yosys")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    ver = yosys_version(args.yosys)
    results = load_results(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sizes:
            r = synth(side, side, args.dtype, args.yosys, Path(tmp))
            r["yosys"] = ver
            r["command"] = f"yosys -p \"{SCRIPT.format(src='lepton_matmul.v')}\""
            results[f"{side}x{side}_{args.dtype}"] = r
            print(f"{side}x{side} {args.dtype}: LUT {r['LUT']} FF {r['FF']} SRL {r['SRL']} "
                  f"DSP {r['DSP']} BRAM {r['BRAM']} ({r['dsp_per_mac']:.2f} DSP/MAC, "
                  f"{r['seconds']} s)", flush=True)
            save_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
