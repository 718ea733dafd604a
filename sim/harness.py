"""Build and run the cocotb testbenches from pytest or scripts.

A core configuration is a ``lepton_accel.fpga.kinds`` config (``MatmulConfig``,
``Conv2dConfig``): it brings its Verilog, its top module and the name of its testbench
module here, so the harness is the same for every kind. One build directory per
simulator and configuration under sim/build/; the Verilog is regenerated from Amaranth
and only rewritten when it changes, so unchanged builds are reused. The tools are found
by ``lepton_accel.fpga.toolchain``, as for the fpga backend's models.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from lepton_accel.fpga import toolchain
from lepton_accel.fpga.kinds import Conv2dConfig, CoreConfig, MatmulConfig

__all__ = ["SIM_DIR", "BUILD_ROOT", "SIMULATORS", "MatmulConfig", "Conv2dConfig", "missing",
           "build_dir", "build", "run", "setup_verilator"]

SIM_DIR = Path(__file__).resolve().parent
BUILD_ROOT = Path(os.environ.get("LEPTON_SIM_BUILD", SIM_DIR / "build"))
SIMULATORS = ("verilator", "icarus")
_COCOTB = ("cocotb", "cocotb_tools", "cocotbext.axi", "cocotb_coverage")

if str(SIM_DIR) not in sys.path:  # cocotb imports the testbench module from sys.path
    sys.path.insert(0, str(SIM_DIR))


def setup_verilator() -> str | None:
    """Put Verilator on this process's PATH (cocotb's runner reads os.environ)."""
    return toolchain.use_verilator()


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
    for mod in _COCOTB:
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not installed (pip install lepton_accel[sim])"
        except ModuleNotFoundError:
            return f"{mod} is not installed (pip install lepton_accel[sim])"
    if sim == "verilator":
        why = toolchain.toolchain_missing()
        if why:
            return why
        setup_verilator()
    elif sim == "icarus":
        why = toolchain.yosys_missing()
        if why:
            return why
        if shutil.which("iverilog") is None or shutil.which("vvp") is None:
            return "iverilog/vvp not found (apt-get install iverilog)"
    else:
        return f"unknown simulator {sim}"
    return None


def build_dir(sim: str, cfg: CoreConfig) -> Path:
    return BUILD_ROOT / f"{sim}_{cfg.tag}"


def build(sim: str, cfg: CoreConfig):
    """Generate cfg's Verilog (into its build directory, only when it changed) and build
    the simulator model there; return (runner, build dir)."""
    from cocotb_tools.runner import get_runner

    if sim == "verilator":
        setup_verilator()
    bdir = build_dir(sim, cfg)
    bdir.mkdir(parents=True, exist_ok=True)
    src = bdir / f"{cfg.top}.v"
    text = cfg.generate_verilog()
    if not src.exists() or src.read_text() != text:
        src.write_text(text)
    runner = get_runner(sim)
    kwargs, extra = {}, {}
    if sim == "verilator":
        # Amaranth's output trips style lints that are not errors here.
        kwargs["build_args"] = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3",
                                "--x-assign", "fast", "--x-initial", "fast"]
        extra["MAKEFLAGS"] = (os.environ.get("MAKEFLAGS", "") + " "
                              + toolchain.VERILATOR_MAKE_FLAGS).strip()
    with _env(**extra):
        runner.build(sources=[src], hdl_toplevel=cfg.top, build_dir=bdir,
                     timescale=("1ns", "1ps"), **kwargs)
    return runner, bdir


def run(sim: str, cfg: CoreConfig, *, testcase=None, env=None, name: str = "run",
        test_module: str | None = None):
    """Build if needed and run the cocotb tests of cfg's testbench (or ``test_module``);
    coverage goes to the build directory unless ``env`` says otherwise. Raises on
    failure; returns (the runner's result, build dir)."""
    runner, bdir = build(sim, cfg)
    env = dict(env or {})
    env.setdefault("LEPTON_COVERAGE_DIR", str(bdir))
    env.setdefault("LEPTON_COVERAGE_NAME", name)
    # the runner gives os.environ precedence over extra_env
    with _env(**env):
        res = runner.test(test_module=test_module or cfg.testbench, hdl_toplevel=cfg.top,
                          build_dir=bdir, test_dir=bdir, testcase=testcase,
                          timescale=("1ns", "1ps"), extra_env=env)
    return res, bdir
