"""The conv core's register map / host protocol module (host side, no Amaranth)."""

import subprocess
import sys

import numpy as np
import pytest

from lepton_accel.hdl import conv_regmap as cr
from lepton_accel.ops import conv2d_spec


def test_importable_without_amaranth():
    code = ("import sys; import lepton_accel.hdl.conv_regmap as r; "
            "assert 'amaranth' not in sys.modules; print(r.CORE_ID)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == cr.CORE_ID


def test_registers_unique_aligned_and_fields_fit():
    offs = [r.offset for r in cr.REGISTERS]
    assert len(set(offs)) == len(offs)
    assert all(o % 4 == 0 and o < 2 ** cr.ADDR_WIDTH for o in offs)
    for r in cr.REGISTERS:
        used = 0
        for f in r.fields:
            mask = ((1 << f.width) - 1) << f.lsb
            assert f.lsb + f.width <= cr.DATA_WIDTH and not used & mask, (r.name, f.name)
            used |= mask


def test_config_word_round_trip():
    word = cr.config_word(16, 8, "int16", 32)
    assert cr.field_value("CONFIG", "ROWS", word) == 16
    assert cr.field_value("CONFIG", "COLS", word) == 8
    assert cr.field_value("CONFIG", "XLANES_LOG2", word) == 5
    assert cr.default_x_lanes(3) == 4 and cr.default_x_lanes(16) == 16
    with pytest.raises(ValueError):
        cr.describe(16, 16, "int8", x_lanes=12)


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 3, 1, 1), ((2, 1), (1, 2), (2, 1), 2), (1, 1, 1, 6)])
def test_job_geometry_matches_the_op(stride, padding, dilation, groups):
    """ConvJob's output size and K agree with the conv2d op's definition."""
    x_shape = (2, 9, 11, 6)
    kh = 7 if padding == 3 else 3
    w_shape = (12, 6 // groups, kh, kh)
    job = cr.ConvJob.make(x_shape, w_shape, stride, padding, dilation, groups)
    spec = conv2d_spec(x_shape, "int8", w_shape, "int8", stride=stride, padding=padding,
                       dilation=dilation, groups=groups, layout="NHWC")
    assert spec.out_shape == (2, job.oh, job.ow, 12)
    assert job.k == w_shape[1] * kh * kh and job.ocg == 12 // groups
    assert spec.params.padding == job.pad


def test_pack_unpack_round_trip_and_tile_order():
    rng = np.random.default_rng()
    job = cr.ConvJob.make((2, 5, 4, 6), (10, 3, 3, 3), 1, 1, 1, 2)
    R, C = 4, 4
    tiles = list(cr.tile_order(job, R, C))
    assert len(tiles) == 2 * 5 * 2  # groups x pixel tiles x channel tiles
    out = rng.integers(-2**31, 2**31, (2, job.oh, job.ow, 10)).astype(np.int32)
    flat = out.reshape(2, -1, 10)
    frames = []
    for n in range(2):
        for g, p0, oc0 in tiles:
            blk = np.zeros((min(R, 20 - p0), C), "<i4")
            wd = min(C, 5 - oc0)
            blk[:, :wd] = flat[n, p0:p0 + R, g * 5 + oc0:g * 5 + oc0 + wd]
            frames.append(blk.tobytes())
    np.testing.assert_array_equal(cr.unpack_c(frames, job, rows=R, cols=C), out)
    w = rng.integers(-128, 128, (10, 3, 3, 3)).astype(np.int8)
    b = cr.pack_b(w, job, rows=R, cols=C, dtype="int8")
    first = np.frombuffer(b[0], np.int8).reshape(job.k, C)
    # beat (kh*KW + kw)*CG + c, lane j = w[j, c, kh, kw]
    assert first[(1 * 3 + 2) * 3 + 1, 2] == w[2, 1, 1, 2]
    assert (first[:, 4:] == 0).all() if C > 4 else True
    x = rng.integers(-128, 128, (2, 5, 4, 6)).astype(np.int8)
    xf = cr.pack_x(x, dtype="int8", x_lanes=8)
    assert len(xf) == 2 and len(xf[0]) == 8 * 15
    assert np.frombuffer(xf[1], np.int8)[:120].tolist() == x[1].reshape(-1).tolist()


def test_expected_cycles_is_near_ideal_for_resnet_layers():
    for xs, ws in [((1, 56, 56, 64), (64, 64, 3, 3)), ((1, 28, 28, 128), (128, 128, 3, 3))]:
        job = cr.ConvJob.make(xs, ws, 1, 1)
        cyc = cr.expected_cycles(job, 16, 16, 16)
        assert cr.useful_macs(job) / (256 * cyc) > 0.95


def test_pack_q_follows_groups_and_channel_tiles():
    # 2 groups of 5 output channels on 4 columns: tile (g, oc0) carries g*5 + oc0 + j
    job = cr.ConvJob.make((1, 3, 3, 4), (10, 2, 1, 1), groups=2)
    mult = np.arange(10) * 1000 - 4000
    shift = np.arange(10) + 3
    frames = cr.pack_q(mult, shift, job, rows=4, cols=4)
    tiles = list(cr.tile_order(job, 4, 4))
    assert len(frames) == len(tiles)
    for (g, _, oc0), f in zip(tiles, frames):
        lanes = np.frombuffer(f, "<u8")
        v = min(4, job.ocg - oc0)
        m = (lanes[:v] & 0xFFFFFFFF).astype(np.int64)
        m[m >= 2**31] -= 2**32
        lo = g * job.ocg + oc0
        np.testing.assert_array_equal(m, mult[lo:lo + v])
        np.testing.assert_array_equal(lanes[:v] >> 32, shift[lo:lo + v])
        assert not lanes[v:].any()
    assert cr.stream_widths(4, 4, "int8")["q"] == 4 * 64


def test_dw_config():
    assert cr.dw_config(16, 16, False) == (16, 1)
    assert cr.dw_config(16, 16, True) == (8, 2)
    assert cr.dw_config(5, 4, False) == (4, 1)      # no more than the image lanes
    assert cr.dw_config(7, 8, True) == (4, 2)       # 4 cell columns
    assert cr.dw_config(3, 2, False) == (2, 1)
    assert cr.dw_config(6, 1, False) == (1, 1)
    word = cr.dw_config_word(8, 2)
    assert cr.field_value("DW_CONFIG", "CT", word) == 8
    assert cr.field_value("DW_CONFIG", "P", word) == 2
    job = cr.ConvJob.make((1, 4, 4, 6), (6, 1, 3, 3), groups=6)
    assert cr.register_values(job)["MODE"] == 0
    assert cr.register_values(cr.depthwise_job(job, 4, 1))["MODE"] == 1
    with pytest.raises(ValueError, match="not a depthwise job"):
        cr.depthwise_job(cr.ConvJob.make((1, 4, 4, 6), (6, 3, 3, 3), groups=2), 4, 1)


@pytest.mark.parametrize("ct,p,mult,c", [(4, 1, 1, 6), (2, 2, 1, 5), (4, 2, 3, 7), (1, 1, 2, 3),
                                         (8, 2, 2, 8)])
def test_depthwise_protocol_computes_the_convolution(ct, p, mult, c):
    """The depthwise-mode streams, computed as the module doc says the core does (column
    j of tile (c0, p0, m0): channel c0 + j // P, the b beat of each tap), give the
    oracle's convolution after unpack_c."""
    rng = np.random.default_rng()
    R, C = 3, ct * p + 1     # one column more than the tile uses
    x = rng.integers(-128, 128, (2, 5, 6, c)).astype(np.int8)
    w = rng.integers(-128, 128, (c * mult, 1, 3, 3)).astype(np.int8)
    bias = rng.integers(-2**31, 2**31, c * mult)
    job = cr.ConvJob.make(x.shape, w.shape, (2, 1), ((1, 0), (2, 1)), (1, 2), c)
    dwj = cr.depthwise_job(job, ct, p)
    assert dwj.c % ct == 0 and dwj.k == 9
    xp, wp, bp = cr.depthwise_operands(x, w, bias, dwj)
    tiles = list(cr.tile_order(dwj, R, C))
    b = cr.pack_b(wp, dwj, rows=R, cols=C, dtype="int8")
    bb = cr.pack_bias(bp, dwj, rows=R, cols=C)
    (pt, _), (pl, _) = dwj.pad
    xpad = np.pad(xp.astype(np.int64), ((0, 0), (pt, 8), (pl, 8), (0, 0)))
    frames = []
    for n in range(2):
        for t, (g, p0, m0) in enumerate(tiles):
            wk = np.frombuffer(b[t], np.int8).reshape(9, C).astype(np.int64)
            bias_beat = np.frombuffer(bb[t], "<i4").astype(np.int64)
            h = min(R, dwj.oh * dwj.ow - p0)
            blk = np.zeros((h, C), np.int64)
            for i in range(h):
                oy, ox = divmod(p0 + i, dwj.ow)
                for j in range(C):
                    ch = g * ct + j // p
                    if j // p >= ct:
                        continue
                    for k in range(9):
                        kh, kw = divmod(k, 3)
                        iy = oy * dwj.stride[0] + kh * dwj.dilation[0]
                        ix = ox * dwj.stride[1] + kw * dwj.dilation[1]
                        blk[i, j] += xpad[n, iy, ix, ch] * wk[k, j]
                    blk[i, j] += bias_beat[j]
            frames.append(((blk + 2**31) % 2**32 - 2**31).astype("<i4").tobytes())
    out = cr.unpack_c(frames, dwj, rows=R, cols=C)
    np.testing.assert_array_equal(out[..., :c * mult], _ref(x, w, bias, job))


def _ref(x, w, bias, job):
    from lepton_accel.reference import conv2d_ref

    (pt, pb), (pl, pr) = job.pad
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    return conv2d_ref(xp, w, bias, stride=job.stride, dilation=job.dilation,
                      groups=job.groups, layout="NHWC")


def test_weight_reuse_sends_the_first_pixel_tile_of_each_group():
    from dataclasses import replace

    rng = np.random.default_rng()
    job = cr.ConvJob.make((1, 5, 4, 6), (10, 3, 3, 3), 1, 1, 1, 2)   # 2 groups, OCG 5
    R, C = 4, 4
    assert cr.group_weight_beats(job, C) == 27 * 2
    w = rng.integers(-128, 128, (10, 3, 3, 3)).astype(np.int8)
    every = cr.pack_b(w, job, rows=R, cols=C, dtype="int8")
    tiles = list(cr.tile_order(job, R, C))
    for depth, held in ((54, True), (53, False)):
        kept = replace(job, wreuse=depth)
        assert cr.weights_held(kept, C) == held
        assert cr.register_values(kept)["MODE"] == 2
        frames = cr.pack_b(w, kept, rows=R, cols=C, dtype="int8")
        expect = [f for f, (_, p0, _) in zip(every, tiles) if p0 == 0 or not held]
        assert frames == expect
    assert cr.b_tiles(job, R, C) == [True] * len(tiles)
    dw = cr.ConvJob.make((1, 5, 4, 6), (18, 1, 3, 3), 1, 1, 1, 6)    # multiplier 3
    dwj = replace(cr.depthwise_job(dw, 4, 2), wreuse=9 * 2)
    assert cr.group_weight_beats(dwj, C) == 9 * 2 and cr.weights_held(dwj, C)
