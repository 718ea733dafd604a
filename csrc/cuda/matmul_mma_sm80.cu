// Tensor-core matrix multiply with mma.sync (sm_80 and later): f16/bf16 with
// float32 accumulation, float32 as tf32, int8 -> int32.
//
// Block tile 128x128, 8 warps as 2 (M) x 4 (N), each warp 64x32 = 4x4 mma tiles of
// m16n8. K advances 64 bytes per stage (32 halves, 16 floats, 64 int8), 4 stages
// of cp.async in flight. Each operand is kept in shared memory the way it lies in
// global memory, so cp.async copies 16-byte chunks straight across:
//   K-major  (unit stride along K):   [128 rows][64 bytes + 16 pad]  -> ldmatrix
//   MN-major (unit stride along M/N): [BK rows][128 elems + pad]     -> ldmatrix.trans
//                                      (16-bit), or plain loads (tf32, int8)
// The pads make the 8 row addresses of each ldmatrix (and the scalar fragment
// loads) fall in different banks. Edge tiles are zero-filled by cp.async's
// src-size operand, so any M, N, K works; the dispatcher guarantees 16-byte
// aligned chunks (unit stride, other strides and base multiples of 16 bytes).
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include "cuda/matmul_common.cuh"
#include "cuda/matmul_kernels.h"
#include "cuda/mma_ptx.cuh"

namespace lepton {
namespace {

constexpr int BM = 128, BN = 128, THREADS = 256, STAGES = 4;
constexpr int BK_BYTES = 64;    // K bytes per stage
constexpr int KSTEP_BYTES = 32; // K bytes per mma
constexpr int KMAJ_PITCH = BK_BYTES + 16;

template <typename T>
struct Tile {
  static constexpr int BK = BK_BYTES / int(sizeof(T));  // K elements per stage
  static constexpr int VEC = 16 / int(sizeof(T));       // elements per 16-byte chunk
  // MN-major row pitch: 16 bytes of pad keeps ldmatrix rows apart; 4-byte
  // elements read by plain loads need the rows 8 words apart (32 bytes of pad).
  static constexpr int MN_PITCH = 128 * int(sizeof(T)) + (sizeof(T) == 4 ? 32 : 16);
  static constexpr int bytes(bool k_major) { return k_major ? 128 * KMAJ_PITCH : BK * MN_PITCH; }
};

// One stage of one operand (an MN x K view) from global into shared memory.
// 512 chunks of 16 bytes in either layout: two per thread.
template <typename T, bool K_MAJOR>
__device__ __forceinline__ void load_stage(uint32_t s_base, const T* __restrict__ src, int64_t s_mn,
                                           int64_t s_k, int64_t MN, int64_t K, int64_t mn0, int64_t k0,
                                           int tid) {
  using TL = Tile<T>;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int f = tid + THREADS * j;
    if constexpr (K_MAJOR) {
      const int row = f >> 2, cq = f & 3;  // 4 chunks per 64-byte row
      const int64_t gmn = mn0 + row, gk = k0 + cq * TL::VEC;
      int64_t valid = (gmn < MN) ? K - gk : 0;
      valid = valid < 0 ? 0 : (valid > TL::VEC ? TL::VEC : valid);
      const T* g = valid > 0 ? src + gmn * s_mn + gk : src;
      cp_async_16(s_base + row * KMAJ_PITCH + cq * 16, g, int(valid) * int(sizeof(T)));
    } else {
      constexpr int CPR = 128 / TL::VEC;  // chunks per k-row
      const int krow = f / CPR, cq = f % CPR;
      const int64_t gk = k0 + krow, gmn = mn0 + cq * TL::VEC;
      int64_t valid = (gk < K) ? MN - gmn : 0;
      valid = valid < 0 ? 0 : (valid > TL::VEC ? TL::VEC : valid);
      const T* g = valid > 0 ? src + gk * s_k + gmn : src;
      cp_async_16(s_base + krow * TL::MN_PITCH + cq * 16, g, int(valid) * int(sizeof(T)));
    }
  }
}

// Fragment of A for one m16 tile at k-step `ks` of the stage (rows r0..r0+15).
template <typename T, bool K_MAJOR>
__device__ __forceinline__ void load_a_frag(uint32_t s, const uint8_t* sp, int r0, int ks, int lane,
                                            uint32_t (&a)[4]) {
  using TL = Tile<T>;
  const int g = lane >> 2, t = lane & 3, q = lane >> 3, r = lane & 7;
  if constexpr (K_MAJOR) {
    ldmatrix_x4(s + (r0 + (q & 1) * 8 + r) * KMAJ_PITCH + ks * KSTEP_BYTES + (q >> 1) * 16, a);
  } else if constexpr (sizeof(T) == 2) {
    const int ke = ks * 16;
    ldmatrix_x4_trans(s + (ke + (q >> 1) * 8 + r) * TL::MN_PITCH + (r0 + (q & 1) * 8) * 2, a);
  } else if constexpr (sizeof(T) == 4) {  // tf32: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
    const int ke = ks * 8;
    const uint32_t* w = reinterpret_cast<const uint32_t*>(sp);
    constexpr int P = TL::MN_PITCH / 4;
    a[0] = w[(ke + t) * P + r0 + g];
    a[1] = w[(ke + t) * P + r0 + g + 8];
    a[2] = w[(ke + t + 4) * P + r0 + g];
    a[3] = w[(ke + t + 4) * P + r0 + g + 8];
  } else {  // int8: register i holds k bytes 4t..4t+3 (+16 for a2, a3) of row g (+8 for a1, a3)
    const int ke = ks * 32;
    constexpr int P = TL::MN_PITCH;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = r0 + g + (i & 1) * 8, k = ke + 4 * t + (i >> 1) * 16;
      a[i] = uint32_t(sp[(k + 0) * P + m]) | (uint32_t(sp[(k + 1) * P + m]) << 8) |
             (uint32_t(sp[(k + 2) * P + m]) << 16) | (uint32_t(sp[(k + 3) * P + m]) << 24);
    }
  }
  if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = to_tf32(a[i]);
  }
}

// Fragments of B for two n8 tiles (n0..n0+15) at k-step `ks`: b[0] for n0, b[1] for n0+8.
template <typename T, bool K_MAJOR>
__device__ __forceinline__ void load_b_frag(uint32_t s, const uint8_t* sp, int n0, int ks, int lane,
                                            uint32_t (&b)[2][2]) {
  using TL = Tile<T>;
  const int g = lane >> 2, t = lane & 3, q = lane >> 3, r = lane & 7;
  uint32_t x[4];
  if constexpr (K_MAJOR) {
    ldmatrix_x4(s + (n0 + (q >> 1) * 8 + r) * KMAJ_PITCH + ks * KSTEP_BYTES + (q & 1) * 16, x);
  } else if constexpr (sizeof(T) == 2) {
    const int ke = ks * 16;
    ldmatrix_x4_trans(s + (ke + (q & 1) * 8 + r) * TL::MN_PITCH + (n0 + (q >> 1) * 8) * 2, x);
  } else if constexpr (sizeof(T) == 4) {  // b0 (k t, n g), b1 (k t+4, n g)
    const int ke = ks * 8;
    const uint32_t* w = reinterpret_cast<const uint32_t*>(sp);
    constexpr int P = TL::MN_PITCH / 4;
    x[0] = w[(ke + t) * P + n0 + g];
    x[1] = w[(ke + t + 4) * P + n0 + g];
    x[2] = w[(ke + t) * P + n0 + 8 + g];
    x[3] = w[(ke + t + 4) * P + n0 + 8 + g];
  } else {  // int8: b0 k bytes 4t..4t+3, b1 the same +16, column g
    const int ke = ks * 32;
    constexpr int P = TL::MN_PITCH;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int n = n0 + g + (i >> 1) * 8, k = ke + 4 * t + (i & 1) * 16;
      x[i] = uint32_t(sp[(k + 0) * P + n]) | (uint32_t(sp[(k + 1) * P + n]) << 8) |
             (uint32_t(sp[(k + 2) * P + n]) << 16) | (uint32_t(sp[(k + 3) * P + n]) << 24);
    }
  }
  if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = to_tf32(x[i]);
  }
  // x = {b0 of tile 0, b1 of tile 0, b0 of tile 1, b1 of tile 1}
  b[0][0] = x[0]; b[0][1] = x[1]; b[1][0] = x[2]; b[1][1] = x[3];
}

template <typename T, bool A_K, bool B_K>
__global__ void __launch_bounds__(THREADS, 2) gemm_mma_kernel(const GemmProblem p) {
  using TL = Tile<T>;
  using Acc = typename Mma<T>::Acc;
  constexpr int A_BYTES = TL::bytes(A_K), B_BYTES = TL::bytes(B_K);
  constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  extern __shared__ __align__(128) uint8_t smem[];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;  // 2 x 4 warps, 64 x 32 each
  const int64_t tiles_m = (p.M + BM - 1) / BM, tiles_n = (p.N + BN - 1) / BN;
  int64_t tm, tn;
  tile_coords(blockIdx.x, tiles_m, tiles_n, tm, tn);
  const int64_t m0 = tm * BM, n0 = tn * BN, bz = blockIdx.y;
  const T* A = static_cast<const T*>(p.a) + bz * p.a_batch;
  const T* B = static_cast<const T*>(p.b) + bz * p.b_batch;
  const uint32_t s0 = smem_u32(smem);

  Acc acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = Acc(0);

  const int64_t KT = (p.K + TL::BK - 1) / TL::BK;
  auto issue = [&](int64_t kt) {
    const uint32_t st = s0 + uint32_t(kt % STAGES) * STAGE_BYTES;
    load_stage<T, A_K>(st, A, p.a_m, p.a_k, p.M, p.K, m0, kt * TL::BK, tid);
    load_stage<T, B_K>(st + A_BYTES, B, p.b_n, p.b_k, p.N, p.K, n0, kt * TL::BK, tid);
  };

  // Prologue: STAGES-1 groups, committed even when empty so that the group count
  // below stays "tile kt is group kt".
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) issue(s);
    cp_async_commit();
  }

  for (int64_t kt = 0; kt < KT; ++kt) {
    cp_async_wait<STAGES - 2>();  // this thread's copies of tile kt have landed
    __syncthreads();              // everyone's have; and stage (kt-1) % STAGES is free
    if (kt + STAGES - 1 < KT) issue(kt + STAGES - 1);
    cp_async_commit();

    const int st = int(kt % STAGES);
    const uint32_t sa = s0 + st * STAGE_BYTES, sb = sa + A_BYTES;
    const uint8_t* pa = smem + st * STAGE_BYTES;
    const uint8_t* pb = pa + A_BYTES;
#pragma unroll
    for (int ks = 0; ks < BK_BYTES / KSTEP_BYTES; ++ks) {
      uint32_t af[4][4], bf[4][2];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) load_a_frag<T, A_K>(sa, pa, warp_m * 64 + mt * 16, ks, lane, af[mt]);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t two[2][2];
        load_b_frag<T, B_K>(sb, pb, warp_n * 32 + np * 16, ks, lane, two);
        bf[2 * np][0] = two[0][0]; bf[2 * np][1] = two[0][1];
        bf[2 * np + 1][0] = two[1][0]; bf[2 * np + 1][1] = two[1][1];
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) Mma<T>::run(acc[mt][nt], af[mt], bf[nt]);
    }
  }
  cp_async_wait<0>();

  // Accumulator (mt, nt): c0, c1 at row g, columns 2t, 2t+1; c2, c3 at row g+8.
  char* C = static_cast<char*>(p.c) + bz * p.c_batch * int64_t(p.out_dtype == DType::f32 || p.out_dtype == DType::i32 ? 4 : 2);
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
    const int64_t m = m0 + warp_m * 64 + mt * 16 + g;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int64_t n = n0 + warp_n * 32 + nt * 8 + 2 * t;
      store_pair(p, C, m, n, acc[mt][nt][0], acc[mt][nt][1]);
      store_pair(p, C, m + 8, n, acc[mt][nt][2], acc[mt][nt][3]);
    }
  }
}

template <typename T, bool A_K, bool B_K>
void launch(const GemmProblem& p) {
  constexpr int smem = STAGES * (Tile<T>::bytes(A_K) + Tile<T>::bytes(B_K));
  auto* fn = gemm_mma_kernel<T, A_K, B_K>;
  allow_dynamic_smem(reinterpret_cast<const void*>(fn), smem, "gemm_mma_kernel");
  const int64_t tiles = ((p.M + BM - 1) / BM) * ((p.N + BN - 1) / BN);
  fn<<<dim3(unsigned(tiles), unsigned(p.batch)), THREADS, smem, as_stream(p.stream)>>>(p);
  check_launch("gemm_mma_kernel");
}

template <typename T>
void launch_layout(const GemmProblem& p, bool a_k, bool b_k) {
  if (a_k && b_k) launch<T, true, true>(p);
  else if (a_k) launch<T, true, false>(p);
  else if (b_k) launch<T, false, true>(p);
  else launch<T, false, false>(p);
}

}  // namespace

void allow_dynamic_smem(const void* fn, int bytes, const char* kernel_name) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  if (done.count({fn, dev})) return;
  check_cuda(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             (std::string("cudaFuncSetAttribute(") + kernel_name + ")").c_str());
  done.insert({fn, dev});
}

std::string gemm_mma_sm80(const GemmProblem& p, DType in, bool a_k_major, bool b_k_major) {
  const char* tname = "";
  switch (in) {
    case DType::f16: launch_layout<__half>(p, a_k_major, b_k_major); tname = "f16"; break;
    case DType::bf16: launch_layout<__nv_bfloat16>(p, a_k_major, b_k_major); tname = "bf16"; break;
    case DType::f32: launch_layout<float>(p, a_k_major, b_k_major); tname = "tf32"; break;
    case DType::i8: launch_layout<int8_t>(p, a_k_major, b_k_major); tname = "i8"; break;
    default: throw CudaError("gemm_mma_sm80: unsupported input dtype");
  }
  return std::string("mma_sm80_") + tname + "_128x128_a" + (a_k_major ? "k" : "m") + "_b" +
         (b_k_major ? "k" : "n");
}

}  // namespace lepton
