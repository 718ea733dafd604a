// Pieces shared by the convolution kernels: the arithmetic of one multiply-add for
// each accumulator type, the bias read, and the host entry points of each family
// for the dispatcher (conv2d_dispatch.cu).
#pragma once
#include <cstdint>
#include <string>
#include "cuda/check.cuh"
#include "cuda/conv2d_api.h"
#include "cuda/epilogue.cuh"
#include "cuda/matmul_common.cuh"  // dtype_size, tile_coords

namespace lepton {

// acc + x * w. Integer accumulation wraps modulo 2^32, done in unsigned arithmetic
// so that the wrap is defined behaviour.
template <typename TIn>
__device__ __forceinline__ float conv_mac(float acc, TIn x, TIn w) {
  return fmaf(to_float(x), to_float(w), acc);
}
__device__ __forceinline__ int32_t conv_mac(int32_t acc, int8_t x, int8_t w) {
  return int32_t(uint32_t(acc) + uint32_t(int32_t(x) * int32_t(w)));
}

// Bias of output channel `oc`: float outputs accept a bias in f32, f16 or bf16.
__device__ __forceinline__ float conv_bias(const void* bias, DType dt, int64_t oc, float) {
  switch (dt) {
    case DType::f16: return __half2float(static_cast<const __half*>(bias)[oc]);
    case DType::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[oc]);
    default: return static_cast<const float*>(bias)[oc];
  }
}
__device__ __forceinline__ int32_t conv_bias(const void* bias, DType, int64_t oc, int32_t) {
  return static_cast<const int32_t*>(bias)[oc];
}

// bias + activation + cast of one accumulator.
template <typename TOut, typename TAcc>
__device__ __forceinline__ TOut conv_epilogue(TAcc v, const void* bias, DType bias_dtype, int64_t oc,
                                              Activation act) {
  if (bias) {
    const TAcc b = conv_bias(bias, bias_dtype, oc, TAcc(0));
    if constexpr (std::is_integral<TAcc>::value) v = int32_t(uint32_t(v) + uint32_t(b));
    else v += b;
  }
  return from_acc<TOut>(apply_activation(v, act));
}

// ---- host entry points of the kernel families ---------------------------------------
// Each one launches on args.stream and returns its kernel's name; the preconditions
// are the dispatcher's job (stated next to each).

// conv2d_generic.cu: any arguments.
std::string conv2d_generic(const Conv2dArgs& a);

// conv2d_depthwise.cu: groups == C == OC (one input channel per output channel), x and
// y with unit channel stride, 16-byte vectors of channels (C, the other strides and the
// bases aligned to 16 bytes of the input type). depthwise_vec_ok() checks exactly that.
bool depthwise_vec_ok(const Conv2dArgs& a);
std::string conv2d_depthwise_nhwc(const Conv2dArgs& a);

// conv2d_layout.cu: dst[n][h][w][c] (contiguous) = src(n, c, h, w) with element strides
// s, for elements of elem_bytes (1, 2 or 4). Also turns OIHW filters into OHWI.
void to_channels_last(const void* src, void* dst, int64_t N, int64_t C, int64_t H, int64_t W,
                      const int64_t (&s)[4], int elem_bytes, std::uintptr_t stream);

// conv2d_igemm_sm80.cu: f16/bf16 (-> same or f32) and i8 (-> i32) on sm_80+; x with
// unit channel stride, w in OHWI order (unit stride along C/groups), C/groups a
// multiple of 16 bytes of the input type, x/w strides and bases 16-byte aligned,
// N*OH*OW, H, W and KH*KW*C/groups below 2^31, groups <= 65535.
std::string conv2d_igemm_sm80(const Conv2dArgs& a);

}  // namespace lepton
