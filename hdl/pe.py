"""Output-stationary processing element."""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Control", "ProcessingElement", "DEPOSIT_DELAY"]

#: cycles from a tile's last operands entering a cell (``a_in``/``b_in``) to its sum in
#: the drain register, beyond the one cycle of an unpipelined cell: operand register,
#: product register, accumulator, then the drain takes the accumulator
DEPOSIT_DELAY = 3


class Control(data.Struct):
    """Flags that travel with the A operand along a row."""
    valid: 1  # the operands are a real beat (not a bubble)
    first: 1  # first beat of a tile: start a new sum
    last: 1   # last beat of a tile: move the finished sum to the drain register


class ProcessingElement(wiring.Component):
    """One multiply-accumulate cell.

    Operands arrive from the left (``a_in``, with ``ctl_in``) and from above (``b_in``)
    and leave registered to the right and below, so that a skewed wavefront meets in
    every cell. The cell keeps its own sum (output-stationary); on a tile's last beat the
    finished sum moves into ``drain``, which forms one link of the column's drain chain
    (``drain_in`` from the cell below, ``drain_out`` to the cell above) while the next
    tile accumulates. The sum wraps modulo 2**acc_width.

    Pipeline, so that no cycle holds more than one of multiplier, adder and long route:
    the operands are registered again beside the multiplier (``a_in`` comes from the
    neighbour's register, which the placer cannot put next to every multiplier), the
    product is registered, the accumulator adds the registered product, and the drain
    register takes the accumulator one cycle after the last beat's sum
    (:data:`DEPOSIT_DELAY` cycles later than an unpipelined cell).
    """

    def __init__(self, in_width: int, acc_width: int):
        self.in_width = in_width
        self.acc_width = acc_width
        super().__init__({
            "a_in": In(signed(in_width)), "a_out": Out(signed(in_width)),
            "b_in": In(signed(in_width)), "b_out": Out(signed(in_width)),
            "ctl_in": In(Control), "ctl_out": Out(Control),
            "shift": In(1),
            "drain_in": In(signed(acc_width)), "drain_out": Out(signed(acc_width)),
        })

    def elaborate(self, platform):
        m = Module()
        w = self.in_width
        a_m, b_m = Signal(signed(w)), Signal(signed(w))   # operand registers
        prod = Signal(signed(2 * w))
        ctl_p = Signal(Control)                           # flags of the product
        acc = Signal(signed(self.acc_width))
        deposit = Signal()
        drain = Signal(signed(self.acc_width))

        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.b_out.eq(self.b_in),
            self.ctl_out.eq(self.ctl_in),   # also the flags of a_m, b_m
            a_m.eq(self.a_in),
            b_m.eq(self.b_in),
            prod.eq(a_m * b_m),
            ctl_p.eq(self.ctl_out),
            deposit.eq(ctl_p.valid & ctl_p.last),
        ]
        with m.If(ctl_p.valid):
            m.d.sync += acc.eq(Mux(ctl_p.first, 0, acc) + prod)
        # A deposit and a drain shift never fall in the same cycle (the core only
        # shifts once every cell has deposited), so the order here does not matter.
        with m.If(deposit):
            m.d.sync += drain.eq(acc)
        with m.Elif(self.shift):
            m.d.sync += drain.eq(self.drain_in)
        m.d.comb += self.drain_out.eq(drain)
        return m
