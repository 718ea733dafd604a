"""The first model build says what it is doing: stages advance from the build tool's own
output; plain lines when stderr is not a terminal, a rich progress display when it is."""
import io
import sys
import time

import pytest

from lepton_accel.fpga import build

LINES = ["make: Entering directory '/x/obj_dir'\n",
         "ccache g++  -I.  -MMD -O2 -c -o Vlx_top.o Vlx_top.cpp\n",
         "c++ -O2 -I. -c -o lx_harness.o ../lx_harness.cpp\n",
         "python verilator_includer -DVL_INCLUDE_OPT=include Vlx_top.cpp > Vlx_top__ALL.cpp\n",
         "c++ -O2 -I. -c -o Vlx_top__ALL.o Vlx_top__ALL.cpp\n",
         "c++ -shared lx_harness.o Vlx_top__ALL.a -o libmodel.so\n",
         "make: Leaving directory '/x/obj_dir'\n",
         "- V e r i l a t i o n   R e p o r t: rev 5\n"]


def test_stages_follow_the_tool_output_as_plain_lines():
    out = io.StringIO()
    p = build.BuildProgress("building the model", out)
    p.to(0, "took 0.4 s")
    p.to(1)
    seen = []
    for line in LINES:
        p.feed(line)
        seen.append(p.stage)
    p.done(True)
    assert seen == [2, 2, 2, 2, 2, 3, 3, 3]          # never goes back on the late report
    assert p.compiled == 3
    text = out.getvalue().splitlines()
    assert text[0] == "lepton_accel: building the model ..."
    assert [t.split(" (")[0].strip() for t in text[1:5]] == ["lepton_accel:   generating Verilog", "lepton_accel:   verilating",
                                                              "lepton_accel:   compiling C++", "lepton_accel:   linking"]
    assert text[1].endswith("generating Verilog (took 0.4 s)") and text[-1].startswith("lepton_accel: model built in")


def test_a_terminal_gets_a_rich_progress_display():
    pytest.importorskip("rich")
    out = io.StringIO()
    p = build.BuildProgress("building the model", out, rich=True)
    p.to(1)
    for line in LINES[:3]:
        p.feed(line)
    p.done(False)
    text = out.getvalue()
    assert "\x1b[" in text                            # drawn for a terminal
    assert "building the model" in text and "compiling C++ (2 files)" in text and "failed" in text


def test_build_model_reports_each_stage_and_keeps_the_tool_log(tmp_path, monkeypatch, capfd):
    pytest.importorskip("amaranth")
    monkeypatch.setenv("LEPTON_ACCEL_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "toolchain_missing", lambda: None)
    script = ("import os, sys, time\n"
              "print(\"make: Entering directory 'obj_dir'\", flush=True)\n"
              "print('c++ -O2 -c -o a.o a.cpp', flush=True)\n"
              "print('c++ -shared a.o -o libmodel.so', flush=True)\n"
              "os.makedirs('obj_dir', exist_ok=True)\n"
              "if os.environ.get('FAIL'): print('error: %Error: boom', flush=True); sys.exit(2)\n"
              "open('obj_dir/libmodel.so', 'wb').write(b'x')\n")
    monkeypatch.setattr(build, "verilator_command", lambda cfg, out_dir, jobs=2: [sys.executable, "-c", script])
    sources = {}
    real = build.generate_sources
    monkeypatch.setattr(build, "generate_sources", lambda c: dict(sources.get(c) or sources.setdefault(c, real(c))))
    from lepton_accel import fpga

    cfg = fpga.MatmulConfig(2, 3, "int8")
    lib, built = build.build_model(cfg)
    err = capfd.readouterr().err
    assert built and lib.read_bytes() == b"x"
    for stage in ("building the Verilator model", "generating Verilog", "verilating", "compiling C++", "linking",
                  "model built in"):
        assert stage in err
    monkeypatch.setenv("FAIL", "1")
    script += "# another build command: another cache key\n"
    with pytest.raises(build.BuildError, match=r"(?s)exit 2.*%Error: boom"):
        build.build_model(cfg)
    assert "model build failed" in capfd.readouterr().err


def test_slow_verilog_generation_is_announced(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("LEPTON_ACCEL_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "toolchain_missing", lambda: None)
    monkeypatch.setattr(build, "GENERATE_NOTICE_S", 0.05)

    def slow(cfg):
        time.sleep(0.4)
        raise RuntimeError("stop here")

    monkeypatch.setattr(build, "generate_sources", slow)
    from lepton_accel import fpga

    with pytest.raises(RuntimeError, match="stop here"):
        build.build_model(fpga.MatmulConfig(2, 2, "int8"))
    assert "generating the Verilog of the 2x2 int8 matmul core" in capfd.readouterr().err
    with pytest.raises(RuntimeError):
        build.build_model(fpga.MatmulConfig(2, 2, "int8"), quiet=True)
    assert capfd.readouterr().err == ""


def test_a_built_model_is_found_again_without_generating_its_verilog(tmp_path, monkeypatch):
    pytest.importorskip("amaranth")
    monkeypatch.setenv("LEPTON_ACCEL_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "toolchain_missing", lambda: None)
    script = "import os\nos.makedirs('obj_dir', exist_ok=True)\nopen('obj_dir/libmodel.so', 'wb').write(b'x')\n"
    monkeypatch.setattr(build, "verilator_command", lambda cfg, out_dir, jobs=2: [sys.executable, "-c", script])
    calls = []
    real = build.generate_sources
    monkeypatch.setattr(build, "generate_sources", lambda c: calls.append(c) or real(c))
    from lepton_accel import fpga

    cfg = fpga.MatmulConfig(2, 3, "int8")
    lib, built = build.build_model(cfg, quiet=True)
    assert built and len(calls) == 1
    assert build.build_model(cfg, quiet=True) == (lib, False) and len(calls) == 1   # the index, no Verilog
    other = fpga.MatmulConfig(3, 2, "int8")                     # other inputs: not found by the index
    lib2, built2 = build.build_model(other, quiet=True)
    assert built2 and lib2 != lib and len(calls) == 2
    # a model removed from the cache is not trusted from the index: the sources are made again
    import shutil
    shutil.rmtree(lib.parent)
    lib3, built3 = build.build_model(cfg, quiet=True)
    assert built3 and lib3 == lib and lib3.exists() and len(calls) == 3
    # the index entry names a directory of the cache, nothing else
    entry = build._index_entry(cfg, build._input_key(cfg))
    entry.write_text("../../elsewhere\n")
    assert build.build_model(cfg, quiet=True) == (lib, False) and len(calls) == 4
