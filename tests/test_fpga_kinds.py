"""The FPGA package's structure without a simulator: the core-kind registry, the generic
device interface, the session state, and the import arrows (hdl imports nothing of
lepton_accel; the fpga device layer imports no backend)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from lepton_accel import fpga
from lepton_accel.fpga import build, session
from lepton_accel.fpga.device import Device, InStream, StreamResult
from lepton_accel.fpga.driver_base import CoreDriver
from lepton_accel.fpga.kinds import KINDS, CoreConfig, get_kind, kind_for_op
from lepton_accel.ops import OPS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [fpga.MatmulConfig(4, 4, "int8"), fpga.MatmulConfig(3, 5, "int16"),
           fpga.Conv2dConfig(4, 4, "int8", depth=64), fpga.Conv2dConfig(4, 3, "int16", 2, 512),
           fpga.Conv2dConfig(4, 4, "int8", depth=64, out_stage=False)]


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_brings_its_parts(name):
    kind = get_kind(name)
    assert kind.kind == name and kind_for_op(kind.op) is kind and kind.op in OPS
    assert issubclass(kind.driver, CoreDriver) and kind.driver.core_name == name
    assert (ROOT / "sim" / f"{kind.testbench}.py").exists()
    cfg = kind(4, 4, "int8")
    assert cfg.regmap.describe.__module__ == cfg.regmap_module
    assert cfg.tag.startswith(f"{name}-r4c4-int8")
    streams = cfg.streams()
    assert [s["direction"] for s in streams].count("out") == 1
    assert all(s["bits"] % 8 == 0 and s["prefix"] in cfg.regmap.PORT_PREFIX.values()
               for s in streams)


def test_kind_parameters_are_validated_and_distinct():
    with pytest.raises(ValueError, match="rows"):
        fpga.MatmulConfig(64, 4, "int8")
    with pytest.raises(ValueError, match="x_lanes"):
        fpga.Conv2dConfig(4, 4, "int8", x_lanes=12)
    with pytest.raises(TypeError, match="abstract"):
        CoreConfig(4, 4, "int8")
    with pytest.raises(ValueError, match="kind: expected one of"):
        get_kind("pooling")
    assert fpga.Conv2dConfig(5, 4).x_lanes == 8          # the core's default for 5 rows
    assert fpga.Conv2dConfig(4, 4, depth=64).capacity == 256
    assert fpga.MatmulConfig(4, 4) != fpga.Conv2dConfig(4, 4)
    assert len({c.tag for c in CONFIGS}) == len(CONFIGS)
    assert fpga.Conv2dConfig(4, 4, "int8", depth=64).params() == {
        "rows": 4, "cols": 4, "dtype": "int8", "out_stage": True, "x_lanes": 4, "depth": 64}
    lean = fpga.MatmulConfig(4, 4, "int8", out_stage=False)
    assert lean != fpga.MatmulConfig(4, 4, "int8") and lean.tag.endswith("-nostage")
    assert lean.describe()["config"]["out_stage"] is False
    with pytest.raises(TypeError, match="out_stage: expected True or False"):
        fpga.Conv2dConfig(4, 4, "int8", out_stage=1)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.tag)
def test_generated_wrapper_and_port_table_follow_the_register_map(cfg):
    streams = cfg.streams()
    ins = [s["name"] for s in streams if s["direction"] == "in"]
    header = build.ports_header(cfg)
    assert f"#define LX_N_IN {len(ins)}" in header
    calls = [line.split("->")[1].split("_tdata")[0] for line in header.splitlines()
             if line.strip().startswith("f(")]
    assert calls == ins                          # register-map order
    wrapper = build.wrapper_verilog(cfg)
    assert f"{cfg.top} core (" in wrapper
    for s in streams:
        assert f"[{s['bits'] - 1}:0] {s['name']}_tdata" in wrapper
        assert f".{s['prefix']}__tready({s['name']}_tready)" in wrapper
    # the cache key covers the kind's own parameters
    cmd = build.verilator_command(cfg, Path("x"))
    assert f"{cfg.top}.v" in cmd and build.HARNESS in cmd


class _Recorder(Device):
    """A Device that records what reaches its transfer (no simulator)."""

    def __init__(self, cfg):
        self.regmap = cfg.regmap
        self._set_streams(cfg.streams())
        self.seen = None

    def write_reg(self, offset, value):
        pass

    def read_reg(self, offset):
        return 0

    def reset(self):
        pass

    def _transfer(self, inputs, out_beats, ctrl):
        self.seen = (inputs, out_beats, ctrl)
        n = self.beat_bytes[self.output]
        return StreamResult(bytes(out_beats * n), np.zeros(out_beats, np.uint8), 0)


def test_device_stream_is_one_generic_entry_point():
    for cfg in CONFIGS:
        dev = _Recorder(cfg)
        first, bb = dev.inputs[0], dev.beat_bytes
        data = bytes(range(3 * bb[first]))
        res = dev.stream({first: InStream(data, 3)}, 2, ctrl=1)
        inputs, beats, ctrl = dev.seen
        assert [len(s.data) for s in inputs] == [len(data)] + [0] * (len(dev.inputs) - 1)
        assert (beats, ctrl, len(res.out)) == (2, 1, 2 * bb[dev.output])
        with pytest.raises(ValueError, match="no input stream 'zz'"):
            dev.stream({"zz": InStream(b"")}, 1)
        with pytest.raises(ValueError, match="whole number"):
            dev.stream({first: InStream(data[:-1])}, 1)
        with pytest.raises(ValueError, match="frame"):
            dev.stream({first: InStream(data, 0)}, 1)
        with pytest.raises(ValueError, match="out_beats"):
            dev.stream({}, -1)
        assert dev.clock_cycles is None


def test_session_settings_are_scoped_and_configs_follow_them(monkeypatch):
    monkeypatch.delenv("LEPTON_ACCEL_FPGA_CORE", raising=False)
    monkeypatch.delenv("LEPTON_ACCEL_FPGA_CONV_DEPTH", raising=False)
    before = (session._size, session._conv_depth, session._enabled)
    token = fpga.state_token()
    with fpga.configured(4, 8, conv_depth=64, enabled=False):
        assert fpga.state_token() != token       # cached dispatch decisions are stale
        assert fpga.core_size() == (4, 8) and not fpga.enabled()
        assert fpga.config_for("conv2d", "int16") == fpga.Conv2dConfig(4, 8, "int16", depth=64)
        assert fpga.config_for("matmul", "int8") == fpga.MatmulConfig(4, 8, "int8")
        assert session.config_for_op("conv2d") == fpga.Conv2dConfig(4, 8, "int8", depth=64)
    assert (session._size, session._conv_depth, session._enabled) == before
    assert fpga.state_token() != token
    monkeypatch.setenv("LEPTON_ACCEL_FPGA_CORE", "8x4")
    assert fpga.config_for("matmul", "int16") == fpga.MatmulConfig(8, 4, "int16")
    monkeypatch.setenv("LEPTON_ACCEL_FPGA_CORE", "big")
    with pytest.raises(ValueError, match="LEPTON_ACCEL_FPGA_CORE"):
        fpga.config_for("matmul")
    with pytest.raises(ValueError, match="no FPGA core runs"):
        session.config_for_op("pooling")


def test_is_ready_looks_in_the_cache_it_is_given(tmp_path, monkeypatch):
    cfg = fpga.MatmulConfig(2, 3, "int8")
    monkeypatch.setenv("LEPTON_ACCEL_CACHE", str(tmp_path))
    assert not fpga.is_ready(cfg)
    lib = tmp_path / "fpga" / f"{cfg.tag}-0123456789abcdef" / "libmodel.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    monkeypatch.setattr(session, "_NOT_READY_TTL_S", 0.0)
    assert fpga.is_ready(cfg)
    monkeypatch.setenv("LEPTON_ACCEL_CACHE", str(tmp_path / "other"))
    assert not fpga.is_ready(cfg)


def _imports(path: Path, package: str):
    """Absolute names of the modules a source file of ``package`` imports."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module
            else:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))


def test_hdl_imports_nothing_of_lepton_accel():
    files = sorted((ROOT / "hdl").glob("*.py"))
    assert files
    for f in files:
        for mod in _imports(f, "lepton_accel.hdl"):
            assert not mod.startswith("lepton_accel.") or mod.startswith("lepton_accel.hdl"), \
                (f.name, mod)


def test_fpga_device_layer_imports_no_backend():
    pkg = ROOT / "python" / "lepton_accel" / "fpga"
    above = ("lepton_accel.backends", "lepton_accel.api", "lepton_accel.scheduler",
             "lepton_accel.cli", "lepton_accel.torch")
    seen = set()
    for f in sorted(pkg.rglob("*.py")):
        package = ".".join(("lepton_accel", "fpga") + f.relative_to(pkg).parts[:-1])
        for mod in _imports(f, package):
            seen.add(mod)
            assert not mod.startswith(above), (f.name, mod)
    assert "lepton_accel.ops" in seen and "lepton_accel.fpga.kinds" in seen  # resolved right
