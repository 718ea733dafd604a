// Implicit-GEMM convolution on tensor cores with mma.sync (sm_80 and later), for
// channels-last inputs: f16/bf16 with float32 accumulation, int8 -> int32.
//
// Per group g the convolution is the GEMM
//   Y(m, n) = sum_k A(m, k) B(k, n),  m = (image, oh, ow), n = output channel in g,
//   k = (kh, kw, c) with c fastest,   A(m, k) = x(image, g*Cg + c, ih, iw) or 0 in the
//   padding, B(k, n) = w(g*OCg + n, c, kh, kw).
// With the channel stride of x and w equal to 1 and Cg a multiple of 16 bytes, every
// 16-byte chunk along k lies inside one filter tap and is contiguous in memory, so the
// tiles are copied with cp.async straight from x and w: no im2col buffer. Padding and
// the ragged edges of M, N and K are zero-filled by cp.async's source-size operand.
//
// Block tile 128 x BN (BN = 128, or 64 for narrow layers), 8 warps as 2 (M) x 4 (N),
// K advancing 64 bytes per stage, 4 stages in flight. Both operands sit K-major in
// shared memory ([rows][64 bytes + 16 pad], so the 8 row addresses of each ldmatrix
// fall in distinct banks) and reach the tensor cores through ldmatrix; the mma tile
// shapes and fragment layouts are those of mma_ptx.cuh. The epilogue adds bias,
// applies the activation and casts, storing through y's strides (any layout).
#include <climits>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include "cuda/conv2d_common.cuh"
#include "cuda/mma_ptx.cuh"

namespace lepton {
namespace {

constexpr int BM = 128, THREADS = 256, STAGES = 4;
constexpr int BK_BYTES = 64;     // K bytes per stage
constexpr int KSTEP_BYTES = 32;  // K bytes per mma
constexpr int PITCH = BK_BYTES + 16;

struct IgemmParams {
  const void* x; const void* w; void* y; const void* bias;
  int M, OHW, OW, H, W, Cg, OCg, KH, KW, KT;  // KT: number of K tiles
  int sh, sw, pt, pl, dh, dw;
  int64_t xs_n, xs_h, xs_w;        // x's channel stride is 1
  int64_t ws_o, ws_h, ws_w;        // w's channel stride is 1
  int64_t ys_n, ys_c, ys_h, ys_w;
  DType out_dtype, bias_dtype;
  Activation act;
  bool y_pair;  // two neighbouring channels stored as one aligned pair
};

template <typename TOut>
struct alignas(2 * sizeof(TOut)) OutPair {
  TOut v[2];
};

template <typename Acc>
__device__ __forceinline__ Acc add_bias(Acc v, Acc b) {
  if constexpr (std::is_integral<Acc>::value) return int32_t(uint32_t(v) + uint32_t(b));
  else return v + b;
}

// Bias, activation, cast and store of this thread's accumulators.
template <typename TOut, typename Acc, int NT>
__device__ __forceinline__ void store_tile(const IgemmParams& p, const Acc (&acc)[4][NT][4], int grp,
                                           int m0, int n0, int warp_m, int warp_n, int lane) {
  constexpr int WN = NT * 8;
  const int g = lane >> 2, t = lane & 3;
  Acc bv[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = n0 + warp_n * WN + nt * 8 + 2 * t + e;
      bv[nt][e] = (p.bias && col < p.OCg)
                      ? conv_bias(p.bias, p.bias_dtype, int64_t(grp) * p.OCg + col, Acc(0))
                      : Acc(0);
    }
  TOut* Y = static_cast<TOut*>(p.y) + int64_t(grp) * p.OCg * p.ys_c;
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + warp_m * 64 + mt * 16 + g + 8 * h;
      if (m >= p.M) continue;
      const int img = m / p.OHW, r = m - img * p.OHW;
      const int oh = r / p.OW, ow = r - oh * p.OW;
      TOut* yrow = Y + img * p.ys_n + oh * p.ys_h + ow * p.ys_w;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int col = n0 + warp_n * WN + nt * 8 + 2 * t;
        const TOut o0 = from_acc<TOut>(apply_activation(add_bias(acc[mt][nt][2 * h], bv[nt][0]), p.act));
        const TOut o1 = from_acc<TOut>(apply_activation(add_bias(acc[mt][nt][2 * h + 1], bv[nt][1]), p.act));
        if (p.y_pair && col + 1 < p.OCg) {
          OutPair<TOut> pr;
          pr.v[0] = o0;
          pr.v[1] = o1;
          *reinterpret_cast<OutPair<TOut>*>(yrow + col) = pr;
        } else {
          if (col < p.OCg) yrow[col * p.ys_c] = o0;
          if (col + 1 < p.OCg) yrow[(col + 1) * p.ys_c] = o1;
        }
      }
    }
}

template <typename T, int BN>
__global__ void __launch_bounds__(THREADS, 2) conv2d_igemm_kernel(const IgemmParams p) {
  using Acc = typename Mma<T>::Acc;
  constexpr int VEC = 16 / int(sizeof(T));          // elements per 16-byte chunk
  constexpr int BK = BK_BYTES / int(sizeof(T));     // K elements per stage
  constexpr int A_BYTES = BM * PITCH, B_BYTES = BN * PITCH, STAGE_BYTES = A_BYTES + B_BYTES;
  constexpr int WN = BN / 4, NT = WN / 8;           // warp tile 64 x WN, NT n8 tiles
  constexpr int ROWS_PER_PASS = THREADS / 4;        // 4 chunks per 64-byte row
  constexpr int A_PASSES = BM / ROWS_PER_PASS, B_PASSES = BN / ROWS_PER_PASS;
  static_assert(NT % 2 == 0 && A_PASSES == 2 && B_PASSES >= 1, "tile shape");
  extern __shared__ __align__(128) uint8_t smem[];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;
  const int grp = blockIdx.y;
  const int64_t tiles_m = (p.M + BM - 1) / BM, tiles_n = (p.OCg + BN - 1) / BN;
  int64_t tm, tn;
  tile_coords(blockIdx.x, tiles_m, tiles_n, tm, tn);
  const int m0 = int(tm) * BM, n0 = int(tn) * BN;
  const T* X = static_cast<const T*>(p.x) + int64_t(grp) * p.Cg;
  const T* Wt = static_cast<const T*>(p.w) + int64_t(grp) * p.OCg * p.ws_o;
  const uint32_t s0 = smem_u32(smem);

  // This thread copies chunk cq (16 bytes) of rows row + 64 j of each operand tile.
  const int cq = tid & 3, row = tid >> 2;
  int64_t a_base[A_PASSES];
  int a_ih[A_PASSES], a_iw[A_PASSES];
#pragma unroll
  for (int j = 0; j < A_PASSES; ++j) {
    const int m = m0 + row + ROWS_PER_PASS * j;
    if (m < p.M) {
      const int img = m / p.OHW, r = m - img * p.OHW;
      const int oh = r / p.OW, ow = r - oh * p.OW;
      a_base[j] = img * p.xs_n;
      a_ih[j] = oh * p.sh - p.pt;
      a_iw[j] = ow * p.sw - p.pl;
    } else {  // past the last output pixel: far outside the image, so always zero-filled
      a_base[j] = 0;
      a_ih[j] = INT_MIN / 2;
      a_iw[j] = 0;
    }
  }
  int64_t b_base[B_PASSES];
  bool b_ok[B_PASSES];
#pragma unroll
  for (int j = 0; j < B_PASSES; ++j) {
    const int n = n0 + row + ROWS_PER_PASS * j;
    b_ok[j] = n < p.OCg;
    b_base[j] = b_ok[j] ? n * p.ws_o : 0;
  }
  // (kh, kw, c) of this thread's chunk in the next K tile to issue; tiles are issued
  // in order, each moving it BK elements on.
  int kc, kkh, kkw;
  {
    const int k = cq * VEC, tap = k / p.Cg;
    kc = k - tap * p.Cg;
    kkh = tap / p.KW;
    kkw = tap - kkh * p.KW;
  }
  auto issue = [&](int kt) {
    const uint32_t st = s0 + uint32_t(kt % STAGES) * STAGE_BYTES;
    const bool k_ok = kkh < p.KH;
    const int dy = kkh * p.dh, dx = kkw * p.dw;
#pragma unroll
    for (int j = 0; j < A_PASSES; ++j) {
      const int ih = a_ih[j] + dy, iw = a_iw[j] + dx;
      const bool ok = k_ok && unsigned(ih) < unsigned(p.H) && unsigned(iw) < unsigned(p.W);
      const T* src = ok ? X + a_base[j] + ih * p.xs_h + iw * p.xs_w + kc : X;
      cp_async_16(st + (row + ROWS_PER_PASS * j) * PITCH + cq * 16, src, ok ? 16 : 0);
    }
    const int64_t w_k = kkh * p.ws_h + kkw * p.ws_w + kc;
#pragma unroll
    for (int j = 0; j < B_PASSES; ++j) {
      const bool ok = k_ok && b_ok[j];
      const T* src = ok ? Wt + b_base[j] + w_k : Wt;
      cp_async_16(st + A_BYTES + (row + ROWS_PER_PASS * j) * PITCH + cq * 16, src, ok ? 16 : 0);
    }
    kc += BK;
    while (kc >= p.Cg) {
      kc -= p.Cg;
      if (++kkw == p.KW) { kkw = 0; ++kkh; }
    }
  };

  Acc acc[4][NT][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = Acc(0);

  // Prologue: STAGES-1 groups, committed even when empty, so that "tile kt is
  // group kt" holds in the loop.
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < p.KT) issue(s);
    cp_async_commit();
  }
  const int q = lane >> 3, r8 = lane & 7;
  for (int kt = 0; kt < p.KT; ++kt) {
    cp_async_wait<STAGES - 2>();  // this thread's copies of tile kt have landed
    __syncthreads();              // everyone's have, and stage (kt-1) % STAGES is free
    if (kt + STAGES - 1 < p.KT) issue(kt + STAGES - 1);
    cp_async_commit();

    const uint32_t sa = s0 + uint32_t(kt % STAGES) * STAGE_BYTES, sb = sa + A_BYTES;
#pragma unroll
    for (int ks = 0; ks < BK_BYTES / KSTEP_BYTES; ++ks) {
      uint32_t af[4][4], bf[NT][2];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)  // a0..a3: rows +0/+8, k bytes +0/+16
        ldmatrix_x4(sa + (warp_m * 64 + mt * 16 + (q & 1) * 8 + r8) * PITCH + ks * KSTEP_BYTES +
                        (q >> 1) * 16,
                    af[mt]);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {  // b0, b1 of n8 tiles 2np and 2np+1
        uint32_t x4[4];
        ldmatrix_x4(sb + (warp_n * WN + np * 16 + (q >> 1) * 8 + r8) * PITCH + ks * KSTEP_BYTES +
                        (q & 1) * 16,
                    x4);
        bf[2 * np][0] = x4[0]; bf[2 * np][1] = x4[1];
        bf[2 * np + 1][0] = x4[2]; bf[2 * np + 1][1] = x4[3];
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) Mma<T>::run(acc[mt][nt], af[mt], bf[nt]);
    }
  }
  cp_async_wait<0>();

  switch (p.out_dtype) {
    case DType::f32: store_tile<float>(p, acc, grp, m0, n0, warp_m, warp_n, lane); break;
    case DType::i32: store_tile<int32_t>(p, acc, grp, m0, n0, warp_m, warp_n, lane); break;
    case DType::f16: store_tile<__half>(p, acc, grp, m0, n0, warp_m, warp_n, lane); break;
    case DType::bf16: store_tile<__nv_bfloat16>(p, acc, grp, m0, n0, warp_m, warp_n, lane); break;
    default: break;
  }
}

// Opting in to more than 48 KB of dynamic shared memory, once per kernel and device.
void allow_smem(const void* fn, int bytes) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  if (done.count({fn, dev})) return;
  check_cuda(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             "cudaFuncSetAttribute(conv2d_igemm_kernel)");
  done.insert({fn, dev});
}

template <typename T, int BN>
void launch(const IgemmParams& p, int64_t groups, cudaStream_t stream) {
  constexpr int smem = STAGES * (BM + BN) * PITCH;
  auto* fn = conv2d_igemm_kernel<T, BN>;
  allow_smem(reinterpret_cast<const void*>(fn), smem);
  const int64_t tiles = ((int64_t(p.M) + BM - 1) / BM) * ((int64_t(p.OCg) + BN - 1) / BN);
  if (tiles > INT_MAX) throw CudaError("conv2d_igemm_kernel: too many tiles");
  fn<<<dim3(unsigned(tiles), unsigned(groups)), THREADS, smem, stream>>>(p);
  check_launch("conv2d_igemm_kernel");
}

template <typename T>
int launch_bn(const IgemmParams& p, int64_t groups, cudaStream_t stream) {
  if (p.OCg <= 64) {
    launch<T, 64>(p, groups, stream);
    return 64;
  }
  launch<T, 128>(p, groups, stream);
  return 128;
}

}  // namespace

std::string conv2d_igemm_sm80(const Conv2dArgs& a) {
  IgemmParams p;
  p.x = reinterpret_cast<const void*>(a.x);
  p.w = reinterpret_cast<const void*>(a.w);
  p.y = reinterpret_cast<void*>(a.y);
  p.bias = reinterpret_cast<const void*>(a.bias);
  const int64_t Cg = a.C / a.groups, OCg = a.OC / a.groups;
  p.M = int(a.N * a.OH * a.OW);
  p.OHW = int(a.OH * a.OW);
  p.OW = int(a.OW);
  p.H = int(a.H); p.W = int(a.W);
  p.Cg = int(Cg); p.OCg = int(OCg);
  p.KH = int(a.KH); p.KW = int(a.KW);
  const int64_t K = a.KH * a.KW * Cg;
  const int64_t BK = BK_BYTES / int64_t(dtype_size(a.in_dtype));
  p.KT = int((K + BK - 1) / BK);
  p.sh = int(a.stride_h); p.sw = int(a.stride_w);
  p.pt = int(a.pad_top); p.pl = int(a.pad_left);
  p.dh = int(a.dil_h); p.dw = int(a.dil_w);
  p.xs_n = a.xs[0]; p.xs_h = a.xs[2]; p.xs_w = a.xs[3];
  p.ws_o = a.ws[0]; p.ws_h = a.ws[2]; p.ws_w = a.ws[3];
  p.ys_n = a.ys[0]; p.ys_c = a.ys[1]; p.ys_h = a.ys[2]; p.ys_w = a.ys[3];
  p.out_dtype = a.out_dtype;
  p.bias_dtype = a.bias_dtype;
  p.act = a.activation;
  const int64_t out_size = int64_t(dtype_size(a.out_dtype));
  p.y_pair = a.ys[1] == 1 && OCg % 2 == 0 && a.ys[0] % 2 == 0 && a.ys[2] % 2 == 0 &&
             a.ys[3] % 2 == 0 && a.y % std::uintptr_t(2 * out_size) == 0;
  const cudaStream_t s = as_stream(a.stream);
  int bn = 0;
  const char* tname = "";
  switch (a.in_dtype) {
    case DType::f16: bn = launch_bn<__half>(p, a.groups, s); tname = "f16"; break;
    case DType::bf16: bn = launch_bn<__nv_bfloat16>(p, a.groups, s); tname = "bf16"; break;
    case DType::i8: bn = launch_bn<int8_t>(p, a.groups, s); tname = "i8"; break;
    default: throw CudaError("conv2d_igemm_sm80: unsupported input dtype");
  }
  return std::string("conv2d_igemm_mma_sm80_") + tname + "_128x" + std::to_string(bn);
}

}  // namespace lepton
