"""``hdl`` commands: ``hdl generate matmul --rows R --cols C --dtype int8 -o OUT/`` and
``hdl generate conv2d --rows R --cols C --dtype int8 [--x-lanes XL] [--depth D] -o OUT/``;
``--no-out-stage`` leaves the output stage out of either core; ``--dsp ecp5`` builds the
multipliers as Lattice ECP5 MULT18X18D with their own registers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .dsp import DSP_KINDS, check_dsp
from .regmap_common import DTYPES

__all__ = ["add_commands", "generate_matmul", "generate_conv2d", "main"]


def generate_matmul(rows: int, cols: int, dtype: str, out_dir, name: str | None = None,
                    out_stage: bool = True, dsp: str = "generic") -> dict:
    """Write ``<name>.v`` and ``<name>.json`` into out_dir; return the paths."""
    from . import matmul_regmap
    from .matmul_top import generate_verilog

    desc = matmul_regmap.describe(rows, cols, dtype, out_stage)  # validates the configuration
    desc["dsp"] = check_dsp(dsp)   # how the multipliers hold their registers
    name = name or (f"lepton_matmul_r{rows}c{cols}_{dtype}" + ("" if out_stage else "_nostage")
                    + ("" if dsp == "generic" else f"_{dsp}"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    v_path, j_path = out / f"{name}.v", out / f"{name}.json"
    v_path.write_text(generate_verilog(rows, cols, dtype, name=name, out_stage=out_stage,
                                       dsp=dsp))
    desc["top"] = name
    desc["verilog"] = v_path.name
    j_path.write_text(json.dumps(desc, indent=2) + "\n")
    return {"verilog": str(v_path), "json": str(j_path)}


def generate_conv2d(rows: int, cols: int, dtype: str, out_dir, name: str | None = None,
                    x_lanes: int | None = None, depth: int = 1024,
                    out_stage: bool = True, dsp: str = "generic") -> dict:
    """Write the conv2d core's ``<name>.v`` and ``<name>.json``; return the paths."""
    from . import conv_regmap
    from .conv_top import generate_verilog

    # the ecp5 multipliers are not paired (that packing is a DSP48E2's)
    desc = conv_regmap.describe(rows, cols, dtype, x_lanes, depth,
                                pair_macs=None if check_dsp(dsp) == "generic" else False,
                                out_stage=out_stage)  # validates
    desc["dsp"] = dsp
    x_lanes = desc["config"]["x_lanes"]
    name = name or (f"lepton_conv2d_r{rows}c{cols}_{dtype}_xl{x_lanes}_d{depth}"
                    + ("" if out_stage else "_nostage") + ("" if dsp == "generic" else f"_{dsp}"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    v_path, j_path = out / f"{name}.v", out / f"{name}.json"
    v_path.write_text(generate_verilog(rows, cols, dtype, x_lanes, depth, name=name,
                                       out_stage=out_stage, dsp=dsp))
    desc["top"] = name
    desc["verilog"] = v_path.name
    j_path.write_text(json.dumps(desc, indent=2) + "\n")
    return {"verilog": str(v_path), "json": str(j_path)}


def _generate(write) -> int:
    """Run one core's generator, turning configuration and toolchain errors into a line."""
    try:
        paths = write()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"error: {e}; install lepton_accel[sim]", file=sys.stderr)
        return 1
    except Exception as e:
        # Amaranth reports a missing or too old Yosys with its own error type
        if type(e).__name__ != "YosysError":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _cmd_matmul(args) -> int:
    return _generate(lambda: generate_matmul(args.rows, args.cols, args.dtype, args.output,
                                             args.name, args.out_stage, args.dsp))


def _cmd_conv2d(args) -> int:
    return _generate(lambda: generate_conv2d(args.rows, args.cols, args.dtype, args.output,
                                             args.name, args.x_lanes, args.depth,
                                             args.out_stage, args.dsp))


def add_commands(subparsers) -> argparse.ArgumentParser:
    """Add the ``hdl`` command tree to an argparse subparsers object."""
    hdl = subparsers.add_parser("hdl", help="generate FPGA cores (Verilog + JSON)")
    hdl_sub = hdl.add_subparsers(dest="hdl_command", required=True)
    gen = hdl_sub.add_parser("generate", help="write a core's Verilog and description")
    gen_sub = gen.add_subparsers(dest="core", required=True)
    mm = gen_sub.add_parser("matmul", help="systolic int8/int16 matmul core")
    mm.add_argument("--rows", type=int, default=16, help="array rows R (default 16)")
    mm.add_argument("--cols", type=int, default=16, help="array columns C (default 16)")
    mm.add_argument("--dtype", choices=sorted(DTYPES), default="int8")
    mm.add_argument("-o", "--output", required=True, help="output directory")
    mm.add_argument("--name", default=None, help="top module name")
    mm.add_argument("--no-out-stage", dest="out_stage", action="store_false",
                    help="leave out the output stage (ReLU / requantization; the host "
                         "applies them): fewer multipliers, a faster clock")
    mm.add_argument("--dsp", choices=DSP_KINDS, default="generic",
                    help="multiplier registers: generic (any part) or ecp5 (MULT18X18D's own)")
    mm.set_defaults(func=_cmd_matmul)
    cv = gen_sub.add_parser("conv2d", help="int8/int16 conv2d core (hardware im2col)")
    cv.add_argument("--rows", type=int, default=16,
                    help="array rows R = output pixels per tile (default 16)")
    cv.add_argument("--cols", type=int, default=16,
                    help="array columns C = output channels per tile (default 16)")
    cv.add_argument("--dtype", choices=sorted(DTYPES), default="int8")
    cv.add_argument("--x-lanes", type=int, default=None,
                    help="image elements per x beat, a power of two (default: >= rows)")
    cv.add_argument("--depth", type=int, default=1024,
                    help="image memory words per row copy (capacity x_lanes*depth)")
    cv.add_argument("-o", "--output", required=True, help="output directory")
    cv.add_argument("--name", default=None, help="top module name")
    cv.add_argument("--no-out-stage", dest="out_stage", action="store_false",
                    help="leave out the output stage (ReLU / requantization; the host "
                         "applies them): fewer multipliers, a faster clock")
    cv.add_argument("--dsp", choices=DSP_KINDS, default="generic",
                    help="multiplier registers: generic (any part) or ecp5 (MULT18X18D's own)")
    cv.set_defaults(func=_cmd_conv2d)
    return hdl


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lepton_accel.hdl.cli")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
