"""Registered multipliers: the operands in one register stage and the product in the next,
as a DSP block holds them.

``dsp="generic"`` writes the registers and the multiply in Amaranth; synthesis maps the
multiply to a DSP block and leaves the registers in the fabric (Yosys does not pack them
into an ECP5 multiplier), so every operand and product bit crosses the fabric-to-DSP
routing within a cycle. ``dsp="ecp5"`` instantiates a Lattice ECP5 ``MULT18X18D`` with its
own input and output registers (REG_INPUTA/B_CLK, REG_OUTPUT_CLK = CLK0, CE0 the enable,
RST0 the domain's synchronous reset): the same two-cycle latency, and only a register's
clock-to-out or set-up time on each side of the fabric route.

The ``ecp5`` variant has no simulation model in the open ECP5 cell library; the
repository's own behavioural model (``sim/ecp5_models.v``) stands in for it when the
variant is simulated (``tests/test_hdl_dsp.py`` compares it with ``generic``).
"""

from amaranth import ClockSignal, Const, Instance, ResetSignal, Signal, signed

__all__ = ["DSP_KINDS", "check_dsp", "registered_product"]

#: the multiplier styles a core can be built with
DSP_KINDS = ("generic", "ecp5")
#: port width of the ECP5 multiplier (signed operands)
ECP5_PORT = 18


def check_dsp(dsp) -> str:
    if dsp not in DSP_KINDS:
        raise ValueError(f"dsp: expected one of {DSP_KINDS}, got {dsp!r}")
    return dsp


def _signed_bits(v) -> int:
    """Bits of ``v`` as a signed number (an unsigned value needs one more)."""
    shape = v.shape()
    return shape.width + (0 if shape.signed else 1)


def registered_product(m, a, b, width: int, *, dsp: str = "generic", en=None,
                       name: str = "mul"):
    """A ``signed(width)`` signal that holds ``a * b`` of the operands two clock edges
    earlier: one register on the operands, one on the product, both loaded in cycles
    where ``en`` is high (always when ``en`` is None) and cleared by the domain's reset.
    ``a`` and ``b`` may be signed or unsigned; ``width`` must hold the exact product."""
    check_dsp(dsp)
    p = Signal(signed(width), name=f"{name}_p")
    if dsp == "generic":
        a_r, b_r = Signal(a.shape(), name=f"{name}_a"), Signal(b.shape(), name=f"{name}_b")
        stmts = [a_r.eq(a), b_r.eq(b), p.eq(a_r * b_r)]
        if en is None:
            m.d.sync += stmts
        else:
            with m.If(en):
                m.d.sync += stmts
        return p

    if max(_signed_bits(a), _signed_bits(b)) > ECP5_PORT or width > 2 * ECP5_PORT:
        raise ValueError(f"{name}: a {a.shape()} x {b.shape()} -> {width}-bit product does "
                         f"not fit one {ECP5_PORT}x{ECP5_PORT} ECP5 multiplier")
    a18, b18 = Signal(signed(ECP5_PORT), name=f"{name}_a18"), Signal(signed(ECP5_PORT),
                                                                   name=f"{name}_b18")
    prod = Signal(2 * ECP5_PORT, name=f"{name}_P")
    m.d.comb += [a18.eq(a), b18.eq(b)]          # sign- or zero-extended by a's, b's shape
    ports = {}
    for i in range(ECP5_PORT):
        ports[f"i_A{i}"], ports[f"i_B{i}"], ports[f"i_C{i}"] = a18[i], b18[i], Const(0)
    for i in range(2 * ECP5_PORT):
        ports[f"o_P{i}"] = prod[i]
    zero = Const(0)
    setattr(m.submodules, name, Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
        p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
        p_REG_PIPELINE_CLK="NONE",
        p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
        p_RESETMODE="SYNC", p_GSR="DISABLED",
        i_SIGNEDA=Const(1), i_SIGNEDB=Const(1), i_SOURCEA=zero, i_SOURCEB=zero,
        i_CLK0=ClockSignal(), i_CLK1=zero, i_CLK2=zero, i_CLK3=zero,
        i_CE0=Const(1) if en is None else en, i_CE1=zero, i_CE2=zero, i_CE3=zero,
        i_RST0=ResetSignal(), i_RST1=zero, i_RST2=zero, i_RST3=zero,
        **ports))
    m.d.comb += p.eq(prod.as_signed())
    return p
