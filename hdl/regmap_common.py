"""Register-map infrastructure shared by the cores' register maps.

:mod:`.matmul_regmap` (matmul core) and :mod:`.conv_regmap` (conv2d core) each stay the single
description of their own registers and streams; this module holds what both build on:
the Field / Register / StreamFormat records, the field helpers, the AXI4-Lite and
dtype conventions, the common registers (ID, VERSION, CONFIG, CTRL, STATUS, ERROR and
the cycle counters) and the common part of ``describe``. Nothing here imports Amaranth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ADDR_WIDTH", "DATA_WIDTH", "ACC_WIDTH", "DTYPES", "DTYPE_CODES", "MIN_SIDE",
    "MAX_SIDE", "PORT_SEPARATOR", "Field", "Register", "StreamFormat", "version_word",
    "find_field", "field_mask", "field_value", "id_register", "version_register",
    "config_register", "config_bits", "ctrl_register", "status_register", "error_register",
    "cycle_registers", "check_sides", "describe_interface", "lane_dtype", "check_int",
    "Q_LANE_BITS", "REQUANT_SHIFT_MAX", "lane_bits", "pack_q_beat", "out_mode_ctrl",
]

#: Byte-address width of the AXI4-Lite window (64 registers).
ADDR_WIDTH = 8
#: AXI4-Lite data width.
DATA_WIDTH = 32
#: Accumulator and output lane width; arithmetic wraps modulo 2**ACC_WIDTH.
ACC_WIDTH = 32

#: Bits per lane of a ``q`` (requantization parameter) beat: the signed 32-bit
#: multiplier in [31:0], the shift in [37:32], zeros above.
Q_LANE_BITS = 64
#: Largest requantization shift (a 6-bit field).
REQUANT_SHIFT_MAX = 63

#: Supported input dtypes and their lane widths in bits.
DTYPES = {"int8": 8, "int16": 16}
#: Encoding of the dtype in CONFIG.DTYPE.
DTYPE_CODES = {"int8": 0, "int16": 1}

#: Smallest and largest array side the designs are verified for.
MIN_SIDE = 2
MAX_SIDE = 32

#: Verilog port names are PREFIX + PORT_SEPARATOR + signal, e.g. ``s_axis_a__tdata``.
PORT_SEPARATOR = "__"


@dataclass(frozen=True)
class Field:
    name: str
    lsb: int
    width: int
    doc: str = ""


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: str  # "ro", "rw" or "w1c"
    doc: str
    fields: tuple[Field, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class StreamFormat:
    name: str
    direction: str  # "in" (host to core) or "out"
    lanes: str  # how many lanes a beat has ("rows", "cols", ...)
    lane_bits: str  # "dtype", "acc" or "param" (Q_LANE_BITS)
    doc: str


def version_word(version: tuple[int, int, int]) -> int:
    """Value of the VERSION register for (major, minor, patch)."""
    return (version[0] << 16) | (version[1] << 8) | version[2]


# --- field helpers ---------------------------------------------------------------------

def find_field(regs: dict[str, Register], reg: str, name: str) -> Field:
    return next(f for f in regs[reg].fields if f.name == name)


def field_mask(regs: dict[str, Register], reg: str, name: str) -> int:
    f = find_field(regs, reg, name)
    return ((1 << f.width) - 1) << f.lsb


def field_value(regs: dict[str, Register], reg: str, name: str, word: int) -> int:
    f = find_field(regs, reg, name)
    return (word >> f.lsb) & ((1 << f.width) - 1)


# --- common registers ------------------------------------------------------------------
# Every core starts its map with ID, VERSION, CONFIG, CTRL, STATUS and ERROR at the same
# offsets; the fields that differ are passed in by the core's map.

def id_register() -> Register:
    return Register("ID", 0x00, "ro", "Core identifier, always CORE_ID.")


def version_register() -> Register:
    return Register("VERSION", 0x04, "ro", "Interface version.", (
        Field("PATCH", 0, 8), Field("MINOR", 8, 8), Field("MAJOR", 16, 8)))


def config_register(rows_doc: str, cols_doc: str, extra: tuple[Field, ...] = ()) -> Register:
    """CONFIG: ROWS, COLS, DTYPE, the core's own fields (bits 20..22), OUT_STAGE,
    ACC_WIDTH."""
    return Register("CONFIG", 0x08, "ro", "Build-time configuration.", (
        Field("ROWS", 0, 8, rows_doc),
        Field("COLS", 8, 8, cols_doc),
        Field("DTYPE", 16, 4, "input dtype, see DTYPE_CODES"),
        *extra,
        Field("OUT_STAGE", 23, 1, "the output stage is built (CTRL.RELU / REQUANT, the q "
              "stream); without it a START with RELU or REQUANT is refused (ERROR.NO_STAGE)"),
        Field("ACC_WIDTH", 24, 8, "accumulator width in bits")))


def config_bits(rows: int, cols: int, dtype: str, out_stage: bool) -> int:
    """The CONFIG fields every core has (the core's own ones are or-ed in by its map)."""
    return (rows | (cols << 8) | (DTYPE_CODES[dtype] << 16) | (int(bool(out_stage)) << 23)
            | (ACC_WIDTH << 24))


def ctrl_register(start_doc: str) -> Register:
    return Register("CTRL", 0x0C, "rw", "Control. START reads as 0.", (
        Field("START", 0, 1, start_doc),
        Field("BIAS_EN", 1, 1, "consume one bias beat per tile and add it"),
        Field("RELU", 2, 1, "clamp every output at 0 (after the requantization, if any)"),
        Field("REQUANT", 3, 1, "requantize every output to int8 (sign-extended in its "
              "32-bit lane) with the per-channel multiplier and shift of one q beat per "
              "tile")))


def status_register(extra: tuple[Field, ...] = ()) -> Register:
    return Register("STATUS", 0x10, "ro", "Status.", (
        Field("BUSY", 0, 1, "a job is running"),
        Field("DONE", 1, 1, "the last job finished; cleared by START"),
        Field("ERROR", 2, 1, "some ERROR bit is set"),
        *extra))


def error_register(bad_dim_doc: str, stream_last: Field) -> Register:
    """ERROR: START_BUSY, BAD_DIM, the core's first-stream tlast flag (bit 2), B_LAST,
    BIAS_LAST, Q_LAST, NO_STAGE."""
    return Register("ERROR", 0x14, "w1c", "Sticky error flags; write 1 to clear.", (
        Field("START_BUSY", 0, 1, "START written while busy (ignored)"),
        Field("BAD_DIM", 1, 1, bad_dim_doc),
        stream_last,
        Field("B_LAST", 3, 1, "tlast on b did not match beat K-1 of a tile"),
        Field("BIAS_LAST", 4, 1, "a bias beat arrived without tlast"),
        Field("Q_LAST", 5, 1, "a q beat arrived without tlast"),
        Field("NO_STAGE", 6, 1, "START with CTRL.RELU or REQUANT on a build without the "
              "output stage (CONFIG.OUT_STAGE = 0; ignored)")))


def cycle_registers(offset: int) -> tuple[Register, ...]:
    """CYCLES_LO, CYCLES_HI and TILES_DONE from ``offset`` on."""
    return (
        Register("CYCLES_LO", offset, "ro",
                 "Cycles from START to the last output beat, low word; reading it latches "
                 "CYCLES_HI."),
        Register("CYCLES_HI", offset + 4, "ro",
                 "High word latched by the last CYCLES_LO read."),
        Register("TILES_DONE", offset + 8, "ro", "Output tiles completely sent in this job."),
    )


# --- configuration and description -----------------------------------------------------

def check_sides(rows: int, cols: int, dtype: str):
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    for name, v in (("rows", rows), ("cols", cols)):
        if not (MIN_SIDE <= v <= MAX_SIDE):
            raise ValueError(f"{name} must be in [{MIN_SIDE}, {MAX_SIDE}], not {v}")


def describe_interface(registers: tuple[Register, ...], port_prefix: dict[str, str]) -> dict:
    """The clock, port, AXI4-Lite and register entries of a core's ``describe``."""
    return {
        "clock": {"clock": "clk", "reset": "rst", "reset_polarity": "active-high",
                  "reset_kind": "synchronous"},
        "port_separator": PORT_SEPARATOR,
        "axi4_lite": {"prefix": port_prefix["ctrl"], "addr_width": ADDR_WIDTH,
                      "data_width": DATA_WIDTH},
        "registers": [
            {"name": r.name, "offset": r.offset, "access": r.access, "doc": r.doc,
             "fields": [{"name": f.name, "lsb": f.lsb, "width": f.width, "doc": f.doc}
                        for f in r.fields]}
            for r in registers
        ],
    }


# --- host-side packing -----------------------------------------------------------------

def lane_bits(kind: str, dtype: str) -> int:
    """Bits of one lane of a stream whose StreamFormat.lane_bits is ``kind``."""
    return {"dtype": DTYPES[dtype], "acc": ACC_WIDTH, "param": Q_LANE_BITS}[kind]


def out_mode_ctrl(rmap, relu: bool, requant: bool) -> int:
    """The CTRL bits that select a job's output stage."""
    return ((rmap.field_mask("CTRL", "RELU") if relu else 0)
            | (rmap.field_mask("CTRL", "REQUANT") if requant else 0))


def pack_q_beat(multiplier, shift, lo: int, n: int, cols: int) -> bytes:
    """One q beat: lane j holds (multiplier, shift) of channel lo + j for j < n, zeros
    beyond."""
    beat = np.zeros(cols, "<u8")
    mm = np.asarray(multiplier, np.int64)[lo:lo + n] & 0xFFFFFFFF
    ss = np.asarray(shift, np.int64)[lo:lo + n] & 0x3F
    beat[:n] = (mm | (ss << 32)).astype("<u8")
    return beat.tobytes()


def lane_dtype(dtype: str):
    return {"int8": np.dtype("<i1"), "int16": np.dtype("<i2")}[dtype]


def check_int(x, dtype: str, what: str):
    x = np.asarray(x)
    info = np.iinfo(lane_dtype(dtype))
    if x.size and (x.min() < info.min or x.max() > info.max):
        raise ValueError(f"{what} has values outside {dtype}")
    return x
