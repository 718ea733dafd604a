"""AXI4-Stream and AXI4-Lite signatures and an AXI4-Lite register target."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXIStreamSignature", "AXILiteSignature", "AXILiteTarget"]


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
    both are held and no response is pending, ``w_stb`` pulses with ``w_addr``,
    ``w_data``, ``w_strb`` and the OKAY response is raised. Reads: on an accepted read
    address ``r_stb`` pulses with ``r_addr`` and ``r_data`` (combinational from the
    register file) is captured into RDATA. One transaction of each kind is in flight
    at a time; every channel honours its ready/valid handshake.
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

        m.d.comb += [self.w_addr.eq(awaddr),
                     self.w_stb.eq(aw_full & w_full & ~bus.bvalid)]
        with m.If(self.w_stb):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        m.d.comb += bus.bresp.eq(0)

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
