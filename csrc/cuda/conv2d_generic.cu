// Generic direct convolution: one thread per output element, any stride, padding,
// dilation, groups, layout (element strides) and dtype. The always-correct path that
// the fast kernels fall back to.
#include <algorithm>
#include <string>
#include "cuda/conv2d_common.cuh"

namespace lepton {
namespace {

struct GenericParams {
  const void* x; const void* w; void* y; const void* bias;
  int64_t N, C, H, W, OC, KH, KW, OH, OW;
  int64_t sh, sw, pt, pl, dh, dw, Cg, OCg;
  int64_t xs0, xs1, xs2, xs3, ws0, ws1, ws2, ws3, ys0, ys1, ys2, ys3;
  int64_t total;
  DType bias_dtype;
  Activation act;
  bool oc_fast;  // consecutive threads walk output channels (else output columns)
};

template <typename TIn, typename TAcc, typename TOut>
__global__ void __launch_bounds__(256) conv2d_generic_kernel(const GenericParams p) {
  const TIn* __restrict__ X = static_cast<const TIn*>(p.x);
  const TIn* __restrict__ Wt = static_cast<const TIn*>(p.w);
  TOut* __restrict__ Y = static_cast<TOut*>(p.y);
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < p.total; idx += step) {
    int64_t n, oc, oh, ow, r = idx;
    if (p.oc_fast) {
      oc = r % p.OC; r /= p.OC;
      ow = r % p.OW; r /= p.OW;
      oh = r % p.OH; n = r / p.OH;
    } else {
      ow = r % p.OW; r /= p.OW;
      oh = r % p.OH; r /= p.OH;
      oc = r % p.OC; n = r / p.OC;
    }
    const int64_t c0 = (oc / p.OCg) * p.Cg;
    const TIn* xb = X + n * p.xs0 + c0 * p.xs1;
    const TIn* wb = Wt + oc * p.ws0;
    const int64_t ih0 = oh * p.sh - p.pt, iw0 = ow * p.sw - p.pl;
    TAcc acc = TAcc(0);
    for (int64_t kh = 0; kh < p.KH; ++kh) {
      const int64_t ih = ih0 + kh * p.dh;
      if (ih < 0 || ih >= p.H) continue;
      for (int64_t kw = 0; kw < p.KW; ++kw) {
        const int64_t iw = iw0 + kw * p.dw;
        if (iw < 0 || iw >= p.W) continue;
        const TIn* xp = xb + ih * p.xs2 + iw * p.xs3;
        const TIn* wp = wb + kh * p.ws2 + kw * p.ws3;
        for (int64_t c = 0; c < p.Cg; ++c) acc = conv_mac(acc, xp[c * p.xs1], wp[c * p.ws1]);
      }
    }
    Y[n * p.ys0 + oc * p.ys1 + oh * p.ys2 + ow * p.ys3] =
        conv_epilogue<TOut>(acc, p.bias, p.bias_dtype, oc, p.act);
  }
}

template <typename TIn, typename TAcc, typename TOut>
void launch(const GenericParams& p, cudaStream_t stream) {
  constexpr int threads = 256;
  const int64_t blocks = std::min<int64_t>((p.total + threads - 1) / threads, int64_t(1) << 20);
  conv2d_generic_kernel<TIn, TAcc, TOut><<<unsigned(blocks), threads, 0, stream>>>(p);
  check_launch("conv2d_generic_kernel");
}

}  // namespace

std::string conv2d_generic(const Conv2dArgs& a) {
  GenericParams p;
  p.x = reinterpret_cast<const void*>(a.x);
  p.w = reinterpret_cast<const void*>(a.w);
  p.y = reinterpret_cast<void*>(a.y);
  p.bias = reinterpret_cast<const void*>(a.bias);
  p.N = a.N; p.C = a.C; p.H = a.H; p.W = a.W; p.OC = a.OC; p.KH = a.KH; p.KW = a.KW;
  p.OH = a.OH; p.OW = a.OW;
  p.sh = a.stride_h; p.sw = a.stride_w; p.pt = a.pad_top; p.pl = a.pad_left;
  p.dh = a.dil_h; p.dw = a.dil_w;
  p.Cg = a.C / a.groups; p.OCg = a.OC / a.groups;
  p.xs0 = a.xs[0]; p.xs1 = a.xs[1]; p.xs2 = a.xs[2]; p.xs3 = a.xs[3];
  p.ws0 = a.ws[0]; p.ws1 = a.ws[1]; p.ws2 = a.ws[2]; p.ws3 = a.ws[3];
  p.ys0 = a.ys[0]; p.ys1 = a.ys[1]; p.ys2 = a.ys[2]; p.ys3 = a.ys[3];
  p.total = a.N * a.OC * a.OH * a.OW;
  p.bias_dtype = a.bias_dtype;
  p.act = a.activation;
  p.oc_fast = a.ys[1] == 1;  // NHWC-like output: neighbours share the pixel
  const cudaStream_t s = as_stream(a.stream);
  dispatch_element_types(a.in_dtype, a.out_dtype, "conv2d", [&](auto in, auto acc, auto out) {
    launch<typename decltype(in)::type, typename decltype(acc)::type,
           typename decltype(out)::type>(p, s);
  });
  return "conv2d_generic";
}

}  // namespace lepton
