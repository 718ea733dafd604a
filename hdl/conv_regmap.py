"""Register map, stream formats and host protocol of the conv2d core.

The single description of the conv core's interface, read by the Amaranth design
(``conv_core.py``, ``conv_top.py``), the cocotb testbenches and the host driver. Nothing
here imports Amaranth.

The core computes one NHWC int8/int16 convolution job with PyTorch's meaning of stride,
padding, dilation and groups; weights are (OC, Cg, KH, KW); accumulation wraps modulo
2**32 as in the matmul core (:mod:`.matmul_regmap`); the records, dtype table, field helpers and
common registers both maps build on are in :mod:`.regmap_common`.

Host protocol of one job (registers first, then CTRL.START, then the streams):

* For every image n = 0 .. N-1 the host sends the whole H x W x C image (NHWC order,
  flattened) on ``x``: ceil(H*W*C / XL) beats of XL lanes (XL = the core's image lanes,
  CONFIG.XLANES_LOG2), element e of the image in lane e % XL of beat e // XL, lanes past
  the end zero, ``tlast`` on the image's last beat. The core stores it in its image memory
  (H*W*C must not exceed the CAPACITY register) and only then computes from it.
* Output pixels p = oy*OW + ox are cut into pixel tiles of R consecutive pixels; output
  channels of a group into channel tiles of C. Tile order per image:
  ``for g in range(G): for p0 in range(0, OH*OW, R): for oc0 in range(0, OCG, C)``.
* For every tile the host sends K = KH*KW*CG beats on ``b``: beat k = (kh*KW + kw)*CG + c
  holds lane j = w[g*OCG + oc0 + j, c, kh, kw] (lanes past OCG zero), ``tlast`` on beat K-1.
  The core generates the matching A operand itself (the im2col streamer): lane i of
  step k is x[n, iy, ix, g*CG + c] with iy = oy*SH - PAD_T + kh*DH, ix = ox*SW - PAD_L +
  kw*DW for pixel p0 + i, and zero where (iy, ix) falls outside the image (padding) or
  the pixel is past OH*OW.
* With MODE.WREUSE (since 1.2) the core keeps a group's weights: when the b beats of one
  pixel tile of the group (K * ceil(OCG / C), or K * ceil(OCG / P) in the depthwise mode)
  are at most WBUF_DEPTH, the host sends b frames only for the tiles of each group's
  first pixel tile (p0 = 0), once per image, and the core replays them from its buffer
  for the group's later pixel tiles at the same rate; otherwise every tile's frame is
  sent as without WREUSE (the core sees the overflow itself). CYCLES is the same.
* With CTRL.BIAS_EN one ``bias`` beat per tile: lane j = bias[g*OCG + oc0 + j], ``tlast``=1.
* With CTRL.REQUANT one ``q`` beat per tile: lane j = multiplier and shift of channel
  g*OCG + oc0 + j; every output is then ``lepton_accel.numerics.requantize`` of its int32
  value (int8, sign-extended in its lane). CTRL.RELU clamps the outputs at 0.
* The core returns min(R, OH*OW - p0) beats per tile on ``c``: beat i, lane j =
  out[n, oy, ox, g*OCG + oc0 + j] for pixel p0 + i; lanes past OCG are zero; ``tlast``
  on the tile's last beat.

Padding is given as PAD_T and PAD_L together with the output size OH, OW (bottom and
right padding follow from them: any tap past the image reads zero), so asymmetric and
"same" padding need nothing else. Lanes are packed little-endian, lane 0 lowest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import ceil

import numpy as np

from . import regmap_common as common
from .regmap_common import (ACC_WIDTH, ADDR_WIDTH, DATA_WIDTH, DTYPE_CODES, DTYPES,
                            MAX_SIDE, MIN_SIDE, PORT_SEPARATOR, Field, Register,
                            StreamFormat)

__all__ = [
    "CORE_ID", "VERSION", "VERSION_WORD", "ADDR_WIDTH", "DATA_WIDTH", "DIM_BITS", "SMALL_BITS",
    "ACC_WIDTH", "DTYPES", "DTYPE_CODES", "REGISTERS", "REG", "STREAMS", "PORT_PREFIX",
    "PORT_SEPARATOR", "MIN_SIDE", "MAX_SIDE", "ConvJob", "default_x_lanes", "stream_widths",
    "config_word", "field_value", "field_mask", "describe", "tile_order", "register_values",
    "pack_x", "pack_b", "pack_bias", "pack_job", "unpack_c", "expected_cycles",
    "useful_macs", "check_config", "pack_q", "REQUANT_DELAY", "dw_config", "dw_config_word",
    "depthwise_job", "depthwise_operands", "group_weight_beats", "weights_held", "b_tiles",
]

#: Value of the ID register: ASCII "LCNV" (lepton conv core).
CORE_ID = 0x4C434E56
VERSION = (1, 3, 0)   # 1.1: the output stage (CTRL.RELU / REQUANT, the q stream); 1.2: MODE;
#                       1.3: CONFIG.OUT_STAGE, ERROR.NO_STAGE (the stage is a build option)
VERSION_WORD = common.version_word(VERSION)
#: Width of the size registers (N, H, W, C, CG, OCG, G, OH, OW).
DIM_BITS = 16
#: Width of the kernel, stride, dilation and padding fields.
SMALL_BITS = 8
PORT_PREFIX = {"x": "s_axis_x", "b": "s_axis_b", "bias": "s_axis_bias", "q": "s_axis_q",
               "c": "m_axis_c", "ctrl": "s_axil"}


def _pair(name, lo_doc, hi_doc):
    return (Field(name + "_H", 0, SMALL_BITS, lo_doc), Field(name + "_W", 8, SMALL_BITS, hi_doc))


REGISTERS: tuple[Register, ...] = (
    common.id_register(),
    common.version_register(),
    common.config_register(
        "array rows R (output pixels per tile)", "array columns C (output channels per tile)",
        (Field("XLANES_LOG2", 20, 3, "log2 of the image lanes XL of the x stream"),)),
    common.ctrl_register("write 1 to start a job with the current registers"),
    common.status_register((Field("LOADING", 3, 1, "the core is taking an image on x"),)),
    common.error_register(
        "START with a zero size/kernel/stride/dilation, or H*W*C above CAPACITY (ignored)",
        Field("X_LAST", 2, 1, "tlast on x did not match an image's last beat")),
    Register("CAPACITY", 0x18, "ro", "Image memory size in elements (largest H*W*C)."),
    Register("N", 0x1C, "rw", "Images in the job."),
    Register("H", 0x20, "rw", "Input height."),
    Register("W", 0x24, "rw", "Input width."),
    Register("C", 0x28, "rw", "Input channels (all groups)."),
    Register("G", 0x2C, "rw", "Groups."),
    Register("CG", 0x30, "rw", "Input channels per group (C = G*CG)."),
    Register("OCG", 0x34, "rw", "Output channels per group."),
    Register("OH", 0x38, "rw", "Output height."),
    Register("OW", 0x3C, "rw", "Output width."),
    Register("KERNEL", 0x40, "rw", "Kernel size.", _pair("K", "KH", "KW")),
    Register("STRIDE", 0x44, "rw", "Stride.", _pair("S", "SH", "SW")),
    Register("DILATION", 0x48, "rw", "Dilation.", _pair("D", "DH", "DW")),
    Register("PAD", 0x4C, "rw", "Top and left padding.", (
        Field("PAD_T", 0, SMALL_BITS, "rows of zeros above the image"),
        Field("PAD_L", 8, SMALL_BITS, "columns of zeros left of the image"))),
    *common.cycle_registers(0x50),
    Register("STALL_IN", 0x5C, "ro",
             "Computing cycles in which the streamer had an A step ready but no b beat."),
    Register("STALL_OUT", 0x60, "ro",
             "Computing cycles in which a tile's last step waited for the previous tile "
             "to drain."),
    Register("LOAD_CYCLES", 0x64, "ro", "Busy cycles spent taking images on x."),
    Register("MODE", 0x80, "rw", "Job mode (since 1.2).", (
        Field("DW", 0, 1, "depthwise mode: channels on the columns (CG = 1, G = C, "
                          "C a multiple of DW_CONFIG.CT)"),
        Field("WREUSE", 1, 1, "keep a group's weights on chip: b carries them for the "
                              "group's first pixel tile only, when they fit WBUF_DEPTH"))),
    Register("DW_CONFIG", 0x84, "ro", "Depthwise mode of this build (since 1.2).", (
        Field("CT", 0, 8, "channels per depthwise tile (0: no depthwise mode)"),
        Field("P", 8, 4, "columns per channel (output channels m0, m0+1 of one channel)"))),
    Register("WBUF_DEPTH", 0x88, "ro",
             "Weight buffer size in b beats (since 1.2; MODE.WREUSE)."),
)
REG = {r.name: r for r in REGISTERS}

STREAMS: tuple[StreamFormat, ...] = (
    StreamFormat("x", "in", "xlanes", "dtype",
                 "per image ceil(H*W*C/XL) beats, NHWC order, element e in lane e % XL of "
                 "beat e // XL; tlast on the image's last beat"),
    StreamFormat("b", "in", "cols", "dtype",
                 "K = KH*KW*CG beats per tile; lane j of beat (kh*KW+kw)*CG+c = "
                 "w[g*OCG+oc0+j, c, kh, kw]; tlast on beat K-1"),
    StreamFormat("bias", "in", "cols", "acc",
                 "one beat per tile when CTRL.BIAS_EN; lane j = bias[g*OCG+oc0+j]; tlast=1"),
    StreamFormat("q", "in", "cols", "param",
                 "one beat per tile when CTRL.REQUANT; lane j = multiplier (int32, bits "
                 "[31:0]) and shift (0..63, bits [37:32]) of channel g*OCG+oc0+j; tlast=1"),
    StreamFormat("c", "out", "cols", "acc",
                 "min(R, OH*OW-p0) beats per tile; lane j of beat i = "
                 "out[n, p0+i, g*OCG+oc0+j] (int32, or with CTRL.REQUANT its int8 "
                 "requantization sign-extended); lanes past OCG are 0; tlast on the last beat"),
)


def field_mask(reg: str, name: str) -> int:
    return common.field_mask(REG, reg, name)


def field_value(reg: str, name: str, word: int) -> int:
    return common.field_value(REG, reg, name, word)


def dw_config(cols: int, x_lanes: int, pair_macs: bool) -> tuple[int, int]:
    """(CT, P) of the depthwise mode: P = 2 where adjacent columns share one multiplier
    (and so one image operand), else 1; CT = the largest power of two <= the array's
    cell columns ceil(cols / P) and <= x_lanes, so that a tile's CT channels of a pixel
    always lie in one image word (C and c0 are multiples of CT)."""
    p = 2 if pair_macs and cols >= 2 else 1
    cells = -(-cols // p)
    ct = 1 << (min(cells, x_lanes).bit_length() - 1)
    return ct, p


def dw_config_word(ct: int, p: int) -> int:
    return ct | (p << 8)


def default_x_lanes(rows: int) -> int:
    """Image lanes XL: the smallest power of two >= rows."""
    return 1 << max(0, (rows - 1).bit_length())


def check_config(rows, cols, dtype, x_lanes, depth):
    common.check_sides(rows, cols, dtype)
    if x_lanes < 1 or x_lanes & (x_lanes - 1) or x_lanes > 64:
        raise ValueError(f"x_lanes must be a power of two in [1, 64], not {x_lanes}")
    if depth < 2 or x_lanes * depth > 2 ** 26:
        raise ValueError(f"depth must be >= 2 with x_lanes*depth <= 2**26, not {depth}")


def stream_widths(rows: int, cols: int, dtype: str, x_lanes: int | None = None) -> dict:
    x_lanes = x_lanes or default_x_lanes(rows)
    w = DTYPES[dtype]
    return {"x": x_lanes * w, "b": cols * w, "bias": cols * ACC_WIDTH,
            "q": cols * common.Q_LANE_BITS, "c": cols * ACC_WIDTH}


def config_word(rows: int, cols: int, dtype: str, x_lanes: int | None = None,
                out_stage: bool = True) -> int:
    x_lanes = x_lanes or default_x_lanes(rows)
    return (common.config_bits(rows, cols, dtype, out_stage)
            | ((x_lanes.bit_length() - 1) << 20))


def describe(rows: int, cols: int, dtype: str, x_lanes: int | None = None,
             depth: int = 1024, pair_macs: bool | None = None, out_stage: bool = True) -> dict:
    """JSON-ready description of a configuration and its register map (``pair_macs``:
    as the core's, default on for int8)."""
    x_lanes = x_lanes or default_x_lanes(rows)
    ct, p = dw_config(cols, x_lanes, dtype == "int8" if pair_macs is None else pair_macs)
    check_config(rows, cols, dtype, x_lanes, depth)
    widths = stream_widths(rows, cols, dtype, x_lanes)
    lanes = {"x": x_lanes, "b": cols, "bias": cols, "q": cols, "c": cols}
    return {
        "core": "conv2d",
        "id": CORE_ID,
        "version": ".".join(map(str, VERSION)),
        "config": {"rows": rows, "cols": cols, "dtype": dtype, "x_lanes": x_lanes,
                   "depth": depth, "capacity": x_lanes * depth, "acc_width": ACC_WIDTH,
                   "overflow": "wrap", "dataflow": "output-stationary, hardware im2col",
                   "out_stage": bool(out_stage),
                   "config_word": config_word(rows, cols, dtype, x_lanes, out_stage),
                   "depthwise": {"channels_per_tile": ct, "columns_per_channel": p,
                                 "dw_config_word": dw_config_word(ct, p)}},
        **common.describe_interface(REGISTERS, PORT_PREFIX),
        "streams": [
            {"name": s.name, "prefix": PORT_PREFIX[s.name], "direction": s.direction,
             "tdata_width": widths[s.name], "lanes": lanes[s.name],
             "lane_bits": common.lane_bits(s.lane_bits, dtype),
             "lane_order": "little-endian, lane 0 in bits [lane_bits-1:0]", "doc": s.doc}
            for s in STREAMS],
        "tile_order": "per image: group, then pixel tile (R pixels), then channel tile (C)",
    }


# --- jobs ------------------------------------------------------------------------------

def _pair_of(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass(frozen=True)
class ConvJob:
    """Sizes of one job; ``pad`` is ((top, bottom), (left, right))."""
    n: int
    h: int
    w: int
    c: int
    oc: int
    kh: int
    kw: int
    stride: tuple = (1, 1)
    pad: tuple = ((0, 0), (0, 0))
    dilation: tuple = (1, 1)
    groups: int = 1
    #: depthwise mode: (CT, P) of the core (see the module doc), or () for the normal mode
    dw: tuple = ()
    #: MODE.WREUSE: the core's WBUF_DEPTH, or 0 (weights streamed for every tile)
    wreuse: int = 0

    @classmethod
    def make(cls, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
        """From an NHWC input shape and an (OC, CG, KH, KW) weight shape."""
        n, h, w, c = x_shape
        oc, cg, kh, kw = w_shape
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        elif isinstance(padding[0], int):
            padding = ((padding[0], padding[0]), (padding[1], padding[1]))
        job = cls(n, h, w, c, oc, kh, kw, _pair_of(stride), tuple(map(tuple, padding)),
                  _pair_of(dilation), groups)
        if c % groups or oc % groups or cg != c // groups:
            raise ValueError(f"channels {c} -> {oc} do not split into {groups} groups of "
                             f"weights {w_shape}")
        return job

    @property
    def cg(self):
        return self.c // self.groups

    @property
    def ocg(self):
        return self.oc // self.groups

    @property
    def k(self):
        return self.kh * self.kw * self.cg

    @property
    def oh(self):
        (pt, pb), (sh, dh) = self.pad[0], (self.stride[0], self.dilation[0])
        return (self.h + pt + pb - dh * (self.kh - 1) - 1) // sh + 1

    @property
    def ow(self):
        (pl, pr), (sw, dw) = self.pad[1], (self.stride[1], self.dilation[1])
        return (self.w + pl + pr - dw * (self.kw - 1) - 1) // sw + 1


def depthwise_job(job: ConvJob, ct: int, p: int) -> ConvJob:
    """The depthwise-mode job of a depthwise convolution (groups == C, one input channel
    per group) on a core with DW_CONFIG (ct, p): channels padded to a multiple of ct."""
    if job.cg != 1 or job.groups != job.c:
        raise ValueError(f"not a depthwise job (groups {job.groups}, channels {job.c})")
    cp = -(-job.c // ct) * ct
    return replace(job, c=cp, oc=cp * job.ocg, groups=cp, dw=(ct, p))


def depthwise_operands(x, w, bias, dwjob: ConvJob):
    """x (N, H, W, C), w (C*M, 1, KH, KW) and bias (C*M,) padded with zero channels to
    the channels of ``dwjob`` (:func:`depthwise_job`); output channels past C*M of the
    job are then zero and can be dropped."""
    x, w = np.asarray(x), np.asarray(w)
    extra = dwjob.c - x.shape[-1]
    if extra:
        x = np.concatenate([x, np.zeros(x.shape[:-1] + (extra,), x.dtype)], axis=-1)
        w = np.concatenate([w, np.zeros((extra * dwjob.ocg,) + w.shape[1:], w.dtype)])
        if bias is not None:
            bias = np.concatenate([np.asarray(bias), np.zeros(extra * dwjob.ocg,
                                                              np.asarray(bias).dtype)])
    return x, w, bias


def register_values(job: ConvJob) -> dict[str, int]:
    """Values of the job registers (written before CTRL.START)."""
    return {
        "MODE": int(bool(job.dw)) | (int(bool(job.wreuse)) << 1),
        "N": job.n, "H": job.h, "W": job.w, "C": job.c, "G": job.groups, "CG": job.cg,
        "OCG": job.ocg, "OH": job.oh, "OW": job.ow,
        "KERNEL": job.kh | (job.kw << 8),
        "STRIDE": job.stride[0] | (job.stride[1] << 8),
        "DILATION": job.dilation[0] | (job.dilation[1] << 8),
        "PAD": job.pad[0][0] | (job.pad[1][0] << 8),
    }


def tile_order(job: ConvJob, rows: int, cols: int):
    """Yield (g, p0, oc0) of each tile of one image in the order the core runs them; in
    depthwise mode g is the channel tile (channels g*CT ...) and oc0 the multiplier m0."""
    if job.dw:
        ct, p = job.dw
        for g in range(job.c // ct):
            for p0 in range(0, job.oh * job.ow, rows):
                for m0 in range(0, job.ocg, p):
                    yield g, p0, m0
        return
    for g in range(job.groups):
        for p0 in range(0, job.oh * job.ow, rows):
            for oc0 in range(0, job.ocg, cols):
                yield g, p0, oc0


def group_weight_beats(job: ConvJob, cols: int) -> int:
    """b beats of one group's pixel tile: K per channel tile (per multiplier step P in
    the depthwise mode)."""
    step = job.dw[1] if job.dw else cols
    return job.k * ceil(job.ocg / step)


def weights_held(job: ConvJob, cols: int) -> bool:
    """MODE.WREUSE and a group's weights fit the buffer: the b stream then carries only
    the tiles of each group's first pixel tile (per image)."""
    return bool(job.wreuse) and group_weight_beats(job, cols) <= job.wreuse


def b_tiles(job: ConvJob, rows: int, cols: int) -> list[bool]:
    """Per tile of one image (``tile_order``): whether its weights come on ``b``."""
    held = weights_held(job, cols)
    return [not held or p0 == 0 for _, p0, _ in tile_order(job, rows, cols)]


def _dw_lanes(job: ConvJob, g: int, m0: int, cols: int):
    """Depthwise mode: the valid lanes of tile (g, m0) and their output channels."""
    ct, p = job.dw
    j = np.arange(cols)
    ok = (j // p < ct) & (m0 + j % p < job.ocg)
    return j[ok], (g * ct + j[ok] // p) * job.ocg + m0 + j[ok] % p


_lane_dtype = common.lane_dtype
_check_int = common.check_int


def pack_x(x, *, dtype: str, x_lanes: int) -> list[bytes]:
    """One frame per image of the NHWC input x."""
    x = _check_int(x, dtype, "x")
    frames = []
    for img in x:
        flat = img.reshape(-1).astype(_lane_dtype(dtype))
        beats = ceil(flat.size / x_lanes)
        buf = np.zeros(beats * x_lanes, _lane_dtype(dtype))
        buf[:flat.size] = flat
        frames.append(buf.tobytes())
    return frames


def pack_b(w, job: ConvJob, *, rows: int, cols: int, dtype: str) -> list[bytes]:
    """One frame per tile (for one image) of the (OC, CG, KH, KW) weights; with the
    weights held (:func:`weights_held`) only the tiles of each group's first pixel
    tile."""
    w = _check_int(w, dtype, "w")
    ocg = job.ocg
    sent = b_tiles(job, rows, cols)
    if job.dw:
        taps = w.reshape(job.oc, job.kh * job.kw)
        frames = []
        for t, (g, _, m0) in enumerate(tile_order(job, rows, cols)):
            if not sent[t]:
                continue
            blk = np.zeros((job.k, cols), _lane_dtype(dtype))
            lanes, chans = _dw_lanes(job, g, m0, cols)
            blk[:, lanes] = taps[chans].T
            frames.append(blk.tobytes())
        return frames
    # (G, KH, KW, CG, OCG): row k = (kh*KW + kw)*CG + c, column = output channel
    wk = w.reshape(job.groups, ocg, job.cg, job.kh, job.kw).transpose(0, 3, 4, 2, 1)
    wk = wk.reshape(job.groups, job.k, ocg)
    frames = []
    for t, (g, _, oc0) in enumerate(tile_order(job, rows, cols)):
        if not sent[t]:
            continue
        blk = np.zeros((job.k, cols), _lane_dtype(dtype))
        blk[:, :min(cols, ocg - oc0)] = wk[g, :, oc0:oc0 + cols]
        frames.append(blk.tobytes())
    return frames


def pack_bias(bias, job: ConvJob, *, rows: int, cols: int) -> list[bytes]:
    bias = np.asarray(bias).astype(np.int64)
    frames = []
    for g, _, oc0 in tile_order(job, rows, cols):
        beat = np.zeros(cols, "<i4")
        if job.dw:
            lanes, chans = _dw_lanes(job, g, oc0, cols)
            beat[lanes] = bias[chans].astype("<i4")
            frames.append(beat.tobytes())
            continue
        lo = g * job.ocg + oc0
        n = min(cols, job.ocg - oc0)
        beat[:n] = bias[lo:lo + n].astype("<i4")
        frames.append(beat.tobytes())
    return frames


def pack_q(multiplier, shift, job: ConvJob, *, rows: int, cols: int) -> list[bytes]:
    """One q beat per tile (for one image): per output channel its multiplier and shift
    (``regmap_common.pack_q_beat``)."""
    if job.dw:
        frames = []
        for g, _, m0 in tile_order(job, rows, cols):
            lanes, chans = _dw_lanes(job, g, m0, cols)
            beat = np.frombuffer(common.pack_q_beat(np.asarray(multiplier)[chans],
                                                    np.asarray(shift)[chans], 0,
                                                    len(chans), cols), "<u8")
            out = np.zeros(cols, "<u8")
            out[lanes] = beat[:len(chans)]
            frames.append(out.tobytes())
        return frames
    return [common.pack_q_beat(multiplier, shift, g * job.ocg + oc0,
                               min(cols, job.ocg - oc0), cols)
            for g, _, oc0 in tile_order(job, rows, cols)]


def pack_job(x, w, bias, job: ConvJob, *, rows: int, cols: int, dtype: str,
             x_lanes: int, requant=None) -> dict[str, list]:
    """Input frames by stream; ``b``, ``bias`` and ``q`` are per image (send them N
    times). ``requant`` = (multiplier, shift) per output channel adds the ``q`` frames."""
    frames = {"x": pack_x(x, dtype=dtype, x_lanes=x_lanes),
              "b": pack_b(w, job, rows=rows, cols=cols, dtype=dtype)}
    if bias is not None:
        frames["bias"] = pack_bias(bias, job, rows=rows, cols=cols)
    if requant is not None:
        frames["q"] = pack_q(*requant, job, rows=rows, cols=cols)
    return frames


def unpack_c(frames, job: ConvJob, *, rows: int, cols: int) -> np.ndarray:
    """Assemble the ``c`` frames of a job (all images) into (N, OH, OW, OC) int32."""
    p_all = job.oh * job.ow
    out = np.zeros((job.n, p_all, job.oc), np.int32)
    tiles = list(tile_order(job, rows, cols))
    if len(frames) != len(tiles) * job.n:
        raise ValueError(f"expected {len(tiles) * job.n} output tiles, got {len(frames)}")
    it = iter(frames)
    for n in range(job.n):
        for g, p0, oc0 in tiles:
            h = min(rows, p_all - p0)
            blk = np.frombuffer(bytes(next(it)), "<i4")
            if blk.size != h * cols:
                raise ValueError(f"tile {(n, g, p0, oc0)}: expected {h * cols} lanes, "
                                 f"got {blk.size}")
            blk = blk.reshape(h, cols)
            if job.dw:
                lanes, chans = _dw_lanes(job, g, oc0, cols)
                out[n, p0:p0 + h][:, chans] = blk[:, lanes]
                continue
            wdt = min(cols, job.ocg - oc0)
            lo = g * job.ocg + oc0
            out[n, p0:p0 + h, lo:lo + wdt] = blk[:, :wdt]
    return out.reshape(job.n, job.oh, job.ow, job.oc)


def useful_macs(job: ConvJob) -> int:
    return job.n * job.oh * job.ow * job.oc * job.k


#: pipeline stages of the core that the cycle model counts (the RTL's constants): the
#: A operand's read pipeline beyond the memory read (``conv_core.READ_DELAY``), the
#: cells' pipeline beyond one cycle (``pe.DEPOSIT_DELAY``), the output register slice
#: (``drain.OUT_DELAY``); the output stage adds ``drain.REQUANT_DELAY`` when CTRL.RELU
#: or CTRL.REQUANT is set
READ_DELAY = 2
DEPOSIT_DELAY = 3
OUT_DELAY = 1
REQUANT_DELAY = 6


def expected_cycles(job: ConvJob, rows: int, cols: int, x_lanes: int,
                    out_stage: bool = False) -> int:
    """CYCLES of a job with every stream at full rate and the output always ready.

    Cycle 0 is the START write, cycle 1 the first busy cycle. Per image the x beats go
    in one per cycle (from the cycle after START or after the previous image's last A
    step); the pixel walker then gathers the first tile's R pixels (one per cycle) and
    the tile's first A step fires two cycles later. Every later pixel tile's pixels are
    gathered during the previous pixel tile, starting the cycle after it began, so a
    pixel tile can start R cycles after the previous one at the earliest. A tile takes
    K = KH*KW*CG steps, one per cycle, its last step held until the previous tile has
    left the drain registers: R + C + 5 + its beats cycles after that tile's last step
    (the read pipeline, the injection register, R-1 + C-1 of skew, one into the drain
    register, the cells' three pipeline stages; then one row per cycle into the output
    slice). The job ends with the last output beat, one cycle after its row moved; with
    the output stage (``out_stage``: CTRL.RELU or REQUANT) REQUANT_DELAY cycles later.
    """
    k = job.k
    beats = ceil(job.h * job.w * job.c / x_lanes)
    p_all = job.oh * job.ow
    t = 0          # cycle of the previous A step (0: START)
    free_at = 0    # first cycle at which the drain registers are free
    for _ in range(job.n):
        load_end = t + beats
        gathered = None
        for idx, (_, p0, oc0) in enumerate(tile_order(job, rows, cols)):
            h = min(rows, p_all - p0)
            if idx == 0:
                first = load_end + rows + 2
            elif oc0 == 0:
                first = max(t, gathered) + 1
            else:
                first = t + 1
            if oc0 == 0:
                gathered = first + rows
            t = max(first + k - 1, free_at)
            free_at = t + rows + cols + READ_DELAY + DEPOSIT_DELAY + h
    return free_at - 1 + OUT_DELAY + (REQUANT_DELAY if out_stage else 0)
