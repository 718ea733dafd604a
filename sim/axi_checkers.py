"""AXI4-Stream and AXI4-Lite protocol checkers and stall-corner coverage for the cores.

One coroutine per channel samples the port at every rising clock edge (the values of the
cycle that ends there, as the cocotbext-axi models see them) and raises
:class:`ProtocolError` on a violation, which fails the running test. :func:`start_checkers`
starts them all on a core's ports; every testbench calls it through ``tb_common.AxiTB``.

Rules, per channel:

- every VALID, once high, stays high until the handshake, and the payload (TDATA, TLAST,
  TKEEP where present; AWADDR; WDATA/WSTRB; ARADDR; BRESP; RDATA/RRESP) is unchanged
  while VALID && !READY; VALID is low from the first clock edge in reset on.
- the core's TVALID on m_axis_c must not depend on TREADY within the cycle: the first
  rule catches a TVALID that falls when TREADY falls; :func:`probe_valid_vs_ready` also
  flips TREADY for a moment in the middle of cycles (after the bus model drove it,
  before the next edge, so no handshake sees it) and requires TVALID not to move.
- no output beat after a reset until the next START write: whatever the old job left
  in the core must be gone.
- AXI4-Lite: BVALID only for a write whose address and data were both taken, RVALID only
  for an accepted read, one response per request; BRESP is OKAY for a full-strobe write
  and SLVERR for a partial one (the cores do not take byte writes); RRESP is OKAY.

Coverage (cocotb-coverage points, sampled here so every test contributes):
``stall.c_tlast`` (a c TLAST beat held by the sink, or taken at once), ``stall.in_tlast``
(an input TLAST beat held by the core), ``stall.bias_handoff`` (how a bias beat was taken,
see :func:`start_checkers`) and ``stall.back_to_back`` (a START with no job since reset,
or soon after the previous job's last beat).
"""

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge, Timer
from cocotb_coverage import coverage

__all__ = ["ProtocolError", "start_checkers", "STALL_POINTS"]

OKAY, SLVERR = 0, 2
#: a START within this many cycles of the previous job's last output beat is back-to-back
BACK_TO_BACK_CYCLES = 400
STALL_POINTS = ("stall.c_tlast", "stall.in_tlast", "stall.bias_handoff",
                "stall.back_to_back")


class ProtocolError(AssertionError):
    pass


@coverage.CoverPoint("stall.c_tlast", xf=lambda held: held, bins=["held", "direct"])
def _cover_c_tlast(held):
    pass


@coverage.CoverPoint("stall.in_tlast", xf=lambda held: held, bins=["held"])
def _cover_in_tlast(held):
    pass


@coverage.CoverPoint("stall.bias_handoff", xf=lambda how: how,
                     bins=["free", "handoff", "handoff_after_stall"])
def _cover_bias(how):
    pass


@coverage.CoverPoint("stall.back_to_back", xf=lambda how: how, bins=["first", "close"])
def _cover_start(how):
    pass


def _val(sig):
    """Integer value of a signal; X/Z (before reset) reads as -1."""
    v = sig.value
    return int(v) if v.is_resolvable else -1


class _State:
    """What the channels share: the cycle, reset, START writes, the last c TLAST."""

    def __init__(self):
        self.cycle = 0
        self.armed = False         # a START was written since the last reset
        self.ever_started = False  # since the last reset
        self.last_c_end = None     # cycle of the latest c TLAST handshake


def _fail(dut, msg):
    dut._log.error("protocol: %s", msg)
    raise ProtocolError(msg)


async def _channel(dut, clk, rst, name, valid, ready, payload, *, on_fire=None,
                   on_cycle=None):
    """Generic VALID/READY rules of one channel; ``payload`` are the signals that must
    hold while stalled. ``on_fire(values)`` runs at each handshake, ``on_cycle(valid,
    ready, values)`` every cycle out of reset."""
    prev_stall, prev_vals, in_reset = False, None, False
    edge = RisingEdge(clk)
    while True:
        await edge
        if _val(rst) != 0:
            # the reset is synchronous: VALID is low from the first edge in reset on
            if in_reset and _val(valid) == 1:
                _fail(dut, f"{name}: VALID high during reset")
            prev_stall, in_reset = False, True
            continue
        in_reset = False
        v, r = _val(valid), _val(ready)
        vals = tuple(_val(p) for p in payload)
        if prev_stall:
            if v != 1:
                _fail(dut, f"{name}: VALID fell without a handshake")
            if vals != prev_vals:
                _fail(dut, f"{name}: payload changed while stalled ({prev_vals} -> {vals})")
        if on_cycle is not None:
            on_cycle(v, r, vals)
        if v == 1 and r == 1 and on_fire is not None:
            on_fire(vals)
        prev_stall = v == 1 and r != 1
        prev_vals = vals


def _sig(dut, prefix, name):
    return getattr(dut, f"{prefix}__{name}", None)


def start_checkers(dut, rmap, inputs, output="c"):
    """Start the checkers on every channel of a core with register map ``rmap``."""
    clk, rst = dut.clk, dut.rst
    P = rmap.PORT_PREFIX
    st = _State()
    ctrl_off = rmap.REG["CTRL"].offset
    start_mask = rmap.field_mask("CTRL", "START")

    async def count_cycles():
        while True:
            await RisingEdge(clk)
            st.cycle += 1
            if _val(rst) != 0:
                st.armed = st.ever_started = False
                st.last_c_end = None

    cocotb.start_soon(count_cycles())

    def stream(name):
        p = P[name]
        payload = [s for s in (_sig(dut, p, "tdata"), _sig(dut, p, "tlast"),
                               _sig(dut, p, "tkeep")) if s is not None]
        return p, _sig(dut, p, "tvalid"), _sig(dut, p, "tready"), payload

    # --- output stream (driven by the core) ---
    cp, c_valid, c_ready, c_payload = stream(output)
    c_tlast = _sig(dut, cp, "tlast")
    c_held = {"last": False}

    # The bias register of a core frees when a tile's last row moves into the output
    # register slice (the handoff), which the ports do not show. A bias beat of a job
    # after its first that the core held (TVALID && !TREADY) was waiting for a full
    # register: the cycle it is taken is a handoff (a free register would have taken it
    # a cycle earlier). So: the job's first bias beat, or one taken in its first cycle,
    # counts as "free"; a held one as "handoff", or "handoff_after_stall" when the sink
    # was stalling c in that cycle (the row moved into the slice under backpressure).
    bias = {"in_job": 0, "held": False}

    def c_stalled():
        return _val(c_valid) == 1 and _val(c_ready) != 1

    # --- input streams (driven by the bus models, taken by the core) ---
    for name in inputs:
        p, valid, ready, payload = stream(name)
        tlast = _sig(dut, p, "tlast")
        held = {"last": False}

        def on_cycle(v, r, vals, held=held, tlast=tlast, name=name):
            if v == 1 and r != 1 and _val(tlast) == 1:
                held["last"] = True
            if name == "bias" and v == 1 and r != 1 and bias["in_job"]:
                bias["held"] = True

        def on_fire(vals, held=held, tlast=tlast, name=name):
            if name == "bias":
                if not bias["held"]:
                    _cover_bias("free")
                else:
                    _cover_bias("handoff_after_stall" if c_stalled() else "handoff")
                bias["in_job"] += 1
                bias["held"] = False
            if _val(tlast) == 1:
                if held["last"]:
                    _cover_in_tlast("held")
                held["last"] = False

        cocotb.start_soon(_channel(dut, clk, rst, p, valid, ready, payload,
                                   on_fire=on_fire, on_cycle=on_cycle))


    def c_cycle(v, r, vals):
        if v == 1 and not st.armed:
            _fail(dut, f"{cp}: TVALID with no job started since reset")
        if v == 1 and r != 1 and _val(c_tlast) == 1:
            c_held["last"] = True

    def c_fire(vals):
        if _val(c_tlast) == 1:
            _cover_c_tlast("held" if c_held["last"] else "direct")
            c_held["last"] = False
            st.last_c_end = st.cycle

    cocotb.start_soon(_channel(dut, clk, rst, cp, c_valid, c_ready, c_payload,
                               on_fire=c_fire, on_cycle=c_cycle))
    cocotb.start_soon(probe_valid_vs_ready(dut, clk, rst, cp, c_valid, c_ready))

    # --- AXI4-Lite ---
    a = P["ctrl"]
    s = lambda n: _sig(dut, a, n)  # noqa: E731
    lite = {"aw": [], "w": [], "seen": 0, "b": 0, "ar": 0, "r": 0}

    def write_pending():
        return min(len(lite["aw"]), len(lite["w"])) - lite["b"]

    def b_cycle(v, r, vals):
        if v == 1 and write_pending() < 1:
            _fail(dut, f"{a}: BVALID with no write whose address and data were both taken")

    def b_fire(vals):
        i = lite["b"]
        strb = lite["w"][i][1]
        want = OKAY if strb == 0xF else SLVERR
        if vals[0] != want:
            _fail(dut, f"{a}: BRESP {vals[0]} for a write with WSTRB {strb:#x} "
                       f"(expected {want})")
        lite["b"] += 1

    def write_taken():
        """A write's address and data are both in: the core acts on it now."""
        i = lite["seen"]
        if i >= min(len(lite["aw"]), len(lite["w"])):
            return
        lite["seen"] += 1
        addr, (data, strb) = lite["aw"][i], lite["w"][i]
        if strb == 0xF and addr == ctrl_off and data & start_mask:
            if not st.ever_started:
                _cover_start("first")
            elif st.last_c_end is not None \
                    and st.cycle - st.last_c_end <= BACK_TO_BACK_CYCLES:
                _cover_start("close")
            st.armed = st.ever_started = True
            bias.update(in_job=0, held=False)

    def r_cycle(v, r, vals):
        if v == 1 and lite["ar"] - lite["r"] < 1:
            _fail(dut, f"{a}: RVALID with no read outstanding")

    def r_fire(vals):
        if vals[1] != OKAY:
            _fail(dut, f"{a}: RRESP {vals[1]}")
        lite["r"] += 1

    def reset_lite():
        lite.update(aw=[], w=[], seen=0, b=0, ar=0, r=0)

    async def lite_reset():
        while True:
            await RisingEdge(clk)
            if _val(rst) != 0:
                reset_lite()

    cocotb.start_soon(lite_reset())
    cocotb.start_soon(_channel(dut, clk, rst, a + " AW", s("awvalid"), s("awready"),
                               [s("awaddr")],
                               on_fire=lambda v: (lite["aw"].append(v[0]), write_taken())))
    cocotb.start_soon(_channel(dut, clk, rst, a + " W", s("wvalid"), s("wready"),
                               [s("wdata"), s("wstrb")],
                               on_fire=lambda v: (lite["w"].append(v), write_taken())))
    cocotb.start_soon(_channel(dut, clk, rst, a + " B", s("bvalid"), s("bready"),
                               [s("bresp")], on_fire=b_fire, on_cycle=b_cycle))
    cocotb.start_soon(_channel(dut, clk, rst, a + " AR", s("arvalid"), s("arready"),
                               [s("araddr")], on_fire=lambda v: lite.__setitem__(
                                   "ar", lite["ar"] + 1)))
    cocotb.start_soon(_channel(dut, clk, rst, a + " R", s("rvalid"), s("rready"),
                               [s("rdata"), s("rresp")], on_fire=r_fire, on_cycle=r_cycle))
    return st


async def probe_valid_vs_ready(dut, clk, rst, name, valid, ready, every=3):
    """Every ``every`` cycles, in the low half of the clock (TREADY already driven for the
    coming edge), flip TREADY, let the logic settle, compare TVALID, and put TREADY
    back before the edge. A TVALID that follows TREADY combinationally moves here even
    when no stall ever shows it."""
    n = 0
    while True:
        await FallingEdge(clk)
        n += 1
        if n % every or _val(rst) != 0:
            continue
        await ReadOnly()
        v0, r0 = _val(valid), _val(ready)
        if r0 not in (0, 1):
            continue
        await Timer(1, "ps")
        ready.value = 1 - r0
        await ReadOnly()
        v1 = _val(valid)
        await Timer(1, "ps")
        ready.value = r0
        await ReadOnly()
        if v1 != v0:
            _fail(dut, f"{name}: TVALID moved from {v0} to {v1} when TREADY was flipped "
                       "within the cycle (TVALID depends on TREADY)")
