// Hopper (sm_90a) implicit-GEMM convolution: wgmma on tensor cores, fed by a
// warp-specialised mbarrier pipeline. f16/bf16 operands, float32 accumulation, fused
// bias + activation + cast, NHWC activations and OHWI filters.
//
// Per group g the convolution is the GEMM (as in conv2d_igemm_sm80.cu)
//   Y(m, n) = sum_k A(m, k) B(n, k),  m = (image, oh, ow), n = output channel in g,
//   k = (kh, kw, c) with c fastest,   A(m, k) = x(image, g*Cg + c, ih, iw) or 0 in the
//   padding, B(n, k) = w(g*OCg + n, kh, kw, c).
// With Cg % 64 == 0 a k-step of 64 elements (128 bytes) lies inside one filter tap:
// tile kt is tap kt / (Cg/64), channels (kt % (Cg/64)) * 64 .. +63, and its K offset in
// an OHWI filter row is exactly kt * 64. So B is a plain K-major GEMM operand (read by
// TMA, as the matmul kernel reads its B) and every A row of a tile is 128 contiguous
// bytes of one input pixel (or zeros in the padding).
//
// Block tile 128 pixels x BN output channels x 64, BN in {64, 128, 256} (the host picks
// it from OC/groups and the grid size), 3 warpgroups (384 threads):
//   warpgroup 0  producer. A: each of the 128 threads computes once the (image, oh, ow)
//                of one tile row (its "own" row); per tile it turns that into a source
//                offset for the tile's tap, and the warp copies its 32 rows with 16-byte
//                cp.async, eight lanes per row so that each instruction reads four whole
//                128-byte rows (the owner's offset reaches the copying lanes by shuffle).
//                Padding and rows past M are zero-filled (cp.async source size 0).
//                B: thread 0 issues one TMA load of the BN x 64 filter box; rows past
//                OCg are zero-filled by TMA.
//   warpgroups 1, 2  consumers: tile rows 0-63 and 64-127, one m64nBNk16 wgmma per
//                16 of K, BN/2 float32 accumulators per thread.
// Shared memory holds STAGES stages of A (128 x 128 B) and B (BN x 128 B), each in the
// layout of a TMA SWIZZLE_128B box: 128-byte rows, 16-byte chunk j of row r stored at
// chunk position j ^ (r % 8), every tile 1024-byte aligned. TMA writes B that way; the
// producer writes A that way by hand, so both reach wgmma through the same descriptor
// (desc_kmajor_sw128) as in the matmul kernel.
//
// Barriers per stage s (tile kt uses stage kt % STAGES; its n-th use, n = kt / STAGES,
// completes phase n of each barrier, waited for with parity n & 1):
//   full[s]   count 129: one plain arrival per producer thread once its A copies of the
//             tile have landed, plus thread 0's arrive.expect_tx when it issues the B
//             load, whose bytes complete the transaction count;
//   empty[s]  count 8: one arrival per consumer warp once its wgmma reading the stage
//             have finished.
// cp.async writes shared memory through the generic proxy and wgmma reads it through
// the async proxy, so each producer thread, after cp.async.wait_group has retired its
// copies of a tile, executes fence.proxy.async.shared::cta and only then arrives
// (release) on full[s]; the consumers' acquire wait on full[s] then orders their wgmma
// after those writes. A thread keeps LAG = STAGES - 2 tiles of copies in flight: it
// issues tile kt, waits for tile kt - LAG (cp.async.wait_group LAG) and signals it.
// LAG must not exceed STAGES - 2: while a consumer waits for tile j it still holds
// tile j - 1 (its wgmma may be in flight), so the producer can only have refilled
// stages up to tile j - 2 + STAGES, and it signals tile j only after issuing j + LAG.
//
// Registers: launched at 168 per thread (384 threads, one block per SM); setmaxnreg
// gives the producer 56 and the consumers 224: 128 * 56 + 256 * 224 = 384 * 168.
#include <cuda.h>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include "cuda/conv2d_common.cuh"
#include "cuda/conv2d_wgmma_sm90.h"
#include "cuda/matmul_kernels.h"  // allow_dynamic_smem
#include "cuda/mma_ptx.cuh"       // smem_u32, cp.async
#include "cuda/tensor_map.h"
#include "cuda/wgmma_ptx.cuh"

namespace lepton {
namespace {

constexpr int BM = 128, BK = 64;          // tile rows (pixels), K elements per stage
constexpr int ROW_BYTES = BK * 2;         // 128: one swizzle row
constexpr int A_STAGE = BM * ROW_BYTES;   // 16 KB
constexpr int THREADS = 384;              // producer + 2 consumer warpgroups
constexpr int LAUNCH_REGS = 168;          // 65536 / 384 rounded down to a multiple of 8
constexpr int PRODUCER_REGS = 56, CONSUMER_REGS = 224;
static_assert(128 * PRODUCER_REGS + 256 * CONSUMER_REGS <= THREADS * LAUNCH_REGS,
              "setmaxnreg must not ask for more registers than the block was launched with");

template <int BN>
struct Cfg {
  static_assert(BN == 64 || BN == 128 || BN == 256, "wgmma tile width");
  static constexpr int B_STAGE = BN * ROW_BYTES;
  static constexpr int STAGE_BYTES = A_STAGE + B_STAGE;
  // 192 KB of stages for every width: 4 x 48 KB, 6 x 32 KB, 8 x 24 KB.
  static constexpr int STAGES = (192 * 1024) / STAGE_BYTES;
  static constexpr int LAG = STAGES - 2;  // tiles of cp.async in flight beyond the one waited for
  static constexpr int NACC = BN / 2;     // accumulators per consumer thread
  // +1024: the dynamic shared memory base is rounded up to the 1024-byte boundary
  // that 128-byte swizzled tiles need.
  static constexpr int SMEM = STAGES * STAGE_BYTES + 2 * STAGES * 8 + 1024;
  static_assert(LAG >= 1 && SMEM <= 227 * 1024 && NACC * 2 == BN, "stages");
  static_assert(B_STAGE % 1024 == 0 && A_STAGE % 1024 == 0, "tiles stay 1024-byte aligned");
};

struct ConvWgmmaParams {
  const void* x; void* y; const void* bias;
  int M, OHW, OW, H, W, Cg, OCg, KW, KT;  // KT = KH * KW * Cg / 64 tiles along K
  int sh, sw, pt, pl, dh, dw;
  int64_t xs_n, xs_h, xs_w;       // x's channel stride is 1
  int64_t ys_n, ys_c, ys_h, ys_w;
  DType out_dtype, bias_dtype;
  Activation act;
  bool y_pair;  // two neighbouring channels stored as one aligned pair
};

#if LEPTON_SM90A

constexpr uint32_t FULL_ARRIVALS = 128 + 1;  // producer threads + the expect_tx arrival
constexpr uint32_t EMPTY_ARRIVALS = 8;       // consumer warps

template <typename T, int BN>
__device__ __forceinline__ void wgmma_k16(float (&d)[Cfg<BN>::NACC], uint64_t da, uint64_t db, int acc) {
  using namespace sm90;
  constexpr bool bf = std::is_same<T, __nv_bfloat16>::value;
  if constexpr (BN == 256) {
    if constexpr (bf) wgmma_m64n256k16_bf16(d, da, db, acc);
    else wgmma_m64n256k16_f16(d, da, db, acc);
  } else if constexpr (BN == 128) {
    if constexpr (bf) wgmma_m64n128k16_bf16(d, da, db, acc);
    else wgmma_m64n128k16_f16(d, da, db, acc);
  } else {
    if constexpr (bf) wgmma_m64n64k16_bf16(d, da, db, acc);
    else wgmma_m64n64k16_f16(d, da, db, acc);
  }
}

// Producer warpgroup: fills every stage's A tile with cp.async and has thread 0 load
// its B tile by TMA; see the file comment for the barrier protocol.
template <typename T, int BN>
__device__ __forceinline__ void produce(const CUtensorMap* tma_w, const ConvWgmmaParams& p, uint32_t a_smem,
                                        uint32_t b_smem, uint32_t bars, int m0, int n0, int grp, int tid) {
  using namespace sm90;
  using C = Cfg<BN>;
  const int lane = tid & 31, warp = tid >> 5;
  const T* X = static_cast<const T*>(p.x) + int64_t(grp) * p.Cg;

  // Own row: tile row `tid`, output pixel m0 + tid.
  int64_t own_base = 0;
  int own_ih = INT_MIN / 2, own_iw = 0;  // past the last pixel: never inside the image
  {
    const int m = m0 + tid;
    if (m < p.M) {
      const int img = m / p.OHW, r = m - img * p.OHW;
      const int oh = r / p.OW, ow = r - oh * p.OW;
      own_base = img * p.xs_n;
      own_ih = oh * p.sh - p.pt;
      own_iw = ow * p.sw - p.pl;
    }
  }
  // Copy i (0..7) of this lane: chunk `chunk` of warp row 4i + sub, i.e. tile row
  // 32 warp + 4i + sub, whose owner is lane 4i + sub of this warp. Tile rows are
  // 1024-byte aligned groups of 8, so a row's swizzle key (row % 8) is (4i + sub) % 8.
  const int chunk = lane & 7, sub = lane >> 3;

  int kc = 0, kr = 0, ks = 0;  // channel offset, filter row and column of tile kt
  int s = 0;                   // stage of tile kt
  uint32_t use_parity = 0;     // parity of (kt / STAGES)
  int s_sig = 0;               // stage of the next tile to signal (kt - LAG)
  for (int kt = 0; kt < p.KT; ++kt) {
    const uint32_t full = bars + 8u * s, empty = bars + 8u * (C::STAGES + s);
    // Use n >= 1 of the stage: wait until the consumers released use n - 1 (phase
    // n - 1 of empty[s], parity (n - 1) & 1).
    if (kt >= C::STAGES) mbar_wait(empty, use_parity ^ 1u);
    if (tid == 0) {
      mbar_arrive_expect_tx(full, C::B_STAGE);
      tma_load_3d(b_smem + s * C::B_STAGE, tma_w, full, kt * BK, n0, grp);
    }
    // This tile's source offset of the own row (-1: zeros).
    const int ih = own_ih + kr * p.dh, iw = own_iw + ks * p.dw;
    const bool inside = unsigned(ih) < unsigned(p.H) && unsigned(iw) < unsigned(p.W);
    const int64_t off = inside ? own_base + ih * p.xs_h + iw * p.xs_w + kc : int64_t(-1);
    const uint32_t a_rows = a_smem + s * A_STAGE + warp * (32 * ROW_BYTES);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int row = 4 * i + sub;
      const int64_t o = __shfl_sync(0xffffffffu, off, row);
      const uint32_t dst = a_rows + row * ROW_BYTES + uint32_t((chunk ^ (row & 7)) << 4);
      cp_async_16(dst, o >= 0 ? static_cast<const void*>(X + o + chunk * 8) : static_cast<const void*>(X),
                  o >= 0 ? 16 : 0);
    }
    cp_async_commit();
    kc += BK;
    if (kc == p.Cg) {
      kc = 0;
      if (++ks == p.KW) { ks = 0; ++kr; }
    }
    if (++s == C::STAGES) { s = 0; use_parity ^= 1u; }
    if (kt >= C::LAG) {  // tile kt - LAG: this thread's copies have landed
      cp_async_wait<C::LAG>();
      fence_proxy_async_shared();
      mbar_arrive(bars + 8u * s_sig);
      if (++s_sig == C::STAGES) s_sig = 0;
    }
  }
  // The last min(KT, LAG) tiles.
  cp_async_wait<0>();
  fence_proxy_async_shared();
  for (int kt = p.KT > C::LAG ? p.KT - C::LAG : 0; kt < p.KT; ++kt) {
    mbar_arrive(bars + 8u * s_sig);
    if (++s_sig == C::STAGES) s_sig = 0;
  }
}

// Bias, activation, cast and store of one consumer thread's accumulators. Accumulator
// layout of m64nNk16: warp w of the warpgroup owns rows 16w..16w+15; for each 8-column
// block j, d[4j..4j+1] are row g, columns 8j+2t, 8j+2t+1 and d[4j+2..4j+3] row g+8,
// where g = lane / 4, t = lane % 4.
template <typename TOut, int NACC>
__device__ __forceinline__ void store_tile(const ConvWgmmaParams& p, const float (&d)[NACC], int grp, int row0,
                                           int n0, int t) {
  TOut* Y = static_cast<TOut*>(p.y) + int64_t(grp) * p.OCg * p.ys_c;
  TOut* yrow[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = row0 + 8 * h;
    yrow[h] = nullptr;
    if (m < p.M) {
      const int img = m / p.OHW, r = m - img * p.OHW;
      const int oh = r / p.OW, ow = r - oh * p.OW;
      yrow[h] = Y + img * p.ys_n + oh * p.ys_h + ow * p.ys_w;
    }
  }
#pragma unroll
  for (int j = 0; j < NACC / 4; ++j) {
    const int col = n0 + 8 * j + 2 * t;
    if (col >= p.OCg) break;  // columns only grow with j
    const bool has1 = col + 1 < p.OCg;
    float b0 = 0.f, b1 = 0.f;
    if (p.bias) {
      b0 = conv_bias(p.bias, p.bias_dtype, int64_t(grp) * p.OCg + col, 0.f);
      if (has1) b1 = conv_bias(p.bias, p.bias_dtype, int64_t(grp) * p.OCg + col + 1, 0.f);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (!yrow[h]) continue;
      const TOut o0 = from_acc<TOut>(apply_activation(d[4 * j + 2 * h] + b0, p.act));
      const TOut o1 = from_acc<TOut>(apply_activation(d[4 * j + 2 * h + 1] + b1, p.act));
      if (p.y_pair && has1) {
        struct alignas(2 * sizeof(TOut)) Pair { TOut v[2]; } pr;
        pr.v[0] = o0;
        pr.v[1] = o1;
        *reinterpret_cast<Pair*>(yrow[h] + col) = pr;
      } else {
        yrow[h][col * p.ys_c] = o0;
        if (has1) yrow[h][(col + 1) * p.ys_c] = o1;
      }
    }
  }
}

#endif  // LEPTON_SM90A

template <typename T, int BN>
__global__ void __launch_bounds__(THREADS, 1)
    conv2d_wgmma_kernel(const __grid_constant__ CUtensorMap tma_w, const ConvWgmmaParams p) {
#if LEPTON_SM90A
  using namespace sm90;
  using C = Cfg<BN>;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t a_smem = base, b_smem = base + C::STAGES * A_STAGE;
  const uint32_t bars = b_smem + C::STAGES * C::B_STAGE;  // full[0..S), then empty[0..S)

  const int wg = threadIdx.x / 128, tid_wg = threadIdx.x % 128;
  const int grp = int(blockIdx.y);
  const int64_t tiles_m = (p.M + BM - 1) / BM, tiles_n = (p.OCg + BN - 1) / BN;
  int64_t tm, tn;
  tile_coords(blockIdx.x, tiles_m, tiles_n, tm, tn);
  const int m0 = int(tm) * BM, n0 = int(tn) * BN;

  if (threadIdx.x == 0) {
    for (int s = 0; s < C::STAGES; ++s) {
      mbar_init(bars + 8u * s, FULL_ARRIVALS);
      mbar_init(bars + 8u * (C::STAGES + s), EMPTY_ARRIVALS);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 0) {
    setmaxnreg_dec<PRODUCER_REGS>();
    produce<T, BN>(&tma_w, p, a_smem, b_smem, bars, m0, n0, grp, tid_wg);
  } else {
    setmaxnreg_inc<CONSUMER_REGS>();
    const int cw = wg - 1;  // tile rows cw*64 .. cw*64+63
    const int warp = tid_wg >> 5, lane = tid_wg & 31;
    // The first wgmma overwrites d (accumulate = 0), so no instruction other than
    // wgmma writes the accumulators inside the pipeline (that would serialise it).
    float d[C::NACC];
    int s = 0, prev = 0;
    uint32_t use_parity = 0;
    for (int kt = 0; kt < p.KT; ++kt) {
      mbar_wait(bars + 8u * s, use_parity);
      const uint32_t a_tile = a_smem + s * A_STAGE + cw * 64 * ROW_BYTES;  // 1024-byte aligned
      const uint32_t b_tile = b_smem + s * C::B_STAGE;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {  // 16 elements = 32 bytes along the swizzled row
        const uint64_t da = desc_kmajor_sw128(a_tile + kk * 32), db = desc_kmajor_sw128(b_tile + kk * 32);
        wgmma_k16<T, BN>(d, da, db, (kt > 0 || kk > 0) ? 1 : 0);
      }
      wgmma_commit();
      // Keep this tile's group in flight; the previous one is finished, so its stage
      // goes back to the producer.
      wgmma_wait<1>();
      if (kt > 0 && lane == 0) mbar_arrive(bars + 8u * (C::STAGES + prev));
      prev = s;
      if (++s == C::STAGES) { s = 0; use_parity ^= 1u; }
    }
    wgmma_wait<0>();
    fence_regs(d);
    // KT >= 1 always (Cg >= 64), so every accumulator was written by a wgmma.

    const int row0 = m0 + cw * 64 + warp * 16 + (lane >> 2), t = lane & 3;
    if (p.out_dtype == DType::f32) store_tile<float>(p, d, grp, row0, n0, t);
    else store_tile<T>(p, d, grp, row0, n0, t);
  }
#endif  // LEPTON_SM90A
}

template <typename T, int BN>
void launch(const CUtensorMap& tw, const ConvWgmmaParams& p, int64_t groups, cudaStream_t stream) {
  auto* fn = conv2d_wgmma_kernel<T, BN>;
  allow_dynamic_smem(reinterpret_cast<const void*>(fn), Cfg<BN>::SMEM, "conv2d_wgmma_kernel");
  const int64_t tiles = ((int64_t(p.M) + BM - 1) / BM) * ((int64_t(p.OCg) + BN - 1) / BN);
  if (tiles > INT_MAX) throw CudaError("conv2d_wgmma_kernel: too many tiles");
  fn<<<dim3(unsigned(tiles), unsigned(groups)), THREADS, Cfg<BN>::SMEM, stream>>>(tw, p);
  check_launch("conv2d_wgmma_kernel");
}

template <typename T>
void launch_bn(int bn, const CUtensorMap& tw, const ConvWgmmaParams& p, int64_t groups, cudaStream_t stream) {
  if (bn == 64) launch<T, 64>(tw, p, groups, stream);
  else if (bn == 128) launch<T, 128>(tw, p, groups, stream);
  else launch<T, 256>(tw, p, groups, stream);
}

// The narrowest of 64/128/256 that covers OC/groups in one tile; then, while the grid
// would leave multiprocessors idle (one block fits per SM), narrower tiles for more
// blocks. A heuristic to be tuned with benchmarks/bench_cuda_conv2d.py. The
// environment variable LEPTON_ACCEL_CONV_WGMMA_BN=64|128|256 overrides it, so that
// tests can run every width on small problems and benchmarks can compare them.
int choose_bn(int64_t M, int64_t OCg, int64_t groups, int sm_count) {
  if (const char* env = std::getenv("LEPTON_ACCEL_CONV_WGMMA_BN")) {
    if (*env) {
      if (std::strcmp(env, "64") == 0) return 64;
      if (std::strcmp(env, "128") == 0) return 128;
      if (std::strcmp(env, "256") == 0) return 256;
      throw CudaError(std::string("LEPTON_ACCEL_CONV_WGMMA_BN must be 64, 128 or 256, not '") + env + "'");
    }
  }
  int bn = OCg <= 64 ? 64 : (OCg <= 128 ? 128 : 256);
  const int64_t tiles_m = (M + BM - 1) / BM;
  while (bn > 64 && tiles_m * ((OCg + bn - 1) / bn) * groups < sm_count) bn /= 2;
  return bn;
}

}  // namespace

bool conv2d_wgmma_sm90_compiled() {
#ifndef LEPTON_CUDA_HAS_SM90A
  return false;  // no sm_90a pass in this build (CMake sets the define when there is one)
#else
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(conv2d_wgmma_kernel<__nv_bfloat16, 128>)) !=
      cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  // Machine code built for sm_90 from compute_90 PTX (not a JIT of older PTX).
  return attr.binaryVersion == 90 && attr.ptxVersion == 90;
#endif
}

std::string conv2d_wgmma_sm90(const Conv2dArgs& a, int sm_count) {
  const int64_t Cg = a.C / a.groups, OCg = a.OC / a.groups, K = a.KH * a.KW * Cg;
  if (a.in_dtype != DType::f16 && a.in_dtype != DType::bf16) throw CudaError("conv2d_wgmma_sm90: input dtype");
  if (Cg % BK != 0) throw CudaError("conv2d_wgmma_sm90: C/groups must be a multiple of 64");
  const CUtensorMapDataType dt =
      a.in_dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const int64_t M = a.N * a.OH * a.OW;
  const int bn = choose_bn(M, OCg, a.groups, sm_count);
  // The filter as groups x OCg rows of K: row stride ws[0] (unused when OC == 1),
  // groups OCg rows apart; TMA zero-fills rows past OCg inside each group.
  const int64_t ld = a.OC == 1 ? K : a.ws[0];
  CUtensorMap tw;
  if (!make_kmajor_map(&tw, reinterpret_cast<const void*>(a.w), dt, K, OCg, ld, a.groups, OCg * ld, BK, bn))
    return "";

  ConvWgmmaParams p;
  p.x = reinterpret_cast<const void*>(a.x);
  p.y = reinterpret_cast<void*>(a.y);
  p.bias = reinterpret_cast<const void*>(a.bias);
  p.M = int(M);
  p.OHW = int(a.OH * a.OW);
  p.OW = int(a.OW);
  p.H = int(a.H); p.W = int(a.W);
  p.Cg = int(Cg); p.OCg = int(OCg);
  p.KW = int(a.KW);
  p.KT = int(K / BK);
  p.sh = int(a.stride_h); p.sw = int(a.stride_w);
  p.pt = int(a.pad_top); p.pl = int(a.pad_left);
  p.dh = int(a.dil_h); p.dw = int(a.dil_w);
  p.xs_n = a.xs[0]; p.xs_h = a.xs[2]; p.xs_w = a.xs[3];
  p.ys_n = a.ys[0]; p.ys_c = a.ys[1]; p.ys_h = a.ys[2]; p.ys_w = a.ys[3];
  p.out_dtype = a.out_dtype;
  p.bias_dtype = a.bias_dtype;
  p.act = a.activation;
  const int64_t out_size = int64_t(dtype_size(a.out_dtype));
  p.y_pair = a.ys[1] == 1 && OCg % 2 == 0 && a.ys[0] % 2 == 0 && a.ys[2] % 2 == 0 && a.ys[3] % 2 == 0 &&
             a.y % std::uintptr_t(2 * out_size) == 0;

  const cudaStream_t s = as_stream(a.stream);
  const char* tname = "f16";
  if (a.in_dtype == DType::bf16) {
    launch_bn<__nv_bfloat16>(bn, tw, p, a.groups, s);
    tname = "bf16";
  } else {
    launch_bn<__half>(bn, tw, p, a.groups, s);
  }
  return std::string("conv2d_igemm_wgmma_sm90_") + tname + "_128x" + std::to_string(bn) + "x64";
}

}  // namespace lepton
