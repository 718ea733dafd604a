// Generic matrix multiply: any dtype pair, any strides, any M/N/K, batched.
// A 32x32 shared-memory tile per block with bounds checks everywhere; this is the
// always-correct path that the fast kernels fall back to.
#include <string>
#include "cuda/check.cuh"
#include "cuda/epilogue.cuh"

namespace lepton {
namespace {

constexpr int TILE = 32;

template <typename TIn, typename TAcc, typename TOut>
__global__ void gemm_generic_kernel(GemmArgs g) {
  __shared__ TAcc a_tile[TILE][TILE + 1];
  __shared__ TAcc b_tile[TILE][TILE + 1];
  const int64_t batch = blockIdx.z;
  const int64_t col = int64_t(blockIdx.x) * TILE + threadIdx.x;
  const TIn* A = reinterpret_cast<const TIn*>(g.a) + batch * g.a_batch;
  const TIn* B = reinterpret_cast<const TIn*>(g.b) + batch * g.b_batch;
  TOut* C = reinterpret_cast<TOut*>(g.c) + batch * g.c_batch;

  // grid.y is capped at 65535, so blocks step over row tiles (uniform per block:
  // every thread reaches the barriers).
  const int64_t tiles_m = (g.M + TILE - 1) / TILE;
  for (int64_t tile_m = blockIdx.y; tile_m < tiles_m; tile_m += gridDim.y) {
    const int64_t row = tile_m * TILE + threadIdx.y;
    TAcc acc = 0;
    for (int64_t k0 = 0; k0 < g.K; k0 += TILE) {
      const int64_t ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
      a_tile[threadIdx.y][threadIdx.x] =
          (row < g.M && ka < g.K) ? TAcc(to_float_or_int<TIn, TAcc>(A[row * g.a_row + ka * g.a_col])) : TAcc(0);
      b_tile[threadIdx.y][threadIdx.x] =
          (kb < g.K && col < g.N) ? TAcc(to_float_or_int<TIn, TAcc>(B[kb * g.b_row + col * g.b_col])) : TAcc(0);
      __syncthreads();
#pragma unroll
      for (int k = 0; k < TILE; ++k) acc = wrap_add(acc, TAcc(a_tile[threadIdx.y][k] * b_tile[k][threadIdx.x]));
      __syncthreads();
    }
    if (row < g.M && col < g.N) {
      if (g.bias) acc = wrap_add(acc, TAcc(to_float_or_int<TOut, TAcc>(reinterpret_cast<const TOut*>(g.bias)[col])));
      acc = apply_activation(acc, g.activation);
      C[row * g.c_row + col * g.c_col] = from_acc<TOut>(acc);
    }
  }
}

template <typename TIn, typename TAcc, typename TOut>
void launch_generic(const GemmArgs& g) {
  dim3 block(TILE, TILE);
  const int64_t tiles_m = (g.M + TILE - 1) / TILE;
  dim3 grid(unsigned((g.N + TILE - 1) / TILE), unsigned(tiles_m < 65535 ? tiles_m : 65535), unsigned(g.batch));
  gemm_generic_kernel<TIn, TAcc, TOut><<<grid, block, 0, as_stream(g.stream)>>>(g);
  check_launch("gemm_generic_kernel");
}

}  // namespace

std::string gemm_generic(const GemmArgs& g) {
  dispatch_element_types(g.in_dtype, g.out_dtype, "gemm", [&](auto in, auto acc, auto out) {
    launch_generic<typename decltype(in)::type, typename decltype(acc)::type,
                   typename decltype(out)::type>(g);
  });
  return "gemm_generic";
}

}  // namespace lepton
