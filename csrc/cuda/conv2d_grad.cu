// Gradients of conv2d: dx (grad-input) and dw (grad-weight) for float operands, float32
// accumulation, any stride, padding, dilation, groups and tensor strides (NCHW, NHWC,
// views). With y = conv2d(x, w), output pixel (oh, ow) reads input pixel
//   h = oh*sh - pt + kh*dh,   w = ow*sw - pl + kw*dw
// through filter tap (kh, kw). Two families per gradient:
//   generic  direct. dx: one thread per dx element, visiting the taps whose output
//            position (h + pt - kh*dh) / sh is whole and inside dy. dw: one block per dw
//            element, reducing over the output pixels whose input falls in the image.
//   simt     implicit GEMM on CUDA cores, 64x64 tiles, 16-deep k-steps, 4x4 outputs
//            per thread, float32 FMA. Per group:
//              dx: M = N*H*W pixels (h, w), N = C/g, K = KH*KW*OC/g (kh, kw, oc),
//                  A(pixel, k) = dy at the output position of tap (kh, kw) or 0,
//                  B(k, c) = w(oc, c, kh, kw);
//              dw: M = OC/g, N = KH*KW*C/g (kh, kw, c), K = N*OH*OW output pixels,
//                  A(oc, pixel) = dy, B(pixel, j) = x at tap j's input position or 0;
//                  the long K is split over blocks that add into a float32 workspace,
//                  cast into dw at the end.
//            Row, column and k-step decompositions are worked out once per tile into
//            shared-memory tables, so the operand loads are a table read and a multiply.
#include <algorithm>
#include <climits>
#include <string>
#include "cuda/conv2d_common.cuh"
#include "cuda/kernel_family.h"

namespace lepton {
namespace {

struct Geometry {
  int64_t N, C, H, W, OC, KH, KW, OH, OW;
  int64_t sh, sw, pt, pl, dh, dw, groups, Cg, OCg;
  int64_t xs[4], ws[4], ys[4];  // (n, c, h, w), (oc, c, kh, kw), (n, oc, oh, ow)
};

Geometry geometry(const Conv2dArgs& a) {
  Geometry g;
  g.N = a.N; g.C = a.C; g.H = a.H; g.W = a.W; g.OC = a.OC; g.KH = a.KH; g.KW = a.KW;
  g.OH = a.OH; g.OW = a.OW;
  g.sh = a.stride_h; g.sw = a.stride_w; g.pt = a.pad_top; g.pl = a.pad_left;
  g.dh = a.dil_h; g.dw = a.dil_w; g.groups = a.groups;
  g.Cg = a.C / a.groups; g.OCg = a.OC / a.groups;
  for (int i = 0; i < 4; ++i) {
    g.xs[i] = a.xs[i];
    g.ws[i] = a.ws[i];
    g.ys[i] = a.ys[i];
  }
  return g;
}

// The result's dtype is chosen at run time: only the final store depends on it.
__device__ __forceinline__ void store_as(void* base, int64_t off, DType dt, float v) {
  switch (dt) {
    case DType::f16: static_cast<__half*>(base)[off] = __float2half_rn(v); break;
    case DType::bf16: static_cast<__nv_bfloat16*>(base)[off] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(base)[off] = v; break;
  }
}

// First and last output index o in [0, out) whose input o*s - p + t lands in [0, in).
__host__ __device__ __forceinline__ void landing_range(int64_t in, int64_t out, int64_t s, int64_t p, int64_t t,
                                                       int64_t& first, int64_t& last) {
  const int64_t q = p - t;  // need q <= o*s <= q + in - 1
  first = q <= 0 ? 0 : (q + s - 1) / s;
  const int64_t hi = q + in - 1;
  last = hi < 0 ? -1 : std::min(out - 1, hi / s);
}

// ---- generic: dx ----------------------------------------------------------------------
template <typename TIn>
__global__ void __launch_bounds__(256) grad_input_generic_kernel(const Geometry g, const TIn* __restrict__ dy,
                                                                 const TIn* __restrict__ w, void* dx, DType out_dt,
                                                                 int64_t total, bool c_fast) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    int64_t n, c, ih, iw, r = idx;
    if (c_fast) {
      c = r % g.C; r /= g.C;
      iw = r % g.W; r /= g.W;
      ih = r % g.H; n = r / g.H;
    } else {
      iw = r % g.W; r /= g.W;
      ih = r % g.H; r /= g.H;
      c = r % g.C; n = r / g.C;
    }
    const int64_t grp = c / g.Cg, cl = c % g.Cg, oc0 = grp * g.OCg;
    float acc = 0.0f;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t th = ih + g.pt - kh * g.dh;  // = oh * sh when tap kh reaches row ih
      if (th < 0) break;                         // th only falls as kh grows
      if (th % g.sh != 0) continue;
      const int64_t oh = th / g.sh;
      if (oh >= g.OH) continue;
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t tw = iw + g.pl - kw * g.dw;
        if (tw < 0) break;
        if (tw % g.sw != 0) continue;
        const int64_t ow = tw / g.sw;
        if (ow >= g.OW) continue;
        const TIn* dyp = dy + n * g.ys[0] + oc0 * g.ys[1] + oh * g.ys[2] + ow * g.ys[3];
        const TIn* wp = w + oc0 * g.ws[0] + cl * g.ws[1] + kh * g.ws[2] + kw * g.ws[3];
        for (int64_t o = 0; o < g.OCg; ++o) acc = fmaf(to_float(dyp[o * g.ys[1]]), to_float(wp[o * g.ws[0]]), acc);
      }
    }
    store_as(dx, n * g.xs[0] + c * g.xs[1] + ih * g.xs[2] + iw * g.xs[3], out_dt, acc);
  }
}

// ---- generic: dw ----------------------------------------------------------------------
// One block per dw element (oc, c, kh, kw): the block's threads walk the output pixels
// whose input (h, w) lies in the image (a rectangle of (oh, ow) per tap), then reduce.
template <typename TIn>
__global__ void __launch_bounds__(256) grad_weight_generic_kernel(const Geometry g, const TIn* __restrict__ x,
                                                                  const TIn* __restrict__ dy, void* dwp,
                                                                  DType out_dt, int64_t total) {
  __shared__ float partial[8];
  for (int64_t e = blockIdx.x; e < total; e += gridDim.x) {
    int64_t r = e;
    const int64_t kw = r % g.KW; r /= g.KW;
    const int64_t kh = r % g.KH; r /= g.KH;
    const int64_t cl = r % g.Cg;
    const int64_t oc = r / g.Cg;
    const int64_t c = (oc / g.OCg) * g.Cg + cl;
    int64_t oh0, oh1, ow0, ow1;
    landing_range(g.H, g.OH, g.sh, g.pt, kh * g.dh, oh0, oh1);
    landing_range(g.W, g.OW, g.sw, g.pl, kw * g.dw, ow0, ow1);
    const int64_t nh = oh1 >= oh0 ? oh1 - oh0 + 1 : 0, nw = ow1 >= ow0 ? ow1 - ow0 + 1 : 0;
    const int64_t count = g.N * nh * nw;
    // x(n, c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw): the tap's part of the offset
    const int64_t x_tap = c * g.xs[1] + (kh * g.dh - g.pt) * g.xs[2] + (kw * g.dw - g.pl) * g.xs[3];
    float acc = 0.0f;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      int64_t q = i;
      const int64_t ow = ow0 + q % nw; q /= nw;
      const int64_t oh = oh0 + q % nh;
      const int64_t n = q / nh;
      acc = fmaf(to_float(dy[n * g.ys[0] + oc * g.ys[1] + oh * g.ys[2] + ow * g.ys[3]]),
                 to_float(x[x_tap + n * g.xs[0] + oh * g.sh * g.xs[2] + ow * g.sw * g.xs[3]]), acc);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
      float sum = 0.0f;
      for (int i = 0; i < int(blockDim.x >> 5); ++i) sum += partial[i];
      store_as(dwp, oc * g.ws[0] + cl * g.ws[1] + kh * g.ws[2] + kw * g.ws[3], out_dt, sum);
    }
    __syncthreads();
  }
}

// ---- simt: the implicit-GEMM engine -----------------------------------------------------
constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256, PAD = 4;

// One entry of a row, column or k-step table: two offsets and two coordinates whose
// meaning depends on the gradient (see the Op structs). i0 == INT_MIN: out of range.
struct Entry {
  int64_t off0, off1;
  int i0, i1;
};

struct SimtParams {
  Geometry g;
  const void* a;   // dy (both gradients)
  const void* b;   // w (dx) or x (dw)
  void* out;       // dx, or the float32 workspace (dw)
  DType out_dt;
  int64_t M, Ncols, K;      // per group
  int64_t tiles_m, tiles_n, splits, k_tiles;
  bool a_k_fast, b_k_fast;  // consecutive threads load along K (else along M / N)
  bool unit_stride;         // sh == sw == 1 (dx: no divisibility tests)
};

// dx = dy (*) w^T per group. Rows: dx pixels (n, h, w); columns: c; k: (kh, kw, oc).
struct GradInputOp {
  // row: off0 = n*ys0, off1 = dx offset without the channel, i0 = h + pt, i1 = w + pl
  __device__ static Entry row(const SimtParams& p, int64_t grp, int64_t m) {
    const Geometry& g = p.g;
    if (m >= p.M) return {0, 0, INT_MIN, 0};
    const int64_t iw = m % g.W, t = m / g.W, ih = t % g.H, n = t / g.H;
    return {n * g.ys[0], n * g.xs[0] + ih * g.xs[2] + iw * g.xs[3], int(ih + g.pt), int(iw + g.pl)};
  }
  // column: off0 = c*ws1, off1 = (g*Cg + c)*xs1
  __device__ static Entry col(const SimtParams& p, int64_t grp, int64_t n) {
    const Geometry& g = p.g;
    if (n >= p.Ncols) return {0, 0, INT_MIN, 0};
    return {n * g.ws[1], (grp * g.Cg + n) * g.xs[1], 0, 0};
  }
  // k: off0 = oc*ys1, off1 = oc*ws0 + kh*ws2 + kw*ws3, i0 = kh*dh, i1 = kw*dw
  __device__ static Entry kstep(const SimtParams& p, int64_t grp, int64_t k) {
    const Geometry& g = p.g;
    if (k >= p.K) return {0, 0, INT_MIN, 0};
    const int64_t o = k % g.OCg, t = k / g.OCg, kw = t % g.KW, kh = t / g.KW;
    const int64_t oc = grp * g.OCg + o;
    return {oc * g.ys[1], oc * g.ws[0] + kh * g.ws[2] + kw * g.ws[3], int(kh * g.dh), int(kw * g.dw)};
  }
  template <typename TIn>
  __device__ static float a(const SimtParams& p, const Entry& r, const Entry& k) {
    if (r.i0 == INT_MIN || k.i0 == INT_MIN) return 0.0f;
    const Geometry& g = p.g;
    int th = r.i0 - k.i0, tw = r.i1 - k.i1;  // = oh*sh, ow*sw where the tap reaches (h, w)
    if (th < 0 || tw < 0) return 0.0f;
    if (!p.unit_stride) {
      if (th % int(g.sh) != 0 || tw % int(g.sw) != 0) return 0.0f;
      th /= int(g.sh);
      tw /= int(g.sw);
    }
    if (th >= g.OH || tw >= g.OW) return 0.0f;
    return to_float(static_cast<const TIn*>(p.a)[r.off0 + k.off0 + th * g.ys[2] + tw * g.ys[3]]);
  }
  template <typename TIn>
  __device__ static float b(const SimtParams& p, const Entry& k, const Entry& c) {
    if (k.i0 == INT_MIN || c.i0 == INT_MIN) return 0.0f;
    return to_float(static_cast<const TIn*>(p.b)[k.off1 + c.off0]);
  }
  __device__ static void store(const SimtParams& p, int64_t grp, const Entry& r, const Entry& c, float v) {
    if (r.i0 == INT_MIN || c.i0 == INT_MIN) return;
    store_as(p.out, r.off1 + c.off1, p.out_dt, v);
  }
};

// dw = dy^T (*) im2col(x) per group. Rows: oc; columns: (kh, kw, c); k: output pixels.
struct GradWeightOp {
  // row: off0 = oc*ys1, off1 = workspace row offset
  __device__ static Entry row(const SimtParams& p, int64_t grp, int64_t m) {
    const Geometry& g = p.g;
    if (m >= p.M) return {0, 0, INT_MIN, 0};
    const int64_t oc = grp * g.OCg + m;
    return {oc * g.ys[1], oc * p.Ncols, 0, 0};
  }
  // column j = (kh*KW + kw)*Cg + c: off0 = (g*Cg + c)*xs1, off1 = j, i0 = kh*dh, i1 = kw*dw
  __device__ static Entry col(const SimtParams& p, int64_t grp, int64_t j) {
    const Geometry& g = p.g;
    if (j >= p.Ncols) return {0, 0, INT_MIN, 0};
    const int64_t c = j % g.Cg, t = j / g.Cg, kw = t % g.KW, kh = t / g.KW;
    return {(grp * g.Cg + c) * g.xs[1], j, int(kh * g.dh), int(kw * g.dw)};
  }
  // k = pixel (n, oh, ow): off0 = dy offset without oc, off1 = n*xs0, i0 = oh*sh - pt, i1 = ow*sw - pl
  __device__ static Entry kstep(const SimtParams& p, int64_t grp, int64_t k) {
    const Geometry& g = p.g;
    if (k >= p.K) return {0, 0, INT_MIN, 0};
    const int64_t ow = k % g.OW, t = k / g.OW, oh = t % g.OH, n = t / g.OH;
    return {n * g.ys[0] + oh * g.ys[2] + ow * g.ys[3], n * g.xs[0], int(oh * g.sh - g.pt),
            int(ow * g.sw - g.pl)};
  }
  template <typename TIn>
  __device__ static float a(const SimtParams& p, const Entry& r, const Entry& k) {
    if (r.i0 == INT_MIN || k.i0 == INT_MIN) return 0.0f;
    return to_float(static_cast<const TIn*>(p.a)[r.off0 + k.off0]);
  }
  template <typename TIn>
  __device__ static float b(const SimtParams& p, const Entry& k, const Entry& c) {
    if (k.i0 == INT_MIN || c.i0 == INT_MIN) return 0.0f;
    const Geometry& g = p.g;
    const int ih = k.i0 + c.i0, iw = k.i1 + c.i1;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return 0.0f;
    return to_float(static_cast<const TIn*>(p.b)[k.off1 + c.off0 + ih * g.xs[2] + iw * g.xs[3]]);
  }
  __device__ static void store(const SimtParams& p, int64_t grp, const Entry& r, const Entry& c, float v) {
    if (r.i0 == INT_MIN || c.i0 == INT_MIN) return;
    atomicAdd(static_cast<float*>(p.out) + r.off1 + c.off1, v);
  }
};

template <typename TIn, typename Op>
__global__ void __launch_bounds__(THREADS) conv2d_grad_simt_kernel(const SimtParams p) {
  __shared__ __align__(16) float As[BK][BM + PAD];
  __shared__ __align__(16) float Bs[BK][BN + PAD];
  __shared__ Entry rows[BM], cols[BN], ks[2][BK];
  const int tid = threadIdx.x;
  const int tile_m = int(blockIdx.x % p.tiles_m), tile_n = int(blockIdx.x / p.tiles_m);
  // The elements of A and B this thread loads: (row/col, k) for i = 0..3.
  const int a_mn = p.a_k_fast ? tid / BK : tid % BM, a_k = p.a_k_fast ? tid % BK : tid / BM;
  const int a_mn_step = p.a_k_fast ? THREADS / BK : 0, a_k_step = p.a_k_fast ? 0 : THREADS / BM;
  const int b_mn = p.b_k_fast ? tid / BK : tid % BN, b_k = p.b_k_fast ? tid % BK : tid / BN;
  const int b_mn_step = p.b_k_fast ? THREADS / BK : 0, b_k_step = p.b_k_fast ? 0 : THREADS / BN;
  const int tx = tid % 16, ty = tid / 16;  // outputs rows 4*ty.., columns 4*tx..

  for (int64_t z = blockIdx.y; z < p.g.groups * p.splits; z += gridDim.y) {
    const int64_t grp = z / p.splits, split = z % p.splits;
    const int64_t kt0 = split * p.k_tiles / p.splits, kt1 = (split + 1) * p.k_tiles / p.splits;
    if (tid < BM) rows[tid] = Op::row(p, grp, int64_t(tile_m) * BM + tid);
    else if (tid < BM + BN) cols[tid - BM] = Op::col(p, grp, int64_t(tile_n) * BN + tid - BM);
    else if (tid < BM + BN + BK && kt0 < kt1) ks[kt0 & 1][tid - BM - BN] = Op::kstep(p, grp, kt0 * BK + tid - BM - BN);
    __syncthreads();

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    float ra[4], rb[4];
    auto load = [&](int buf) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        ra[i] = Op::template a<TIn>(p, rows[a_mn + i * a_mn_step], ks[buf][a_k + i * a_k_step]);
        rb[i] = Op::template b<TIn>(p, ks[buf][b_k + i * b_k_step], cols[b_mn + i * b_mn_step]);
      }
    };
    if (kt0 < kt1) load(int(kt0 & 1));
    for (int64_t kt = kt0; kt < kt1; ++kt) {
      const int buf = int(kt & 1);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        As[a_k + i * a_k_step][a_mn + i * a_mn_step] = ra[i];
        Bs[b_k + i * b_k_step][b_mn + i * b_mn_step] = rb[i];
      }
      if (tid < BK && kt + 1 < kt1) ks[buf ^ 1][tid] = Op::kstep(p, grp, (kt + 1) * BK + tid);
      __syncthreads();
      if (kt + 1 < kt1) load(buf ^ 1);  // the next tile's loads overlap this tile's FMAs
#pragma unroll
      for (int k = 0; k < BK; ++k) {
        const float4 av = *reinterpret_cast<const float4*>(&As[k][4 * ty]);
        const float4 bv = *reinterpret_cast<const float4*>(&Bs[k][4 * tx]);
        const float a4[4] = {av.x, av.y, av.z, av.w}, b4[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a4[i], b4[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) Op::store(p, grp, rows[4 * ty + i], cols[4 * tx + j], acc[i][j]);
    __syncthreads();  // the tables are rewritten for the next z
  }
}

// dw(oc, c, kh, kw) = workspace[oc][(kh*KW + kw)*Cg + c], cast.
__global__ void __launch_bounds__(256) grad_weight_finish_kernel(const Geometry g, const float* __restrict__ ws,
                                                                 void* dwp, DType out_dt, int64_t total) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t ncols = g.KH * g.KW * g.Cg;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    int64_t r = e;
    const int64_t c = r % g.Cg; r /= g.Cg;
    const int64_t kw = r % g.KW; r /= g.KW;
    const int64_t kh = r % g.KH;
    const int64_t oc = r / g.KH;
    store_as(dwp, oc * g.ws[0] + c * g.ws[1] + kh * g.ws[2] + kw * g.ws[3], out_dt,
             ws[oc * ncols + (kh * g.KW + kw) * g.Cg + c]);
  }
}

// ---- host side ----------------------------------------------------------------------------
unsigned grid_1d(int64_t work, int64_t per_block) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((work + per_block - 1) / per_block, int64_t(1) << 20)));
}

// Calls f(ElementType<TIn>) for the float operand types; the result is the operand type
// or float32.
template <typename F>
void dispatch_float(const Conv2dArgs& a, const char* op, F&& f) {
  if (a.in_dtype != DType::f32 && a.in_dtype != DType::f16 && a.in_dtype != DType::bf16)
    throw CudaError(std::string(op) + ": float operands only (float32, float16, bfloat16)");
  if (a.out_dtype != a.in_dtype && a.out_dtype != DType::f32)
    throw CudaError(std::string(op) + ": the result must have the operands' dtype or float32");
  switch (a.in_dtype) {
    case DType::f16: f(ElementType<__half>{}); break;
    case DType::bf16: f(ElementType<__nv_bfloat16>{}); break;
    default: f(ElementType<float>{}); break;
  }
}

void check_grad_args(const Conv2dArgs& a, const char* op) {
  check_geometry(a, op);
  if (a.bias) throw CudaError(std::string(op) + ": takes no bias");
  if (a.activation != Activation::none) throw CudaError(std::string(op) + ": takes no activation");
}

// What the 32-bit coordinates of the simt tables hold stays inside int.
bool simt_fits(const Conv2dArgs& a, int64_t M, int64_t Ncols, int64_t K) {
  constexpr int64_t lim = int64_t(1) << 30;
  for (int64_t v : {M, Ncols, K, a.H + a.pad_top, a.W + a.pad_left, a.dil_h * a.KH, a.dil_w * a.KW,
                    a.stride_h * a.OH + a.pad_top, a.stride_w * a.OW + a.pad_left})
    if (v >= lim) return false;
  return true;
}

// Blocks enough to fill the device: the long reduction of dw is split until there are
// about four blocks per SM, each split keeping at least 8 k-steps.
int64_t choose_splits(int64_t base_blocks, int64_t k_tiles, int sm_count) {
  const int64_t want = 4 * int64_t(std::max(sm_count, 1));
  int64_t s = (want + base_blocks - 1) / base_blocks;
  s = std::min(s, std::max<int64_t>(1, k_tiles / 8));
  return std::max<int64_t>(1, std::min<int64_t>(s, 4096));
}

template <typename TIn, typename Op>
void launch_simt(const SimtParams& p, cudaStream_t stream) {
  const int64_t z = p.g.groups * p.splits;
  dim3 grid(unsigned(p.tiles_m * p.tiles_n), unsigned(std::min<int64_t>(z, 65535)));
  conv2d_grad_simt_kernel<TIn, Op><<<grid, THREADS, 0, stream>>>(p);
  check_launch("conv2d_grad_simt_kernel");
}

}  // namespace

std::string conv2d_grad_input(const Conv2dArgs& in, ConvGradKernel kernel) {
  Conv2dArgs a = in;
  const char* op = "conv2d_grad_input";
  check_grad_args(a, op);
  dispatch_float(a, op, [](auto) {});  // dtype check before anything else
  const int64_t total = a.N * a.C * a.H * a.W;
  if (total == 0) return "empty";
  normalise_strides(a);
  const Geometry g = geometry(a);
  const cudaStream_t stream = as_stream(a.stream);
  const ConvGradKernel want = requested_kernel(kernel);
  const int64_t M = a.N * a.H * a.W, Ncols = g.Cg, K = a.KH * a.KW * g.OCg;
  const bool wide = Ncols >= 16 && K >= 16;
  if (want != ConvGradKernel::generic && (want == ConvGradKernel::simt || wide) && K > 0 &&
      simt_fits(a, M, Ncols, K)) {
    SimtParams p{};
    p.g = g;
    p.a = reinterpret_cast<const void*>(a.y);
    p.b = reinterpret_cast<const void*>(a.w);
    p.out = reinterpret_cast<void*>(a.x);
    p.out_dt = a.out_dtype;
    p.M = M; p.Ncols = Ncols; p.K = K;
    p.tiles_m = (M + BM - 1) / BM; p.tiles_n = (Ncols + BN - 1) / BN;
    p.splits = 1; p.k_tiles = (K + BK - 1) / BK;
    p.a_k_fast = a.ys[1] == 1 && a.ys[3] != 1;  // dy channels-last: walk oc, else walk pixels
    p.b_k_fast = a.ws[1] != 1 && a.ws[0] == 1;
    p.unit_stride = a.stride_h == 1 && a.stride_w == 1;
    if (p.tiles_m * p.tiles_n < (int64_t(1) << 31)) {
      dispatch_float(a, op, [&](auto t) { launch_simt<typename decltype(t)::type, GradInputOp>(p, stream); });
      return "conv2d_grad_input_simt_64x64x16";
    }
  }
  const bool c_fast = a.xs[1] == 1;  // dx channels-last: neighbouring threads share the pixel
  dispatch_float(a, op, [&](auto t) {
    using T = typename decltype(t)::type;
    grad_input_generic_kernel<T><<<grid_1d(total, 256), 256, 0, stream>>>(
        g, reinterpret_cast<const T*>(a.y), reinterpret_cast<const T*>(a.w), reinterpret_cast<void*>(a.x),
        a.out_dtype, total, c_fast);
    check_launch("grad_input_generic_kernel");
  });
  return "conv2d_grad_input_generic";
}

std::string conv2d_grad_weight(const Conv2dArgs& in, ConvGradKernel kernel) {
  Conv2dArgs a = in;
  const char* op = "conv2d_grad_weight";
  check_grad_args(a, op);
  dispatch_float(a, op, [](auto) {});
  const Geometry g0 = geometry(a);
  const int64_t total = a.OC * g0.Cg * a.KH * a.KW;
  if (total == 0) return "empty";
  normalise_strides(a);
  const Geometry g = geometry(a);
  const cudaStream_t stream = as_stream(a.stream);
  const ConvGradKernel want = requested_kernel(kernel);
  const int64_t M = g.OCg, Ncols = a.KH * a.KW * g.Cg, K = a.N * a.OH * a.OW;
  const bool wide = M >= 16 && Ncols >= 16;
  if (want != ConvGradKernel::generic && (want == ConvGradKernel::simt || wide) && K > 0 &&
      simt_fits(a, M, Ncols, K)) {
    const DeviceInfo dev = device_info();
    SimtParams p{};
    p.g = g;
    p.a = reinterpret_cast<const void*>(a.y);
    p.b = reinterpret_cast<const void*>(a.x);
    p.out_dt = DType::f32;
    p.M = M; p.Ncols = Ncols; p.K = K;
    p.tiles_m = (M + BM - 1) / BM; p.tiles_n = (Ncols + BN - 1) / BN;
    p.k_tiles = (K + BK - 1) / BK;
    p.splits = choose_splits(p.tiles_m * p.tiles_n * g.groups, p.k_tiles, dev.sm_count);
    p.a_k_fast = a.ys[1] != 1;  // dy channels-last: walk oc, else walk pixels
    p.b_k_fast = a.xs[1] != 1;  // x channels-last: walk c, else walk pixels
    p.unit_stride = a.stride_h == 1 && a.stride_w == 1;
    if (p.tiles_m * p.tiles_n < (int64_t(1) << 31)) {
      const std::size_t bytes = std::size_t(a.OC) * std::size_t(Ncols) * sizeof(float);
      Workspace ws(bytes, stream, dev.mem_pools);
      check_cuda(cudaMemsetAsync(ws.get(), 0, bytes, stream), "cudaMemsetAsync(conv2d_grad_weight workspace)");
      p.out = ws.get();
      dispatch_float(a, op, [&](auto t) { launch_simt<typename decltype(t)::type, GradWeightOp>(p, stream); });
      grad_weight_finish_kernel<<<grid_1d(total, 256), 256, 0, stream>>>(
          g, reinterpret_cast<const float*>(ws.get()), reinterpret_cast<void*>(a.w), a.out_dtype, total);
      check_launch("grad_weight_finish_kernel");
      return "conv2d_grad_weight_simt_64x64x16_split" + std::to_string(p.splits);
    }
  }
  dispatch_float(a, op, [&](auto t) {
    using T = typename decltype(t)::type;
    grad_weight_generic_kernel<T><<<unsigned(std::min<int64_t>(total, int64_t(1) << 20)), 256, 0, stream>>>(
        g, reinterpret_cast<const T*>(a.x), reinterpret_cast<const T*>(a.y), reinterpret_cast<void*>(a.w),
        a.out_dtype, total);
    check_launch("grad_weight_generic_kernel");
  });
  return "conv2d_grad_weight_generic";
}

}  // namespace lepton
