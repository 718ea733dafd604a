// CPU depthwise convolution (one filter per channel), NHWC, contiguous buffers:
//   x (N, H, W, C), w (KH, KW, C), y (N, OH, OW, C).
// The bottom/right padding is implied by OH/OW (the caller checked them). Bias and ReLU
// are applied to each output row while it is still in cache.
#pragma once
#include <cstdint>

namespace lepton {

struct DepthwiseArgs {
  int64_t N = 0, H = 0, W = 0, C = 0, KH = 0, KW = 0, OH = 0, OW = 0;
  int64_t stride_h = 1, stride_w = 1, pad_top = 0, pad_left = 0, dil_h = 1, dil_w = 1;
  int64_t max_threads = 0;  // 0: every hardware thread
  const void* bias = nullptr;  // C values of the accumulator type, added to every pixel
  bool relu = false;           // then max(0, .) (on the signed value for int32)
};

// float32 in, float32 accumulation and out.
void depthwise_conv2d_nhwc(const DepthwiseArgs& a, const float* x, const float* w, float* y);
// int32 in (widened int8/int16), sums wrapping modulo 2**32.
void depthwise_conv2d_nhwc(const DepthwiseArgs& a, const int32_t* x, const int32_t* w, int32_t* y);

}  // namespace lepton
