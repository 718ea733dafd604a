"""The drain side both cores share: bias per tile, output lanes, the c stream."""

from amaranth import Cat, Mux, Signal

__all__ = ["drain_output"]


def drain_output(m, comp, array, *, busy, draining, final, bias_en, bias_full, bias_reg, d_row,
                 d_rows, d_col0, n_valid, aw: int):
    """The drain side both cores share: take one bias beat per tile (when ``bias_en``)
    into ``bias_reg``, flag a bias beat without tlast, and present the array's output
    row on ``comp.c``: lane j = sum + bias (wrapping to ``aw`` bits), zero for columns
    ``d_col0 + j`` past ``n_valid``; tlast on row ``d_rows - 1``. ``final`` marks the
    job's last tile. Returns (c_fire, out_last); a fired beat also shifts the array,
    and the last beat of a tile frees the bias register.

    A tile's bias beat is taken as soon as the register is free: while the tile is
    still computing, or in the same cycle as the previous tile's last output beat. So
    the bias never delays an output beat at full stream rate, and CYCLES is the same
    with and without BIAS_EN. The job's last beat takes no bias (the next beat on the
    stream belongs to the next job)."""
    C = len(array.out) // aw
    lanes = []
    for j in range(C):
        s = array.out[j * aw:(j + 1) * aw]
        bj = Mux(bias_en, bias_reg[j * aw:(j + 1) * aw], 0)
        lanes.append(Mux(d_col0 + j < n_valid, (s + bj)[:aw], 0))
    out_last = Signal()
    m.d.comb += [
        out_last.eq(d_row == d_rows - 1),
        comp.c.valid.eq(draining & (~bias_en | bias_full)),
        comp.c.payload.data.eq(Cat(*lanes)),
        comp.c.payload.last.eq(out_last),
    ]
    c_fire = Signal()
    m.d.comb += [c_fire.eq(comp.c.valid & comp.c.ready), array.shift.eq(c_fire)]

    handoff = Signal()
    m.d.comb += [
        handoff.eq(c_fire & out_last & ~final),
        comp.bias.ready.eq(busy & bias_en & (~bias_full | handoff)),
        comp.err_bias_last.eq(comp.bias.valid & comp.bias.ready & ~comp.bias.payload.last),
    ]
    with m.If(c_fire & out_last):
        m.d.sync += bias_full.eq(0)
    with m.If(comp.bias.valid & comp.bias.ready):  # after the clear: a handoff refills it
        m.d.sync += [bias_reg.eq(comp.bias.payload.data), bias_full.eq(1)]
    return c_fire, out_last
