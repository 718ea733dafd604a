"""The conv2d core's cycles on ResNet-50-like layers vs. the CPU backend on this machine.

For the full-size layers of ``benchmarks/results/fpga_conv_util.json`` (56x56x64 -> 64
3x3 and 28x28x128 -> 128 3x3, pad 1, batch 1, int8, 16x16 core) this reports the core's
CYCLES (simulated on Verilator, from that file; ``--check-model`` also recomputes
``conv_regmap.expected_cycles``), the projected time at an assumed 250 MHz kernel clock
(the clock assumed for both VU9P/F1 and VU47P/F2; no place-and-route backs it), and the
measured median wall time of ``lepton_accel.conv2d(..., backend="cpu")`` on the same
int8 layer here, and writes ``benchmarks/results/fpga_conv_vs_cpu-<date>.md``.

    python benchmarks/fpga_conv_vs_cpu.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
CLOCK_HZ = 250e6
PARTS = "VU9P (AWS F1) and VU47P (AWS F2)"


def cpu_info() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def median_cpu_s(layer: dict, repeats: int) -> tuple[float, list[float]]:
    import lepton_accel as la

    rng = np.random.default_rng(0)
    n, h, w, c = layer["x"]
    x = rng.integers(-128, 128, (n, c, h, w), dtype=np.int8)
    wt = rng.integers(-128, 128, tuple(layer["w"]), dtype=np.int8)
    kw = dict(stride=layer["stride"], padding=layer["padding"], backend="cpu")
    la.conv2d(x, wt, **kw)                       # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        la.conv2d(x, wt, **kw)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--util", default=str(ROOT / "results" / "fpga_conv_util.json"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from lepton_accel.hdl import conv_regmap as cr

    util = json.loads(Path(args.util).read_text())
    rows_out = []
    load = os.getloadavg()
    for r in util["simulated"]:
        if r.get("kind") != "full":
            continue
        L = r["layer"]
        job = cr.ConvJob.make(tuple(L["x"]), tuple(L["w"]), stride=L["stride"],
                              padding=L["padding"])
        model = cr.expected_cycles(job, r["rows"], r["cols"], util["x_lanes"])
        fpga_s = r["cycles"] / CLOCK_HZ
        cpu_s, times = median_cpu_s(L, args.repeats)
        rows_out.append(dict(name=r["name"], rows=r["rows"], cols=r["cols"],
                             cycles=r["cycles"], model_cycles=model,
                             utilisation=r["utilisation"], fpga_s=fpga_s, cpu_s=cpu_s,
                             cpu_times=times, ratio=cpu_s / fpga_s))
    if not rows_out:
        print("no full-size layers in", args.util, file=sys.stderr)
        return 1
    date = datetime.date.today().isoformat()
    cmd = "python " + " ".join([os.path.relpath(__file__, ROOT.parent)] + (argv or sys.argv[1:]))
    lines = [
        f"# conv2d core (projected) vs. the CPU backend — {date}",
        "",
        f"- command: `{cmd}`",
        f"- machine: {cpu_info()}; load average before the CPU runs "
        f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (1, 5, 15 min)",
        f"- core cycles: Verilator simulation of the 16x16 int8 conv2d core, "
        f"{util['x_lanes']} image lanes, from `{os.path.relpath(args.util, ROOT.parent)}` "
        f"(each equals `conv_regmap.expected_cycles`, recomputed here)",
        f"- projected FPGA time: cycles / {CLOCK_HZ / 1e6:.0f} MHz, the clock assumed for "
        f"{PARTS}; no place-and-route or board run backs that clock, and no host "
        "transfer time is included",
        f"- CPU: median of {args.repeats} calls of `lepton_accel.conv2d(x, w, stride, "
        "padding, backend=\"cpu\")`, int8 NCHW, batch 1, after one warm-up call",
        "- GPU: no GPU results are recorded in this repository, so none are compared here",
        "",
        "| layer | core cycles | model | MAC util. | FPGA @250 MHz | CPU median | CPU / FPGA |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in rows_out:
        lines.append(f"| {o['name']} | {o['cycles']:,} | {o['model_cycles']:,} | "
                     f"{o['utilisation'] * 100:.1f} % | {o['fpga_s'] * 1e3:.2f} ms | "
                     f"{o['cpu_s'] * 1e3:.2f} ms | {o['ratio']:.2f}x |")
    lines += ["", "CPU times per call (s): " + "; ".join(
        f"{o['name'].split(':')[0]}: " + ", ".join(f"{t:.4f}" for t in o["cpu_times"])
        for o in rows_out), ""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out) if args.out else ROOT / "results" / f"fpga_conv_vs_cpu-{date}.md"
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
