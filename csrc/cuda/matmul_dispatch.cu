// Chooses the matrix-multiply kernel for the device and the arguments.
// Order of preference: wgmma (sm_90a, Hopper) -> mma.sync (sm_80+) -> SIMT (float32)
// -> generic. Each fast path states exactly what it needs (dtype, unit strides,
// 16-byte alignment); anything else falls through to a path that needs less.
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include "cuda/matmul_common.cuh"
#include "cuda/kernel_family.h"
#include "cuda/matmul_kernels.h"

namespace lepton {

std::string gemm_generic(const GemmArgs& g);  // matmul_generic.cu

namespace {

// Compute capability of the current device, queried once per device.
int device_cc() {
  static std::mutex mu;
  static std::unordered_map<int, int> cache;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(dev);
  if (it != cache.end()) return it->second;
  int major = 0, minor = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
             "cudaDeviceGetAttribute(major)");
  check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev),
             "cudaDeviceGetAttribute(minor)");
  const int cc = major * 10 + minor;
  cache.emplace(dev, cc);
  return cc;
}

GemmProblem to_problem(const GemmArgs& g) {
  GemmProblem p;
  p.a = reinterpret_cast<const void*>(g.a);
  p.b = reinterpret_cast<const void*>(g.b);
  p.c = reinterpret_cast<void*>(g.c);
  p.bias = reinterpret_cast<const void*>(g.bias);
  p.M = g.M; p.N = g.N; p.K = g.K; p.batch = g.batch;
  p.a_batch = g.a_batch; p.a_m = g.a_row; p.a_k = g.a_col;
  p.b_batch = g.b_batch; p.b_n = g.b_col; p.b_k = g.b_row;
  p.c_batch = g.c_batch; p.c_m = g.c_row; p.c_n = g.c_col;
  p.out_dtype = g.out_dtype;
  p.act = g.activation;
  p.stream = g.stream;
  return p;
}

// C^T = B^T A^T: the same problem with A and B exchanged, for column-major C.
GemmProblem transposed(const GemmProblem& p) {
  GemmProblem t = p;
  t.M = p.N; t.N = p.M;
  t.a = p.b; t.a_batch = p.b_batch; t.a_m = p.b_n; t.a_k = p.b_k;
  t.b = p.a; t.b_batch = p.a_batch; t.b_n = p.a_m; t.b_k = p.a_k;
  t.c_m = p.c_n; t.c_n = p.c_m;
  t.bias_on_rows = !p.bias_on_rows;
  return t;
}

bool aligned(const void* ptr, std::size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(ptr) % bytes == 0;
}

// The strides other than the unit one, and the base, allow `vec`-element vectors.
bool vec_ok(const void* ptr, int64_t other_stride, int64_t batch_stride, int64_t batch,
            int64_t vec, std::size_t elem) {
  return aligned(ptr, vec * elem) && other_stride % vec == 0 && (batch == 1 || batch_stride % vec == 0);
}

// ---- SIMT float32 -------------------------------------------------------------
SimtLoad simt_mode(const void* ptr, int64_t s_mn, int64_t s_k, int64_t s_batch, int64_t MN,
                   int64_t K, int64_t batch) {
  if (s_k == 1 && K % 4 == 0 && vec_ok(ptr, s_mn, s_batch, batch, 4, 4)) return SimtLoad::vec_k;
  if (s_mn == 1 && MN % 4 == 0 && vec_ok(ptr, s_k, s_batch, batch, 4, 4)) return SimtLoad::vec_mn;
  return std::llabs(s_mn) <= std::llabs(s_k) ? SimtLoad::scalar_mn_fast : SimtLoad::scalar_k_fast;
}

std::string run_simt(const GemmProblem& p) {
  SimtParams sp;
  sp.p = p;
  sp.a_mode = simt_mode(p.a, p.a_m, p.a_k, p.a_batch, p.M, p.K, p.batch);
  sp.b_mode = simt_mode(p.b, p.b_n, p.b_k, p.b_batch, p.N, p.K, p.batch);
  sp.c_vec = p.c_n == 1 && p.N % 4 == 0 && vec_ok(p.c, p.c_m, p.c_batch, p.batch, 4, 4);
  return gemm_simt_f32(sp);
}

// ---- mma.sync (sm_80+) ---------------------------------------------------------
// Layout of one operand for the tensor-core paths: 16-byte chunks along K or along
// M/N. Returns false when neither direction allows them.
bool chunk_layout(const void* ptr, int64_t s_mn, int64_t s_k, int64_t s_batch, int64_t batch,
                  std::size_t elem, bool& k_major) {
  const int64_t vec = int64_t(16 / elem);
  if (s_k == 1 && vec_ok(ptr, s_mn, s_batch, batch, vec, elem)) { k_major = true; return true; }
  if (s_mn == 1 && vec_ok(ptr, s_k, s_batch, batch, vec, elem)) { k_major = false; return true; }
  return false;
}

bool mma_dtype_ok(const GemmArgs& g) {
  switch (g.in_dtype) {
    case DType::f16: return g.out_dtype == DType::f16 || g.out_dtype == DType::f32;
    case DType::bf16: return g.out_dtype == DType::bf16 || g.out_dtype == DType::f32;
    case DType::f32: return g.out_dtype == DType::f32 && g.allow_tf32;
    case DType::i8: return g.out_dtype == DType::i32;
    default: return false;
  }
}

// ---- wgmma (sm_90a) -------------------------------------------------------------
bool wgmma_available() {
  static std::mutex mu;
  static std::unordered_map<int, bool> cache;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  if (device_cc() != 90) return false;  // sm_90a machine code runs on 9.0 parts only
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(dev);
  if (it != cache.end()) return it->second;
  const bool ok = wgmma_sm90_compiled();
  cache.emplace(dev, ok);
  return ok;
}

bool wgmma_problem_ok(const GemmArgs& g, const GemmProblem& p) {
  if (g.in_dtype != DType::f16 && g.in_dtype != DType::bf16) return false;
  if (!mma_dtype_ok(g)) return false;
  constexpr int64_t kMaxCoord = (int64_t(1) << 31) - 512;  // TMA coordinates are int32
  if (p.K < 1 || p.M > kMaxCoord || p.N > kMaxCoord || p.K > kMaxCoord) return false;
  // K-major operands for TMA: unit K stride, 16-byte aligned bases and strides,
  // rows that do not overlap.
  auto operand_ok = [&](const void* ptr, int64_t s_rows, int64_t s_k, int64_t s_batch) {
    return s_k == 1 && aligned(ptr, 16) && s_rows % 8 == 0 && s_rows >= p.K &&
           (p.batch == 1 || s_batch == 0 || (s_batch % 8 == 0 && s_batch > 0));
  };
  return operand_ok(p.a, p.a_m, p.a_k, p.a_batch) && operand_ok(p.b, p.b_n, p.b_k, p.b_batch);
}

// One launch's worth of batch (grid.y is limited to 65535).
std::string gemm_chunk(const GemmArgs& g) {
  const GemmKernel want = requested_kernel(g.kernel);
  if (want == GemmKernel::generic) return gemm_generic(g);

  GemmProblem p = to_problem(g);
  if (p.c_n != 1 && p.c_m == 1) p = transposed(p);  // make C's unit stride run along N
  const std::size_t out_size = dtype_size(g.out_dtype);
  p.c_pairs = p.c_n == 1 && p.c_m % 2 == 0 && (p.batch == 1 || p.c_batch % 2 == 0) &&
              aligned(p.c, 2 * out_size);

  const bool f32_in = g.in_dtype == DType::f32 && g.out_dtype == DType::f32;
  if (want == GemmKernel::simt) return f32_in ? run_simt(p) : gemm_generic(g);

  // Tensor cores: wgmma, then mma.sync.
  if (want != GemmKernel::mma && wgmma_problem_ok(g, p) && wgmma_available()) {
    std::string name = gemm_wgmma_sm90(p, g.in_dtype);
    if (!name.empty()) return name;
  }
  if (mma_dtype_ok(g) && device_cc() >= 80) {
    const std::size_t elem = dtype_size(g.in_dtype);
    bool a_k = false, b_k = false;
    if (chunk_layout(p.a, p.a_m, p.a_k, p.a_batch, p.batch, elem, a_k) &&
        chunk_layout(p.b, p.b_n, p.b_k, p.b_batch, p.batch, elem, b_k))
      return gemm_mma_sm80(p, g.in_dtype, a_k, b_k);
  }
  if (f32_in) return run_simt(p);
  return gemm_generic(g);
}

}  // namespace

std::string gemm(const GemmArgs& g) {
  if (g.M < 0 || g.N < 0 || g.K < 0 || g.batch < 0) throw CudaError("gemm: negative size");
  if (int(g.activation) < 0 || int(g.activation) > int(Activation::gelu_tanh))
    throw CudaError("gemm: unknown activation code");
  // The int32 epilogue has no GELU (it would silently skip the activation).
  if (g.out_dtype == DType::i32 && g.activation == Activation::gelu_tanh)
    throw CudaError("gemm: GELU is not offered for int8 -> int32");
  if (g.M == 0 || g.N == 0 || g.batch == 0) return "empty";
  constexpr int64_t kMaxBatch = 65535;
  std::string name;
  for (int64_t b0 = 0; b0 < g.batch; b0 += kMaxBatch) {
    GemmArgs c = g;
    c.batch = (g.batch - b0) < kMaxBatch ? (g.batch - b0) : kMaxBatch;
    const std::size_t in = dtype_size(g.in_dtype), out = dtype_size(g.out_dtype);
    c.a = g.a + std::uintptr_t(b0 * g.a_batch * int64_t(in));
    c.b = g.b + std::uintptr_t(b0 * g.b_batch * int64_t(in));
    c.c = g.c + std::uintptr_t(b0 * g.c_batch * int64_t(out));
    name = gemm_chunk(c);
  }
  return name;
}

}  // namespace lepton
