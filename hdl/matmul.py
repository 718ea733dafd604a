"""Top level of the matmul core: AXI4-Lite registers and AXI4-Stream data ports."""

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import regmap
from .axi import AXILiteSignature, AXILiteTarget, AXIStreamSignature
from .core import MatmulCore

__all__ = ["AXIMatmul", "generate_verilog"]


class AXIMatmul(wiring.Component):
    """The matmul core as a shell sees it.

    Parameters
    ----------
    rows, cols : int
        Array size R x C (2..32 each).
    dtype : str
        ``"int8"`` or ``"int16"`` (inputs); accumulation and outputs are int32.

    Ports (Verilog names are ``<prefix>__<signal>``, prefixes in
    :data:`.regmap.PORT_PREFIX`): ``s_axil`` (AXI4-Lite target, registers in
    :data:`.regmap.REGISTERS`), ``s_axis_a``, ``s_axis_b``, ``s_axis_bias`` (AXI4-Stream
    in) and ``m_axis_c`` (AXI4-Stream out), plus ``clk`` and active-high synchronous
    ``rst``.
    """

    def __init__(self, rows: int = 16, cols: int = 16, dtype: str = "int8"):
        widths = regmap.stream_widths(rows, cols, dtype)
        self.rows, self.cols, self.dtype = rows, cols, dtype
        P = regmap.PORT_PREFIX
        super().__init__({
            P["ctrl"]: In(AXILiteSignature(regmap.ADDR_WIDTH, regmap.DATA_WIDTH)),
            P["a"]: In(AXIStreamSignature(widths["a"])),
            P["b"]: In(AXIStreamSignature(widths["b"])),
            P["bias"]: In(AXIStreamSignature(widths["bias"])),
            P["c"]: Out(AXIStreamSignature(widths["c"])),
        })

    def elaborate(self, platform):
        m = Module()
        P = regmap.PORT_PREFIX
        m.submodules.core = core = MatmulCore(self.rows, self.cols, self.dtype)
        m.submodules.axil = axil = AXILiteTarget(regmap.ADDR_WIDTH, regmap.DATA_WIDTH)
        wiring.connect(m, wiring.flipped(getattr(self, P["ctrl"])), axil.bus)

        for name in ("a", "b", "bias"):
            port, s = getattr(self, P[name]), getattr(core, name)
            m.d.comb += [s.payload.data.eq(port.tdata), s.payload.last.eq(port.tlast),
                         s.valid.eq(port.tvalid), port.tready.eq(s.ready)]
        port = getattr(self, P["c"])
        m.d.comb += [port.tdata.eq(core.c.payload.data), port.tlast.eq(core.c.payload.last),
                     port.tvalid.eq(core.c.valid), core.c.ready.eq(port.tready)]

        # --- registers (layout from regmap) ------------------------------------
        R = regmap.REG
        dim_m, dim_n, dim_k = (Signal(regmap.DIM_BITS, name=n) for n in ("dim_m", "dim_n", "dim_k"))
        bias_en = Signal()
        done = Signal()
        errors = Signal(5)
        cycles_hi = Signal(32)

        def bit(reg, field):
            f = next(f for f in R[reg].fields if f.name == field)
            assert f.width == 1
            return f.lsb

        err_strobes = {
            "START_BUSY": core.err_start_busy, "BAD_DIM": core.err_dim,
            "A_LAST": core.err_a_last, "B_LAST": core.err_b_last,
            "BIAS_LAST": core.err_bias_last,
        }
        err_word = Signal(32)
        m.d.comb += err_word.eq(errors)
        assert all(bit("ERROR", n) < len(errors) for n in err_strobes)

        start = Signal()
        wr_ctrl = Signal()
        m.d.comb += [
            core.start.eq(start), core.m.eq(dim_m), core.n.eq(dim_n), core.k.eq(dim_k),
            # START and BIAS_EN arrive in the same CTRL write
            core.bias_en.eq(Mux(wr_ctrl, axil.w_data[bit("CTRL", "BIAS_EN")], bias_en)),
        ]

        # Writes.
        wr = {r.offset: Signal(name=f"wr_{r.name.lower()}") for r in regmap.REGISTERS}
        for off, s in wr.items():
            m.d.comb += s.eq(axil.w_stb & (axil.w_addr == off) & axil.w_strb.all())
        m.d.comb += wr_ctrl.eq(wr[R["CTRL"].offset])
        m.d.comb += start.eq(wr_ctrl & axil.w_data[bit("CTRL", "START")])
        with m.If(wr[R["CTRL"].offset]):
            m.d.sync += bias_en.eq(axil.w_data[bit("CTRL", "BIAS_EN")])
        for reg, sig in (("M", dim_m), ("N", dim_n), ("K", dim_k)):
            with m.If(wr[R[reg].offset]):
                m.d.sync += sig.eq(axil.w_data)

        clear = Signal(len(errors))
        with m.If(wr[R["ERROR"].offset]):
            m.d.comb += clear.eq(axil.w_data)
        new = Signal(len(errors))
        for name, strobe in err_strobes.items():
            m.d.comb += new[bit("ERROR", name)].eq(strobe)
        m.d.sync += errors.eq((errors & ~clear) | new)

        with m.If(start):
            m.d.sync += done.eq(0)
        with m.If(core.done):
            m.d.sync += done.eq(1)

        # Reads.
        status = Signal(32)
        m.d.comb += [
            status[bit("STATUS", "BUSY")].eq(core.busy),
            status[bit("STATUS", "DONE")].eq(done),
            status[bit("STATUS", "ERROR")].eq(errors.any()),
        ]
        ctrl = Signal(32)
        m.d.comb += ctrl[bit("CTRL", "BIAS_EN")].eq(bias_en)
        values = {
            "ID": Const(regmap.CORE_ID, 32),
            "VERSION": Const(regmap.VERSION_WORD, 32),
            "CONFIG": Const(regmap.config_word(self.rows, self.cols, self.dtype), 32),
            "CTRL": ctrl, "STATUS": status, "ERROR": err_word,
            "M": dim_m, "N": dim_n, "K": dim_k,
            "CYCLES_LO": core.cycles[:32], "CYCLES_HI": cycles_hi,
            "TILES_DONE": core.tiles_done, "STALL_IN": core.stall_in,
            "STALL_OUT": core.stall_out,
        }
        assert set(values) == set(R), "every register in regmap needs a value"
        with m.Switch(axil.r_addr):
            for name, value in values.items():
                with m.Case(R[name].offset):
                    m.d.comb += axil.r_data.eq(value)
            with m.Default():
                m.d.comb += axil.r_data.eq(0)
        with m.If(axil.r_stb & (axil.r_addr == R["CYCLES_LO"].offset)):
            m.d.sync += cycles_hi.eq(core.cycles[32:])
        return m


def generate_verilog(rows: int = 16, cols: int = 16, dtype: str = "int8",
                     name: str = "lepton_matmul") -> str:
    """Verilog text of one configuration, top module ``name``."""
    from amaranth.back import verilog

    top = AXIMatmul(rows, cols, dtype)
    return verilog.convert(top, name=name, emit_src=False)
