"""Output-stationary processing element."""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .dsp import check_dsp, registered_product

__all__ = ["Control", "ProcessingElement", "PairedProcessingElement", "DEPOSIT_DELAY",
           "PAIR_SHIFT"]

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
    (:data:`DEPOSIT_DELAY` cycles later than an unpipelined cell). ``dsp`` says how the
    operand and product registers are built (:func:`.dsp.registered_product`).
    """

    def __init__(self, in_width: int, acc_width: int, dsp: str = "generic"):
        self.in_width = in_width
        self.acc_width = acc_width
        self.dsp = check_dsp(dsp)
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
        # operand registers beside the multiplier, then the product register
        prod = registered_product(m, self.a_in, self.b_in, 2 * w, dsp=self.dsp, name="mul")
        ctl_p = Signal(Control)                           # flags of the product
        acc = Signal(signed(self.acc_width))
        deposit = Signal()
        drain = Signal(signed(self.acc_width))

        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.b_out.eq(self.b_in),
            self.ctl_out.eq(self.ctl_in),   # also the flags of the operand registers
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


#: bit position of the second product in a paired cell's multiplier result
PAIR_SHIFT = 18


class PairedProcessingElement(wiring.Component):
    """Two int8 multiply-accumulate cells, of adjacent columns, on one multiplier.

    Both columns see the same A operand in the same cycle, so one signed multiply
    ``a * (b0 + b1 * 2**18)`` (8 x 27 bits: one DSP48E2, A on its 18-bit port and the
    packed B on its 27-bit port) gives both products: ``a*b0`` is the low 18 bits read
    as a signed number (|a*b0| <= 2**14 fits), and ``a*b1`` is the rest, plus the borrow
    that a negative low product took from it (bit 17). Each product goes into its own
    32-bit accumulator in fabric: an 18-bit field could not hold more than a few sums
    before spilling into its neighbour, so the products are split every cycle.

    Ports and timing are those of two :class:`ProcessingElement` side by side, with one
    ``a``/``ctl`` path (``b0``/``drain0`` the left column, ``b1``/``drain1`` the right);
    the pipeline has the same stages (:data:`DEPOSIT_DELAY`).
    """

    def __init__(self, acc_width: int):
        self.in_width, self.acc_width = 8, acc_width
        w = self.in_width
        super().__init__({
            "a_in": In(signed(w)), "a_out": Out(signed(w)),
            "b0_in": In(signed(w)), "b0_out": Out(signed(w)),
            "b1_in": In(signed(w)), "b1_out": Out(signed(w)),
            "ctl_in": In(Control), "ctl_out": Out(Control),
            "shift": In(1),
            "drain0_in": In(signed(acc_width)), "drain0_out": Out(signed(acc_width)),
            "drain1_in": In(signed(acc_width)), "drain1_out": Out(signed(acc_width)),
        })

    def elaborate(self, platform):
        m = Module()
        w, aw = self.in_width, self.acc_width
        # packed B = b1 * 2**18 + b0, built without an adder over the low field: b0
        # sign-extended to 18 bits, and above it b1 minus b0's sign (that borrow).
        b0_ext = Signal(signed(PAIR_SHIFT))
        b1_adj = Signal(signed(w + 1))
        m.d.comb += [b0_ext.eq(self.b0_in), b1_adj.eq(self.b1_in - self.b0_in[w - 1])]
        a_m = Signal(signed(w))
        bp_m = Signal(signed(PAIR_SHIFT + w + 1))
        prod = Signal(signed(w + len(bp_m)))
        ctl_p = Signal(Control)
        acc0, acc1 = Signal(signed(aw)), Signal(signed(aw))
        drain0, drain1 = Signal(signed(aw)), Signal(signed(aw))
        deposit = Signal()
        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.b0_out.eq(self.b0_in),
            self.b1_out.eq(self.b1_in),
            self.ctl_out.eq(self.ctl_in),
            a_m.eq(self.a_in),
            bp_m.eq(Cat(b0_ext, b1_adj).as_signed()),
            prod.eq(a_m * bp_m),
            ctl_p.eq(self.ctl_out),
            deposit.eq(ctl_p.last & ctl_p.valid),
        ]
        lo = prod[:PAIR_SHIFT].as_signed()            # a * b0
        hi = prod[PAIR_SHIFT:].as_signed()            # a * b1 - (a * b0 < 0)
        with m.If(ctl_p.valid):
            m.d.sync += [acc0.eq(Mux(ctl_p.first, 0, acc0) + lo),
                         acc1.eq(Mux(ctl_p.first, 0, acc1) + hi + prod[PAIR_SHIFT - 1])]
        with m.If(deposit):
            m.d.sync += [drain0.eq(acc0), drain1.eq(acc1)]
        with m.Elif(self.shift):
            m.d.sync += [drain0.eq(self.drain0_in), drain1.eq(self.drain1_in)]
        m.d.comb += [self.drain0_out.eq(drain0), self.drain1_out.eq(drain1)]
        return m
