"""Xilinx UltraScale+ resource estimates of the output stage alone (``hdl/requant.py``).

    python benchmarks/fpga_requant_yosys.py [--lanes 4 16 32]

For each lane count (a core's C) it writes the Verilog of ``Requant(lanes, 32)`` as a
top module, runs ``synth_xilinx -family xcup -flatten`` and records LUT, FF, DSP counts
in benchmarks/results/fpga_requant_yosys.json (I/O buffers of the stand-alone top are
not counted). Pre-placement estimates; no timing is claimed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fpga_yosys import load_results, run_yosys, save_results, yosys_version

RESULTS = Path(__file__).resolve().parent / "results" / "fpga_requant_yosys.json"
SCRIPT = "read_verilog {src}; synth_xilinx -family xcup -flatten -top lepton_requant; stat"


def verilog(lanes: int) -> str:
    from amaranth.back import verilog as back
    from amaranth.lib import data

    from lepton_accel.hdl.requant import Requant

    layout = data.StructLayout({"data": lanes * 32, "last": 1, "end": 1})
    return back.convert(Requant(lanes, 32, layout), name="lepton_requant", emit_src=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--yosys", default=shutil.which("yosys") or "/usr/bin/yosys")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    ver = yosys_version(args.yosys)
    results = load_results(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for lanes in args.lanes:
            r, t = run_yosys(verilog(lanes), SCRIPT, Path(tmp) / f"requant_{lanes}.v",
                             Path(tmp) / f"requant_{lanes}.log", args.yosys)
            r.update(lanes=lanes, seconds=round(time.time() - t, 1), yosys=ver,
                     date=_dt.date.today().isoformat(), machine=platform.machine(),
                     command=f"python benchmarks/fpga_requant_yosys.py --lanes {lanes}",
                     per_lane={k: round(r[k] / lanes, 1) for k in ("LUT", "FF", "DSP")})
            results[f"{lanes}_lanes"] = r
            print(f"{lanes} lanes: LUT {r['LUT']} FF {r['FF']} DSP {r['DSP']} "
                  f"({r['seconds']} s)", flush=True)
            save_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
