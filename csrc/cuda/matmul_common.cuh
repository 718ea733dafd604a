// Pieces shared by the fast matmul kernels: the problem as the kernels see it,
// the tile order, and the fused epilogue applied to one output element.
#pragma once
#include <cstdint>
#include "cuda/check.cuh"
#include "cuda/epilogue.cuh"

namespace lepton {

// The dispatcher's normalised problem. Operands are described as "MN x K" views
// with a stride along the MN dimension and one along K, so one loader serves both
// A (M x K) and B (K x N). The dispatcher may swap A and B (computing C^T) to make
// C's fast dimension N; bias then runs along rows, hence bias_on_rows.
struct GemmProblem {
  const void* a = nullptr;  // A(m, k) = a[batch * a_batch + m * a_m + k * a_k]
  const void* b = nullptr;  // B(k, n) = b[batch * b_batch + n * b_n + k * b_k]
  void* c = nullptr;        // C(m, n) = c[batch * c_batch + m * c_m + n * c_n]
  const void* bias = nullptr;
  int64_t M = 0, N = 0, K = 0, batch = 1;
  int64_t a_batch = 0, a_m = 0, a_k = 0;
  int64_t b_batch = 0, b_n = 0, b_k = 0;
  int64_t c_batch = 0, c_m = 0, c_n = 0;
  DType out_dtype = DType::f32;
  Activation act = Activation::none;
  bool bias_on_rows = false;
  bool c_pairs = false;  // (m, n), (m, n+1) for even n form one aligned 2-element vector
  std::uintptr_t stream = 0;
};

// Blocks walk the output in groups of GROUP_M tile rows, column by column inside a
// group, so that consecutive blocks share A rows and B columns in L2.
__device__ __forceinline__ void tile_coords(int64_t pid, int64_t tiles_m, int64_t tiles_n,
                                            int64_t& tm, int64_t& tn) {
  constexpr int64_t GROUP_M = 8;
  const int64_t per_group = GROUP_M * tiles_n;
  const int64_t group = pid / per_group;
  const int64_t first_m = group * GROUP_M;
  const int64_t gsize = (tiles_m - first_m) < GROUP_M ? (tiles_m - first_m) : GROUP_M;
  const int64_t in_group = pid % per_group;
  tm = first_m + in_group % gsize;
  tn = in_group / gsize;
}

// bias + activation + cast for one accumulator value.
template <typename TOut, typename TAcc>
__device__ __forceinline__ TOut epilogue_value(TAcc v, const GemmProblem& p, int64_t m, int64_t n) {
  if (p.bias) {
    const TOut* bias = static_cast<const TOut*>(p.bias);
    v = wrap_add(v, TAcc(to_float_or_int<TOut, TAcc>(bias[p.bias_on_rows ? m : n])));
  }
  return from_acc<TOut>(apply_activation(v, p.act));
}

// Stores one pair of horizontally adjacent results (n, n+1) of row m, with bounds
// checks; the output type is chosen at run time (it only touches the epilogue).
template <typename TAcc>
__device__ __forceinline__ void store_pair(const GemmProblem& p, char* c_base, int64_t m, int64_t n,
                                           TAcc v0, TAcc v1) {
  if (m >= p.M) return;
  const int64_t off = m * p.c_m + n * p.c_n;
  const bool pair = p.c_pairs && n + 1 < p.N;  // n is even at every call site
  if constexpr (std::is_integral<TAcc>::value) {
    int32_t* c = reinterpret_cast<int32_t*>(c_base) + off;
    if (pair) {
      *reinterpret_cast<int2*>(c) = make_int2(epilogue_value<int32_t>(v0, p, m, n),
                                              epilogue_value<int32_t>(v1, p, m, n + 1));
      return;
    }
    if (n < p.N) c[0] = epilogue_value<int32_t>(v0, p, m, n);
    if (n + 1 < p.N) c[p.c_n] = epilogue_value<int32_t>(v1, p, m, n + 1);
  } else if (p.out_dtype == DType::f16) {
    __half* c = reinterpret_cast<__half*>(c_base) + off;
    if (pair) {
      *reinterpret_cast<__half2*>(c) = __halves2half2(epilogue_value<__half>(v0, p, m, n),
                                                      epilogue_value<__half>(v1, p, m, n + 1));
      return;
    }
    if (n < p.N) c[0] = epilogue_value<__half>(v0, p, m, n);
    if (n + 1 < p.N) c[p.c_n] = epilogue_value<__half>(v1, p, m, n + 1);
  } else if (p.out_dtype == DType::bf16) {
    __nv_bfloat16* c = reinterpret_cast<__nv_bfloat16*>(c_base) + off;
    if (pair) {
      *reinterpret_cast<__nv_bfloat162*>(c) = __halves2bfloat162(
          epilogue_value<__nv_bfloat16>(v0, p, m, n), epilogue_value<__nv_bfloat16>(v1, p, m, n + 1));
      return;
    }
    if (n < p.N) c[0] = epilogue_value<__nv_bfloat16>(v0, p, m, n);
    if (n + 1 < p.N) c[p.c_n] = epilogue_value<__nv_bfloat16>(v1, p, m, n + 1);
  } else {
    float* c = reinterpret_cast<float*>(c_base) + off;
    if (pair) {
      *reinterpret_cast<float2*>(c) =
          make_float2(epilogue_value<float>(v0, p, m, n), epilogue_value<float>(v1, p, m, n + 1));
      return;
    }
    if (n < p.N) c[0] = epilogue_value<float>(v0, p, m, n);
    if (n + 1 < p.N) c[p.c_n] = epilogue_value<float>(v1, p, m, n + 1);
  }
}

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: case DType::i32: return 4;
    case DType::f16: case DType::bf16: return 2;
    case DType::i8: return 1;
  }
  return 0;
}

}  // namespace lepton
