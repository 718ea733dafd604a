"""The drain side both cores share: bias per tile, output lanes, the output stage
(ReLU / requantization), the c stream."""

from amaranth import Cat, Mux, Signal
from amaranth.lib import data

from .axi import RegisterSlice
from .requant import MULT_BITS, REQUANT_DELAY, SHIFT_BITS, Requant

__all__ = ["drain_output", "OUT_DELAY", "REQUANT_DELAY", "Q_LANE_BITS"]

#: cycles from a row leaving the array to its beat on ``c`` (the output register slice)
OUT_DELAY = 1
#: bits per lane of a ``q`` beat: multiplier in [31:0], shift in [37:32], the rest zero
Q_LANE_BITS = 64


def drain_output(m, comp, array, *, busy, draining, final, bias_en, d_row, d_rows, d_mask,
                 aw: int, start, out_stage: bool = True, dsp: str = "generic"):
    """The drain side both cores share: take one bias beat per tile (when ``bias_en``)
    into a bias register, flag a bias beat without tlast, and move the array's output
    row into a two-entry register slice in front of ``comp.c``: lane j = sum + bias
    (wrapping to ``aw`` bits), zero where bit j of ``d_mask`` (the tile's valid columns,
    a register) is clear; tlast on row ``d_rows - 1``. ``final`` marks the job's last
    tile. A row moves (``push``, which also shifts the array) when the tile is
    ``draining``, its bias is in, and the slice has room; ``c.tready`` reaches only the
    slice, never the array or the bias register.

    Returns (push, row_last, tile_sent, job_sent): a row moved, it was the tile's last;
    a tile's tlast beat, the job's last beat, was taken on ``c``.

    A tile's bias beat is taken as soon as the register is free: while the tile is
    still computing, or in the cycle the previous tile's last row moves into the slice
    (the handoff). So the bias never delays an output row at full stream rate, and
    CYCLES is the same with and without BIAS_EN. The job's last tile keeps its bias
    until its last beat has left (the next beat on the bias stream belongs to the next
    job).

    The output stage (:class:`.requant.Requant`): with ``comp.relu_en`` or
    ``comp.rq_en`` (taken at ``start``, the cycle a job starts) every row goes through
    it on its way to the slice, REQUANT_DELAY cycles more; otherwise rows move straight
    into the slice as before. With ``rq_en`` the tile's per-lane multipliers and shifts
    come as one beat on ``comp.q`` per tile, handled exactly like the bias beat (a
    register, taken while the tile computes or at the handoff); a row takes them into
    the stage when it moves, so the next tile's beat may replace them at once.

    With ``out_stage`` False the stage is not built (no multipliers, no q register):
    rows always move straight into the slice, ``comp.q`` is never ready, and the core's
    ``relu_en`` / ``rq_en`` are not read (the register block refuses such a START).
    ``dsp``: how the stage's multipliers hold their registers (:mod:`.dsp`)."""
    C = len(array.out) // aw
    bias_full = Signal(name="bias_full")
    bias_reg = Signal(C * aw, name="bias_reg")
    lanes = []
    for j in range(C):
        s = array.out[j * aw:(j + 1) * aw]
        bj = Mux(bias_en, bias_reg[j * aw:(j + 1) * aw], 0)
        lanes.append(Mux(d_mask[j], (s + bj)[:aw], 0))

    layout = data.StructLayout({"data": C * aw, "last": 1, "end": 1})
    m.submodules.c_slice = out = RegisterSlice(layout)

    row_last = Signal()
    push = Signal()
    row_ok = Signal()
    row = Signal(layout, name="out_row")   # the row leaving the array
    # d_rows - 1 in a register, so row_last is a compare of two registers: the core
    # writes d_rows when a tile's last step enters, many cycles before it drains
    last_idx = Signal.like(d_rows, name="d_last_idx")
    m.d.sync += last_idx.eq(d_rows - 1)
    m.d.comb += [
        row_last.eq(d_row == last_idx),
        row.data.eq(Cat(*lanes)),
        row.last.eq(row_last),
        row.end.eq(row_last & final),
        array.shift.eq(push),
    ]

    if out_stage:
        m.submodules.requant = rq = Requant(C, aw, layout, dsp)
        # the job's output mode, taken when it starts
        relu_en, rq_en = Signal(name="relu_en"), Signal(name="rq_en")
        with m.If(start):
            m.d.sync += [relu_en.eq(comp.relu_en), rq_en.eq(comp.rq_en)]
        staged = Signal(name="out_staged")
        q_full = Signal(name="q_full")
        q_mult = Signal(C * MULT_BITS, name="q_mult")
        q_shift = Signal(C * SHIFT_BITS, name="q_shift")
        m.d.comb += [
            staged.eq(relu_en | rq_en),
            row_ok.eq(draining & (~bias_en | bias_full) & (~rq_en | q_full)),
            rq.i.valid.eq(staged & row_ok),
            rq.i.payload.eq(row),
            rq.mult.eq(q_mult), rq.shift.eq(q_shift),
            rq.relu.eq(relu_en), rq.requant.eq(rq_en),
            rq.o.ready.eq(out.i.ready),
            out.i.valid.eq(Mux(staged, rq.o.valid, row_ok)),
            out.i.payload.eq(Mux(staged, rq.o.payload, row)),
            push.eq(row_ok & Mux(staged, rq.i.ready, out.i.ready)),
        ]
    else:
        m.d.comb += [
            row_ok.eq(draining & (~bias_en | bias_full)),
            out.i.valid.eq(row_ok),
            out.i.payload.eq(row),
            push.eq(row_ok & out.i.ready),
        ]

    c_fire, tile_sent, job_sent = Signal(), Signal(), Signal()
    m.d.comb += [
        comp.c.valid.eq(out.o.valid),
        comp.c.payload.data.eq(out.o.payload.data),
        comp.c.payload.last.eq(out.o.payload.last),
        out.o.ready.eq(comp.c.ready),
        c_fire.eq(comp.c.valid & comp.c.ready),
        tile_sent.eq(c_fire & out.o.payload.last),
        job_sent.eq(c_fire & out.o.payload.end),
    ]

    handoff = Signal()
    m.d.comb += [
        handoff.eq(push & row_last & ~final),
        comp.bias.ready.eq(busy & bias_en & (~bias_full | handoff)),
    ]
    # the error strobes reach ERROR one cycle after the beat: a register between the
    # handshake and the register block
    m.d.sync += comp.err_bias_last.eq(comp.bias.valid & comp.bias.ready
                                      & ~comp.bias.payload.last)
    with m.If(handoff | job_sent):
        m.d.sync += bias_full.eq(0)
    with m.If(comp.bias.valid & comp.bias.ready):  # after the clear: a handoff refills it
        m.d.sync += [bias_reg.eq(comp.bias.payload.data), bias_full.eq(1)]

    if out_stage:
        m.d.comb += comp.q.ready.eq(busy & rq_en & (~q_full | handoff))
        m.d.sync += comp.err_q_last.eq(comp.q.valid & comp.q.ready & ~comp.q.payload.last)
        with m.If(handoff | job_sent):
            m.d.sync += q_full.eq(0)
        with m.If(comp.q.valid & comp.q.ready):
            qd = comp.q.payload.data
            m.d.sync += [
                q_mult.eq(Cat(*[qd[j * Q_LANE_BITS:j * Q_LANE_BITS + MULT_BITS]
                                for j in range(C)])),
                q_shift.eq(Cat(*[qd[j * Q_LANE_BITS + MULT_BITS:
                                    j * Q_LANE_BITS + MULT_BITS + SHIFT_BITS]
                                 for j in range(C)])),
                q_full.eq(1),
            ]
    return push, row_last, tile_sent, job_sent
