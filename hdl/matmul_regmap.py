"""Register map, stream formats and host protocol of the matmul core.

This module is the single description of the core's interface. The Amaranth design
(``matmul_core.py``, ``matmul_top.py``), the cocotb testbenches and the host driver all
read it; nothing here imports Amaranth, so a host can use it after a plain install.

Control is an AXI4-Lite target with 32-bit registers at the byte offsets in
:data:`REGISTERS`. Data moves on five AXI4-Stream ports, described in :data:`STREAMS`.

Host protocol (one job computes ``C = A @ B (+ bias)``; A is M x K, B is K x N):

* Output tiles are R x C (R = rows, C = cols of the array) and are processed in
  row-major tile order: ``for tm in range(ceil(M/R)): for tn in range(ceil(N/C))``.
* For each tile the host sends K beats on ``a`` (beat k holds column k of the tile's
  A block, lane i = ``A[tm*R + i, k]``) and K beats on ``b`` (beat k holds row k of the
  B block, lane j = ``B[k, tn*C + j]``); ``tlast`` marks beat K-1 of every tile. Lanes
  past M or N are ignored by the core; send zeros.
* With ``CTRL.BIAS_EN`` the host sends one ``bias`` beat per tile (lane j =
  ``bias[tn*C + j]``, ``tlast`` = 1).
* The core returns ``min(R, M - tm*R)`` beats per tile on ``c`` (beat i holds row i of
  the tile, lane j = ``C[tm*R + i, tn*C + j]``, lanes past N are zero); ``tlast`` marks
  the last beat of every tile.
* Accumulation is two's-complement modulo 2**32 (wrap, never saturate); the bias add
  wraps the same way.
* With ``CTRL.REQUANT`` the host sends one ``q`` beat per tile (lane j = multiplier and
  shift of output channel ``tn*C + j``) and every output lane carries
  ``lepton_accel.numerics.requantize`` of its int32 value, an int8 sign-extended to 32
  bits; ``CTRL.RELU`` clamps the outputs at 0 (after requantizing, if both are set).

Lanes are packed little-endian: lane 0 in the least significant bits of ``tdata``.
"""

from __future__ import annotations

from math import ceil

import numpy as np

from . import regmap_common as common
from .regmap_common import (ACC_WIDTH, ADDR_WIDTH, DATA_WIDTH, DTYPE_CODES, DTYPES,
                            MAX_SIDE, MIN_SIDE, PORT_SEPARATOR, Field, Register,
                            StreamFormat)

__all__ = [
    "CORE_ID", "VERSION", "VERSION_WORD", "ADDR_WIDTH", "DATA_WIDTH", "DIM_BITS",
    "ACC_WIDTH", "DTYPES", "DTYPE_CODES", "Field", "Register", "REGISTERS", "REG",
    "StreamFormat", "STREAMS", "stream_widths", "describe", "tile_order",
    "pack_a", "pack_b", "pack_bias", "pack_job", "unpack_c", "expected_cycles",
    "field_value", "field_mask", "config_word", "PORT_PREFIX", "PORT_SEPARATOR",
    "MIN_SIDE", "MAX_SIDE", "check_config", "pack_q", "REQUANT_DELAY",
]

#: Value of the ID register: ASCII "LMMC" (lepton matmul core).
CORE_ID = 0x4C4D4D43
#: Interface version (major, minor, patch); major changes break host drivers.
VERSION = (1, 2, 0)   # 1.1: the output stage (CTRL.RELU / REQUANT, the q stream);
#                       1.2: CONFIG.OUT_STAGE, ERROR.NO_STAGE (the stage is a build option)
VERSION_WORD = common.version_word(VERSION)

#: Width of the M, N, K registers; a job needs 1 <= M, N, K < 2**DIM_BITS.
DIM_BITS = 16


REGISTERS: tuple[Register, ...] = (
    common.id_register(),
    common.version_register(),
    common.config_register("array rows R", "array columns C"),
    common.ctrl_register("write 1 to start a job with the current M, N, K"),
    common.status_register(),
    common.error_register(
        "START with M, N or K equal to 0 (ignored)",
        Field("A_LAST", 2, 1, "tlast on a did not match beat K-1 of a tile")),
    Register("M", 0x18, "rw", "Rows of A and C."),
    Register("N", 0x1C, "rw", "Columns of B and C."),
    Register("K", 0x20, "rw", "Columns of A, rows of B."),
    *common.cycle_registers(0x24),
    Register("STALL_IN", 0x30, "ro",
             "Busy cycles in which the core wanted an a/b beat and one was missing."),
    Register("STALL_OUT", 0x34, "ro",
             "Busy cycles in which a tile's last a/b beat waited for the previous tile "
             "to drain (output backpressure or short K)."),
)

#: Registers by name.
REG = {r.name: r for r in REGISTERS}


def field_mask(reg: str, name: str) -> int:
    return common.field_mask(REG, reg, name)


def field_value(reg: str, name: str, word: int) -> int:
    return common.field_value(REG, reg, name, word)


STREAMS: tuple[StreamFormat, ...] = (
    StreamFormat("a", "in", "rows", "dtype",
                 "K beats per tile; lane i of beat k = A[tm*R+i, k]; tlast on beat K-1"),
    StreamFormat("b", "in", "cols", "dtype",
                 "K beats per tile; lane j of beat k = B[k, tn*C+j]; tlast on beat K-1"),
    StreamFormat("bias", "in", "cols", "acc",
                 "one beat per tile when CTRL.BIAS_EN; lane j = bias[tn*C+j]; tlast=1"),
    StreamFormat("q", "in", "cols", "param",
                 "one beat per tile when CTRL.REQUANT; lane j = multiplier (int32, bits "
                 "[31:0]) and shift (0..63, bits [37:32]) of channel tn*C+j; tlast=1"),
    StreamFormat("c", "out", "cols", "acc",
                 "min(R, M-tm*R) beats per tile; lane j of beat i = C[tm*R+i, tn*C+j] "
                 "(int32, or with CTRL.REQUANT its int8 requantization sign-extended); "
                 "lanes past N are 0; tlast on the tile's last beat"),
)

#: Verilog port prefix of each stream and of the AXI4-Lite port.
PORT_PREFIX = {"a": "s_axis_a", "b": "s_axis_b", "bias": "s_axis_bias", "q": "s_axis_q",
               "c": "m_axis_c", "ctrl": "s_axil"}


def check_config(rows: int, cols: int, dtype: str):
    common.check_sides(rows, cols, dtype)


def stream_widths(rows: int, cols: int, dtype: str) -> dict[str, int]:
    """tdata width in bits of each stream for a configuration."""
    check_config(rows, cols, dtype)
    out = {}
    for s in STREAMS:
        lanes = rows if s.lanes == "rows" else cols
        out[s.name] = lanes * common.lane_bits(s.lane_bits, dtype)
    return out


def config_word(rows: int, cols: int, dtype: str, out_stage: bool = True) -> int:
    return common.config_bits(rows, cols, dtype, out_stage)


def describe(rows: int, cols: int, dtype: str, out_stage: bool = True) -> dict:
    """JSON-ready description of a configuration and its register map."""
    check_config(rows, cols, dtype)
    widths = stream_widths(rows, cols, dtype)
    return {
        "core": "matmul",
        "id": CORE_ID,
        "version": ".".join(map(str, VERSION)),
        "config": {"rows": rows, "cols": cols, "dtype": dtype,
                   "acc_width": ACC_WIDTH, "overflow": "wrap",
                   "dataflow": "output-stationary", "dim_bits": DIM_BITS,
                   "out_stage": bool(out_stage),
                   "config_word": config_word(rows, cols, dtype, out_stage)},
        **common.describe_interface(REGISTERS, PORT_PREFIX),
        "streams": [
            {"name": s.name, "prefix": PORT_PREFIX[s.name], "direction": s.direction,
             "tdata_width": widths[s.name],
             "lanes": rows if s.lanes == "rows" else cols,
             "lane_bits": common.lane_bits(s.lane_bits, dtype),
             "lane_order": "little-endian, lane 0 in bits [lane_bits-1:0]",
             "doc": s.doc}
            for s in STREAMS
        ],
        "tile_order": "row-major over output tiles (tm outer, tn inner)",
    }


# --- host protocol -------------------------------------------------------------------

def tile_order(m: int, n: int, rows: int, cols: int):
    """Yield (row0, col0) of each output tile in the order the core processes them."""
    for tm in range(ceil(m / rows)):
        for tn in range(ceil(n / cols)):
            yield tm * rows, tn * cols


_lane_dtype = common.lane_dtype
_check_int = common.check_int


def pack_a(a, n: int, *, rows: int, cols: int, dtype: str) -> list[bytes]:
    """Frames (one per output tile) for the ``a`` stream."""
    a = _check_int(a, dtype, "a")
    m, k = a.shape
    frames = []
    for r0, _ in tile_order(m, n, rows, cols):
        blk = np.zeros((k, rows), dtype=_lane_dtype(dtype))
        blk[:, : min(rows, m - r0)] = a[r0:r0 + rows, :].T
        frames.append(blk.tobytes())
    return frames


def pack_b(b, m: int, *, rows: int, cols: int, dtype: str) -> list[bytes]:
    """Frames (one per output tile) for the ``b`` stream."""
    b = _check_int(b, dtype, "b")
    k, n = b.shape
    frames = []
    for _, c0 in tile_order(m, n, rows, cols):
        blk = np.zeros((k, cols), dtype=_lane_dtype(dtype))
        blk[:, : min(cols, n - c0)] = b[:, c0:c0 + cols]
        frames.append(blk.tobytes())
    return frames


def pack_bias(bias, m: int, *, rows: int, cols: int) -> list[bytes]:
    """Frames (one beat each, one per output tile) for the ``bias`` stream."""
    bias = np.asarray(bias).astype(np.int64)
    n = bias.shape[0]
    frames = []
    for _, c0 in tile_order(m, n, rows, cols):
        beat = np.zeros(cols, dtype="<i4")
        beat[: min(cols, n - c0)] = bias[c0:c0 + cols].astype("<i4")
        frames.append(beat.tobytes())
    return frames


def pack_q(multiplier, shift, m: int, *, rows: int, cols: int) -> list[bytes]:
    """Frames (one beat each, one per output tile) for the ``q`` stream: per output
    channel (column of C) its multiplier and shift (``regmap_common.pack_q_beat``)."""
    n = np.shape(multiplier)[0]
    return [common.pack_q_beat(multiplier, shift, c0, min(cols, n - c0), cols)
            for _, c0 in tile_order(m, n, rows, cols)]


def unpack_c(frames, m: int, n: int, *, rows: int, cols: int) -> np.ndarray:
    """Assemble the ``c`` frames of one job into the M x N int32 result."""
    out = np.zeros((m, n), dtype=np.int32)
    tiles = list(tile_order(m, n, rows, cols))
    if len(frames) != len(tiles):
        raise ValueError(f"expected {len(tiles)} output tiles, got {len(frames)}")
    for (r0, c0), data in zip(tiles, frames):
        h = min(rows, m - r0)
        blk = np.frombuffer(bytes(data), dtype="<i4")
        if blk.size != h * cols:
            raise ValueError(f"tile ({r0}, {c0}): expected {h * cols} lanes, got {blk.size}")
        blk = blk.reshape(h, cols)
        out[r0:r0 + h, c0:c0 + cols] = blk[:, : min(cols, n - c0)]
    return out


def pack_job(a, b, bias=None, *, rows: int, cols: int, dtype: str,
             requant=None) -> dict[str, list[bytes]]:
    """All input frames of one job, by stream name; ``requant`` = (multiplier, shift),
    per output channel, adds the ``q`` frames."""
    m, n = np.shape(a)[0], np.shape(b)[1]
    if np.shape(a)[1] != np.shape(b)[0]:
        raise ValueError(f"inner dimensions differ: a is {np.shape(a)}, b is {np.shape(b)}")
    frames = {"a": pack_a(a, n, rows=rows, cols=cols, dtype=dtype),
              "b": pack_b(b, m, rows=rows, cols=cols, dtype=dtype)}
    if bias is not None:
        if np.shape(bias) != (n,):
            raise ValueError(f"bias must have shape ({n},), not {np.shape(bias)}")
        frames["bias"] = pack_bias(bias, m, rows=rows, cols=cols)
    if requant is not None:
        mult, shift = requant
        if np.shape(mult) != (n,) or np.shape(shift) != (n,):
            raise ValueError(f"requant: multiplier and shift must have shape ({n},), not "
                             f"{np.shape(mult)} and {np.shape(shift)}")
        frames["q"] = pack_q(mult, shift, m, rows=rows, cols=cols)
    return frames


#: pipeline stages of the core that the cycle model counts (the RTL's constants):
#: the a/b input register slices (a beat taken at cycle t pairs at t + 1 at the
#: earliest), the cells' pipeline beyond one cycle (``pe.DEPOSIT_DELAY``), and the output
#: register slice (``drain.OUT_DELAY``); the output stage adds ``drain.REQUANT_DELAY``
#: when CTRL.RELU or CTRL.REQUANT is set
INPUT_DELAY = 1
DEPOSIT_DELAY = 3
OUT_DELAY = 1
REQUANT_DELAY = 6


def expected_cycles(m: int, n: int, k: int, rows: int, cols: int,
                    out_stage: bool = False) -> int:
    """CYCLES of a job streamed at full rate with the output always ready.

    Cycle 1 is the first busy cycle; the input slices take the first a/b pair then and
    hand it on at cycle 2, and a tile's K pairs follow one per cycle, except that its
    last pair waits until the drain registers are free. The last pair taken at cycle t
    leaves the bottom-right sum in its drain register at t + R + C + 3 (injection
    register, R-1 + C-1 of skew, one into the drain register, the cells' three pipeline
    stages); the tile's h = min(R, M - row0) rows move to the output slice at
    t + R + C + 3 ... t + R + C + 3 + h - 1, after which the drain registers are free,
    and leave on ``c`` one cycle after each move. The job ends with the last tile's last
    output beat. With the output stage (``out_stage``: CTRL.RELU or REQUANT) every row
    takes REQUANT_DELAY cycles more on its way to the slice, which only moves the end.
    """
    fill = rows + cols + 1 + DEPOSIT_DELAY - 1   # injection .. drain register, pipelined
    t = INPUT_DELAY  # cycle at which the previous tile's last pair was taken
    free_at = 0  # first cycle at which the drain registers are free again
    for r0, _ in tile_order(m, n, rows, cols):
        h = min(rows, m - r0)
        t = max(t + k, free_at)
        free_at = t + fill + h
    return free_at - 1 + OUT_DELAY + (REQUANT_DELAY if out_stage else 0)
