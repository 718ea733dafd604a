import subprocess
import sys

from lepton_accel.cli import main


def test_info_lists_every_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("cpu", "cuda"):
        assert f"\n{name} " in out
    assert "cuda_architectures" in out


def test_demo_verifies_every_available_backend(capsys, monkeypatch):
    monkeypatch.setenv("LEPTON_ACCEL_FPGA_CORE", "4x4")  # a small simulated core builds fast
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "cpu      conv2d  int8      exact" in out


def test_console_script_entry_point():
    res = subprocess.run([sys.executable, "-m", "lepton_accel.cli", "info"], capture_output=True,
                         text=True)
    assert res.returncode == 0 and "backend" in res.stdout
