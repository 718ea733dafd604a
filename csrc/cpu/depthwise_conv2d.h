// CPU depthwise convolution (one filter per channel), NHWC, contiguous buffers:
//   x (N, H, W, C), w (KH, KW, C), y (N, OH, OW, C).
// The bottom/right padding is implied by OH/OW (the caller checked them). Bias and ReLU
// are applied to each output row while it is still in cache. An axis whose stride,
// padding and dilation do not fit 64-bit index arithmetic is given as a tap table
// instead (the binding builds it exactly, whatever the size of the parameters).
#pragma once
#include <cstdint>

namespace lepton {

struct DepthwiseArgs {
  int64_t N = 0, H = 0, W = 0, C = 0, KH = 0, KW = 0, OH = 0, OW = 0;
  int64_t stride_h = 1, stride_w = 1, pad_top = 0, pad_left = 0, dil_h = 1, dil_w = 1;
  int64_t max_threads = 0;  // 0: every hardware thread
  // Tap tables (or null): h_taps[oh*KH + kh] is the input row that output row oh reads
  // through filter row kh, -1 where it falls in the padding; w_taps[ow*KW + kw] likewise
  // for columns. With a table, that axis's stride, padding and dilation are not read.
  const int64_t* h_taps = nullptr;
  const int64_t* w_taps = nullptr;
  const void* bias = nullptr;  // C values of the accumulator type, added to every pixel
  bool relu = false;           // then max(0, .) (on the signed value for int32); NaN stays NaN
};

// float32 in, float32 accumulation and out.
void depthwise_conv2d_nhwc(const DepthwiseArgs& a, const float* x, const float* w, float* y);
// int32 in (widened int8/int16), sums wrapping modulo 2**32.
void depthwise_conv2d_nhwc(const DepthwiseArgs& a, const int32_t* x, const int32_t* w, int32_t* y);

}  // namespace lepton
