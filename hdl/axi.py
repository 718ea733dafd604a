"""AXI4-Stream and AXI4-Lite signatures, an AXI4-Lite register target and the top-level
glue both cores share (stream ports to the core, the common register behaviour)."""

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RESP_OKAY", "RESP_SLVERR", "AXIStreamSignature", "AXILiteSignature",
           "AXILiteTarget", "RegisterSlice", "beat_layout", "connect_streams",
           "CoreRegisters"]


#: AXI response codes (BRESP/RRESP)
RESP_OKAY, RESP_SLVERR = 0, 2


def beat_layout(width: int) -> data.StructLayout:
    """Payload of every core stream (amaranth.lib.stream): a packed beat and its packet
    boundary; :func:`connect_streams` maps it onto an AXI4-Stream port."""
    return data.StructLayout({"data": width, "last": 1})


class RegisterSlice(wiring.Component):
    """A two-entry register slice (FIFO) on an amaranth stream of ``shape``.

    ``i.ready``, ``o.valid`` and ``o.payload`` come from registers only (the payload
    through a two-way select by a registered pointer), so no combinational path crosses
    the slice in either direction, and ``o.ready`` drives only the read pointer and the
    count, not the data registers. Two entries keep a stream at one beat per cycle:
    ``i.ready`` looks at the registered count, so a full slice takes no beat in the
    cycle it is read. A beat pushed at cycle t can leave at t + 1.
    """

    def __init__(self, shape):
        self.shape = shape
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        entries = [Signal(self.shape, name=f"entry{k}") for k in range(2)]
        wr, rd = Signal(), Signal()
        count = Signal(range(3))
        push, pop = Signal(), Signal()
        m.d.comb += [
            self.i.ready.eq(count != 2),
            self.o.valid.eq(count != 0),
            self.o.payload.eq(Mux(rd, entries[1], entries[0])),
            push.eq(self.i.valid & self.i.ready),
            pop.eq(self.o.valid & self.o.ready),
        ]
        with m.If(push):
            m.d.sync += wr.eq(~wr)
            for k, e in enumerate(entries):
                with m.If(wr == k):
                    m.d.sync += e.eq(self.i.payload)
        with m.If(pop):
            m.d.sync += rd.eq(~rd)
        m.d.sync += count.eq(count + push - pop)
        return m


class AXIStreamSignature(wiring.Signature):
    """AXI4-Stream from the transmitter's side: tdata, tlast, tvalid; tready back."""

    def __init__(self, width: int):
        self.width = width
        super().__init__({
            "tdata": Out(width),
            "tlast": Out(1),
            "tvalid": Out(1),
            "tready": In(1),
        })


class AXILiteSignature(wiring.Signature):
    """AXI4-Lite from the manager's side (no PROT signals, 32-bit data)."""

    def __init__(self, addr_width: int, data_width: int = 32):
        self.addr_width, self.data_width = addr_width, data_width
        super().__init__({
            "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8),
            "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })


class AXILiteTarget(wiring.Component):
    """AXI4-Lite target turning transactions into single-cycle register accesses.

    Writes: address and data are taken independently (either may come first); when
    both are held and no response is pending, the response is raised: OKAY, with
    ``w_stb`` pulsing with ``w_addr``, ``w_data``, ``w_strb``, when every WSTRB bit is
    set; SLVERR and no ``w_stb`` for a partial write (the registers are whole words).
    Reads: on an accepted read address ``r_stb`` pulses with ``r_addr`` and ``r_data``
    (combinational from the register file) is captured into RDATA. One transaction of
    each kind is in flight at a time; every channel honours its ready/valid handshake.
    """

    def __init__(self, addr_width: int, data_width: int = 32):
        self.addr_width, self.data_width = addr_width, data_width
        super().__init__({
            "bus": In(AXILiteSignature(addr_width, data_width)),
            "w_stb": Out(1), "w_addr": Out(addr_width),
            "w_data": Out(data_width), "w_strb": Out(data_width // 8),
            "r_stb": Out(1), "r_addr": Out(addr_width), "r_data": In(data_width),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus

        aw_full, w_full = Signal(), Signal()
        awaddr = Signal(self.addr_width)
        m.d.comb += [bus.awready.eq(~aw_full), bus.wready.eq(~w_full)]
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [aw_full.eq(1), awaddr.eq(bus.awaddr)]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += [w_full.eq(1), self.w_data.eq(bus.wdata), self.w_strb.eq(bus.wstrb)]

        # Registers take whole words only: a write with any strobe low changes nothing
        # and is answered SLVERR (AXI4-Lite allows that instead of honouring the lanes).
        accept = Signal()
        m.d.comb += [accept.eq(aw_full & w_full & ~bus.bvalid),
                     self.w_addr.eq(awaddr),
                     self.w_stb.eq(accept & self.w_strb.all())]
        with m.If(accept):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1),
                         bus.bresp.eq(Mux(self.w_strb.all(), RESP_OKAY, RESP_SLVERR))]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)

        m.d.comb += [
            bus.arready.eq(~bus.rvalid),
            self.r_addr.eq(bus.araddr),
            self.r_stb.eq(bus.arvalid & bus.arready),
            bus.rresp.eq(0),
        ]
        with m.If(self.r_stb):
            m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(self.r_data)]
        with m.Elif(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        return m


def connect_streams(m, top, core, prefix: dict[str, str], inputs, output: str):
    """Wire the AXI4-Stream ports of ``top`` (named by ``prefix``) to the core's streams:
    each name in ``inputs`` into the core, ``output`` out of it."""
    for name in inputs:
        port, s = getattr(top, prefix[name]), getattr(core, name)
        m.d.comb += [s.payload.data.eq(port.tdata), s.payload.last.eq(port.tlast),
                     s.valid.eq(port.tvalid), port.tready.eq(s.ready)]
    port, s = getattr(top, prefix[output]), getattr(core, output)
    m.d.comb += [port.tdata.eq(s.payload.data), port.tlast.eq(s.payload.last),
                 port.tvalid.eq(s.valid), s.ready.eq(port.tready)]


class CoreRegisters:
    """The register behaviour every core's map shares, built into module ``m``.

    ``rmap`` is the core's register map module (``REG``, ``REGISTERS``, ``CORE_ID``,
    ``VERSION_WORD``); ``core`` has ``start``, ``bias_en``, ``busy``, ``done``, the
    error strobes named in ``err_strobes`` (ERROR field -> signal), and the counters
    ``cycles`` (64 bits), ``tiles_done``, ``stall_in``, ``stall_out``.

    Provides a write strobe per register (:attr:`wr`, by name; full-word writes only: the
    target answers a partial one SLVERR),
    CTRL.START / BIAS_EN / RELU / REQUANT (those of the START write apply to that job;
    the core has ``relu_en`` and ``rq_en`` besides ``bias_en``; a core built without the
    output stage, ``core.out_stage`` False, refuses a START with RELU or REQUANT and
    flags ERROR.NO_STAGE), sticky w1c
    ERROR bits, STATUS.BUSY / DONE / ERROR plus ``status_extra`` (STATUS field -> signal),
    and :meth:`read`, the read mux over ID, VERSION, CONFIG, CTRL, STATUS, ERROR, the
    cycle counters and the core's own registers, with CYCLES_HI latched on a CYCLES_LO
    read.
    """

    def __init__(self, m, axil, rmap, core, *, config_word: int, err_strobes: dict,
                 status_extra: dict | None = None):
        self.m, self.axil, self.rmap, self.core = m, axil, rmap, core
        R = self.R = rmap.REG
        bit = self.bit

        bias_en = Signal()
        relu_en, rq_en = Signal(), Signal()
        done = Signal()
        errors = Signal(7)
        # a build without the output stage refuses a START that asks for it
        no_stage = Signal()
        err_strobes = {**err_strobes, "NO_STAGE": no_stage}
        assert all(bit("ERROR", n) < len(errors) for n in err_strobes)

        self.wr = wr = {r.name: Signal(name=f"wr_{r.name.lower()}") for r in rmap.REGISTERS}
        for name, s in wr.items():
            m.d.comb += s.eq(axil.w_stb & (axil.w_addr == R[name].offset) & axil.w_strb.all())

        self.start = start = Signal()
        start_wr = wr["CTRL"] & axil.w_data[bit("CTRL", "START")]
        staged = axil.w_data[bit("CTRL", "RELU")] | axil.w_data[bit("CTRL", "REQUANT")]
        if getattr(core, "out_stage", True):
            m.d.comb += start.eq(start_wr)
        else:
            m.d.comb += [start.eq(start_wr & ~staged), no_stage.eq(start_wr & staged)]
        m.d.comb += [
            core.start.eq(start),
            # START and BIAS_EN arrive in the same CTRL write
            core.bias_en.eq(Mux(wr["CTRL"], axil.w_data[bit("CTRL", "BIAS_EN")], bias_en)),
        ]
        with m.If(wr["CTRL"]):
            m.d.sync += bias_en.eq(axil.w_data[bit("CTRL", "BIAS_EN")])
        # the output stage's RELU / REQUANT: like BIAS_EN, from the START write on
        for reg, port, fname in ((relu_en, core.relu_en, "RELU"), (rq_en, core.rq_en, "REQUANT")):
            m.d.comb += port.eq(Mux(wr["CTRL"], axil.w_data[bit("CTRL", fname)], reg))
            with m.If(wr["CTRL"]):
                m.d.sync += reg.eq(axil.w_data[bit("CTRL", fname)])

        clear = Signal(len(errors))
        with m.If(wr["ERROR"]):
            m.d.comb += clear.eq(axil.w_data)
        new = Signal(len(errors))
        for name, strobe in err_strobes.items():
            m.d.comb += new[bit("ERROR", name)].eq(strobe)
        m.d.sync += errors.eq((errors & ~clear) | new)

        with m.If(start):
            m.d.sync += done.eq(0)
        with m.If(core.done):
            m.d.sync += done.eq(1)

        status = Signal(32)
        m.d.comb += [
            status[bit("STATUS", "BUSY")].eq(core.busy),
            status[bit("STATUS", "DONE")].eq(done),
            status[bit("STATUS", "ERROR")].eq(errors.any()),
        ]
        for name, sig in (status_extra or {}).items():
            m.d.comb += status[bit("STATUS", name)].eq(sig)
        ctrl = Signal(32)
        m.d.comb += [ctrl[bit("CTRL", "BIAS_EN")].eq(bias_en),
                     ctrl[bit("CTRL", "RELU")].eq(relu_en),
                     ctrl[bit("CTRL", "REQUANT")].eq(rq_en)]

        self.cycles_hi = Signal(32)
        self.values = {
            "ID": Const(rmap.CORE_ID, 32),
            "VERSION": Const(rmap.VERSION_WORD, 32),
            "CONFIG": Const(config_word, 32),
            "CTRL": ctrl, "STATUS": status, "ERROR": errors,
            "CYCLES_LO": core.cycles[:32], "CYCLES_HI": self.cycles_hi,
            "TILES_DONE": core.tiles_done, "STALL_IN": core.stall_in,
            "STALL_OUT": core.stall_out,
        }

    def field(self, reg: str, name: str):
        return next(f for f in self.R[reg].fields if f.name == name)

    def bit(self, reg: str, name: str) -> int:
        f = self.field(reg, name)
        assert f.width == 1
        return f.lsb

    def write(self, regs: dict):
        """Registers (name -> signal) that take the written word."""
        for name, sig in regs.items():
            with self.m.If(self.wr[name]):
                self.m.d.sync += sig.eq(self.axil.w_data)

    def read(self, values: dict):
        """The read mux over the common registers and ``values`` (the core's own)."""
        m, axil, R = self.m, self.axil, self.R
        values = {**self.values, **values}
        assert set(values) == set(R), set(R) ^ set(values)
        with m.Switch(axil.r_addr):
            for name, value in values.items():
                with m.Case(R[name].offset):
                    m.d.comb += axil.r_data.eq(value)
            with m.Default():
                m.d.comb += axil.r_data.eq(0)
        with m.If(axil.r_stb & (axil.r_addr == R["CYCLES_LO"].offset)):
            m.d.sync += self.cycles_hi.eq(self.core.cycles[32:])
