"""The ECP5 multiplier variant (``dsp="ecp5"``: MULT18X18D with its own registers) is the
same circuit as the generic one: a processing element and the output stage of each kind
side by side in Icarus, fed the same random inputs (resets included), compared every
cycle. The MULT18X18D is the repository's model (``sim/ecp5_models.v``); a model without
its output register must make the comparison fail."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("amaranth")

from amaranth import Cat, Module, Signal  # noqa: E402
from amaranth.lib import data, wiring  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402

from lepton_accel.hdl.dsp import registered_product  # noqa: E402
from lepton_accel.hdl.pe import ProcessingElement  # noqa: E402
from lepton_accel.hdl.requant import MULT_BITS, SHIFT_BITS, Requant  # noqa: E402
from test_hdl_support import need_yosys  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "sim" / "ecp5_models.v"
LANES, AW = 2, 32
LAYOUT = data.StructLayout({"data": LANES * AW, "last": 1})


class SideBySide(wiring.Component):
    """One PE and one output stage of each kind on shared inputs; ``differ`` is high in a
    cycle where any of their outputs differ."""

    def __init__(self):
        super().__init__({"stim": In(256), "differ": Out(1)})

    def elaborate(self, platform):
        m = Module()
        s = self.stim
        outs = {}
        for kind in ("generic", "ecp5"):
            pe = ProcessingElement(8, AW, kind)
            rq = Requant(LANES, AW, LAYOUT, kind)
            m.submodules[f"pe_{kind}"], m.submodules[f"rq_{kind}"] = pe, rq
            m.d.comb += [
                pe.a_in.eq(s[0:8]), pe.b_in.eq(s[8:16]), pe.ctl_in.eq(s[16:19]),
                pe.shift.eq(s[19]), pe.drain_in.eq(s[20:52]),
                rq.i.valid.eq(s[52]), rq.i.payload.eq(s[53:53 + LANES * AW + 1]),
                rq.mult.eq(s[120:120 + LANES * MULT_BITS]),
                rq.shift.eq(s[184:184 + LANES * SHIFT_BITS]),
                rq.relu.eq(s[200]), rq.requant.eq(s[201]), rq.o.ready.eq(s[202]),
            ]
            outs[kind] = Cat(pe.a_out, pe.b_out, pe.ctl_out, pe.drain_out, rq.i.ready,
                             rq.o.valid, rq.o.payload)
        m.d.comb += self.differ.eq(outs["generic"] != outs["ecp5"])
        return m


TESTBENCH = """`timescale 1ns / 1ps
module tb;
    reg clk = 0, rst = 1;
    reg [255:0] stim = 0;
    wire differ;
    integer cycle, mismatches = 0, seed = 7;
    top dut(.clk(clk), .rst(rst), .stim(stim), .differ(differ));
    always #5 clk = ~clk;
    initial begin
        for (cycle = 0; cycle < 6000; cycle = cycle + 1) begin
            @(negedge clk);
            if (differ) mismatches = mismatches + 1;
            rst = (cycle < 3) || (cycle % 1500 == 700);
            stim = {$random(seed), $random(seed), $random(seed), $random(seed),
                    $random(seed), $random(seed), $random(seed), $random(seed)};
            // mostly small shifts and requantization on, so results are not all saturated
            stim[184 +: 12] = stim[184 +: 12] & 12'o3737;
            stim[201] = stim[201] | stim[203];
        end
        $display("MISMATCHES %0d", mismatches);
        $finish;
    end
endmodule
"""


def _run(tmp_path, model_text):
    need_yosys()
    if shutil.which("iverilog") is None:
        pytest.skip("iverilog not installed")
    from amaranth.back import verilog

    (tmp_path / "top.v").write_text(verilog.convert(SideBySide(), name="top", emit_src=False))
    (tmp_path / "tb.v").write_text(TESTBENCH)
    (tmp_path / "model.v").write_text(model_text)
    subprocess.run(["iverilog", "-g2012", "-o", "sim.vvp", "tb.v", "top.v", "model.v"],
                   cwd=tmp_path, check=True, capture_output=True, text=True)
    out = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return int(re.search(r"MISMATCHES (\d+)", out).group(1))


def test_ecp5_multipliers_match_the_generic_ones(tmp_path):
    assert _run(tmp_path, MODEL.read_text()) == 0


def test_a_wrong_model_is_caught(tmp_path):
    # the output register left out: every product arrives a cycle early
    broken = MODEL.read_text().replace('(REG_OUTPUT_CLK == "CLK0") ? p_r : prod',
                                       "prod")
    assert broken != MODEL.read_text()
    assert _run(tmp_path, broken) > 100


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_registered_product_checks_its_operands():
    m = Module()
    with pytest.raises(ValueError, match="dsp: expected one of"):
        registered_product(m, Signal(8), Signal(8), 16, dsp="xilinx")
    with pytest.raises(ValueError, match="does not fit one 18x18"):
        registered_product(m, Signal(18), Signal(8), 26, dsp="ecp5")   # unsigned 18 bits
    with pytest.raises(ValueError, match="pair_macs packs"):
        from lepton_accel.hdl.systolic import SystolicArray
        SystolicArray(2, 2, 8, 32, pair_macs=True, dsp="ecp5")
