"""The matmul core's register map / stream format module (host side, no Amaranth)."""

import subprocess
import sys

import numpy as np
import pytest

from lepton_accel.hdl import matmul_regmap as regmap
from lepton_accel.reference import matmul_ref


def test_importable_without_amaranth():
    code = ("import sys; import lepton_accel.hdl.matmul_regmap as r; "
            "assert 'amaranth' not in sys.modules, 'matmul_regmap pulled in amaranth'; "
            "print(r.CORE_ID)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == regmap.CORE_ID


def test_registers_are_word_aligned_unique_and_fit_the_window():
    offsets = [r.offset for r in regmap.REGISTERS]
    assert len(set(offsets)) == len(offsets)
    assert all(o % 4 == 0 and o < 2 ** regmap.ADDR_WIDTH for o in offsets)
    assert len({r.name for r in regmap.REGISTERS}) == len(regmap.REGISTERS)
    for r in regmap.REGISTERS:
        assert r.access in ("ro", "rw", "w1c")
        used = 0
        for f in r.fields:
            mask = ((1 << f.width) - 1) << f.lsb
            assert f.lsb + f.width <= regmap.DATA_WIDTH, (r.name, f.name)
            assert not used & mask, f"{r.name}.{f.name} overlaps another field"
            used |= mask


def test_field_helpers_round_trip():
    word = regmap.config_word(16, 8, "int16")
    assert regmap.field_value("CONFIG", "ROWS", word) == 16
    assert regmap.field_value("CONFIG", "COLS", word) == 8
    assert regmap.field_value("CONFIG", "DTYPE", word) == regmap.DTYPE_CODES["int16"]
    assert regmap.field_value("CONFIG", "ACC_WIDTH", word) == regmap.ACC_WIDTH
    assert regmap.field_mask("CTRL", "BIAS_EN") == 2


@pytest.mark.parametrize("rows,cols,dtype", [(4, 4, "int8"), (3, 5, "int16"), (16, 16, "int8")])
def test_pack_unpack_round_trip(rows, cols, dtype):
    rng = np.random.default_rng()
    info = np.iinfo(np.int8 if dtype == "int8" else np.int16)
    m, k, n = int(rng.integers(1, 3 * rows)), int(rng.integers(1, 40)), int(rng.integers(1, 3 * cols))
    a = rng.integers(info.min, info.max + 1, size=(m, k))
    b = rng.integers(info.min, info.max + 1, size=(k, n))
    a.flat[0], b.flat[-1] = info.min, info.max
    fr = regmap.pack_job(a, b, np.arange(n), rows=rows, cols=cols, dtype=dtype)
    tiles = list(regmap.tile_order(m, n, rows, cols))
    w = regmap.stream_widths(rows, cols, dtype)
    lane = np.int8 if dtype == "int8" else np.int16
    assert len(fr["a"]) == len(fr["b"]) == len(fr["bias"]) == len(tiles)
    for (r0, c0), fa, fb, fbias in zip(tiles, fr["a"], fr["b"], fr["bias"]):
        assert len(fa) == k * w["a"] // 8 and len(fb) == k * w["b"] // 8
        blk_a = np.frombuffer(fa, dtype=lane).reshape(k, rows)
        blk_b = np.frombuffer(fb, dtype=lane).reshape(k, cols)
        h, v = min(rows, m - r0), min(cols, n - c0)
        np.testing.assert_array_equal(blk_a[:, :h], a[r0:r0 + h].T)
        assert not blk_a[:, h:].any()
        np.testing.assert_array_equal(blk_b[:, :v], b[:, c0:c0 + v])
        np.testing.assert_array_equal(np.frombuffer(fbias, "<i4")[:v], np.arange(c0, c0 + v))
    # the device's answer, tile by tile, reassembles into the full matrix
    lane = np.int8 if dtype == "int8" else np.int16
    c = matmul_ref(a.astype(lane), b.astype(lane))
    out = []
    for r0, c0 in tiles:
        blk = np.zeros((min(rows, m - r0), cols), dtype="<i4")
        sub = c[r0:r0 + rows, c0:c0 + cols]
        blk[:, :sub.shape[1]] = sub
        out.append(blk.tobytes())
    np.testing.assert_array_equal(regmap.unpack_c(out, m, n, rows=rows, cols=cols), c)


def test_pack_rejects_out_of_range_values():
    with pytest.raises(ValueError):
        regmap.pack_a(np.array([[128]]), 1, rows=4, cols=4, dtype="int8")
    with pytest.raises(ValueError):
        regmap.describe(64, 4, "int8")
    with pytest.raises(ValueError):
        regmap.describe(4, 4, "float32")


def test_expected_cycles_by_hand():
    # one 4x4 tile, K=10: the input slices hand the last pair on at cycle 1 + 10, its
    # sums reach the drain registers R+C+3 = 11 later, 4 rows move out, the last one
    # leaves the output slice one cycle after its move.
    assert regmap.expected_cycles(4, 4, 10, 4, 4) == 11 + 11 + 4
    # two tiles, K=1: the second tile's last pair waits for the first tile to drain.
    assert regmap.expected_cycles(8, 4, 1, 4, 4) == (2 + 11 + 4) + 11 + 4
    # long K hides the drain completely: tiles*K + 1 + R + C + 3 + rows
    assert regmap.expected_cycles(64, 64, 64, 16, 16) == 16 * 64 + 1 + 32 + 3 + 16


def test_cycle_model_constants_match_the_rtl():
    pytest.importorskip("amaranth")
    from lepton_accel.hdl import drain, pe
    assert regmap.DEPOSIT_DELAY == pe.DEPOSIT_DELAY
    assert regmap.OUT_DELAY == drain.OUT_DELAY
    assert regmap.REQUANT_DELAY == drain.REQUANT_DELAY
    from lepton_accel.hdl import conv_regmap
    assert conv_regmap.OUT_DELAY == drain.OUT_DELAY
    assert conv_regmap.REQUANT_DELAY == drain.REQUANT_DELAY


def test_docs_register_table_matches_regmap():
    from pathlib import Path
    doc = Path(__file__).resolve().parents[1] / "docs" / "fpga-matmul.md"
    if not doc.exists():
        pytest.skip("docs not in this checkout")
    text = doc.read_text()
    for r in regmap.REGISTERS:
        assert f"| 0x{r.offset:02X} | {r.name} | {r.access} |" in text, r.name
    assert f"0x{regmap.CORE_ID:08X}" in text


def test_pack_q_lanes_follow_the_tiles():
    # 5 columns on 2 column tiles of 4: lane j of a tile's beat = channel c0 + j
    mult = np.array([-2**31, 2**31 - 1, -1, 7, 123456])
    shift = np.array([0, 63, 1, 31, 40])
    frames = regmap.pack_q(mult, shift, 3, rows=2, cols=4)
    tiles = list(regmap.tile_order(3, 5, 2, 4))
    assert len(frames) == len(tiles)
    for (_, c0), f in zip(tiles, frames):
        lanes = np.frombuffer(f, "<u8")
        assert lanes.size == 4
        v = min(4, 5 - c0)
        m = (lanes[:v] & 0xFFFFFFFF).astype(np.int64)
        m[m >= 2**31] -= 2**32
        np.testing.assert_array_equal(m, mult[c0:c0 + v])
        np.testing.assert_array_equal(lanes[:v] >> 32, shift[c0:c0 + v])
        assert not lanes[v:].any()
    fr = regmap.pack_job(np.zeros((3, 2)), np.zeros((2, 5)), rows=2, cols=4, dtype="int8",
                         requant=(mult, shift))
    assert fr["q"] == frames
    with pytest.raises(ValueError, match="requant"):
        regmap.pack_job(np.zeros((3, 2)), np.zeros((2, 5)), rows=2, cols=4, dtype="int8",
                        requant=(mult[:4], shift))
    assert regmap.stream_widths(2, 4, "int8")["q"] == 4 * 64
