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

// ---- gradients of conv2d (conv2d_grad.cu) ----------------------------------------
// The same problem description as the forward convolution y = conv2d(x, w), the
// pointers taking the gradients' roles; no bias and no activation (args.bias must be 0,
// args.activation none). in_dtype is the operands' dtype (f32, f16 or bf16, float32
// accumulation), out_dtype the result's (the same or f32). args.kernel is not read.
//   generic  direct: one thread per dx element / one block per dw element, any case
//   simt     implicit GEMM tiles on the CUDA cores (float32 FMA); the dispatcher takes
//            it when the GEMM is wide enough to fill the tiles
// auto picks (LEPTON_ACCEL_CONV_GRAD_KERNEL may name a family); simt falls back to
// generic when the problem's indices do not fit its 32-bit decompositions.
enum class ConvGradKernel : int { auto_ = 0, generic = 1, simt = 2 };

// dx(n, c, h, w) = sum over (oc, kh, kw) of dy(n, oc, oh, ow) * w(oc, c mod C/g, kh, kw),
// where h = oh*stride_h - pad_top + kh*dil_h and w likewise. Reads args.y (dy) and
// args.w, writes args.x (dx, every element).
std::string conv2d_grad_input(const Conv2dArgs& args, ConvGradKernel kernel);
// dw(oc, c, kh, kw) = sum over (n, oh, ow) of dy(n, oc, oh, ow) * x(n, g*C/g + c, h, w).
// Reads args.x and args.y (dy), writes args.w (dw, every element).
std::string conv2d_grad_weight(const Conv2dArgs& args, ConvGradKernel kernel);

}  // namespace lepton
