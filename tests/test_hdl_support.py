"""Helpers the ``hdl generate`` CLI tests share (no tests of its own)."""

import argparse

import pytest

pytest.importorskip("amaranth")

from lepton_accel.hdl import cli  # noqa: E402


def need_yosys():
    """Skip unless Amaranth's Verilog backend finds a Yosys >= 0.40."""
    try:
        from amaranth._toolchain.yosys import find_yosys
        find_yosys(lambda ver: ver >= (0, 40))
    except Exception as e:
        pytest.skip(f"Amaranth's Verilog backend has no Yosys: {e}")


def parse_cli(argv):
    """``argv`` parsed by the hdl commands plugged into a parent ``lepton-accel`` parser."""
    parser = argparse.ArgumentParser(prog="lepton-accel")
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)
