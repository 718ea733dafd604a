// Host-side interface of the CUDA 2-D convolution kernels, in plain C++ so that the
// pybind11 bindings compile without nvcc. Failures throw lepton::CudaError.
#pragma once
#include <cstdint>
#include <string>
#include "cuda/api.h"

namespace lepton {

// Which kernel family to prefer. auto_ picks the fastest that can run the problem
// (the environment variable LEPTON_ACCEL_CONV_KERNEL may name one); a named family
// that cannot run the problem falls back (wgmma -> mma -> generic, depthwise ->
// generic), and the returned name says what ran.
//   generic    direct convolution, any case
//   depthwise  one input channel per group (groups == C), any channel multiplier
//   mma        NHWC implicit GEMM on tensor cores (mma.sync, sm_80+), 16/8-bit types
//   wgmma      NHWC implicit GEMM with wgmma (sm_90a), f16/bf16, C/groups % 64 == 0
enum class ConvKernel : int { auto_ = 0, generic = 1, depthwise = 2, mma = 3, wgmma = 4 };

// y = act(conv2d(x, w) + bias), PyTorch's cross-correlation. Every tensor is
// described by its logical dimensions and element strides, so NCHW, NHWC and
// strided views need no copies on the generic paths:
//   x(n, c, h, w)       = x[n*xs[0] + c*xs[1] + h*xs[2] + w*xs[3]]
//   w(oc, c/g, kh, kw)  = w[oc*ws[0] + c*ws[1] + kh*ws[2] + kw*ws[3]]
//   y(n, oc, oh, ow)    = y[n*ys[0] + oc*ys[1] + oh*ys[2] + ow*ys[3]]
// bias: OC values of bias_dtype (the output dtype, or f32 for float outputs).
struct Conv2dArgs {
  std::uintptr_t x = 0, w = 0, y = 0, bias = 0;
  std::int64_t N = 0, C = 0, H = 0, W = 0;   // input
  std::int64_t OC = 0, KH = 0, KW = 0;       // filter
  std::int64_t OH = 0, OW = 0;               // output (the caller's, checked here)
  std::int64_t stride_h = 1, stride_w = 1, pad_top = 0, pad_left = 0;
  std::int64_t dil_h = 1, dil_w = 1, groups = 1;
  std::int64_t xs[4] = {0, 0, 0, 0}, ws[4] = {0, 0, 0, 0}, ys[4] = {0, 0, 0, 0};
  DType in_dtype = DType::f32, out_dtype = DType::f32, bias_dtype = DType::f32;
  Activation activation = Activation::none;
  std::uintptr_t stream = 0;
  ConvKernel kernel = ConvKernel::auto_;
};

// Runs the best kernel for the device and arguments, on args.stream; returns the
// kernel's name ("empty" when the output has no elements).
std::string conv2d(const Conv2dArgs& args);

}  // namespace lepton
