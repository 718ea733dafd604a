"""The fpga backend's C++ harness keeps AXI4-Stream rules when it pauses its sources.

A monitor is added to the harness's Verilog wrapper of a 4x4 int8 matmul core: on every
input stream, a beat presented and not taken (TVALID && !TREADY) must still be presented,
unchanged, at the next edge; otherwise the model stops with $fatal. A job with random
pauses runs on that model in a child process (a $fatal aborts it), and must finish with
the oracle's answer. The same check on a harness whose sources re-draw TVALID every cycle
(a beat withdrawn before its handshake) must abort: the monitor can fail.

Two Verilator builds (about a minute each here), so in the slow set.
"""

import os
import subprocess
import sys

import pytest

import harness

pytestmark = [pytest.mark.sim, pytest.mark.slow]

#: the harness line that keeps a presented beat valid until its handshake
KEEP = "if (!x.valid) x.valid = full_rate || !rng.pause(pause_in);"
DROP = "x.valid = full_rate || !rng.pause(pause_in);"

CHILD = r'''
import sys
import numpy as np
from lepton_accel import fpga
from lepton_accel.fpga import build
from lepton_accel.fpga.kinds import MatmulConfig
from lepton_accel.reference import matmul_ref

KEEP, DROP, mode = sys.argv[1], sys.argv[2], sys.argv[3]
generate = build.generate_sources


def monitor(cfg):
    lines = ["  // stream protocol monitor (test only)"]
    for s in cfg.streams():
        if s["direction"] != "in":
            continue
        n, w = s["name"], s["bits"]
        lines += [
            f"  reg mon_{n}_stall = 0; reg [{w - 1}:0] mon_{n}_data; reg mon_{n}_last;",
            "  always @(posedge clk) begin",
            f"    if (!rst && mon_{n}_stall && (!{n}_tvalid || {n}_tdata != mon_{n}_data"
            f" || {n}_tlast != mon_{n}_last))",
            f'      $fatal(1, "{n}: beat withdrawn or changed before its handshake");',
            f"    mon_{n}_stall <= !rst && {n}_tvalid && !{n}_tready;",
            f"    mon_{n}_data <= {n}_tdata; mon_{n}_last <= {n}_tlast;",
            "  end",
        ]
    return "\n".join(lines) + "\n"


def watched(cfg):
    src = dict(generate(cfg))
    name = f"{build.WRAPPER}.v"
    head, tail = src[name].rsplit("endmodule", 1)
    src[name] = head + monitor(cfg) + "endmodule" + tail
    if mode == "drop":
        assert src[build.HARNESS].count(KEEP) == 1, "harness anchor missing"
        src[build.HARNESS] = src[build.HARNESS].replace(KEEP, DROP)
    return src


build.generate_sources = watched
rng = np.random.default_rng()
dev = fpga.VerilatorDevice(MatmulConfig(4, 4, "int8"), pause_in=0.5, pause_out=0.5,
                           seed=int(rng.integers(1, 2**31)), quiet=True)
drv = fpga.MatmulDriver(dev)
a = rng.integers(-128, 128, (11, 13)).astype(np.int8)
b = rng.integers(-128, 128, (13, 9)).astype(np.int8)
bias = rng.integers(-1000, 1000, 9).astype(np.int32)
np.testing.assert_array_equal(drv.gemm(a, b, bias), matmul_ref(a, b, bias))
dev.close()
print("job ok")
'''


def _child(mode, tmp_path):
    env = dict(os.environ, LEPTON_ACCEL_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-c", CHILD, KEEP, DROP, mode], env=env,
                          capture_output=True, text=True, timeout=900)


def test_harness_keeps_tvalid_until_handshake(tmp_path):
    reason = harness.missing("verilator")
    if reason:
        pytest.skip(reason)
    ok = _child("keep", tmp_path)
    assert ok.returncode == 0 and "job ok" in ok.stdout, ok.stdout + ok.stderr[-3000:]
    bad = _child("drop", tmp_path)
    assert bad.returncode != 0, "the monitor missed a withdrawn beat"
    assert "withdrawn or changed before its handshake" in bad.stdout + bad.stderr, \
        bad.stdout + bad.stderr[-3000:]
