"""CUDA matmul kernels through the low-level binding `_core.cuda_gemm`.

Every case draws fresh random inputs, poisons the whole output buffer on the device,
runs one kernel family (forced through the `kernel=` argument), and compares with a
float64 (int64 for int8) NumPy reference: relative Frobenius error under 1e-5 for
float32, 1e-3 for TF32, 1e-2 for float16/bfloat16, exact for int8. Elements of the
output buffer outside the logical matrix must still hold the poison afterwards.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is a package dependency
    ml_dtypes = None

from cuda_device import SKIP_REASON, DeviceBuffers, _core



def gpu(fn):
    """Marks a test that needs a CUDA device (skipped with the reason without one)."""
    return pytest.mark.gpu(pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")(fn))


# dtypes and activations by the binding's names (its DType / Activation enums)
F32, F16, BF16, I8, I32 = "float32", "float16", "bfloat16", "int8", "int32"
NP_DTYPE = {
    F32: np.float32,
    F16: np.float16,
    BF16: ml_dtypes.bfloat16 if ml_dtypes else None,
    I8: np.int8,
    I32: np.int32,
}
NONE, RELU, GELU = "none", "relu", "gelu"

# (name, in dtype, out dtype, tf32, tolerance); tolerance 0 means exact.
DTYPES = [
    ("f32", F32, F32, False, 1e-5),
    ("tf32", F32, F32, True, 1e-3),
    ("f16", F16, F16, False, 1e-2),
    ("f16_f32", F16, F32, False, 1e-2),
    ("bf16", BF16, BF16, False, 1e-2),
    ("bf16_f32", BF16, F32, False, 1e-2),
    ("i8", I8, I32, False, 0),
]
DTYPE_IDS = [d[0] for d in DTYPES]
KERNELS = ["generic", "simt", "mma", "wgmma", "auto"]


def compute_capability() -> tuple[int, int]:
    return tuple(_core.cuda_device_props(0)["compute_capability"])


def problem(M, N, K, in_dtype, out_dtype, a_strides, b_strides, c_strides, batch=1, activation=NONE,
            tf32=False):
    """The binding's named GemmProblem (dtypes and activation looked up by name)."""
    return _core.GemmProblem(batch=batch, M=M, N=N, K=K, a_strides=a_strides, b_strides=b_strides,
                             c_strides=c_strides, in_dtype=_core.DType.__members__[in_dtype],
                             out_dtype=_core.DType.__members__[out_dtype],
                             activation=_core.Activation.__members__[activation], allow_tf32=tf32)


#: the binding's names exist in every build of the core (CPU-only ones too)
needs_types = pytest.mark.skipif(_core is None or not hasattr(_core, "GemmProblem"),
                                 reason="the native core is not built")
needs_cuda_build = pytest.mark.skipif(_core is None or not hasattr(_core, "cuda_gemm"),
                                      reason="this build has no CUDA kernels")


# ---- operands with arbitrary layouts ---------------------------------------------

class Operand:
    """A (batch, rows, cols) matrix stored in a flat buffer at `offset` with element
    strides (sb, sr, sc); `host` is the whole flat buffer, `value` the logical view."""

    def __init__(self, host: np.ndarray, offset: int, strides: tuple[int, int, int], shape):
        self.host, self.offset, self.strides, self.shape = host, offset, strides, shape

    @property
    def value(self) -> np.ndarray:
        item = self.host.itemsize
        return np.lib.stride_tricks.as_strided(
            self.host[self.offset:], shape=self.shape,
            strides=tuple(s * item for s in self.strides), writeable=False)

    def view_mask(self) -> np.ndarray:
        """True where the logical matrix lives in the flat buffer."""
        mask = np.zeros(self.host.size, dtype=bool)
        b, r, c = np.meshgrid(*(np.arange(n) for n in self.shape), indexing="ij")
        sb, sr, sc = self.strides
        mask[self.offset + b * sb + r * sr + c * sc] = True
        return mask


def _round16(n: int) -> int:
    return (n + 15) // 16 * 16


def layout_strides(layout: str, batch: int, rows: int, cols: int):
    """(offset, (batch, row, col) strides) in elements for a named layout."""
    if layout == "row":
        return 0, (rows * cols, cols, 1)
    if layout == "col":
        return 0, (rows * cols, 1, rows)
    if layout == "ld":  # row-major, leading dimension padded to a multiple of 16
        ld = _round16(cols) + 16
        return 0, (rows * ld + 32, ld, 1)
    if layout == "col_ld":
        ld = _round16(rows) + 16
        return 0, (cols * ld + 32, 1, ld)
    if layout == "strided":  # no unit stride at all
        return 0, (rows * (2 * cols + 3) + 5, 2 * cols + 3, 2)
    if layout == "offset":  # row-major from a base one element past an aligned address
        return 1, (rows * cols, cols, 1)
    if layout == "bcast":  # one matrix shared by every batch entry
        return 0, (0, cols, 1)
    raise ValueError(layout)


def make_operand(rng, dtype: int, batch: int, rows: int, cols: int, layout: str) -> Operand:
    offset, strides = layout_strides(layout, batch, rows, cols)
    extent = offset + 1 + sum((n - 1) * s for n, s in zip((batch, rows, cols), strides) if n > 0)
    size = max(extent, 1) + 3
    npdt = NP_DTYPE[dtype]
    if dtype == I8:
        host = rng.integers(-128, 128, size=size, dtype=np.int64).astype(np.int8)
    else:
        host = rng.uniform(-1.0, 1.0, size=size).astype(npdt)
    return Operand(host, offset, strides, (batch, rows, cols))


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def run_case(rng, *, M, N, K, in_dtype, out_dtype, tf32=False, batch=1, a_layout="row",
             b_layout="row", c_layout="row", bias=False, activation=NONE, kernel="auto",
             stream=0):
    """Runs one GEMM on the device; returns (kernel name, error, outside-view intact)."""
    a = make_operand(rng, in_dtype, batch, M, K, a_layout)
    b = make_operand(rng, in_dtype, batch, K, N, b_layout)
    out_np = NP_DTYPE[out_dtype]
    c_off, c_strides = layout_strides(c_layout, batch, M, N)
    c_size = c_off + 1 + sum((n - 1) * s for n, s in zip((batch, M, N), c_strides)) + 3
    c = Operand(np.zeros(c_size, dtype=out_np), c_off, c_strides, (batch, M, N))
    bias_host = None
    if bias:
        if out_dtype == I32:
            bias_host = rng.integers(-1000, 1000, size=N).astype(np.int32)
        else:
            bias_host = rng.uniform(-1.0, 1.0, size=N).astype(out_np)

    poison = 0x7F if out_dtype == I32 else 0xFF  # int32 0x7F7F7F7F; NaN for floats
    item = np.dtype(NP_DTYPE[in_dtype]).itemsize
    with DeviceBuffers() as bufs:
        pa = bufs.upload(a.host)
        pb = bufs.upload(b.host)
        pbias = bufs.upload(bias_host) if bias else 0
        pc = bufs.alloc(c.host.nbytes)
        _core.cuda_memset(pc, poison, c.host.nbytes, stream)
        name = _core.cuda_gemm(
            problem(M, N, K, in_dtype, out_dtype, a.strides, b.strides, c.strides, batch=batch,
                    activation=activation, tf32=tf32),
            pa + a.offset * item, pb + b.offset * item, pc + c.offset * c.host.itemsize, pbias,
            stream=stream, kernel=kernel)
        _core.cuda_stream_synchronize(stream)
        _core.cuda_copy_to_host(c.host.view(np.uint8), pc, stream)

    if in_dtype == I8:
        ref = np.matmul(a.value.astype(np.int64), b.value.astype(np.int64))
        if bias:
            ref = ref + bias_host.astype(np.int64)
        if activation == RELU:
            ref = np.maximum(ref, 0)
        got = c.value.astype(np.int64)
        err = float(np.abs(got - ref).max()) if ref.size else 0.0
    else:
        ref = np.matmul(a.value.astype(np.float64), b.value.astype(np.float64))
        if bias:
            ref = ref + bias_host.astype(np.float64)
        if activation == RELU:
            ref = np.maximum(ref, 0.0)
        elif activation == GELU:
            ref = _gelu(ref)
        got = c.value.astype(np.float64)
        if not np.all(np.isfinite(got)):
            err = math.inf
        else:
            denom = np.linalg.norm(ref)
            err = float(np.linalg.norm(got - ref) / (denom if denom > 0 else 1.0))

    outside = ~c.view_mask()
    raw = c.host.view(np.uint8).reshape(-1, c.host.itemsize)[outside]
    intact = bool(np.all(raw == poison))
    return name, err, intact


# ---- which family must run ---------------------------------------------------------

def _vec_ok(op_offset_bytes, strides, shape, unit_axis, item):
    """Mirror of the dispatcher's rule for 16-byte vector loads along `unit_axis`."""
    vec = 16 // item
    batch = shape[0]
    if strides[unit_axis] != 1 or op_offset_bytes % 16:
        return False
    others = [s for i, s in enumerate(strides) if i != unit_axis and not (i == 0 and batch == 1)]
    return all(s % vec == 0 for s in others)


def expected_family(kernel, in_dtype, tf32, cc, a_layout, b_layout, batch, M, N, K):
    """The family a forced kernel must report for these operands (None: not asserted)."""
    if kernel == "generic":
        return "gemm_generic"
    if kernel == "auto":
        return None
    item = np.dtype(NP_DTYPE[in_dtype]).itemsize

    def eligible(layout, rows, cols, k_axis):
        off, strides = layout_strides(layout, batch, rows, cols)
        mn_axis = 1 if k_axis == 2 else 2
        return (_vec_ok(off * item, strides, (batch, rows, cols), k_axis, item)
                or _vec_ok(off * item, strides, (batch, rows, cols), mn_axis, item))

    def k_major(layout, rows, cols, k_axis):
        off, strides = layout_strides(layout, batch, rows, cols)
        return _vec_ok(off * item, strides, (batch, rows, cols), k_axis, item)

    mma_ok = cc >= (8, 0) and eligible(a_layout, M, K, 2) and eligible(b_layout, K, N, 1)
    wgmma_ok = (cc == (9, 0) and in_dtype in (F16, BF16) and K >= 1 and k_major(a_layout, M, K, 2)
                and k_major(b_layout, K, N, 1))
    if in_dtype == F32 and not tf32:
        return "simt"
    if in_dtype == F32:  # tf32 allowed
        if kernel == "simt" or not mma_ok:
            return "simt"
        return "mma"
    if kernel == "simt":
        return "gemm_generic"
    if kernel == "wgmma" and wgmma_ok:
        return "wgmma"
    return "mma" if mma_ok else "gemm_generic"


def check(rng, tol, kernel, cc, **kw):
    name, err, intact = run_case(rng, kernel=kernel, **kw)
    fam = expected_family(kernel, kw["in_dtype"], kw.get("tf32", False), cc,
                          kw.get("a_layout", "row"), kw.get("b_layout", "row"),
                          kw.get("batch", 1), kw["M"], kw["N"], kw["K"])
    if fam is not None:
        assert name.startswith(fam), f"expected a {fam} kernel, {name} ran"
    assert intact, f"{name} wrote outside the output matrix"
    if tol == 0:
        assert err == 0, f"{name}: int8 result differs by up to {err}"
    else:
        assert err < tol, f"{name}: relative Frobenius error {err:.3g} >= {tol:g}"
    return name


@pytest.fixture
def rng():
    return np.random.default_rng()  # fresh inputs every run


@pytest.fixture(scope="module")
def cc():
    return compute_capability()


# ---- the cases ----------------------------------------------------------------------

SHAPES = [
    (1, 1, 1), (1, 7, 13), (17, 1, 5), (3, 5, 0), (31, 37, 41), (64, 64, 64),
    (127, 129, 65), (128, 256, 128), (257, 255, 259), (97, 300, 1000), (200, 136, 72),
    (100, 144, 208),  # 16-byte aligned rows for int8 too, partial tiles everywhere
]


@gpu
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dt", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("b_layout", ["row", "col"])
def test_shapes(rng, cc, kernel, dt, shape, b_layout):
    _, ind, outd, tf32, tol = dt
    M, N, K = shape
    check(rng, tol, kernel, cc, M=M, N=N, K=K, in_dtype=ind, out_dtype=outd, tf32=tf32,
          b_layout=b_layout)


LAYOUTS = ["row", "col", "ld", "col_ld", "strided", "offset"]


@gpu
@pytest.mark.parametrize("kernel", ["simt", "mma", "wgmma"])
@pytest.mark.parametrize("dt", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("a_layout", LAYOUTS)
@pytest.mark.parametrize("b_layout", LAYOUTS)
def test_layouts(rng, cc, kernel, dt, a_layout, b_layout):
    _, ind, outd, tf32, tol = dt
    check(rng, tol, kernel, cc, M=133, N=80, K=96, in_dtype=ind, out_dtype=outd, tf32=tf32,
          a_layout=a_layout, b_layout=b_layout)


@gpu
@pytest.mark.parametrize("kernel", ["simt", "mma", "wgmma"])
@pytest.mark.parametrize("dt", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("c_layout", ["row", "col", "ld"])
@pytest.mark.parametrize("act", [NONE, RELU, GELU], ids=["none", "relu", "gelu"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_epilogue(rng, cc, kernel, dt, c_layout, act, bias):
    _, ind, outd, tf32, tol = dt
    if ind == I8 and act == GELU:
        pytest.skip("GELU is not offered for int8")
    check(rng, tol, kernel, cc, M=150, N=264, K=144, in_dtype=ind, out_dtype=outd, tf32=tf32,
          b_layout="col", c_layout=c_layout, bias=bias, activation=act)


@gpu
@pytest.mark.parametrize("kernel", ["simt", "mma", "wgmma"])
@pytest.mark.parametrize("dt", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layouts", [("row", "row"), ("row", "col"), ("col", "bcast"),
                                     ("ld", "col_ld"), ("offset", "row")])
def test_batched(rng, cc, kernel, dt, layouts):
    _, ind, outd, tf32, tol = dt
    check(rng, tol, kernel, cc, M=96, N=80, K=200, batch=3, in_dtype=ind, out_dtype=outd,
          tf32=tf32, a_layout=layouts[0], b_layout=layouts[1], bias=True, activation=RELU)


@gpu
@pytest.mark.parametrize("kernel", ["mma", "wgmma"])
@pytest.mark.parametrize("dt", [d for d in DTYPES if d[0] in ("bf16", "f16", "i8")],
                         ids=lambda d: d[0])
def test_large_tiles(rng, cc, kernel, dt):
    """Several k-tiles, many blocks and partial edge tiles in both dimensions."""
    _, ind, outd, tf32, tol = dt
    check(rng, tol, kernel, cc, M=1000, N=1030, K=1520, in_dtype=ind, out_dtype=outd,
          a_layout="row", b_layout="col")
    check(rng, tol, kernel, cc, M=515, N=784, K=2064, in_dtype=ind, out_dtype=outd,
          a_layout="row", b_layout="row")


@gpu
def test_on_a_stream(rng):
    """Work is ordered on the stream given: memset, gemm and copy all on one stream."""
    stream = _core.cuda_stream_create()
    try:
        for dt in DTYPES:
            _, ind, outd, tf32, tol = dt
            name, err, intact = run_case(rng, M=300, N=200, K=160, in_dtype=ind, out_dtype=outd,
                                         tf32=tf32, b_layout="col", stream=stream)
            assert intact and (err == 0 if tol == 0 else err < tol), (name, err)
    finally:
        _core.cuda_stream_destroy(stream)


@gpu
def test_env_var_selects_the_kernel(rng, monkeypatch):
    monkeypatch.setenv("LEPTON_ACCEL_GEMM_KERNEL", "generic")
    name, err, _ = run_case(rng, M=40, N=50, K=60, in_dtype=F32, out_dtype=F32)
    assert name == "gemm_generic" and err < 1e-5
    monkeypatch.setenv("LEPTON_ACCEL_GEMM_KERNEL", "simt")
    name, err, _ = run_case(rng, M=40, N=50, K=60, in_dtype=F32, out_dtype=F32)
    assert name.startswith("simt") and err < 1e-5
    monkeypatch.setenv("LEPTON_ACCEL_GEMM_KERNEL", "fastest")
    with pytest.raises(_core.CudaError, match="LEPTON_ACCEL_GEMM_KERNEL"):
        run_case(rng, M=4, N=4, K=4, in_dtype=F32, out_dtype=F32)


@gpu
def test_bad_dtype_pair_raises(rng):
    with pytest.raises(_core.CudaError, match="dtype"):
        run_case(rng, M=4, N=4, K=4, in_dtype=F32, out_dtype=F16)


@gpu
def test_generic_runs_more_row_tiles_than_grid_y_allows(rng):
    """M / 32 > 65535 row tiles: the generic kernel steps over them (grid.y is capped)."""
    M, N, K = 70000 * 32 + 5, 3, 2
    a = rng.uniform(-1, 1, (M, K)).astype(np.float32)
    b = rng.uniform(-1, 1, (K, N)).astype(np.float32)
    c = np.empty((M, N), np.float32)
    with DeviceBuffers() as bufs:
        pa, pb = bufs.upload(a), bufs.upload(b)
        pc = bufs.alloc(c.nbytes)
        name = _core.cuda_gemm(problem(M, N, K, F32, F32, (0, K, 1), (0, N, 1), (0, N, 1)),
                               pa, pb, pc, kernel="generic")
        _core.cuda_copy_to_host(c, pc)
    assert name == "gemm_generic"
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(c - ref).max() < 1e-5


def test_cuda_error_names_the_call():
    """A failing CUDA call becomes a CudaError naming the call and CUDA's error."""
    if _core is None or not hasattr(_core, "cuda_malloc"):
        pytest.skip("this build has no CUDA kernels")
    with pytest.raises(_core.CudaError, match=r"cudaMalloc: cuda\w+ \("):
        _core.cuda_malloc(1 << 62)  # out of memory (or no driver): refused at once, not sticky


@needs_cuda_build
def test_int8_gelu_is_refused():
    """Checked before any CUDA call: the int32 epilogue has no GELU."""
    with pytest.raises(_core.CudaError, match="GELU"):
        _core.cuda_gemm(problem(4, 4, 4, I8, I32, (0, 4, 1), (0, 4, 1), (0, 4, 1), activation=GELU),
                        0, 0, 0)


@needs_types
def test_problem_fields_are_named():
    """GemmProblem is built by keyword only: a missing or unknown field, or a value of
    the wrong kind (a bare integer where a DType or Activation goes), is a TypeError
    naming the field; the repr shows every field."""
    p = problem(3, 5, 7, BF16, F32, (0, 7, 1), (0, 1, 7), (0, 5, 1), activation=RELU)
    assert (p.M, p.N, p.K, p.batch) == (3, 5, 7, 1)
    assert p.b_strides == (0, 1, 7) and p.in_dtype == _core.DType.bfloat16
    assert p.activation == _core.Activation.relu and p.allow_tf32 is False
    assert "b_strides=(0, 1, 7)" in repr(p) and set(p.fields) >= {"M", "a_strides", "activation"}
    with pytest.raises(TypeError, match="missing field.*K"):
        _core.GemmProblem(M=1, N=1, a_strides=(0, 1, 1), b_strides=(0, 1, 1), c_strides=(0, 1, 1),
                          in_dtype=_core.DType.float32, out_dtype=_core.DType.float32)
    full = dict(M=1, N=1, K=1, a_strides=(0, 1, 1), b_strides=(0, 1, 1), c_strides=(0, 1, 1),
                in_dtype=_core.DType.float32, out_dtype=_core.DType.float32)
    with pytest.raises(TypeError, match="unknown field 'lda'"):
        _core.GemmProblem(lda=4, **full)
    with pytest.raises(TypeError, match="GemmProblem.activation"):
        _core.GemmProblem(activation=7, **full)
    with pytest.raises(TypeError, match="GemmProblem.a_strides"):
        _core.GemmProblem(**{**full, "a_strides": (1, 1)})


@needs_types
def test_enum_names_are_the_package_names():
    from lepton_accel.dtypes import NAMES
    from lepton_accel.ops.base import ACTIVATIONS

    assert set(_core.DType.__members__) <= set(NAMES)
    assert {"float32", "float16", "bfloat16", "int8", "int32"} == set(_core.DType.__members__)
    assert list(_core.Activation.__members__) == ["none"] + [a for a in ACTIVATIONS if a]
    assert list(_core.GemmKernel.__members__) == KERNELS[-1:] + KERNELS[:-1]


@needs_cuda_build
def test_kernel_names_are_parsed_in_one_place(monkeypatch):
    """The kernel= argument and LEPTON_ACCEL_GEMM_KERNEL are read by one parser: an unknown
    name is refused before any CUDA call, with every family named (no device needed)."""
    p = problem(4, 4, 4, F32, F32, (0, 4, 1), (0, 4, 1), (0, 4, 1))
    families = list(_core.GemmKernel.__members__)
    with pytest.raises(ValueError, match="kernel must be") as arg_err:
        _core.cuda_gemm(p, 0, 0, 0, kernel="winograd")
    monkeypatch.setenv("LEPTON_ACCEL_GEMM_KERNEL", "fastest")
    with pytest.raises(_core.CudaError, match="LEPTON_ACCEL_GEMM_KERNEL must be") as env_err:
        _core.cuda_gemm(p, 0, 0, 0)
    for err in (arg_err, env_err):
        assert all(f"{f}" in str(err.value) for f in families), str(err.value)


def test_host_copies_refuse_strided_buffers():
    """Checked before any CUDA call: a copy moves size * itemsize bytes from the start."""
    if _core is None or not hasattr(_core, "cuda_copy_to_device"):
        pytest.skip("this build has no CUDA kernels")
    strided = np.arange(20, dtype=np.float32)[::2]
    with pytest.raises(ValueError, match="src.*contiguous"):
        _core.cuda_copy_to_device(0, strided)
    with pytest.raises(ValueError, match="dst.*contiguous"):
        _core.cuda_copy_to_host(np.zeros((4, 6), np.float32)[:, :3], 0)


# ---- CPU: the backend's marshalling against a NumPy model of the binding -------------------

class FakeGemmCore:
    """`_core`'s memory and `cuda_gemm` as documented, on NumPy: host buffers go through
    the buffer protocol (as pybind11's py::buffer does), and every element a GEMM reads
    or writes must lie inside one allocation. The problem descriptions and enums are the
    built core's own, so the names the backend uses are checked by the binding itself."""

    NP = {F32: np.float32, F16: np.float16, BF16: NP_DTYPE[BF16], I8: np.int8, I32: np.int32}
    BUILD_INFO = {"cuda": True}

    def __getattr__(self, name):  # DType, Activation, GemmProblem, ...: the real ones
        if name in ("DType", "Activation", "GemmProblem", "Conv2dProblem"):
            return getattr(_core, name)
        raise AttributeError(name)

    def __init__(self):
        self.mem, self.next = {}, 1 << 20

    def cuda_malloc(self, nbytes):
        ptr = self.next
        self.mem[ptr] = np.zeros(max(nbytes, 1), np.uint8)
        self.next += (max(nbytes, 1) + 255) // 256 * 256 + 256
        return ptr

    def cuda_free(self, ptr):
        del self.mem[ptr]

    def place(self, host: np.ndarray) -> int:
        """Device memory holding `host`'s bytes (a test's own 'device array')."""
        ptr = self.cuda_malloc(host.nbytes)
        self.mem[ptr][:host.nbytes] = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        return ptr

    def _alloc(self, ptr):
        base = max(b for b in self.mem if b <= ptr)
        return base, self.mem[base]

    def cuda_copy_to_device(self, dst, src, stream=0):
        raw = memoryview(src)  # raises for dtypes NumPy exports no buffer for, like py::buffer
        assert raw.c_contiguous, "the binding copies host buffers as contiguous bytes"
        base, buf = self._alloc(dst)
        buf[dst - base:dst - base + raw.nbytes] = np.frombuffer(raw.cast("B"), np.uint8)

    def cuda_copy_to_host(self, dst, src, stream=0):
        raw = memoryview(dst)
        assert raw.c_contiguous and not raw.readonly
        base, buf = self._alloc(src)
        np.frombuffer(raw.cast("B"), np.uint8)[:] = buf[src - base:src - base + raw.nbytes]

    def _matrix(self, ptr, dt, batch, rows, cols, strides, what):
        """The (batch, rows, cols) view at ptr, after checking every element is allocated."""
        base, buf = self._alloc(ptr)
        item = np.dtype(dt).itemsize
        assert (ptr - base) % item == 0, f"{what}: misaligned pointer"
        start = (ptr - base) // item
        dims = [(n, s) for n, s in zip((batch, rows, cols), strides)]
        lo = start + sum(min(0, (n - 1) * s) for n, s in dims)
        hi = start + sum(max(0, (n - 1) * s) for n, s in dims)
        flat = buf[:buf.size // item * item].view(dt)
        assert 0 <= lo and hi < flat.size, f"{what}: elements {lo}..{hi} outside the allocation"
        return np.lib.stride_tricks.as_strided(flat[start:], (batch, rows, cols),
                                               tuple(s * item for s in strides))

    def cuda_gemm(self, problem, a, b, c, bias=0, *, stream=0, kernel="auto"):
        assert isinstance(problem, _core.GemmProblem)
        pr, batch, M, N, K = problem, problem.batch, problem.M, problem.N, problem.K
        in_dt, out_dt = self.NP[pr.in_dtype.name], self.NP[pr.out_dtype.name]
        A = self._matrix(a, in_dt, batch, M, K, pr.a_strides, "a").astype(np.float64)
        B = self._matrix(b, in_dt, batch, K, N, pr.b_strides, "b").astype(np.float64)
        ref = np.matmul(A, B)
        if bias:
            ref = ref + self._matrix(bias, out_dt, 1, 1, N, (0, 0, 1), "bias")[0, 0]
        if pr.activation.name == RELU:
            ref = np.maximum(ref, 0)
        elif pr.activation.name == GELU:
            ref = _gelu(ref)
        self._matrix(c, out_dt, batch, M, N, pr.c_strides, "c")[...] = ref.astype(out_dt)
        return "fake"


def _reference(a, b, bias, activation):
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    if bias is not None:
        ref = ref + bias.astype(np.float64)
    return np.maximum(ref, 0) if activation == "relu" else ref


HOST_CASES = [  # (a shape, b shape)
    ((5, 7), (7, 3)),
    ((7,), (7, 3)),                     # 1-D a: a 1 x K row
    ((2, 5, 7), (7,)),                  # 1-D b: a K x 1 column
    ((2, 1, 3, 5, 7), (3, 7, 4)),       # extent-1 batch dim between broadcast ones
    ((4, 1, 5, 7), (1, 3, 7, 4)),       # both operands broadcast
]


@needs_types
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
@pytest.mark.parametrize("shapes", HOST_CASES, ids=lambda s: f"{s[0]}@{s[1]}")
def test_host_marshalling_matches_reference(monkeypatch, dtype, shapes):
    """The host path (copies through the buffer protocol, strides, batches, 1-D
    promotion) gives NumPy's answer when the binding does what it documents."""
    from lepton_accel.arrays import as_view
    from lepton_accel.backends import cuda as cuda_backend
    from lepton_accel.dtypes import DTYPES as NP_OF
    from lepton_accel.ops import matmul_spec

    monkeypatch.setattr(cuda_backend, "core", FakeGemmCore())
    rng = np.random.default_rng()
    a_shape, b_shape = shapes
    if dtype == "int8":
        a = rng.integers(-100, 100, a_shape).astype(np.int8)
        b = rng.integers(-100, 100, b_shape).astype(np.int8)
    else:
        a = rng.uniform(-1, 1, a_shape).astype(NP_OF[dtype])
        b = rng.uniform(-1, 1, b_shape).astype(NP_OF[dtype])
    out_dtype = "int32" if dtype == "int8" else dtype
    bias = None
    if len(b_shape) >= 2:
        bias = rng.uniform(-9, 9, b_shape[-1]).astype(NP_OF[out_dtype])
    spec = matmul_spec(a.shape, dtype, b.shape, dtype, activation="relu", out_dtype=out_dtype,
                       bias_shape=None if bias is None else bias.shape,
                       bias_dtype=None if bias is None else out_dtype)
    views = [as_view(a, "a"), as_view(b, "b")] + ([as_view(bias, "bias")] if bias is not None else [])
    out = cuda_backend.CudaBackend()._matmul_host(spec, views)
    ref = _reference(a, b, bias, "relu")
    assert out.shape == ref.shape and out.dtype == NP_OF[out_dtype]
    if dtype == "int8":
        np.testing.assert_array_equal(out, ref)
    else:
        np.testing.assert_allclose(out.astype(np.float64), ref, rtol=2e-2, atol=2e-2)


@needs_types
def test_device_batch_with_expanded_operand(monkeypatch):
    """A device operand broadcast by a zero stride over an outer batch dim, next to an
    extent-1 batch dim, must not be collapsed into one batch stride (that would read
    past its memory)."""
    from lepton_accel.backends import cuda as cuda_backend
    from lepton_accel.ops import matmul_spec

    fake = FakeGemmCore()
    monkeypatch.setattr(cuda_backend, "core", fake)
    rng = np.random.default_rng()
    M, K, N = 4, 5, 3
    a = rng.uniform(-1, 1, (3, M, K)).astype(np.float32)           # batch (3,)
    b_mem = rng.uniform(-1, 1, (1, 3, K, N)).astype(np.float32)   # 3 matrices in memory
    # b seen as (2, 1, 3, K, N) with a zero stride on the outer dim (torch's expand)
    b_strides = (0, 3 * K * N, K * N, N, 1)
    spec = matmul_spec(a.shape, "float32", (2, 1, 3, K, N), "float32")
    out = np.full(spec.out_shape, np.nan, np.float32)
    pa, pb, pc = fake.place(a), fake.place(b_mem), fake.place(out)
    cuda_backend.CudaBackend._launch(
        spec, [(a.shape, (M * K, K, 1)), ((2, 1, 3, K, N), b_strides)], [pa, pb], pc,
        spec.out_shape, 0)
    fake.cuda_copy_to_host(out, pc)
    b_full = np.broadcast_to(b_mem[None], (2, 1, 3, K, N))
    np.testing.assert_allclose(out, _reference(a, b_full, None, None), rtol=1e-5, atol=1e-5)


def test_collapse_skips_extent_one_batch_dims():
    from lepton_accel.backends.cuda import _collapse

    # contiguous (2, 1, 3) batches: one stride, whatever the extent-1 dim's stride says
    assert _collapse((2, 1, 3), [[30, 0, 10], [60, 7, 20]]) == [10, 20]
    assert _collapse((2, 1, 3), [[0, 0, 0]]) == [0]
    # broadcast along the outer dim only: not one stride
    assert _collapse((2, 1, 3), [[0, 0, 10]]) is None
    assert _collapse((1, 1), [[5, 9]]) == [0]


@needs_types
def test_device_bias_must_be_contiguous(monkeypatch):
    """The kernels read the bias with unit stride; a strided device bias is refused."""
    from lepton_accel.arrays import ArrayView
    from lepton_accel.backends.cuda import CudaBackend
    from lepton_accel.ops import matmul_spec

    monkeypatch.setattr(CudaBackend, "available", lambda self: (True, ""))
    spec = matmul_spec((4, 5), "float32", (5, 6), "float32", bias_shape=(6,), bias_dtype="float32")
    dev = dict(device="cuda:0", ptr=1 << 20)
    a = ArrayView("a", (4, 5), "float32", (5, 1), **dev)
    b = ArrayView("b", (5, 6), "float32", (6, 1), **dev)
    ok, _ = CudaBackend().supports(spec, [a, b, ArrayView("bias", (6,), "float32", (1,), **dev)])
    assert ok
    ok, why = CudaBackend().supports(spec, [a, b, ArrayView("bias", (6,), "float32", (2,), **dev)])
    assert not ok and "contiguous" in why
