"""The mutation run of the FPGA cores (benchmarks/fpga_mutation.py) catches every mutant.

The run itself is about fifteen minutes of Icarus simulation here, so in the slow set
only; that every mutant still applies to the current RTL is checked in the default set.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import fpga_mutation
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return fpga_mutation


def test_every_anchor_found_once(tmp_path):
    fm = _module()
    fm.check_anchors()
    names = [m.name for m in fm.MUTANTS]
    assert len(names) == len(set(names))
    # the check fails on a missing or repeated anchor
    for text in ("", 2 * "x"):
        (tmp_path / "pe.py").write_text(text)
        with pytest.raises(fm.AnchorError):
            fm.check_anchors([fm.Mutant("m", "pe.py", "x", "y", "test")], tmp_path)


@pytest.mark.slow
@pytest.mark.sim
def test_every_mutant_caught(tmp_path):
    for tool in ("iverilog", "vvp", "yosys"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found")
    pytest.importorskip("cocotb")
    pytest.importorskip("cocotbext.axi")
    fpga_mutation = _module()
    out = tmp_path / "mutation.json"
    rc = fpga_mutation.main(["--json", str(out)])
    results = json.loads(out.read_text())
    base, mutants = results[0], results[1:]
    assert base["mutant"] == "(none)" and not base["caught"], base
    assert {r["mutant"] for r in mutants} == {m.name for m in fpga_mutation.MUTANTS}
    missed = [r["mutant"] for r in mutants if not r["caught"]]
    assert not missed and rc == 0, missed
