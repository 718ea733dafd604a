"""The drain side both cores share: bias per tile, output lanes, the c stream."""

from amaranth import Cat, Mux, Signal
from amaranth.lib import data

from .axi import RegisterSlice

__all__ = ["drain_output", "OUT_DELAY"]

#: cycles from a row leaving the array to its beat on ``c`` (the output register slice)
OUT_DELAY = 1


def drain_output(m, comp, array, *, busy, draining, final, bias_en, d_row, d_rows, d_mask,
                 aw: int):
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
    job)."""
    C = len(array.out) // aw
    bias_full = Signal(name="bias_full")
    bias_reg = Signal(C * aw, name="bias_reg")
    lanes = []
    for j in range(C):
        s = array.out[j * aw:(j + 1) * aw]
        bj = Mux(bias_en, bias_reg[j * aw:(j + 1) * aw], 0)
        lanes.append(Mux(d_mask[j], (s + bj)[:aw], 0))

    m.submodules.c_slice = out = RegisterSlice(data.StructLayout(
        {"data": C * aw, "last": 1, "end": 1}))
    row_last = Signal()
    push = Signal()
    m.d.comb += [
        row_last.eq(d_row == d_rows - 1),
        out.i.valid.eq(draining & (~bias_en | bias_full)),
        out.i.payload.data.eq(Cat(*lanes)),
        out.i.payload.last.eq(row_last),
        out.i.payload.end.eq(row_last & final),
        push.eq(out.i.valid & out.i.ready),
        array.shift.eq(push),
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
        comp.err_bias_last.eq(comp.bias.valid & comp.bias.ready & ~comp.bias.payload.last),
    ]
    with m.If(handoff | job_sent):
        m.d.sync += bias_full.eq(0)
    with m.If(comp.bias.valid & comp.bias.ready):  # after the clear: a handoff refills it
        m.d.sync += [bias_reg.eq(comp.bias.payload.data), bias_full.eq(1)]
    return push, row_last, tile_sent, job_sent
