"""Weight buffer of the conv core: a group's weights kept on chip across pixel tiles."""

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WeightBuffer"]


class WeightBuffer(wiring.Component):
    """``depth`` words of one ``b`` beat each, written during a group's first pixel tile
    and replayed for the group's later pixel tiles (``conv_regmap`` MODE.WREUSE).

    ``start`` (a job starts; ``enable`` is sampled with it) makes the next pixel tile the
    first of its group. Every A step (``fire``) of a group's first pixel tile takes its
    beat from the ``b`` stream and, while fewer than ``depth`` have been taken, stores it
    at the tile's step count; a beat beyond ``depth`` marks the group as not held
    (``over``). ``tile_end`` ends a pixel tile (the step count restarts), ``group_end``
    ends its group (the next pixel tile is the next group's first). ``replay`` (comb)
    says the current step's weights come from the buffer, not the stream: enabled, not
    the group's first pixel tile, and the group held. ``b_out`` holds the weights of the
    previous cycle's step (the stream beat ``b_in`` registered, or the memory's read of
    the step's address): the same timing either way, so replaying costs no cycle.
    """

    def __init__(self, depth: int, width: int):
        self.depth, self.width = depth, width
        super().__init__({
            "start": In(1), "enable": In(1),
            "fire": In(1), "tile_end": In(1), "group_end": In(1),
            "b_in": In(width),
            "replay": Out(1), "b_out": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        D = self.depth
        m.submodules.mem = mem = memory.Memory(shape=unsigned(self.width), depth=D, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        on = Signal()          # MODE.WREUSE of the running job
        first = Signal()       # the active pixel tile is its group's first
        over = Signal()        # the group's weights did not fit
        step = Signal(range(D + 1))   # steps of this pixel tile, saturating at D
        m.d.comb += self.replay.eq(on & ~first & ~over)

        m.d.comb += [
            wp.addr.eq(step), wp.data.eq(self.b_in),
            wp.en.eq(self.fire & on & first & (step != D)),
            rp.addr.eq(step),
        ]
        stream_q, from_mem = Signal(self.width), Signal()
        m.d.sync += [stream_q.eq(self.b_in), from_mem.eq(self.replay)]
        m.d.comb += self.b_out.eq(Mux(from_mem, rp.data, stream_q))

        with m.If(self.fire):
            with m.If(step != D):
                m.d.sync += step.eq(step + 1)
            with m.Elif(first):
                m.d.sync += over.eq(1)
        with m.If(self.tile_end):
            m.d.sync += step.eq(0)
            with m.If(self.group_end):
                m.d.sync += [first.eq(1), over.eq(0)]
            with m.Else():
                m.d.sync += first.eq(0)
        with m.If(self.start):
            m.d.sync += [on.eq(self.enable), first.eq(1), over.eq(0), step.eq(0)]
        return m
