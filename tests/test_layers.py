"""The architecture's rules, checked: layers point down (import-linter contracts in
pyproject.toml), and nothing below the public API writes the process's perf model."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "lepton_accel"


def test_import_contracts_hold(tmp_path):
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install '.[test]')")
    # The source tree, not an installed copy, is analysed, laid out as the wheel lays it out:
    # hdl/ becomes lepton_accel.hdl (pyproject's wheel.packages).
    tree = tmp_path / "src"
    shutil.copytree(PKG, tree / "lepton_accel",
                    ignore=shutil.ignore_patterns("hdl", "__pycache__", "*.so"))
    shutil.copytree(ROOT / "hdl", tree / "lepton_accel" / "hdl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(tree), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    res = subprocess.run([exe, str(ROOT / "pyproject.toml")], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


#: PerfModel methods that change what it will say
_WRITES = {"observe", "record_fpga_cycles", "set_efficiency", "load_table"}


def _model_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in _WRITES and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == "MODEL":
            found.append(f"{path}:{node.lineno} MODEL.{node.func.attr}")
    return found


@pytest.mark.parametrize("layer", ["backends", "fpga", "perf", "ops"])
def test_nothing_below_the_api_writes_the_global_model(layer):
    """Run statistics travel up with results (RunStats); the caller records them."""
    files = sorted((PKG / layer).rglob("*.py")) if (PKG / layer).is_dir() else [PKG / f"{layer}.py"]
    assert files
    assert [w for f in files for w in _model_writes(f)] == []


def test_the_model_write_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from lepton_accel.perf import MODEL\nMODEL.record_fpga_cycles(1, 2, 'int8', (1,), 3)\n")
    assert len(_model_writes(bad)) == 1
