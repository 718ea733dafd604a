"""Top level of the conv2d core: AXI4-Lite registers and AXI4-Stream data ports."""

from amaranth import Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import conv_regmap as cr
from .axi import (AXILiteSignature, AXILiteTarget, AXIStreamSignature, CoreRegisters,
                  connect_streams)
from .conv_core import DIM_REG, DIMS, ConvCore

__all__ = ["AXIConv2d", "generate_verilog"]


class AXIConv2d(wiring.Component):
    """The conv2d core as a shell sees it: AXI4-Lite registers (:data:`.conv_regmap.
    REGISTERS`), AXI4-Stream ``s_axis_x``, ``s_axis_b``, ``s_axis_bias``, ``s_axis_q`` in and
    ``m_axis_c`` out, ``clk`` and active-high synchronous ``rst``.

    rows, cols: array size (2..32); dtype: ``"int8"`` or ``"int16"``; x_lanes: image
    lanes per x beat (power of two, default the next power of two >= rows); depth: image
    memory words per copy (capacity x_lanes*depth elements); pair_macs: two int8 MACs per
    27x18 multiplier (DSP48E2), default on for int8 (:class:`.conv_core.ConvCore`);
    out_stage: build the output stage (ReLU and requantization, the ``q`` stream;
    CONFIG.OUT_STAGE); without it CTRL.RELU / REQUANT are refused (ERROR.NO_STAGE);
    dsp: how the multipliers hold their registers, ``"generic"`` or ``"ecp5"``
    (:mod:`.dsp`).
    """

    def __init__(self, rows: int = 16, cols: int = 16, dtype: str = "int8",
                 x_lanes: int | None = None, depth: int = 1024, pair_macs: bool | None = None,
                 out_stage: bool = True, dsp: str = "generic"):
        x_lanes = x_lanes or cr.default_x_lanes(rows)
        cr.check_config(rows, cols, dtype, x_lanes, depth)
        widths = cr.stream_widths(rows, cols, dtype, x_lanes)
        self.rows, self.cols, self.dtype = rows, cols, dtype
        self.x_lanes, self.depth = x_lanes, depth
        self.pair_macs, self.out_stage, self.dsp = pair_macs, bool(out_stage), dsp
        P = cr.PORT_PREFIX
        super().__init__({
            P["ctrl"]: In(AXILiteSignature(cr.ADDR_WIDTH, cr.DATA_WIDTH)),
            P["x"]: In(AXIStreamSignature(widths["x"])),
            P["b"]: In(AXIStreamSignature(widths["b"])),
            P["bias"]: In(AXIStreamSignature(widths["bias"])),
            P["q"]: In(AXIStreamSignature(widths["q"])),
            P["c"]: Out(AXIStreamSignature(widths["c"])),
        })

    def elaborate(self, platform):
        m = Module()
        P = cr.PORT_PREFIX
        m.submodules.core = core = ConvCore(self.rows, self.cols, self.dtype, self.x_lanes,
                                            self.depth, self.pair_macs, self.out_stage,
                                            self.dsp)
        m.submodules.axil = axil = AXILiteTarget(cr.ADDR_WIDTH, cr.DATA_WIDTH)
        wiring.connect(m, wiring.flipped(getattr(self, P["ctrl"])), axil.bus)
        connect_streams(m, self, core, P, ("x", "b", "bias", "q"), "c")

        regs = CoreRegisters(
            m, axil, cr, core,
            config_word=cr.config_word(self.rows, self.cols, self.dtype, self.x_lanes,
                                       self.out_stage),
            err_strobes={"START_BUSY": core.err_start_busy, "BAD_DIM": core.err_dim,
                         "X_LAST": core.err_x_last, "B_LAST": core.err_b_last,
                         "BIAS_LAST": core.err_bias_last, "Q_LAST": core.err_q_last},
            status_extra={"LOADING": core.loading})

        # rw registers
        dims = {DIM_REG[n]: Signal(cr.DIM_BITS, name=f"reg_{n}") for n in DIMS}
        packed = {name: Signal(2 * cr.SMALL_BITS, name=f"reg_{name.lower()}")
                  for name in ("KERNEL", "STRIDE", "DILATION", "PAD")}
        for n in DIMS:
            m.d.comb += getattr(core, n).eq(dims[DIM_REG[n]])
        for port_name, reg, f in (("kh", "KERNEL", "K_H"), ("kw", "KERNEL", "K_W"),
                                  ("sh", "STRIDE", "S_H"), ("sw", "STRIDE", "S_W"),
                                  ("dh", "DILATION", "D_H"), ("dw", "DILATION", "D_W"),
                                  ("pt", "PAD", "PAD_T"), ("pl", "PAD", "PAD_L")):
            fd = regs.field(reg, f)
            m.d.comb += getattr(core, port_name).eq(packed[reg][fd.lsb:fd.lsb + fd.width])
        mode = Signal(2, name="reg_mode")
        m.d.comb += [core.depthwise.eq(mode[regs.field("MODE", "DW").lsb]),
                     core.wreuse.eq(mode[regs.field("MODE", "WREUSE").lsb])]
        regs.write({**dims, **packed, "MODE": mode})
        regs.read({"CAPACITY": Const(self.x_lanes * self.depth, 32), **dims, **packed,
                   "LOAD_CYCLES": core.load_cycles, "MODE": mode,
                   "DW_CONFIG": Const(cr.dw_config_word(core.dw_ct, core.dw_p), 32),
                   "WBUF_DEPTH": Const(self.depth, 32)})
        return m


def generate_verilog(rows: int = 16, cols: int = 16, dtype: str = "int8",
                     x_lanes: int | None = None, depth: int = 1024,
                     name: str = "lepton_conv2d", out_stage: bool = True,
                     dsp: str = "generic") -> str:
    """Verilog text of one configuration, top module ``name``."""
    from amaranth.back import verilog

    return verilog.convert(AXIConv2d(rows, cols, dtype, x_lanes, depth, out_stage=out_stage,
                                     dsp=dsp), name=name, emit_src=False)
