// Depthwise convolution (groups == C == OC) over channels-last tensors: each thread
// computes one output pixel for a 16-byte vector of channels, so every load and store
// of x and y is a full 16-byte access and a warp covers a contiguous run of channels.
// Filter taps are read per channel through the read-only cache (any filter strides).
#include <algorithm>
#include <string>
#include "cuda/conv2d_common.cuh"

namespace lepton {
namespace {

struct DwParams {
  const void* x; const void* w; void* y; const void* bias;
  int64_t C, H, W, KH, KW, OH, OW;
  int64_t sh, sw, pt, pl, dh, dw;
  int64_t xs0, xs2, xs3, ws0, ws2, ws3, ys0, ys2, ys3;  // channel strides are 1
  int64_t total;  // N * OH * OW * (C / VEC)
  DType bias_dtype;
  Activation act;
};

template <typename TIn, typename TAcc, typename TOut>
__global__ void __launch_bounds__(256) conv2d_depthwise_kernel(const DwParams p) {
  constexpr int VEC = 16 / int(sizeof(TIn));
  constexpr int OUT_BYTES = VEC * int(sizeof(TOut));  // 16, 32 or 64
  static_assert(OUT_BYTES % 16 == 0, "output vector must be whole 16-byte chunks");
  const TIn* __restrict__ X = static_cast<const TIn*>(p.x);
  const TIn* __restrict__ Wt = static_cast<const TIn*>(p.w);
  const int64_t CV = p.C / VEC;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < p.total; idx += step) {
    int64_t r = idx;
    const int64_t c = (r % CV) * VEC; r /= CV;
    const int64_t ow = r % p.OW; r /= p.OW;
    const int64_t oh = r % p.OH;
    const int64_t n = r / p.OH;
    TAcc acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = TAcc(0);
    const int64_t ih0 = oh * p.sh - p.pt, iw0 = ow * p.sw - p.pl;
    const TIn* xb = X + n * p.xs0 + c;
    const TIn* wb = Wt + c * p.ws0;
    for (int64_t kh = 0; kh < p.KH; ++kh) {
      const int64_t ih = ih0 + kh * p.dh;
      if (ih < 0 || ih >= p.H) continue;
      for (int64_t kw = 0; kw < p.KW; ++kw) {
        const int64_t iw = iw0 + kw * p.dw;
        if (iw < 0 || iw >= p.W) continue;
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(xb + ih * p.xs2 + iw * p.xs3));
        const TIn* xv = reinterpret_cast<const TIn*>(&raw);
        const TIn* wp = wb + kh * p.ws2 + kw * p.ws3;
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] = conv_mac(acc[v], xv[v], __ldg(wp + v * p.ws0));
      }
    }
    uint4 out[OUT_BYTES / 16];
    TOut* ov = reinterpret_cast<TOut*>(out);
#pragma unroll
    for (int v = 0; v < VEC; ++v) ov[v] = conv_epilogue<TOut>(acc[v], p.bias, p.bias_dtype, c + v, p.act);
    uint4* dst = reinterpret_cast<uint4*>(static_cast<TOut*>(p.y) + n * p.ys0 + oh * p.ys2 + ow * p.ys3 + c);
#pragma unroll
    for (int i = 0; i < OUT_BYTES / 16; ++i) dst[i] = out[i];
  }
}

template <typename TIn, typename TAcc, typename TOut>
void launch(const DwParams& p, cudaStream_t stream) {
  constexpr int threads = 256;
  const int64_t blocks = std::min<int64_t>((p.total + threads - 1) / threads, int64_t(1) << 20);
  conv2d_depthwise_kernel<TIn, TAcc, TOut><<<unsigned(blocks), threads, 0, stream>>>(p);
  check_launch("conv2d_depthwise_kernel");
}

bool aligned16(std::uintptr_t p) { return p % 16 == 0; }

}  // namespace

bool depthwise_vec_ok(const Conv2dArgs& a) {
  if (a.groups != a.C || a.OC != a.C) return false;
  const int64_t in = int64_t(dtype_size(a.in_dtype));
  const int64_t vec = 16 / in;
  if (a.xs[1] != 1 || a.ys[1] != 1 || a.C % vec != 0) return false;
  for (int i : {0, 2, 3})
    if (a.xs[i] % vec != 0 || a.ys[i] % vec != 0) return false;
  // y's vectors are VEC elements of the output type: at least 16 bytes, so a 16-byte
  // aligned base and element offsets in multiples of VEC keep every store aligned.
  return aligned16(a.x) && aligned16(a.y);
}

std::string conv2d_depthwise_nhwc(const Conv2dArgs& a) {
  DwParams p;
  p.x = reinterpret_cast<const void*>(a.x);
  p.w = reinterpret_cast<const void*>(a.w);
  p.y = reinterpret_cast<void*>(a.y);
  p.bias = reinterpret_cast<const void*>(a.bias);
  p.C = a.C; p.H = a.H; p.W = a.W; p.KH = a.KH; p.KW = a.KW; p.OH = a.OH; p.OW = a.OW;
  p.sh = a.stride_h; p.sw = a.stride_w; p.pt = a.pad_top; p.pl = a.pad_left;
  p.dh = a.dil_h; p.dw = a.dil_w;
  p.xs0 = a.xs[0]; p.xs2 = a.xs[2]; p.xs3 = a.xs[3];
  p.ws0 = a.ws[0]; p.ws2 = a.ws[2]; p.ws3 = a.ws[3];
  p.ys0 = a.ys[0]; p.ys2 = a.ys[2]; p.ys3 = a.ys[3];
  const int vec = 16 / int(dtype_size(a.in_dtype));
  p.total = a.N * a.OH * a.OW * (a.C / vec);
  p.bias_dtype = a.bias_dtype;
  p.act = a.activation;
  const cudaStream_t s = as_stream(a.stream);
  dispatch_element_types(a.in_dtype, a.out_dtype, "conv2d", [&](auto in, auto acc, auto out) {
    launch<typename decltype(in)::type, typename decltype(acc)::type,
           typename decltype(out)::type>(p, s);
  });
  return "conv2d_depthwise_nhwc_v" + std::to_string(vec);
}

}  // namespace lepton
