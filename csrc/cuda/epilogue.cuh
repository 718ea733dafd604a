// Element types and the fused epilogue (bias, activation, output cast) shared by
// the matmul and convolution kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <type_traits>
#include <string>
#include "cuda/api.h"

namespace lepton {

template <typename T> __device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T from_float(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
__device__ __forceinline__ float gelu_tanh(float x) {
  const float k0 = 0.7978845608028654f, k1 = 0.044715f;
  return 0.5f * x * (1.0f + tanhf(k0 * (x + k1 * x * x * x)));
}

// ReLU keeps NaN (as np.maximum and PyTorch do): only values below zero become zero.
__device__ __forceinline__ float apply_activation(float x, Activation act) {
  switch (act) {
    case Activation::relu: return x < 0.0f ? 0.0f : x;
    case Activation::gelu_tanh: return gelu_tanh(x);
    default: return x;
  }
}

// Integer path: bias and ReLU stay exact in int32; GELU is not offered for int8.
__device__ __forceinline__ int32_t apply_activation(int32_t x, Activation act) {
  return (act == Activation::relu && x < 0) ? 0 : x;
}

// a + b in the accumulator type. int32 sums wrap modulo 2**32 by contract, and signed
// overflow is undefined in C++, so they are added as uint32.
__device__ __forceinline__ float wrap_add(float a, float b) { return a + b; }
__device__ __forceinline__ int32_t wrap_add(int32_t a, int32_t b) {
  return int32_t(uint32_t(a) + uint32_t(b));
}

}  // namespace lepton

namespace lepton {

// Loads an element into the accumulator type: floats go through float, integers stay integers.
template <typename TIn, typename TAcc>
__device__ __forceinline__ TAcc to_float_or_int(TIn v) {
  if constexpr (std::is_integral<TAcc>::value) return static_cast<TAcc>(v);
  else return to_float(v);
}

template <typename TOut, typename TAcc>
__device__ __forceinline__ TOut from_acc(TAcc v) {
  if constexpr (std::is_integral<TAcc>::value) return static_cast<TOut>(v);
  else return from_float<TOut>(v);
}

}  // namespace lepton

namespace lepton {

// Names an element type for a generic lambda: f(ElementType<float>{}, ...).
template <typename T> struct ElementType { using type = T; };

// Calls f(ElementType<TIn>, ElementType<TAcc>, ElementType<TOut>) for the operand/output
// dtype pairs the kernels support (the API's dtype rules); throws for any other pair.
template <typename F>
void dispatch_element_types(DType in, DType out, const char* op, F&& f) {
  using DT = DType;
  using f32 = ElementType<float>;
  if (in == DT::f32 && out == DT::f32) f(f32{}, f32{}, f32{});
  else if (in == DT::f16 && out == DT::f16) f(ElementType<__half>{}, f32{}, ElementType<__half>{});
  else if (in == DT::f16 && out == DT::f32) f(ElementType<__half>{}, f32{}, f32{});
  else if (in == DT::bf16 && out == DT::bf16)
    f(ElementType<__nv_bfloat16>{}, f32{}, ElementType<__nv_bfloat16>{});
  else if (in == DT::bf16 && out == DT::f32) f(ElementType<__nv_bfloat16>{}, f32{}, f32{});
  else if (in == DT::i8 && out == DT::i32)
    f(ElementType<int8_t>{}, ElementType<int32_t>{}, ElementType<int32_t>{});
  else throw CudaError(std::string(op) + ": unsupported dtype combination");
}

}  // namespace lepton
