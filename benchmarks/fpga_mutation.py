"""Mutation run of the FPGA cores: do the cocotb testbenches catch small RTL bugs?

Each mutant is one anchored text substitution in an Amaranth source under hdl/. The run
copies hdl/, python/ and sim/ into a temporary directory, applies the mutant there (the
real sources are never touched), and runs a fast subset of the default sim selection on
that copy, with its own build directory: the 4x4 int8 configurations on Icarus (every
cocotb test of the matmul and the conv testbench, protocol checkers and coverage
included). A mutant is caught when that run fails. An anchor that is missing, or found
more than once, stops the run with an error rather than testing an unmutated core.

    python3 benchmarks/fpga_mutation.py                  # every mutant, markdown table
    python3 benchmarks/fpga_mutation.py --only shift_on_tvalid --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the fast subset of the default sim selection each mutant runs against, in order
MATMUL = "sim/test_matmul_sim.py::test_matmul[icarus-4x4-int8]"
CONV = "sim/test_conv_sim.py::test_conv[icarus-4x4-int8-xlauto-d256]"


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    file: str      # under hdl/
    anchor: str    # must occur exactly once in the file
    replacement: str
    what: str
    tests: tuple = (MATMUL, CONV)


MUTANTS = [
    Mutant("drain_fill_off_by_one", "matmul_core.py",
           "fill.eq(R + C + DEPOSIT_DELAY - 1),", "fill.eq(R + C + DEPOSIT_DELAY - 2),",
           "matmul drain starts one cycle early", (MATMUL,)),
    Mutant("conv_drain_fill_off_by_one", "conv_core.py",
           "fill.eq(R + C + DEPOSIT_DELAY + READ_DELAY - 1)",
           "fill.eq(R + C + DEPOSIT_DELAY + READ_DELAY)",
           "conv drain starts one cycle late", (CONV,)),
    Mutant("tvalid_gated_by_tready", "drain.py",
           "comp.c.valid.eq(out.o.valid),",
           "comp.c.valid.eq(out.o.valid & comp.c.ready),",
           "m_axis_c TVALID = ... & TREADY (AXI4-Stream violation)"),
    Mutant("shift_on_tvalid", "drain.py",
           "array.shift.eq(push),", "array.shift.eq(out.i.valid),",
           "drain shifts when a row is offered to the output slice, not when it moves"),
    Mutant("bias_handoff_on_tvalid", "drain.py",
           "handoff.eq(push & row_last & ~final),",
           "handoff.eq(out.i.valid & row_last & ~final),",
           "next tile's bias taken when the last row is offered, not when it moves"),
    Mutant("dropped_tlast", "drain.py",
           "comp.c.payload.last.eq(out.o.payload.last),", "comp.c.payload.last.eq(0),",
           "m_axis_c never raises TLAST"),
    Mutant("slice_overrun", "axi.py",
           "self.i.ready.eq(count != 2),", "self.i.ready.eq(1),",
           "register slice takes a beat when full (overwrites an entry)"),
    Mutant("a_ready_ignores_b_valid", "matmul_core.py",
           "a_in.ready.eq(fire),",
           "a_in.ready.eq(feeding & a_in.valid & (~is_last | drain_free)),",
           "A taken from its slice without its B beat", (MATMUL,)),
    Mutant("last_pair_ignores_drain", "matmul_core.py",
           "fire.eq(feeding & both & (~is_last | drain_free)),",
           "fire.eq(feeding & both),",
           "tile's last pair not held for the drain (ready/fire mismatch)", (MATMUL,)),
    Mutant("pe_deposit_early", "pe.py",   # the paired int8 cell, which the subset runs
           "deposit.eq(ctl_p.last & ctl_p.valid),",
           "deposit.eq(self.ctl_out.last & self.ctl_out.valid),",
           "cell's drain takes the sum one cycle early (without the last product)"),
    Mutant("pair_borrow_dropped", "pe.py",
           "acc1.eq(Mux(ctl_p.first, 0, acc1) + hi + prod[PAIR_SHIFT - 1])",
           "acc1.eq(Mux(ctl_p.first, 0, acc1) + hi)",
           "paired int8 cell drops the low product's borrow from the high one"),
    Mutant("conv_weights_early", "conv_core.py",
           "array.b.eq(b_d[-1]),", "array.b.eq(b_d[-2]),",
           "conv weights enter the array a cycle ahead of the image data", (CONV,)),
    Mutant("conv_last_pixel_flag_late", "conv_core.py",
           "wk_le1.eq((wk_left[2:] == 0) & ~wk_left[:2].all())",
           "wk_le1.eq(wk_left[1:] == 0)",
           "conv walker's last-pixel flag set from the count a step late (one pixel too many "
           "per group)", (CONV,)),
    Mutant("conv_group_base_stale", "conv_core.py",
           "wk_base.eq(wk_gnext), ", "wk_base.eq(wk_gbase), ",
           "conv walker starts a group's first row at the previous group's channels",
           (CONV,)),
    Mutant("conv_right_edge_unmasked", "conv_core.py",
           "a_ok.eq(tap_ok & ~iy[-1] & ~iyb[-1] & ~ix[-1] & ~ixb[-1])",
           "a_ok.eq(tap_ok & ~iy[-1] & ~iyb[-1] & ~ix[-1])",
           "conv tap test drops the right edge's sign bit (right padding reads the next row)",
           (CONV,)),
    Mutant("conv_capacity_high_bits_ignored", "conv_core.py",
           "over2.eq(wc1[AB + 1:] != 0)", "over2.eq(0)",
           "conv capacity check sees only W*C's low bits (an image row of twice the "
           "capacity is accepted)", (CONV,)),
    Mutant("conv_x_ready_always", "conv_core.py",
           "self.x.ready.eq(loading),", "self.x.ready.eq(1),",
           "conv x TREADY high outside the load (ready path)", (CONV,)),
    Mutant("dw_lane_delay_off_by_one", "lane_skew.py",
           "for s in range(self.base + q):", "for s in range(self.base + q + 1):",
           "depthwise mode: a cell's own image element arrives a cycle after its weight",
           (CONV,)),
    Mutant("dw_channel_tile_step", "conv_core.py",
           "gstep.eq(Mux(self.depthwise, CT, self.cg)),",
           "gstep.eq(Mux(self.depthwise, 1, self.cg)),",
           "depthwise mode: the next channel tile starts one channel on, not CT", (CONV,)),
    Mutant("wbuf_read_next_step", "weight_buffer.py",
           "rp.addr.eq(step),", "rp.addr.eq(step + 1),",
           "weight reuse: a replayed step reads the next step's weights", (CONV,)),
    Mutant("wbuf_overflow_ignored", "weight_buffer.py",
           "m.d.sync += over.eq(1)", "m.d.sync += over.eq(0)",
           "weight reuse: a group too large for the buffer is replayed anyway", (CONV,)),
    Mutant("cycles_off_by_one", "matmul_core.py",
           "self.cycles.eq(0), self.tiles_done.eq(0),",
           "self.cycles.eq(1), self.tiles_done.eq(0),",
           "CYCLES counter starts at 1", (MATMUL,)),
    Mutant("tiles_done_double", "matmul_core.py",
           "self.tiles_done.eq(self.tiles_done + 1)",
           "self.tiles_done.eq(self.tiles_done + 1 + d_final)",
           "TILES_DONE counts the last tile twice", (MATMUL,)),
    Mutant("wstrb_ignored", "axi.py",
           "bus.bresp.eq(Mux(self.w_strb.all(), RESP_OKAY, RESP_SLVERR))",
           "bus.bresp.eq(RESP_OKAY)",
           "partial WSTRB answered OKAY (silently dropped)"),
    Mutant("bvalid_not_held", "axi.py",
           "with m.If(bus.bvalid & bus.bready):", "with m.If(bus.bvalid):",
           "BVALID falls without BREADY"),
    Mutant("rvalid_not_held", "axi.py",
           "with m.Elif(bus.rvalid & bus.rready):", "with m.Elif(bus.rvalid):",
           "RVALID falls without RREADY"),
]


class AnchorError(RuntimeError):
    pass


def apply(mutant: Mutant, hdl_dir: Path):
    path = hdl_dir / mutant.file
    text = path.read_text()
    n = text.count(mutant.anchor)
    if n != 1:
        raise AnchorError(f"{mutant.name}: anchor {mutant.anchor!r} found {n} times in "
                          f"hdl/{mutant.file} (the RTL changed: update the mutant)")
    path.write_text(text.replace(mutant.anchor, mutant.replacement))


def check_anchors(mutants=MUTANTS, hdl_dir: Path = ROOT / "hdl"):
    """Raise AnchorError unless every mutant's anchor occurs exactly once in its file."""
    for m in mutants:
        n = (hdl_dir / m.file).read_text().count(m.anchor)
        if n != 1:
            raise AnchorError(f"{m.name}: anchor {m.anchor!r} found {n} times in "
                              f"hdl/{m.file} (the RTL changed: update the mutant)")


def _copy_tree(dst: Path):
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.pyc", ".pytest_cache")
    for name in ("hdl", "python", "sim"):
        shutil.copytree(ROOT / name, dst / name, symlinks=True, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")


def _failures(build: Path):
    """(test, first line of its message) of every failed cocotb test under build."""
    out = []
    for xml in sorted(build.rglob("*.result.xml")):
        for tc in ET.parse(xml).getroot().iter("testcase"):
            for f in tc.findall("failure") + tc.findall("error"):
                lines = [ln.strip() for ln in (f.get("message") or f.text or "").splitlines()
                         if ln.strip() and not ln.startswith("Traceback")]
                # the exception line of a traceback, else the message's first line
                exc = [ln for ln in lines if re.match(r"[\w.]*(Error|Exception)\b", ln)]
                out.append((tc.get("name"), (exc[-1] if exc else lines[0] if lines
                                             else "")[:160]))
    return out


def _protocol(log: str):
    m = re.search(r"ProtocolError: (.*)", log)
    return m.group(1).strip() if m else None


def run_one(mutant: Mutant | None, timeout: float = 900.0) -> dict:
    """Run the subset on a copy with ``mutant`` applied (None: the unmutated baseline)."""
    with tempfile.TemporaryDirectory(prefix="lepton-mutant-") as tmp:
        tmp = Path(tmp)
        _copy_tree(tmp)
        if mutant is not None:
            apply(mutant, tmp / "hdl")
        tests = mutant.tests if mutant else (MATMUL, CONV)
        env = dict(os.environ, PYTHONPATH=str(tmp / "python"),
                   LEPTON_SIM_BUILD=str(tmp / "build"))
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p",
                                "no:cacheprovider", *tests], cwd=tmp, env=env,
                               capture_output=True, text=True, timeout=timeout)
            rc, log = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            rc, log = "timeout", (e.stdout or b"").decode(errors="replace") \
                if isinstance(e.stdout, bytes) else (e.stdout or "")
        wall = time.perf_counter() - t0
        fails = _failures(tmp / "build")
    proto = _protocol(log)
    if rc == 0:
        caught_by = ""
    elif proto:
        caught_by = f"protocol checker: {proto}"
    elif fails:
        caught_by = f"{fails[0][0]}: {fails[0][1]}"
    else:
        tail = [ln for ln in log.strip().splitlines() if ln.strip()][-1:] or [str(rc)]
        caught_by = tail[0][:160]
    return {"mutant": mutant.name if mutant else "(none)",
            "what": mutant.what if mutant else "unmutated sources",
            "file": f"hdl/{mutant.file}" if mutant else "",
            "caught": rc != 0, "rc": rc, "failed_tests": [t for t, _ in fails],
            "caught_by": caught_by, "wall_s": round(wall, 1),
            "tests": list(tests)}


def table(results) -> str:
    rows = ["| mutant | file | what it breaks | result | failed cocotb tests | first failure |"
            " time (s) |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        cell = r["caught_by"][:150].replace("|", "\\|")
        failed = list(dict.fromkeys(r["failed_tests"]))
        more = f" (+{len(failed) - 2} more)" if len(failed) > 2 else ""
        if r["mutant"] == "(none)":
            result = "failed (baseline broken)" if r["caught"] else "passed (baseline)"
        else:
            result = "caught" if r["caught"] else "NOT CAUGHT"
        rows.append(f"| {r['mutant']} | {r['file']} | {r['what']} | {result} | "
                    f"{', '.join(failed[:2])}{more} | {cell} | {r['wall_s']} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="mutant names (default: all)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the unmutated run that must pass first")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(args.only):
        ap.error(f"unknown mutant in {args.only}")
    check_anchors(chosen)   # every anchor must be present before anything runs
    results = []
    if not args.no_baseline:
        base = run_one(None)
        results.append(base)
        print(f"baseline: {'FAILED' if base['caught'] else 'passed'} in {base['wall_s']} s",
              flush=True)
        if base["caught"]:
            print(base["caught_by"])
            return 2
    for m in chosen:
        r = run_one(m)
        results.append(r)
        print(f"{m.name}: {'caught' if r['caught'] else 'NOT CAUGHT'} in {r['wall_s']} s "
              f"({r['caught_by']})", flush=True)
    print()
    print(f"machine: {platform.node()} ({os.cpu_count()} CPUs), {platform.platform()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    missed = [r["mutant"] for r in results if r["mutant"] != "(none)" and not r["caught"]]
    if missed:
        print("NOT CAUGHT:", ", ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
