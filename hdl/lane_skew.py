"""Triangular delay line: lane q of a word delayed ``base + q`` cycles."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["LaneSkew"]


class LaneSkew(wiring.Component):
    """``o`` lane q = ``i`` lane q delayed ``base + q`` cycles (``lanes`` lanes of
    ``width`` bits).

    The array's depthwise mode feeds every cell of a row its own image element; cell
    (i, q) must see it when the skewed wavefront of the normal mode would have brought
    it there, i + q cycles after the row's word left the read pipeline. The delay
    registers have no reset (plain data, never read before written: the array's flags
    say which cycles are valid), so a synthesiser can map each lane's chain onto a
    shift-register LUT instead of flip-flops.
    """

    def __init__(self, lanes: int, width: int, base: int = 0):
        self.lanes, self.width, self.base = lanes, width, base
        super().__init__({"i": In(lanes * width), "o": Out(lanes * width)})

    def elaborate(self, platform):
        m = Module()
        w = self.width
        for q in range(self.lanes):
            value = self.i[q * w:(q + 1) * w]
            for s in range(self.base + q):
                reg = Signal(w, name=f"lane{q}_d{s}", reset_less=True)
                m.d.sync += reg.eq(value)
                value = reg
            m.d.comb += self.o[q * w:(q + 1) * w].eq(value)
        return m
