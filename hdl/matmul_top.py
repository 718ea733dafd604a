"""Top level of the matmul core: AXI4-Lite registers and AXI4-Stream data ports."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import matmul_regmap as regmap
from .axi import (AXILiteSignature, AXILiteTarget, AXIStreamSignature, CoreRegisters,
                  connect_streams)
from .matmul_core import MatmulCore

__all__ = ["AXIMatmul", "generate_verilog"]


class AXIMatmul(wiring.Component):
    """The matmul core as a shell sees it.

    Parameters
    ----------
    rows, cols : int
        Array size R x C (2..32 each).
    dtype : str
        ``"int8"`` or ``"int16"`` (inputs); accumulation and outputs are int32.
    pair_macs : bool or None
        Two int8 MACs per 27x18 multiplier (a DSP48E2); default: on for int8.
    out_stage : bool
        Build the output stage (ReLU and requantization, the ``q`` stream; CONFIG.OUT_STAGE).
        Without it the core is smaller and its clock faster; CTRL.RELU / REQUANT are then
        refused (ERROR.NO_STAGE) and the host applies them.
    dsp : str
        How the multipliers hold their operand and product registers: ``"generic"``
        (Amaranth registers, any part) or ``"ecp5"`` (Lattice ECP5 MULT18X18D with its own
        registers; no pairing). See :mod:`.dsp`.

    Ports (Verilog names are ``<prefix>__<signal>``, prefixes in
    :data:`.matmul_regmap.PORT_PREFIX`): ``s_axil`` (AXI4-Lite target, registers in
    :data:`.matmul_regmap.REGISTERS`), ``s_axis_a``, ``s_axis_b``, ``s_axis_bias``, ``s_axis_q`` (AXI4-Stream
    in) and ``m_axis_c`` (AXI4-Stream out), plus ``clk`` and active-high synchronous
    ``rst``.
    """

    def __init__(self, rows: int = 16, cols: int = 16, dtype: str = "int8",
                 pair_macs: bool | None = None, out_stage: bool = True, dsp: str = "generic"):
        widths = regmap.stream_widths(rows, cols, dtype)
        self.rows, self.cols, self.dtype = rows, cols, dtype
        self.pair_macs, self.out_stage, self.dsp = pair_macs, bool(out_stage), dsp
        P = regmap.PORT_PREFIX
        super().__init__({
            P["ctrl"]: In(AXILiteSignature(regmap.ADDR_WIDTH, regmap.DATA_WIDTH)),
            P["a"]: In(AXIStreamSignature(widths["a"])),
            P["b"]: In(AXIStreamSignature(widths["b"])),
            P["bias"]: In(AXIStreamSignature(widths["bias"])),
            P["q"]: In(AXIStreamSignature(widths["q"])),
            P["c"]: Out(AXIStreamSignature(widths["c"])),
        })

    def elaborate(self, platform):
        m = Module()
        P = regmap.PORT_PREFIX
        m.submodules.core = core = MatmulCore(self.rows, self.cols, self.dtype, self.pair_macs,
                                                self.out_stage, self.dsp)
        m.submodules.axil = axil = AXILiteTarget(regmap.ADDR_WIDTH, regmap.DATA_WIDTH)
        wiring.connect(m, wiring.flipped(getattr(self, P["ctrl"])), axil.bus)

        connect_streams(m, self, core, P, ("a", "b", "bias", "q"), "c")

        # --- registers (layout from matmul_regmap) ------------------------------------
        regs = CoreRegisters(
            m, axil, regmap, core,
            config_word=regmap.config_word(self.rows, self.cols, self.dtype, self.out_stage),
            err_strobes={
                "START_BUSY": core.err_start_busy, "BAD_DIM": core.err_dim,
                "A_LAST": core.err_a_last, "B_LAST": core.err_b_last,
                "BIAS_LAST": core.err_bias_last, "Q_LAST": core.err_q_last,
            })
        dims = {n: Signal(regmap.DIM_BITS, name=f"dim_{n.lower()}") for n in ("M", "N", "K")}
        m.d.comb += [core.m.eq(dims["M"]), core.n.eq(dims["N"]), core.k.eq(dims["K"])]
        regs.write(dims)
        regs.read(dims)
        return m


def generate_verilog(rows: int = 16, cols: int = 16, dtype: str = "int8",
                     name: str = "lepton_matmul", out_stage: bool = True,
                     dsp: str = "generic") -> str:
    """Verilog text of one configuration, top module ``name``."""
    from amaranth.back import verilog

    top = AXIMatmul(rows, cols, dtype, out_stage=out_stage, dsp=dsp)
    return verilog.convert(top, name=name, emit_src=False)
