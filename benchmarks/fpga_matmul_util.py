"""MAC utilisation of the matmul core, measured with the core's cycle counter.

    python benchmarks/fpga_matmul_util.py [--rows 16 --cols 16] [--sizes 64 256 512]

Runs square jobs M = N = K = size on a Verilator build through the cocotb testbench
(inputs at full rate, output always ready), reads CYCLES, checks the result bit-exact
and that CYCLES equals matmul_regmap.expected_cycles, and writes
utilisation = M*N*K / (R*C*CYCLES) to benchmarks/results/fpga_matmul_util.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "sim"))

import harness  # noqa: E402

RESULTS = HERE / "results" / "fpga_matmul_util.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    reason = harness.missing("verilator")
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    cfg = harness.MatmulConfig(args.rows, args.cols, args.dtype)
    tmp = harness.build_dir("verilator", cfg) / "util_bench.json"
    t = time.time()
    harness.run("verilator", cfg, name="util_bench",
                testcase=["test_cycle_count"],
                env={"LEPTON_UTIL_SIZES": json.dumps([[s, s, s] for s in args.sizes]),
                     "LEPTON_UTIL_OUT": str(tmp)})
    rows = json.loads(tmp.read_text())
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for r in rows:
        r["formula"] = "M*N*K / (R*C*CYCLES)"
        results[f"{args.rows}x{args.cols}_{args.dtype}_{r['m']}^3"] = r
        print(f"{r['m']}^3 on {args.rows}x{args.cols}: {r['cycles']} cycles, "
              f"utilisation {100 * r['utilisation']:.2f} %")
    print(f"simulated in {time.time() - t:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
