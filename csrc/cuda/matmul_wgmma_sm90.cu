// Hopper (sm_90a) matrix multiply: TMA loads, wgmma, warp-specialised pipeline.
// f16/bf16 operands, both K-major (A row-major M x K, B given as N x K rows, the
// nn.Linear weight layout), float32 accumulation, fused epilogue, any M, N, K.
//
// Block tile 128 x 256 x 64, 3 warpgroups:
//   warpgroup 0  producer: one thread issues the TMA loads of each stage (A 128x64,
//                B 256x64, 128-byte swizzle) and waits for free stages;
//   warpgroups 1, 2  consumers: rows 0-63 and 64-127 of the tile, one
//                m64n256k16 wgmma per 16 of K, accumulators in 128 registers.
// STAGES stages in shared memory, each guarded by two mbarriers:
//   full[s]  one arrival (producer's expect_tx) + the TMA bytes: the stage holds data;
//   empty[s] one arrival per consumer warp (8): every consumer is done reading it.
// Tile kt uses stage kt % STAGES; its n-th use (n = kt / STAGES) completes phase n of
// each barrier, so waits use parity n & 1. Registers move from the producer to the
// consumers with setmaxnreg. Edge tiles: TMA zero-fills out-of-range rows and K,
// and the epilogue checks bounds.
#include <cuda.h>
#include <string>
#include "cuda/matmul_common.cuh"
#include "cuda/matmul_kernels.h"
#include "cuda/mma_ptx.cuh"
#include "cuda/tensor_map.h"
#include "cuda/wgmma_ptx.cuh"

namespace lepton {
namespace {

constexpr int BM = 128, BN = 256, BK = 64, STAGES = 4;
constexpr int THREADS = 384;  // producer + 2 consumer warpgroups
constexpr int A_STAGE = BM * BK * 2, B_STAGE = BN * BK * 2;  // bytes, 16-bit elements
constexpr int BARRIER_BYTES = 2 * STAGES * 8;
// +1024: the dynamic shared memory base is rounded up to the 1024-byte boundary
// that 128-byte swizzled tiles need.
constexpr int SMEM_BYTES = STAGES * (A_STAGE + B_STAGE) + BARRIER_BYTES + 1024;

struct WgmmaParams {
  GemmProblem p;
  int a_batched, b_batched;  // 0: every batch entry reads batch 0 of the tensor map
};

template <typename T>
__global__ void __launch_bounds__(THREADS, 1)
    gemm_wgmma_kernel(const __grid_constant__ CUtensorMap tma_a, const __grid_constant__ CUtensorMap tma_b,
                      const WgmmaParams wp) {
#if LEPTON_SM90A
  using namespace sm90;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const GemmProblem& p = wp.p;
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t a_smem = base, b_smem = base + STAGES * A_STAGE;
  const uint32_t bars = base + STAGES * (A_STAGE + B_STAGE);
  auto full_bar = [&](int s) { return bars + 8u * s; };
  auto empty_bar = [&](int s) { return bars + 8u * (STAGES + s); };

  const int wg = threadIdx.x / 128, tid_wg = threadIdx.x % 128;
  const int64_t tiles_m = (p.M + BM - 1) / BM, tiles_n = (p.N + BN - 1) / BN;
  int64_t tm, tn;
  tile_coords(blockIdx.x, tiles_m, tiles_n, tm, tn);
  const int m0 = int(tm * BM), n0 = int(tn * BN), bz = int(blockIdx.y);
  const int KT = int((p.K + BK - 1) / BK);

  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full_bar(s), 1);
      mbar_init(empty_bar(s), 8);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 0) {
    setmaxnreg_dec<40>();
    if (tid_wg == 0) {
      const int za = wp.a_batched ? bz : 0, zb = wp.b_batched ? bz : 0;
      for (int kt = 0; kt < KT; ++kt) {
        const int s = kt % STAGES;
        if (kt >= STAGES) mbar_wait(empty_bar(s), uint32_t((kt / STAGES - 1) & 1));
        mbar_arrive_expect_tx(full_bar(s), A_STAGE + B_STAGE);
        tma_load_3d(a_smem + s * A_STAGE, &tma_a, full_bar(s), kt * BK, m0, za);
        tma_load_3d(b_smem + s * B_STAGE, &tma_b, full_bar(s), kt * BK, n0, zb);
      }
    }
  } else {
    setmaxnreg_inc<232>();
    const int cw = wg - 1;  // rows cw*64 .. cw*64+63 of the tile
    // The first wgmma overwrites d (accumulate = 0), so no instruction other than
    // wgmma writes the accumulators inside the pipeline (that would serialise it).
    float d[128];

    for (int kt = 0; kt < KT; ++kt) {
      const int s = kt % STAGES;
      mbar_wait(full_bar(s), uint32_t((kt / STAGES) & 1));
      const uint32_t a_tile = a_smem + s * A_STAGE + cw * 64 * 128;  // 64 rows of 128 B
      const uint32_t b_tile = b_smem + s * B_STAGE;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {  // 16 elements = 32 bytes along the swizzled row
        const uint64_t da = desc_kmajor_sw128(a_tile + kk * 32), db = desc_kmajor_sw128(b_tile + kk * 32);
        const int acc = (kt > 0 || kk > 0) ? 1 : 0;
        if constexpr (std::is_same<T, __nv_bfloat16>::value) wgmma_m64n256k16_bf16(d, da, db, acc);
        else wgmma_m64n256k16_f16(d, da, db, acc);
      }
      wgmma_commit();
      // Keep this tile's group in flight; the previous one is finished, so its
      // stage goes back to the producer.
      wgmma_wait<1>();
      if (kt > 0 && (tid_wg & 31) == 0) mbar_arrive(empty_bar((kt - 1) % STAGES));
    }
    wgmma_wait<0>();
    fence_regs(d);
    if (KT == 0) {  // no wgmma ran (the dispatcher sends K == 0 elsewhere anyway)
#pragma unroll
      for (int i = 0; i < 128; ++i) d[i] = 0.f;
    }

    // Accumulator layout of m64nNk16: warp w of the warpgroup owns rows 16w..16w+15;
    // for each 8-column block j, d[4j..4j+1] are row g, columns 8j+2t, 8j+2t+1 and
    // d[4j+2..4j+3] row g+8, where g = lane / 4, t = lane % 4.
    const int warp = tid_wg >> 5, lane = tid_wg & 31, g = lane >> 2, t = lane & 3;
    const std::size_t out_size = (p.out_dtype == DType::f32) ? 4 : 2;
    char* C = static_cast<char*>(p.c) + int64_t(bz) * p.c_batch * int64_t(out_size);
    const int64_t m = int64_t(m0) + cw * 64 + warp * 16 + g;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int64_t n = int64_t(n0) + j * 8 + 2 * t;
      store_pair(p, C, m, n, d[4 * j + 0], d[4 * j + 1]);
      store_pair(p, C, m + 8, n, d[4 * j + 2], d[4 * j + 3]);
    }
  }
#endif  // LEPTON_SM90A
}

template <typename T>
void launch(const CUtensorMap& ta, const CUtensorMap& tb, const WgmmaParams& wp) {
  auto* fn = gemm_wgmma_kernel<T>;
  allow_dynamic_smem(reinterpret_cast<const void*>(fn), SMEM_BYTES, "gemm_wgmma_kernel");
  const GemmProblem& p = wp.p;
  const int64_t tiles = ((p.M + BM - 1) / BM) * ((p.N + BN - 1) / BN);
  fn<<<dim3(unsigned(tiles), unsigned(p.batch)), THREADS, SMEM_BYTES, as_stream(p.stream)>>>(ta, tb, wp);
  check_launch("gemm_wgmma_kernel");
}

}  // namespace

bool wgmma_sm90_compiled() {
#ifndef LEPTON_CUDA_HAS_SM90A
  return false;  // no sm_90a pass in this build (CMake sets the define when there is one)
#endif
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(gemm_wgmma_kernel<__nv_bfloat16>)) !=
      cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  // Machine code built for sm_90 from compute_90 PTX (not a JIT of older PTX).
  return attr.binaryVersion == 90 && attr.ptxVersion == 90;
}

std::string gemm_wgmma_sm90(const GemmProblem& p, DType in) {
  const CUtensorMapDataType dt =
      in == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  CUtensorMap ta, tb;
  if (!make_kmajor_map(&ta, p.a, dt, p.K, p.M, p.a_m, p.batch, p.a_batch, BK, BM)) return "";
  if (!make_kmajor_map(&tb, p.b, dt, p.K, p.N, p.b_n, p.batch, p.b_batch, BK, BN)) return "";
  WgmmaParams wp;
  wp.p = p;
  wp.a_batched = p.batch > 1 && p.a_batch != 0;
  wp.b_batched = p.batch > 1 && p.b_batch != 0;
  if (in == DType::bf16) {
    launch<__nv_bfloat16>(ta, tb, wp);
    return "wgmma_sm90_bf16_128x256x64";
  }
  launch<__half>(ta, tb, wp);
  return "wgmma_sm90_f16_128x256x64";
}

}  // namespace lepton
