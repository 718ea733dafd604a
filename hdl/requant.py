"""The output stage both cores share: ReLU and int32 -> int8 requantization.

Per lane, with a per-lane signed 32-bit multiplier ``m`` and a shift ``s`` in [0, 63]:

    p = x * m                      exact, 64 bits
    y = (p >> s) + p[s - 1]        round to nearest, ties towards +inf (no rounding at s = 0)
    y = clamp(y, -128, 127)        saturate; with ReLU clamp(y, 0, 127)

and the int8 result sign-extended into the 32-bit lane. With requantization off the
same datapath runs with m = 1, s = 0 and no saturation, so the lane keeps its int32
value (clamped at 0 with ReLU). ``lepton_accel.numerics.requantize`` is the same
arithmetic in NumPy.

Six registered stages, each at most one multiplier, one adder or one shifter: the input
beat with its parameters; four 16x16 partial products (each one 18x18 DSP multiplier);
``hh * 2**32 + ll`` (a concatenation) and the middle sum ``lh + hl``; the product
``base + mid * 2**16``; the shift with its rounding bit; rounding, saturation and ReLU. All stages advance together when the last one is empty or its beat
is taken (``o.ready``), so ``i.ready`` is a function of ``o.ready`` and one register.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .dsp import check_dsp, registered_product

__all__ = ["Requant", "REQUANT_DELAY", "MULT_BITS", "SHIFT_BITS"]

#: cycles a beat spends in the stage (its registers)
REQUANT_DELAY = 6
#: width of a lane's multiplier (signed) and of its shift
MULT_BITS, SHIFT_BITS = 32, 6


class Requant(wiring.Component):
    """``lanes`` lanes of ``aw`` bits (signed) through ReLU / requantization.

    ``i`` and ``o`` carry ``layout`` (a StructLayout with a ``data`` field of
    ``lanes * aw`` bits; the other fields travel along unchanged). ``mult`` (lanes x 32)
    and ``shift`` (lanes x 6) are taken with each beat on ``i``; ``relu`` and
    ``requant`` select the function and must not change while beats are in the stage.
    """

    def __init__(self, lanes: int, aw: int, layout: data.StructLayout, dsp: str = "generic"):
        self.lanes, self.aw, self.layout = lanes, aw, layout
        self.dsp = check_dsp(dsp)   # how the partial products' registers are built
        super().__init__({
            "i": In(stream.Signature(layout)),
            "o": Out(stream.Signature(layout)),
            "mult": In(lanes * MULT_BITS),
            "shift": In(lanes * SHIFT_BITS),
            "relu": In(1),
            "requant": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        L, aw = self.lanes, self.aw
        PW = aw + MULT_BITS                      # product width
        n = REQUANT_DELAY
        # the fields other than data (tlast and the like) travel in a register per stage
        others = [name for name, _ in self.layout if name != "data"]
        side_w = sum(len(self.i.payload[f]) for f in others)
        valid = [Signal(name=f"rq_valid{k}") for k in range(n)]
        side = [Signal(max(side_w, 1), name=f"rq_side{k}") for k in range(n)]
        adv = Signal()
        m.d.comb += [
            adv.eq(~valid[-1] | self.o.ready),
            self.i.ready.eq(adv),
            self.o.valid.eq(valid[-1]),
        ]
        with m.If(adv):
            m.d.sync += valid[0].eq(self.i.valid)
            m.d.sync += side[0].eq(Cat(*[self.i.payload[f] for f in others]))
            for k in range(1, n):
                m.d.sync += [valid[k].eq(valid[k - 1]), side[k].eq(side[k - 1])]

        out_lanes = []
        H = MULT_BITS // 2           # the 32x32 product as four 16x16 partial products
        for j in range(L):
            # stage 0: the lane and its parameters (m = 1, s = 0 without requantization),
            # registered beside each multiplier; stage 1: the partial products (each fits
            # an 18x18 signed multiplier), registered (:func:`.dsp.registered_product`)
            x_in = self.i.payload.data[j * aw:(j + 1) * aw]
            m_in = Signal(signed(MULT_BITS), name=f"rq_min{j}")
            m.d.comb += m_in.eq(Mux(self.requant,
                                    self.mult[j * MULT_BITS:(j + 1) * MULT_BITS], 1))
            s0 = Signal(SHIFT_BITS, name=f"rq_s{j}")
            xl, xh = x_in[:H].as_unsigned(), x_in[H:].as_signed()
            ml, mh = m_in[:H].as_unsigned(), m_in[H:].as_signed()
            ll, lh, hl, hh = (
                registered_product(m, u, v, wd, dsp=self.dsp, en=adv, name=f"rq_{nm}{j}")
                for u, v, wd, nm in ((xl, ml, 2 * H + 1, "ll"),   # unsigned, 32 bits
                                     (xl, mh, 2 * H + 1, "lh"), (xh, ml, 2 * H + 1, "hl"),
                                     (xh, mh, 2 * H, "hh")))
            # stage 2: hh * 2**32 + ll (a concatenation) and the middle sum
            base = Signal(signed(PW), name=f"rq_base{j}")
            mid = Signal(signed(2 * H + 2), name=f"rq_mid{j}")
            # stage 3: the product p = base + mid * 2**16
            p3 = Signal(signed(PW), name=f"rq_p{j}")
            # stage 4: p >> s and the rounding bit p[s-1]
            q4 = Signal(signed(PW), name=f"rq_q{j}")
            r4 = Signal(name=f"rq_r{j}")
            # stage 5: the lane's output
            y5 = Signal(aw, name=f"rq_y{j}")
            # the shift travels with the beat
            s_at = [s0] + [Signal(SHIFT_BITS, name=f"rq_s{k}_{j}") for k in (1, 2, 3)]

            shifted = Signal(signed(PW + 1), name=f"rq_sh{j}")
            m.d.comb += shifted.eq(Cat(Const(0, 1), p3).as_signed() >> s_at[3])

            sat_hi = Signal(name=f"rq_sat_hi{j}")   # q >= 127: the result is 127
            sat_lo = Signal(name=f"rq_sat_lo{j}")   # q < -128: the result is -128
            y8 = Signal(signed(8), name=f"rq_y8_{j}")
            m.d.comb += [
                sat_hi.eq(~q4[-1] & (q4[7:].any() | (q4[:7] == 0x7F))),
                sat_lo.eq(q4[-1] & ~q4[7:].all()),
                # otherwise q is in [-128, 126] and q + r fits in 8 bits
                y8.eq(Mux(sat_hi, 127, Mux(sat_lo, -128, (q4[:8] + r4)[:8].as_signed()))),
            ]
            wide = Mux(self.requant, y8, q4[:aw].as_signed())   # sign-extended to aw
            with m.If(adv):
                m.d.sync += [
                    s0.eq(Mux(self.requant, self.shift[j * SHIFT_BITS:(j + 1) * SHIFT_BITS], 0)),
                    base.eq(Cat(ll[:2 * H], hh).as_signed()), mid.eq(lh + hl),
                    p3.eq(base + (mid << H)),
                    q4.eq(shifted[1:]), r4.eq(shifted[0]),
                    y5.eq(Mux(self.relu & wide[aw - 1], 0, wide)),
                ]
                m.d.sync += [s_at[k].eq(s_at[k - 1]) for k in (1, 2, 3)]
            out_lanes.append(y5)
        m.d.comb += self.o.payload.data.eq(Cat(*out_lanes))
        pos = 0
        for f in others:
            w = len(self.o.payload[f])
            m.d.comb += self.o.payload[f].eq(side[-1][pos:pos + w])
            pos += w
        return m

