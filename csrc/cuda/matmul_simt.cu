// float32 SIMT matrix multiply with exact float32 (FFMA) accumulation.
// 128x128 block tile, BK = 16, 256 threads, each thread owns an 8x8 register tile
// (two 4x4 quadrants 64 apart, so shared-memory reads are float4 and conflict-free).
// Global tiles are loaded into registers one k-step ahead and stored to the other
// of two shared buffers, so one barrier per k-step suffices.
// Operand layout is a run-time choice per operand (uniform across the block):
// float4 loads along K or along M/N when aligned, scalar loads otherwise.
#include <string>
#include "cuda/matmul_common.cuh"
#include "cuda/matmul_kernels.h"

namespace lepton {

namespace {

constexpr int BM = 128, BN = 128, BK = 16, THREADS = 256;
constexpr int PITCH = BM + 4;  // +4 floats: keeps float4 alignment, halves store conflicts

// One operand tile (MN x K view) into registers: 8 floats per thread.
__device__ __forceinline__ void simt_load(const float* __restrict__ src, int64_t s_mn, int64_t s_k,
                                          int64_t MN, int64_t K, int64_t mn0, int64_t k0,
                                          SimtLoad mode, int tid, float (&r)[8]) {
  switch (mode) {
    case SimtLoad::vec_k:
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int f = tid + THREADS * j, mn = f >> 2, kq = f & 3;
        const int64_t gm = mn0 + mn, gk = k0 + kq * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (gm < MN && gk < K) v = *reinterpret_cast<const float4*>(src + gm * s_mn + gk);
        r[4 * j + 0] = v.x; r[4 * j + 1] = v.y; r[4 * j + 2] = v.z; r[4 * j + 3] = v.w;
      }
      break;
    case SimtLoad::vec_mn:
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int f = tid + THREADS * j, k = f >> 5, mq = f & 31;
        const int64_t gk = k0 + k, gm = mn0 + mq * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (gk < K && gm < MN) v = *reinterpret_cast<const float4*>(src + gk * s_k + gm);
        r[4 * j + 0] = v.x; r[4 * j + 1] = v.y; r[4 * j + 2] = v.z; r[4 * j + 3] = v.w;
      }
      break;
    case SimtLoad::scalar_mn_fast:
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int e = tid + THREADS * j, k = e >> 7, mn = e & 127;
        const int64_t gk = k0 + k, gm = mn0 + mn;
        r[j] = (gk < K && gm < MN) ? src[gm * s_mn + gk * s_k] : 0.f;
      }
      break;
    default:  // scalar_k_fast
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int e = tid + THREADS * j, mn = e >> 4, k = e & 15;
        const int64_t gk = k0 + k, gm = mn0 + mn;
        r[j] = (gk < K && gm < MN) ? src[gm * s_mn + gk * s_k] : 0.f;
      }
      break;
  }
}

// The same mapping as simt_load, into the shared tile S[k][mn].
__device__ __forceinline__ void simt_store(float* S, SimtLoad mode, int tid, const float (&r)[8]) {
  switch (mode) {
    case SimtLoad::vec_k:
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int f = tid + THREADS * j, mn = f >> 2, kq = f & 3;
#pragma unroll
        for (int i = 0; i < 4; ++i) S[(kq * 4 + i) * PITCH + mn] = r[4 * j + i];
      }
      break;
    case SimtLoad::vec_mn:
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int f = tid + THREADS * j, k = f >> 5, mq = f & 31;
        *reinterpret_cast<float4*>(S + k * PITCH + mq * 4) =
            make_float4(r[4 * j + 0], r[4 * j + 1], r[4 * j + 2], r[4 * j + 3]);
      }
      break;
    case SimtLoad::scalar_mn_fast:
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int e = tid + THREADS * j, k = e >> 7, mn = e & 127;
        S[k * PITCH + mn] = r[j];
      }
      break;
    default:
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int e = tid + THREADS * j, mn = e >> 4, k = e & 15;
        S[k * PITCH + mn] = r[j];
      }
      break;
  }
}

__global__ void __launch_bounds__(THREADS, 2) gemm_simt_f32_kernel(const SimtParams sp) {
  __shared__ __align__(16) float As[2][BK * PITCH];
  __shared__ __align__(16) float Bs[2][BK * PITCH];
  const GemmProblem& p = sp.p;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t tiles_m = (p.M + BM - 1) / BM, tiles_n = (p.N + BN - 1) / BN;
  int64_t tm, tn;
  tile_coords(blockIdx.x, tiles_m, tiles_n, tm, tn);
  const int64_t m0 = tm * BM, n0 = tn * BN, bz = blockIdx.y;
  const float* A = static_cast<const float*>(p.a) + bz * p.a_batch;
  const float* B = static_cast<const float*>(p.b) + bz * p.b_batch;

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  float ra[8], rb[8];
  const int64_t KT = (p.K + BK - 1) / BK;
  if (KT > 0) {
    simt_load(A, p.a_m, p.a_k, p.M, p.K, m0, 0, sp.a_mode, tid, ra);
    simt_load(B, p.b_n, p.b_k, p.N, p.K, n0, 0, sp.b_mode, tid, rb);
    simt_store(As[0], sp.a_mode, tid, ra);
    simt_store(Bs[0], sp.b_mode, tid, rb);
  }
  __syncthreads();

  for (int64_t kt = 0; kt < KT; ++kt) {
    const int cur = int(kt & 1);
    const bool more = kt + 1 < KT;
    if (more) {  // next tile's global loads are in flight during the FFMAs below
      simt_load(A, p.a_m, p.a_k, p.M, p.K, m0, (kt + 1) * BK, sp.a_mode, tid, ra);
      simt_load(B, p.b_n, p.b_k, p.N, p.K, n0, (kt + 1) * BK, sp.b_mode, tid, rb);
    }
    const float* as = As[cur];
    const float* bs = Bs[cur];
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      const float4 a0 = *reinterpret_cast<const float4*>(as + k * PITCH + ty * 4);
      const float4 a1 = *reinterpret_cast<const float4*>(as + k * PITCH + 64 + ty * 4);
      const float4 b0 = *reinterpret_cast<const float4*>(bs + k * PITCH + tx * 4);
      const float4 b1 = *reinterpret_cast<const float4*>(bs + k * PITCH + 64 + tx * 4);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (more) {  // the other buffer was last read before the previous barrier
      simt_store(As[cur ^ 1], sp.a_mode, tid, ra);
      simt_store(Bs[cur ^ 1], sp.b_mode, tid, rb);
    }
    __syncthreads();
  }

  // Epilogue: row i of the register tile is m0 + (i < 4 ? 0 : 64) + ty*4 + i%4,
  // column j is n0 + (j < 4 ? 0 : 64) + tx*4 + j%4.
  float* C = static_cast<float*>(p.c) + bz * p.c_batch;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t m = m0 + (i < 4 ? 0 : 64) + ty * 4 + (i & 3);
    if (m >= p.M) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = n0 + h * 64 + tx * 4;
      if (n >= p.N) continue;
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j)  // the bias is read only inside N
        v[j] = (n + j < p.N) ? epilogue_value<float>(acc[i][h * 4 + j], p, m, n + j) : 0.f;
      if (sp.c_vec) {  // N % 4 == 0, so all four columns are inside
        *reinterpret_cast<float4*>(C + m * p.c_m + n) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (n + j < p.N) C[m * p.c_m + (n + j) * p.c_n] = v[j];
      }
    }
  }
}

}  // namespace

std::string gemm_simt_f32(const SimtParams& sp) {
  const GemmProblem& p = sp.p;
  const int64_t tiles = ((p.M + BM - 1) / BM) * ((p.N + BN - 1) / BN);
  dim3 grid(unsigned(tiles), unsigned(p.batch));
  gemm_simt_f32_kernel<<<grid, THREADS, 0, as_stream(p.stream)>>>(sp);
  check_launch("gemm_simt_f32_kernel");
  return "simt_f32_128x128x16";
}

}  // namespace lepton
