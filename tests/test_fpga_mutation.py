"""The mutation run of the FPGA cores (benchmarks/fpga_mutation.py) catches every mutant.

About ten minutes of Icarus simulation here, so in the slow set only.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.sim]

ROOT = Path(__file__).resolve().parents[1]


def test_every_mutant_caught(tmp_path):
    for tool in ("iverilog", "vvp", "yosys"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found")
    pytest.importorskip("cocotb")
    pytest.importorskip("cocotbext.axi")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import fpga_mutation
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "mutation.json"
    rc = fpga_mutation.main(["--json", str(out)])
    results = json.loads(out.read_text())
    base, mutants = results[0], results[1:]
    assert base["mutant"] == "(none)" and not base["caught"], base
    assert {r["mutant"] for r in mutants} == {m.name for m in fpga_mutation.MUTANTS}
    missed = [r["mutant"] for r in mutants if not r["caught"]]
    assert not missed and rc == 0, missed
