"""Conv2d core: image memory, im2col streamer and the output-stationary systolic array.

The host loads one NHWC image into on-chip memory; the streamer then generates the
array's A operand (R output pixels x K = KH*KW*CG taps) from it by address arithmetic,
with zeros for padding; weights arrive tile by tile on ``b`` as in the matmul core.
Interface and host protocol: :mod:`.conv_regmap`; the AXI top level: :mod:`.conv_top`.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from . import conv_regmap as cr
from .axi import beat_layout
from .drain import drain_output
from .dsp import check_dsp
from .pe import DEPOSIT_DELAY, Control
from .systolic import SystolicArray
from .weight_buffer import WeightBuffer

__all__ = ["ConvCore", "DIMS", "DIM_REG", "SMALL", "READ_DELAY"]

#: cycles the A operand spends between an A step and the array beyond the one cycle of
#: the memory read: the register on the memory's output and the register after the
#: element select and padding mask (the weights and flags are delayed to match)
READ_DELAY = 2

DIMS = ("n", "h", "w", "ch", "g", "cg", "ocg", "oh", "ow")
DIM_REG = {"n": "N", "h": "H", "w": "W", "ch": "C", "g": "G", "cg": "CG", "ocg": "OCG",
            "oh": "OH", "ow": "OW"}
SMALL = ("kh", "kw", "sh", "sw", "dh", "dw", "pt", "pl")


class ConvCore(wiring.Component):
    """One conv2d job (N images) on an R x C array, on amaranth streams.

    ``start`` begins a job with the size inputs; it is refused while ``busy``
    (``err_start_busy``) or with a zero size or an image larger than the memory
    (``err_dim``). Error outputs are one-cycle strobes.

    Image memory: R copies (one per array row, each with its own read port) of
    ``depth`` words of XL elements; capacity XL*depth elements per image. Every x beat is
    written to all copies at once, so loading takes ceil(H*W*C/XL) cycles.

    Streamer: a pixel walker gathers the next R output pixels (their top-left input
    coordinates and base addresses, one pixel per cycle) while the current pixel tile
    computes; each A step then reads one element per row at ``base_i + offset(kh, kw,
    c)``, zeroed when the tap falls outside the image. Strides, dilation and padding are
    all in this address generation; groups are the outer loop (a channel offset).

    Pipeline: START is acted on one cycle after the register write, so that the
    job-constant products (S*C, S*W*C, D*C, D*W*C, the padding offset, OH*OW and the
    H*W*C capacity check) come from two stages of registered multipliers that run
    continuously on the size inputs; every A step's address is one adder from registers;
    the memory read, its output register and the element select each take a cycle
    (:data:`READ_DELAY`) before lane i enters the array from a register. The loop-end
    tests of the walker and of the A steps (pixels left, last output column, last
    channel, kernel column and row, last output-channel tile) are registers, each set in
    the step before from an equality of the counter's current value with a register or a
    constant, so no comparison feeds an adder's operand select in the cycle it is made;
    the next group's base address is a register that follows the current group's.
    """

    def __init__(self, rows: int, cols: int, dtype: str = "int8", x_lanes: int | None = None,
                 depth: int = 1024, pair_macs: bool | None = None, out_stage: bool = True,
                 dsp: str = "generic"):
        x_lanes = x_lanes or cr.default_x_lanes(rows)
        cr.check_config(rows, cols, dtype, x_lanes, depth)
        widths = cr.stream_widths(rows, cols, dtype, x_lanes)
        self.rows, self.cols, self.dtype = rows, cols, dtype
        self.x_lanes, self.depth = x_lanes, depth
        self.out_stage = bool(out_stage)   # build the output stage (ReLU / requantization)
        # two int8 MACs per multiplier (a DSP48E2's 27x18) unless told otherwise
        # (a DSP48E2's 27x18 product: only with the generic multipliers)
        self.dsp = check_dsp(dsp)   # how the multipliers hold their registers (.dsp)
        self.pair_macs = (dtype == "int8" and dsp == "generic") if pair_macs is None \
            else pair_macs
        self.capacity = x_lanes * depth
        # depthwise mode: CT channels per tile, P columns per channel (conv_regmap.MODE)
        self.dw_ct, self.dw_p = cr.dw_config(cols, x_lanes, self.pair_macs)
        self.in_width = cr.DTYPES[dtype]
        self.acc_width = cr.ACC_WIDTH
        ports = {
            "x": In(stream.Signature(beat_layout(widths["x"]))),
            "b": In(stream.Signature(beat_layout(widths["b"]))),
            "bias": In(stream.Signature(beat_layout(widths["bias"]))),
            "q": In(stream.Signature(beat_layout(widths["q"]))),
            "c": Out(stream.Signature(beat_layout(widths["c"]))),
            "start": In(1),
            "bias_en": In(1),
            "relu_en": In(1), "rq_en": In(1),   # the output stage (see drain_output)
            "depthwise": In(1),
            "wreuse": In(1),
            "busy": Out(1),
            "loading": Out(1),
            "done": Out(1),
            "cycles": Out(64),
            "tiles_done": Out(32),
            "stall_in": Out(32),
            "stall_out": Out(32),
            "load_cycles": Out(32),
            "err_start_busy": Out(1),
            "err_dim": Out(1),
            "err_x_last": Out(1),
            "err_b_last": Out(1),
            "err_bias_last": Out(1),
            "err_q_last": Out(1),
        }
        ports.update({d: In(cr.DIM_BITS) for d in DIMS})
        ports.update({s: In(cr.SMALL_BITS) for s in SMALL})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        R, C, aw, w = self.rows, self.cols, self.acc_width, self.in_width
        XL = self.x_lanes
        xl_bits = XL.bit_length() - 1
        AB = max(1, (self.capacity - 1).bit_length())   # element address bits
        WB = max(1, (self.depth - 1).bit_length())      # word address bits
        CB = 26                                         # signed coordinate bits
        DB = cr.DIM_BITS

        CT, P = self.dw_ct, self.dw_p
        ct_bits = CT.bit_length() - 1
        m.submodules.array = array = SystolicArray(R, C, w, aw, self.pair_macs, cell_lanes=CT,
                                                     dsp=self.dsp)

        # --- job parameters, latched at start -------------------------------------
        p = {name: Signal(DB, name=f"{name}_r") for name in DIMS}
        p.update({name: Signal(cr.SMALL_BITS, name=f"{name}_r") for name in SMALL})
        bias_en = Signal()
        dw_on = Signal()                  # depthwise mode: channels on the columns
        gstep = Signal(DB)                # channel offset between groups (CG, or CT)
        npix = Signal(32)                 # OH*OW
        hwc = Signal(AB + 1)              # H*W*C (checked against the capacity)
        s_wc = Signal(AB)                 # SW*C: next pixel in a row
        s_hwc = Signal(AB)                # SH*W*C: next output row
        d_wc = Signal(AB)                 # DW*C: next kernel column
        d_hwc = Signal(AB)                # DH*W*C: next kernel row
        base0 = Signal(AB)                # (-PAD_T*W - PAD_L)*C, modulo 2**AB

        # Job-constant products in two registered stages, always running on the size
        # inputs (the AXI4-Lite registers). A register write takes effect at the end of
        # its cycle and the next write (START) comes two cycles later at the earliest
        # (AXILiteTarget answers each write before taking the next), and START is acted
        # on one cycle after its write: so at ``start_q`` both stages hold the products
        # of the sizes the job was started with.
        wc1 = Signal(2 * DB)            # W*C, exact
        npix1 = Signal(32)              # OH*OW
        swc1, dwc1, plc1 = Signal(AB), Signal(AB), Signal(AB)
        hb1, wb1 = Signal(DB + 1), Signal(DB + 1)   # H - 1 + PAD_T, W - 1 + PAD_L
        # H*W*C against the capacity (<= 2**AB): W*C of AB+2 bits or more is over it for
        # any H >= 1, so one multiplier of H by W*C's low AB+1 bits and a flag suffice
        hwc2 = Signal(DB + AB + 1)      # H * (W*C mod 2**(AB+1))
        over2 = Signal()                # W*C >= 2**(AB+1)
        zero1 = Signal()                # a size, kernel, stride or dilation is 0, or a
        #                                 depthwise job that is not one (CG 1, G = C, CT | C)
        dw_bad = (self.cg != 1) | (self.g != self.ch)
        if ct_bits:
            dw_bad = dw_bad | (self.ch[:ct_bits] != 0)
        shwc2, dhwc2, ptwc2, plc2 = Signal(AB), Signal(AB), Signal(AB), Signal(AB)
        m.d.sync += [
            wc1.eq(self.w * self.ch), npix1.eq(self.oh * self.ow),
            swc1.eq(self.sw * self.ch), dwc1.eq(self.dw * self.ch), plc1.eq(self.pl * self.ch),
            hb1.eq(self.h + self.pt - 1), wb1.eq(self.w + self.pl - 1),
            hwc2.eq(self.h * wc1[:AB + 1]), over2.eq(wc1[AB + 1:] != 0),
            zero1.eq(Cat(*[getattr(self, n) == 0 for n in DIMS + SMALL[:6]]).any()
                     | (self.depthwise & dw_bad)),
            shwc2.eq(self.sh * wc1[:AB]), dhwc2.eq(self.dh * wc1[:AB]),
            ptwc2.eq(self.pt * wc1[:AB]), plc2.eq(plc1 - 1),
        ]
        start_q = Signal()
        m.d.sync += start_q.eq(self.start)
        zero = Signal()
        m.d.comb += zero.eq(zero1 | over2 | (hwc2 > self.capacity))
        start_ok = Signal()
        m.d.comb += [
            start_ok.eq(start_q & ~self.busy & ~zero),
            self.err_start_busy.eq(start_q & self.busy),
            self.err_dim.eq(start_q & ~self.busy & zero),
        ]
        # sizes minus one, for the loops' end tests (equality against a register)
        m1 = {name: Signal(cr.SMALL_BITS if name in SMALL else DB, name=f"{name}_m1")
              for name in ("n", "g")}
        # ... and minus two, and "is one": the loops' end flags are registers, each set a
        # step ahead from an equality against the counter's current value
        m2 = {name: Signal(cr.SMALL_BITS if name in SMALL else DB, name=f"{name}_m2")
              for name in ("cg", "ow", "kh", "kw")}
        is1 = {name: Signal(name=f"{name}_is1") for name in ("cg", "ow", "kh", "kw")}
        npix_le1 = Signal()               # OH*OW <= 1
        ocg_le_c = Signal()               # OCG <= C (P in depthwise): one output-channel tile
        npl = Signal(signed(CB))          # -PAD_L
        npt = Signal(signed(CB))          # -PAD_T
        wb = Signal(signed(CB))           # W - 1 + PAD_L: ixb of a row's first pixel
        hb = Signal(signed(CB))           # H - 1 + PAD_T: iyb of the first row

        # --- state --------------------------------------------------------------
        loading = Signal()     # taking an image on x
        computing = Signal()   # streaming A steps for the current image
        img = Signal(DB)       # image index
        m.d.comb += self.loading.eq(loading)

        # --- image memory ---------------------------------------------------------
        mems = []
        for i in range(R):
            mem = memory.Memory(shape=unsigned(XL * w), depth=self.depth, init=[])
            m.submodules[f"image_{i}"] = mem
            mems.append((mem.write_port(), mem.read_port()))

        x_count = Signal(AB + 1)     # elements taken so far for this image
        x_last = Signal()
        x_fire = Signal()
        m.d.comb += [
            self.x.ready.eq(loading),
            x_fire.eq(self.x.valid & loading),
            x_last.eq(x_count + XL >= hwc),
            self.err_x_last.eq(x_fire & (self.x.payload.last != x_last)),
        ]
        for wp, _ in mems:
            m.d.comb += [wp.addr.eq(x_count[xl_bits:]), wp.data.eq(self.x.payload.data),
                         wp.en.eq(x_fire)]

        # --- pixel walker: gathers the next tile's R pixels ------------------------
        wk_left = Signal(32)     # pixels of this group still to gather
        wk_nz = Signal()         # wk_left != 0 (the pixel now at the walker is real)
        wk_le1 = Signal()        # wk_left <= 1 (it is the group's last)
        wk_ox = Signal(DB)
        wk_ox_last = Signal()    # wk_ox == OW - 1
        wk_ix0 = Signal(signed(CB))
        wk_iy0 = Signal(signed(CB))
        # the same coordinates from the far edge, W - 1 - ix0 and H - 1 - iy0: a tap is
        # inside the image when none of ix, iy and these two (less the kernel offset) is
        # negative, so the bounds test is four sign bits and no comparator
        wk_ixb = Signal(signed(CB))
        wk_iyb = Signal(signed(CB))
        wk_base = Signal(AB)
        wk_rowbase = Signal(AB)
        wk_gbase = Signal(AB)    # base0 + g*CG: the current group's first pixel
        wk_gnext = Signal(AB)    # wk_gbase + CG, a register behind it
        wk_g = Signal(DB)
        wk_done = Signal()
        wk_cnt = Signal(range(R))
        wk_rows = Signal(range(R + 1))

        nx_iy0 = [Signal(signed(CB), name=f"nx_iy0_{i}") for i in range(R)]
        nx_ix0 = [Signal(signed(CB), name=f"nx_ix0_{i}") for i in range(R)]
        nx_iyb = [Signal(signed(CB), name=f"nx_iyb_{i}") for i in range(R)]
        nx_ixb = [Signal(signed(CB), name=f"nx_ixb_{i}") for i in range(R)]
        nx_base = [Signal(AB, name=f"nx_base_{i}") for i in range(R)]
        nx_ok = [Signal(name=f"nx_ok_{i}") for i in range(R)]
        nx_full = Signal()
        nx_rows = Signal(range(R + 1))
        nx_last_tp = Signal()    # last pixel tile of its group
        nx_last_g = Signal()     # ... of the last group

        ac_iy0 = [Signal(signed(CB), name=f"ac_iy0_{i}") for i in range(R)]
        ac_ix0 = [Signal(signed(CB), name=f"ac_ix0_{i}") for i in range(R)]
        ac_iyb = [Signal(signed(CB), name=f"ac_iyb_{i}") for i in range(R)]
        ac_ixb = [Signal(signed(CB), name=f"ac_ixb_{i}") for i in range(R)]
        ac_base = [Signal(AB, name=f"ac_base_{i}") for i in range(R)]
        ac_ok = [Signal(name=f"ac_ok_{i}") for i in range(R)]
        ac_full = Signal()
        ac_rows = Signal(range(R + 1))
        ac_last_tp = Signal()
        ac_last_g = Signal()

        walk = Signal()
        pix_ok = Signal()
        m.d.comb += [walk.eq(computing & ~nx_full & ~wk_done), pix_ok.eq(wk_nz)]
        # The next group's base is ready a cycle after the group's: two group starts are
        # at least two cycles apart (a tile's R pixels, then its swap frees the walker).
        m.d.sync += wk_gnext.eq(wk_gbase + gstep)

        def walker_reset():
            return [wk_left.eq(npix), wk_nz.eq(1), wk_le1.eq(npix_le1), wk_ox.eq(0),
                    wk_ox_last.eq(is1["ow"]), wk_ix0.eq(npl), wk_iy0.eq(npt),
                    wk_ixb.eq(wb), wk_iyb.eq(hb), wk_base.eq(base0), wk_rowbase.eq(base0), wk_gbase.eq(base0), wk_g.eq(0),
                    wk_done.eq(0), wk_cnt.eq(0), wk_rows.eq(0), nx_full.eq(0),
                    ac_full.eq(0)]

        with m.If(walk):
            # shift the pixel in at the top; after R shifts lane 0 holds the first one
            for i in range(R - 1):
                m.d.sync += [nx_iy0[i].eq(nx_iy0[i + 1]), nx_ix0[i].eq(nx_ix0[i + 1]),
                             nx_iyb[i].eq(nx_iyb[i + 1]), nx_ixb[i].eq(nx_ixb[i + 1]),
                             nx_base[i].eq(nx_base[i + 1]), nx_ok[i].eq(nx_ok[i + 1])]
            m.d.sync += [nx_iy0[R - 1].eq(wk_iy0), nx_ix0[R - 1].eq(wk_ix0),
                         nx_iyb[R - 1].eq(wk_iyb), nx_ixb[R - 1].eq(wk_ixb),
                         nx_base[R - 1].eq(wk_base), nx_ok[R - 1].eq(pix_ok)]
            rows_next = Signal(range(R + 1))
            m.d.comb += rows_next.eq(wk_rows + pix_ok)
            m.d.sync += wk_rows.eq(rows_next)
            with m.If(pix_ok):
                # one pixel fewer: the flags follow from the count before the decrement
                m.d.sync += [wk_left.eq(wk_left - 1), wk_nz.eq(~wk_le1),
                             wk_le1.eq((wk_left[2:] == 0) & ~wk_left[:2].all())]
                with m.If(wk_ox_last):
                    m.d.sync += [wk_ox.eq(0), wk_ox_last.eq(is1["ow"]), wk_ix0.eq(npl),
                                 wk_iy0.eq(wk_iy0 + p["sh"]), wk_ixb.eq(wb),
                                 wk_iyb.eq(wk_iyb - p["sh"]),
                                 wk_rowbase.eq(wk_rowbase + s_hwc),
                                 wk_base.eq(wk_rowbase + s_hwc)]
                with m.Else():
                    m.d.sync += [wk_ox.eq(wk_ox + 1), wk_ox_last.eq(wk_ox == m2["ow"]),
                                 wk_ix0.eq(wk_ix0 + p["sw"]), wk_ixb.eq(wk_ixb - p["sw"]),
                                 wk_base.eq(wk_base + s_wc)]
            with m.If(wk_cnt == R - 1):
                last_tp = Signal()
                last_g = Signal()
                # the group's pixels are all gathered after this one
                m.d.comb += [last_tp.eq(wk_le1), last_g.eq(wk_g == m1["g"])]
                m.d.sync += [wk_cnt.eq(0), wk_rows.eq(0), nx_full.eq(1),
                             nx_rows.eq(rows_next), nx_last_tp.eq(last_tp),
                             nx_last_g.eq(last_g)]
                with m.If(last_tp):
                    # next group: same pixels, channels CG (CT in depthwise) further on
                    m.d.sync += [wk_left.eq(npix), wk_nz.eq(1), wk_le1.eq(npix_le1),
                                 wk_ox.eq(0), wk_ox_last.eq(is1["ow"]), wk_ix0.eq(npl),
                                 wk_iy0.eq(npt), wk_ixb.eq(wb), wk_iyb.eq(hb),
                                 wk_gbase.eq(wk_gnext),
                                 wk_base.eq(wk_gnext), wk_rowbase.eq(wk_gnext),
                                 wk_g.eq(wk_g + 1), wk_done.eq(last_g)]
            with m.Else():
                m.d.sync += wk_cnt.eq(wk_cnt + 1)

        # --- A steps ----------------------------------------------------------------
        kc_c = Signal(DB)
        kc_kw = Signal(cr.SMALL_BITS)
        kc_kh = Signal(cr.SMALL_BITS)
        kwd = Signal(DB)          # kw * DW
        khd = Signal(DB)          # kh * DH
        offh = Signal(AB)         # kh * DH*W*C
        offhw = Signal(AB)        # offh + kw * DW*C
        off = Signal(AB)          # offhw + c: the step's offset from a pixel's base
        oc_left = Signal(DB)      # OCG - oc0 (oc0: the tile's first output channel)
        last_col = Signal()
        oc_step = Signal(range(C + 1))   # output channels per tile: C, or P in depthwise
        m.d.comb += oc_step.eq(Mux(dw_on, P, C))

        # registers: kc_c == CG-1, kc_kw == KW-1, kc_kh == KH-1, oc_left <= oc_step
        last_c, last_kw, last_kh = Signal(), Signal(), Signal()
        is_last = Signal()
        m.d.comb += is_last.eq(last_c & last_kw & last_kh)

        fill = Signal(range(R + C + DEPOSIT_DELAY + READ_DELAY + 1))
        draining = Signal()
        drain_free = Signal()
        m.d.comb += drain_free.eq((fill == 0) & ~draining)

        can = Signal()
        fire = Signal()
        # a group's weights kept across its pixel tiles (MODE.WREUSE): b_d[0] comes from
        # the buffer, which registers the stream beat or reads its copy
        m.submodules.wbuf = wbuf = WeightBuffer(self.depth, len(self.b.payload.data))
        replay = wbuf.replay
        m.d.comb += [
            can.eq(computing & ac_full & (~is_last | drain_free)),
            self.b.ready.eq(can & ~replay),
            fire.eq(can & (self.b.valid | replay)),
            self.err_b_last.eq(fire & ~replay & (self.b.payload.last != is_last)),
        ]

        # Step at cycle f: the address (one adder) goes to the memory, the tap's
        # coordinates are registered. f+1: the word arrives, the bounds are checked.
        # f+2: the word and the check are registered; f+3: the element, selected and
        # masked, enters the array from a register, with the weights and flags of step
        # f delayed to match.
        lanes = []
        chunks = []     # depthwise: the row's CT channels of its pixel's tap
        for i in range(R):
            addr = Signal(AB, name=f"addr_{i}")
            iy = Signal(signed(CB), name=f"iy_{i}")
            ix = Signal(signed(CB), name=f"ix_{i}")
            iyb = Signal(signed(CB), name=f"iyb_{i}")
            ixb = Signal(signed(CB), name=f"ixb_{i}")
            tap_ok = Signal(name=f"tap_ok_{i}")
            a_ok = Signal(name=f"a_ok_{i}")
            word = Signal(XL * w, name=f"word_{i}")
            lane = Signal(w, name=f"lane_{i}")
            m.d.comb += [addr.eq(ac_base[i] + off),
                         mems[i][1].addr.eq(addr[xl_bits:xl_bits + WB])]
            m.d.sync += [
                iy.eq(ac_iy0[i] + khd), ix.eq(ac_ix0[i] + kwd), tap_ok.eq(ac_ok[i]),
                iyb.eq(ac_iyb[i] - khd), ixb.eq(ac_ixb[i] - kwd),
                # 0 <= iy < H and 0 <= ix < W
                a_ok.eq(tap_ok & ~iy[-1] & ~iyb[-1] & ~ix[-1] & ~ixb[-1]),
                word.eq(mems[i][1].data),
            ]
            if xl_bits:
                sel1 = Signal(xl_bits, name=f"a_sel1_{i}")
                sel2 = Signal(xl_bits, name=f"a_sel2_{i}")
                m.d.sync += [sel1.eq(addr[:xl_bits]), sel2.eq(sel1)]
                elem = word.word_select(sel2, w)
            else:
                elem = word
            m.d.sync += lane.eq(Mux(a_ok, elem, 0))
            lanes.append(lane)
            # depthwise: the pixel's address is a multiple of CT, so its CT channels are
            # one aligned chunk of the word; lane 0 of the chunk is ``elem``
            chunk = Signal(CT * w, name=f"dw_chunk_{i}")
            sel = word if CT == XL else word.word_select(sel2[ct_bits:], CT * w)
            m.d.sync += chunk.eq(Mux(a_ok, sel, 0))
            chunks.append(chunk)
        m.d.comb += [array.a.eq(Cat(*lanes)), array.a_cells.eq(Cat(*chunks)),
                     array.dw.eq(dw_on)]

        ctl_d = [Signal(Control, name=f"ctl_d{s}") for s in range(READ_DELAY + 1)]
        b_d = [Signal(len(self.b.payload.data), name=f"b_d{s}") for s in range(READ_DELAY + 1)]
        m.d.comb += [wbuf.b_in.eq(self.b.payload.data), b_d[0].eq(wbuf.b_out)]
        m.d.sync += [ctl_d[0].valid.eq(fire),
                     ctl_d[0].first.eq((kc_c == 0) & (kc_kw == 0) & (kc_kh == 0)),
                     ctl_d[0].last.eq(is_last)]
        for s in range(READ_DELAY):
            m.d.sync += [b_d[s + 1].eq(b_d[s]), ctl_d[s + 1].eq(ctl_d[s])]
        m.d.comb += [array.b.eq(b_d[-1]), array.ctl.eq(ctl_d[-1])]

        d_rows = Signal(range(R + 1))
        d_mask = Signal(C)
        d_final = Signal()
        tile_end = Signal()
        ptile_end = Signal()
        image_end = Signal()
        m.d.comb += [
            tile_end.eq(fire & is_last),
            ptile_end.eq(tile_end & last_col),
            image_end.eq(ptile_end & ac_last_tp & ac_last_g),
            wbuf.start.eq(start_ok), wbuf.enable.eq(self.wreuse), wbuf.fire.eq(fire),
            wbuf.tile_end.eq(ptile_end), wbuf.group_end.eq(ac_last_tp),
        ]
        with m.If(fire):
            with m.If(last_c):
                m.d.sync += [kc_c.eq(0), last_c.eq(is1["cg"])]
                with m.If(last_kw):
                    m.d.sync += [kc_kw.eq(0), kwd.eq(0), last_kw.eq(is1["kw"])]
                    with m.If(last_kh):
                        m.d.sync += [kc_kh.eq(0), khd.eq(0), offh.eq(0), offhw.eq(0),
                                     off.eq(0), last_kh.eq(is1["kh"])]
                    with m.Else():
                        m.d.sync += [kc_kh.eq(kc_kh + 1), khd.eq(khd + p["dh"]),
                                     offh.eq(offh + d_hwc), offhw.eq(offh + d_hwc),
                                     off.eq(offh + d_hwc), last_kh.eq(kc_kh == m2["kh"])]
                with m.Else():
                    m.d.sync += [kc_kw.eq(kc_kw + 1), kwd.eq(kwd + p["dw"]),
                                 offhw.eq(offhw + d_wc), off.eq(offhw + d_wc),
                                 last_kw.eq(kc_kw == m2["kw"])]
            with m.Else():
                m.d.sync += [kc_c.eq(kc_c + 1), off.eq(off + 1), last_c.eq(kc_c == m2["cg"])]
            with m.If(is_last):
                # the bottom-right sum reaches its drain register R + C + DEPOSIT_DELAY +
                # READ_DELAY cycles on (read, its pipeline, injection, skew, the cells)
                m.d.sync += [fill.eq(R + C + DEPOSIT_DELAY + READ_DELAY - 1),
                             d_rows.eq(ac_rows),
                             d_mask.eq(Mux(dw_on, Cat(*[(j // P < CT) & (oc_left > j % P)
                                                     for j in range(C)]),
                                           Cat(*[oc_left > j for j in range(C)]))),
                             d_final.eq(image_end & (img == m1["n"]))]
                with m.If(last_col):
                    m.d.sync += [oc_left.eq(p["ocg"]), last_col.eq(ocg_le_c)]
                with m.Else():
                    m.d.sync += [oc_left.eq(oc_left - oc_step),
                                 last_col.eq(Mux(dw_on, oc_left <= 2 * P, oc_left <= 2 * C))]

        # swap in the gathered pixels when the active tile is finished (or empty)
        swap = Signal()
        m.d.comb += swap.eq(computing & nx_full & (~ac_full | (ptile_end & ~image_end)))
        with m.If(swap):
            m.d.sync += [ac_full.eq(1), nx_full.eq(0), ac_rows.eq(nx_rows),
                         ac_last_tp.eq(nx_last_tp), ac_last_g.eq(nx_last_g)]
            for i in range(R):
                m.d.sync += [ac_iy0[i].eq(nx_iy0[i]), ac_ix0[i].eq(nx_ix0[i]),
                             ac_iyb[i].eq(nx_iyb[i]), ac_ixb[i].eq(nx_ixb[i]),
                             ac_base[i].eq(nx_base[i]), ac_ok[i].eq(nx_ok[i])]
        with m.Elif(ptile_end):
            m.d.sync += ac_full.eq(0)

        with m.If(image_end):
            m.d.sync += computing.eq(0)
            with m.If(img != m1["n"]):
                m.d.sync += [img.eq(img + 1), loading.eq(1), x_count.eq(0)]
                m.d.sync += walker_reset()

        with m.If(x_fire):
            m.d.sync += x_count.eq(x_count + XL)
            with m.If(x_last):
                m.d.sync += [loading.eq(0), computing.eq(1)]

        with m.If(fill != 0):
            m.d.sync += fill.eq(fill - 1)
            with m.If(fill == 1):
                m.d.sync += draining.eq(1)

        # --- drain ------------------------------------------------------------------
        d_row = Signal(range(R))
        push, row_last, tile_sent, job_sent = drain_output(
            m, self, array, busy=self.busy, draining=draining, final=d_final, bias_en=bias_en,
            d_row=d_row, d_rows=d_rows, d_mask=d_mask, aw=aw, start=start_ok,
            out_stage=self.out_stage, dsp=self.dsp)
        with m.If(push):
            m.d.sync += d_row.eq(d_row + 1)
            with m.If(row_last):
                m.d.sync += [d_row.eq(0), draining.eq(0)]
        with m.If(tile_sent):
            m.d.sync += self.tiles_done.eq(self.tiles_done + 1)
        with m.If(job_sent):
            m.d.sync += self.busy.eq(0)
            m.d.comb += self.done.eq(1)

        # --- counters -----------------------------------------------------------------
        with m.If(self.busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(loading):
                m.d.sync += self.load_cycles.eq(self.load_cycles + 1)
            with m.If(computing & ac_full & (~is_last | drain_free) & ~self.b.valid & ~replay):
                m.d.sync += self.stall_in.eq(self.stall_in + 1)
            with m.If(computing & ac_full & (self.b.valid | replay) & is_last & ~drain_free):
                m.d.sync += self.stall_out.eq(self.stall_out + 1)

        # --- start ----------------------------------------------------------------------
        with m.If(start_ok):
            m.d.sync += [p[n].eq(getattr(self, n)) for n in p]
            m.d.sync += [m1[n].eq(getattr(self, n) - 1) for n in m1]
            with m.If(self.depthwise):   # groups are the C / CT channel tiles
                m.d.sync += m1["g"].eq((self.ch >> ct_bits) - 1)
            m.d.sync += [m2[n].eq(getattr(self, n) - 2) for n in m2]
            m.d.sync += [is1[n].eq(getattr(self, n) == 1) for n in is1]
            # base0 = -(PT*W*C + PL*C) = ~(PT*W*C + PL*C - 1): plc2 holds PL*C - 1
            b0 = Signal(AB)
            m.d.comb += b0.eq(~(ptwc2 + plc2))
            npix1_le1 = Signal()
            m.d.comb += npix1_le1.eq(npix1[1:] == 0)
            ocg_le1 = Signal()            # one output-channel tile: OCG <= C (P in depthwise)
            m.d.comb += ocg_le1.eq(Mux(self.depthwise, self.ocg <= P, self.ocg <= C))
            m.d.sync += [
                bias_en.eq(self.bias_en),
                dw_on.eq(self.depthwise),
                gstep.eq(Mux(self.depthwise, CT, self.cg)),
                npix.eq(npix1),
                hwc.eq(hwc2),
                s_wc.eq(swc1),
                s_hwc.eq(shwc2),
                d_wc.eq(dwc1),
                d_hwc.eq(dhwc2),
                base0.eq(b0),
                oc_left.eq(self.ocg), last_col.eq(ocg_le1), ocg_le_c.eq(ocg_le1),
                last_c.eq(self.cg == 1), last_kw.eq(self.kw == 1), last_kh.eq(self.kh == 1),
                npix_le1.eq(npix1_le1), npl.eq(-self.pl), npt.eq(-self.pt), wb.eq(wb1),
                hb.eq(hb1),
                self.busy.eq(1), loading.eq(1), computing.eq(0), img.eq(0), x_count.eq(0),
                kc_c.eq(0), kc_kw.eq(0), kc_kh.eq(0), kwd.eq(0), khd.eq(0), offh.eq(0),
                offhw.eq(0), off.eq(0),
                self.cycles.eq(0), self.tiles_done.eq(0), self.stall_in.eq(0),
                self.stall_out.eq(0), self.load_cycles.eq(0),
            ]
            # the walker starts from base0, which is only latched now: load it directly
            m.d.sync += [wk_left.eq(npix1), wk_nz.eq(1), wk_le1.eq(npix1_le1), wk_ox.eq(0),
                         wk_ox_last.eq(self.ow == 1), wk_ix0.eq(-self.pl),
                         wk_iy0.eq(-self.pt), wk_ixb.eq(wb1), wk_iyb.eq(hb1),
                         wk_base.eq(b0), wk_rowbase.eq(b0),
                         wk_gbase.eq(b0), wk_g.eq(0), wk_done.eq(0), wk_cnt.eq(0),
                         wk_rows.eq(0), nx_full.eq(0), ac_full.eq(0)]
        return m
