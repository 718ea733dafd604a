"""Matmul core: the systolic array with its tile sequencer, on amaranth streams."""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from . import matmul_regmap as regmap
from .axi import RegisterSlice, beat_layout
from .drain import drain_output
from .dsp import check_dsp
from .pe import DEPOSIT_DELAY, Control
from .systolic import SystolicArray

__all__ = ["MatmulCore"]


class MatmulCore(wiring.Component):
    """C = A @ B (+ bias) for one job of M x K by K x N, tile by tile.

    Ports follow :mod:`.matmul_regmap` (stream formats and tile order). ``start`` begins a job
    with ``m``, ``n``, ``k``, ``bias_en`` (read in the cycle after the strobe, when
    ``busy`` rises); it is ignored while ``busy`` (``err_start_busy``) or with a zero
    dimension (``err_dim``). Error outputs are one-cycle strobes.

    Flow: a and b beats go into a two-entry register slice each while the job takes
    input; a beat pair is taken from the slices when both hold one, and enters the
    array one cycle later. A tile's last pair is held back until the previous tile has
    left the drain registers, which is the only way output backpressure reaches the
    inputs. Output rows go through a register slice too (:func:`.drain.drain_output`).
    """

    def __init__(self, rows: int, cols: int, dtype: str = "int8",
                 pair_macs: bool | None = None, out_stage: bool = True,
                 dsp: str = "generic"):
        widths = regmap.stream_widths(rows, cols, dtype)
        self.rows, self.cols, self.dtype = rows, cols, dtype
        self.out_stage = bool(out_stage)   # build the output stage (ReLU / requantization)
        # two int8 MACs per multiplier (a DSP48E2's 27x18) unless told otherwise
        # (a DSP48E2's 27x18 product: only with the generic multipliers)
        self.dsp = check_dsp(dsp)   # how the multipliers hold their registers (.dsp)
        self.pair_macs = (dtype == "int8" and dsp == "generic") if pair_macs is None \
            else pair_macs
        self.in_width = regmap.DTYPES[dtype]
        self.acc_width = regmap.ACC_WIDTH
        dim = regmap.DIM_BITS
        super().__init__({
            "a": In(stream.Signature(beat_layout(widths["a"]))),
            "b": In(stream.Signature(beat_layout(widths["b"]))),
            "bias": In(stream.Signature(beat_layout(widths["bias"]))),
            "q": In(stream.Signature(beat_layout(widths["q"]))),
            "c": Out(stream.Signature(beat_layout(widths["c"]))),
            "start": In(1),
            "m": In(dim), "n": In(dim), "k": In(dim),
            "bias_en": In(1),
            "relu_en": In(1), "rq_en": In(1),   # the output stage (see drain_output)
            "busy": Out(1),
            "done": Out(1),  # strobe: the job's last output beat was accepted
            "cycles": Out(64),
            "tiles_done": Out(32),
            "stall_in": Out(32),
            "stall_out": Out(32),
            "err_start_busy": Out(1),
            "err_dim": Out(1),
            "err_a_last": Out(1),
            "err_b_last": Out(1),
            "err_bias_last": Out(1),
            "err_q_last": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        R, C, aw = self.rows, self.cols, self.acc_width
        dim = regmap.DIM_BITS

        m.submodules.array = array = SystolicArray(R, C, self.in_width, aw, self.pair_macs,
                                                     dsp=self.dsp)

        # Job parameters, latched at start.
        m_r, n_r, k_r = Signal(dim), Signal(dim), Signal(dim)
        k_m1 = Signal(dim)              # K - 1: the last beat's index
        bias_en = Signal()

        # Feed side: position of the tile being streamed in.
        feeding = Signal()
        kc = Signal(dim)
        rows_left = Signal(dim)         # M - row0 of the tile (row0: its first row)
        cols_left = Signal(dim)         # N - col0 (col0: its first column)

        # Drain side: the tile whose sums are in (or moving into) the drain registers.
        fill = Signal(range(R + C + DEPOSIT_DELAY + 1))
        draining = Signal()
        d_rows = Signal(range(R + 1))   # beats this tile sends
        d_mask = Signal(C)              # its valid columns
        d_final = Signal()              # last tile of the job
        d_row = Signal(range(R))
        drain_free = Signal()
        m.d.comb += drain_free.eq((fill == 0) & ~draining)

        # START is acted on one cycle after the register write that raised it, so the
        # write decode does not drive every register's enable in the same cycle; the
        # sizes are unchanged then (the next register write comes later).
        start_q = Signal()
        m.d.sync += start_q.eq(self.start)
        start_ok = Signal()
        m.d.comb += [
            start_ok.eq(start_q & ~self.busy
                        & (self.m != 0) & (self.n != 0) & (self.k != 0)),
            self.err_start_busy.eq(start_q & self.busy),
            self.err_dim.eq(start_q & ~self.busy
                            & ((self.m == 0) | (self.n == 0) | (self.k == 0))),
        ]

        # --- feed ---------------------------------------------------------------
        # Register slices on a and b: the ports' tready come from registers, so no
        # combinational path runs from one stream's tvalid to the other's tready; the
        # pairing below works on the slices' outputs.
        slices = {}
        for name in ("a", "b"):
            port = getattr(self, name)
            sl = slices[name] = RegisterSlice(port.payload.shape())
            m.submodules[f"{name}_slice"] = sl
            m.d.comb += [sl.i.payload.eq(port.payload), sl.i.valid.eq(port.valid & feeding),
                         port.ready.eq(sl.i.ready & feeding)]
        a_in, b_in = slices["a"].o, slices["b"].o

        is_last = Signal()
        both = Signal()
        fire = Signal()
        m.d.comb += [
            is_last.eq(kc == k_m1),
            both.eq(a_in.valid & b_in.valid),
            fire.eq(feeding & both & (~is_last | drain_free)),
            a_in.ready.eq(fire),
            b_in.ready.eq(fire),
            self.err_a_last.eq(fire & (a_in.payload.last != is_last)),
            self.err_b_last.eq(fire & (b_in.payload.last != is_last)),
        ]

        # Registered injection keeps the array off the slices' output select.
        ctl = Signal(Control)
        m.d.sync += [
            array.a.eq(a_in.payload.data),
            array.b.eq(b_in.payload.data),
            ctl.valid.eq(fire),
            ctl.first.eq(kc == 0),
            ctl.last.eq(is_last),
        ]
        m.d.comb += array.ctl.eq(ctl)

        # The tile's position as rows and columns left: every test on it compares a
        # register with a constant.
        tile_rows = Signal(range(R + 1))
        last_col = Signal()
        last_row = Signal()
        m.d.comb += [
            tile_rows.eq(Mux(rows_left >= R, R, rows_left)),
            last_col.eq(cols_left <= C),
            last_row.eq(rows_left <= R),
        ]

        with m.If(fire):
            with m.If(is_last):
                m.d.sync += kc.eq(0)
                with m.If(last_col):
                    m.d.sync += [cols_left.eq(n_r), rows_left.eq(rows_left - R)]
                    with m.If(last_row):
                        m.d.sync += feeding.eq(0)
                with m.Else():
                    m.d.sync += cols_left.eq(cols_left - C)
                # Hand the tile to the drain side: its bottom-right sum reaches its drain
                # register R + C + DEPOSIT_DELAY cycles on (injection register, R-1 + C-1
                # of skew, one into the drain register, the cells' pipeline).
                m.d.sync += [
                    fill.eq(R + C + DEPOSIT_DELAY - 1),
                    d_rows.eq(tile_rows),
                    d_mask.eq(Cat(*[cols_left > j for j in range(C)])),
                    d_final.eq(last_col & last_row),
                ]
            with m.Else():
                m.d.sync += kc.eq(kc + 1)

        with m.If(fill != 0):
            m.d.sync += fill.eq(fill - 1)
            with m.If(fill == 1):
                m.d.sync += [draining.eq(1), d_row.eq(0)]

        # --- drain --------------------------------------------------------------
        push, row_last, tile_sent, job_sent = drain_output(
            m, self, array, busy=self.busy, draining=draining, final=d_final, bias_en=bias_en,
            d_row=d_row, d_rows=d_rows, d_mask=d_mask, aw=aw, start=start_ok,
            out_stage=self.out_stage, dsp=self.dsp)
        with m.If(push):
            m.d.sync += d_row.eq(d_row + 1)
            with m.If(row_last):
                m.d.sync += draining.eq(0)
        with m.If(tile_sent):
            m.d.sync += self.tiles_done.eq(self.tiles_done + 1)
        with m.If(job_sent):
            m.d.sync += self.busy.eq(0)
            m.d.comb += self.done.eq(1)

        # --- counters -----------------------------------------------------------
        a_missing = Signal()
        b_missing = Signal()
        m.d.comb += [a_missing.eq(~a_in.valid & ~self.a.valid),
                     b_missing.eq(~b_in.valid & ~self.b.valid)]
        with m.If(self.busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(feeding & (a_missing | b_missing)):
                m.d.sync += self.stall_in.eq(self.stall_in + 1)
            with m.If(feeding & both & is_last & ~drain_free):
                m.d.sync += self.stall_out.eq(self.stall_out + 1)

        # --- start --------------------------------------------------------------
        with m.If(start_ok):
            m.d.sync += [
                m_r.eq(self.m), n_r.eq(self.n), k_r.eq(self.k), k_m1.eq(self.k - 1),
                bias_en.eq(self.bias_en),
                self.busy.eq(1), feeding.eq(1),
                kc.eq(0), rows_left.eq(self.m), cols_left.eq(self.n),
                self.cycles.eq(0), self.tiles_done.eq(0),
                self.stall_in.eq(0), self.stall_out.eq(0),
            ]
        return m
