"""R x C output-stationary systolic array."""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .lane_skew import LaneSkew
from .pe import Control, PairedProcessingElement, ProcessingElement

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """Grid of :class:`ProcessingElement` with input skew and a drain chain.

    Each cycle the array takes one A column (``a``: ``rows`` lanes) and one B row
    (``b``: ``cols`` lanes) with their ``ctl`` flags. Lane i of ``a`` is delayed i cycles
    and lane j of ``b`` j cycles so that A[i, k] and B[k, j] meet in cell (i, j) at
    cycle k + i + j. The array never stalls: a cycle without data is a bubble
    (``ctl.valid`` = 0).

    ``pair_macs`` (8-bit inputs only): adjacent columns 2q, 2q+1 share one
    :class:`.pe.PairedProcessingElement` (two MACs on one 27x18 multiplier, a DSP48E2),
    and B lanes 2q and 2q+1 are both delayed q cycles; A[i, k] then meets them at cycle
    k + i + q, so the sums are ready earlier than in the unpaired array, never later.

    A tile's last beat, entering at cycle t, leaves every cell's finished sum in its
    drain register by cycle t + rows + cols - 1 + DEPOSIT_DELAY (bottom-right cell last;
    :data:`.pe.DEPOSIT_DELAY` is the cell's pipeline). After that, each ``shift`` moves
    the drain registers up one row; ``out`` shows row 0, straight from registers.

    ``cell_lanes`` > 0 adds the depthwise feed: ``a_cells`` holds ``cell_lanes`` lanes
    per row (row i's lanes at ``[i*cell_lanes*in_width, ...)``), and while ``dw`` is set
    cell column q (1 <= q < cell_lanes) of row i takes lane q of its row, delayed i + q
    cycles (:class:`.lane_skew.LaneSkew`: when the wavefront would have brought ``a``
    there), instead of its left neighbour's operand; cell column 0 always takes ``a``
    (the core presents lane 0 of its row there). The flags and B travel as before.
    """

    def __init__(self, rows: int, cols: int, in_width: int, acc_width: int,
                 pair_macs: bool = False, cell_lanes: int = 0, dsp: str = "generic"):
        if pair_macs and in_width != 8:
            raise ValueError("pair_macs needs 8-bit inputs (two products on one multiplier)")
        if pair_macs and dsp != "generic":
            raise ValueError("pair_macs packs a 27x18 multiplier (a DSP48E2): it needs "
                             f"dsp='generic', not {dsp!r}")
        self.dsp = dsp
        self.rows, self.cols = rows, cols
        self.in_width, self.acc_width = in_width, acc_width
        self.pair_macs = pair_macs
        self.cell_lanes = cell_lanes
        ports = {
            "a": In(in_width * rows),
            "b": In(in_width * cols),
            "ctl": In(Control),
            "shift": In(1),
            "out": Out(acc_width * cols),
        }
        if cell_lanes:
            ports.update(a_cells=In(in_width * rows * cell_lanes), dw=In(1))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        R, C, w, aw = self.rows, self.cols, self.in_width, self.acc_width

        # Cell columns: with pair_macs, columns 2q and 2q+1 share cell column q (and so
        # the A operand; an odd last column gets a single cell); else one per column.
        groups = ([list(range(j, min(j + 2, C))) for j in range(0, C, 2)]
                  if self.pair_macs else [[j] for j in range(C)])

        def make(cols):
            return (PairedProcessingElement(aw) if len(cols) == 2
                    else ProcessingElement(w, aw, self.dsp))

        cells = [[make(g) for g in groups] for _ in range(R)]
        for i in range(R):
            for q, g in enumerate(groups):
                m.submodules[f"pe_{i}_{g[0]}"] = cells[i][q]

        def ports(cell, g, name):
            """The cell's port ``name`` (b_in, b_out, drain_in, drain_out) per column."""
            if len(g) == 1:
                return [getattr(cell, name)]
            stem, end = name.split("_")
            return [getattr(cell, f"{stem}{k}_{end}") for k in range(2)]

        def delayed(value, cycles, name, shape):
            for s in range(cycles):
                reg = Signal(shape, name=f"{name}_d{s}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        for i in range(R):
            lane = self.a[i * w:(i + 1) * w].as_signed()
            m.d.comb += [
                cells[i][0].a_in.eq(delayed(lane, i, f"skew_a{i}", signed(w))),
                cells[i][0].ctl_in.eq(delayed(self.ctl, i, f"skew_ctl{i}", Control)),
            ]
        # B lane j is delayed by its cell column, so it meets A there
        for q, g in enumerate(groups):
            for j, port in zip(g, ports(cells[0][q], g, "b_in")):
                lane = self.b[j * w:(j + 1) * w].as_signed()
                m.d.comb += port.eq(delayed(lane, q, f"skew_b{j}", signed(w)))

        L = min(self.cell_lanes, len(groups))
        fed = [[None] * len(groups) for _ in range(R)]   # depthwise operand per cell
        if L > 1:
            for i in range(R):
                row = self.a_cells[i * self.cell_lanes * w:(i + 1) * self.cell_lanes * w]
                m.submodules[f"dw_skew_{i}"] = sk = LaneSkew(L - 1, w, base=i + 1)
                m.d.comb += sk.i.eq(row[w:L * w])
                for q in range(1, L):
                    fed[i][q] = sk.o[(q - 1) * w:q * w].as_signed()
        for i in range(R):
            for q, g in enumerate(groups):
                cell = cells[i][q]
                m.d.comb += cell.shift.eq(self.shift)
                if q + 1 < len(groups):
                    nxt = fed[i][q + 1]
                    m.d.comb += [cells[i][q + 1].a_in.eq(
                                     cell.a_out if nxt is None else Mux(self.dw, nxt, cell.a_out)),
                                 cells[i][q + 1].ctl_in.eq(cell.ctl_out)]
                d_in = ports(cell, g, "drain_in")
                if i + 1 < R:
                    below = cells[i + 1][q]
                    for b_in, b_out in zip(ports(below, g, "b_in"), ports(cell, g, "b_out")):
                        m.d.comb += b_in.eq(b_out)
                    for d, d_out in zip(d_in, ports(below, g, "drain_out")):
                        m.d.comb += d.eq(d_out)
                else:
                    m.d.comb += [d.eq(0) for d in d_in]

        for q, g in enumerate(groups):
            for j, d_out in zip(g, ports(cells[0][q], g, "drain_out")):
                m.d.comb += self.out[j * aw:(j + 1) * aw].eq(d_out)
        return m
