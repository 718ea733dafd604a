"""R x C output-stationary systolic array."""

from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .pe import Control, ProcessingElement

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """Grid of :class:`ProcessingElement` with input skew and a drain chain.

    Each cycle the array takes one A column (``a``: ``rows`` lanes) and one B row
    (``b``: ``cols`` lanes) with their ``ctl`` flags. Lane i of ``a`` is delayed i cycles
    and lane j of ``b`` j cycles so that A[i, k] and B[k, j] meet in cell (i, j) at
    cycle k + i + j. The array never stalls: a cycle without data is a bubble
    (``ctl.valid`` = 0).

    A tile's last beat, entering at cycle t, leaves every cell's finished sum in its
    drain register by cycle t + rows + cols - 1 + DEPOSIT_DELAY (bottom-right cell last;
    :data:`.pe.DEPOSIT_DELAY` is the cell's pipeline). After that, each ``shift`` moves
    the drain registers up one row; ``out`` shows row 0, straight from registers.
    """

    def __init__(self, rows: int, cols: int, in_width: int, acc_width: int):
        self.rows, self.cols = rows, cols
        self.in_width, self.acc_width = in_width, acc_width
        super().__init__({
            "a": In(in_width * rows),
            "b": In(in_width * cols),
            "ctl": In(Control),
            "shift": In(1),
            "out": Out(acc_width * cols),
        })

    def elaborate(self, platform):
        m = Module()
        R, C, w = self.rows, self.cols, self.in_width

        pes = [[ProcessingElement(w, self.acc_width) for _ in range(C)] for _ in range(R)]
        for i in range(R):
            for j in range(C):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]

        def delayed(value, cycles, name, shape):
            for s in range(cycles):
                reg = Signal(shape, name=f"{name}_d{s}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        for i in range(R):
            lane = self.a[i * w:(i + 1) * w].as_signed()
            m.d.comb += [
                pes[i][0].a_in.eq(delayed(lane, i, f"skew_a{i}", signed(w))),
                pes[i][0].ctl_in.eq(delayed(self.ctl, i, f"skew_ctl{i}", Control)),
            ]
        for j in range(C):
            lane = self.b[j * w:(j + 1) * w].as_signed()
            m.d.comb += pes[0][j].b_in.eq(delayed(lane, j, f"skew_b{j}", signed(w)))

        for i in range(R):
            for j in range(C):
                pe = pes[i][j]
                m.d.comb += pe.shift.eq(self.shift)
                if j + 1 < C:
                    m.d.comb += [pes[i][j + 1].a_in.eq(pe.a_out),
                                 pes[i][j + 1].ctl_in.eq(pe.ctl_out)]
                if i + 1 < R:
                    m.d.comb += [pes[i + 1][j].b_in.eq(pe.b_out),
                                 pe.drain_in.eq(pes[i + 1][j].drain_out)]
                else:
                    m.d.comb += pe.drain_in.eq(0)

        aw = self.acc_width
        for j in range(C):
            m.d.comb += self.out[j * aw:(j + 1) * aw].eq(pes[0][j].drain_out)
        return m
