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

// ---- the device and per-call memory ---------------------------------------------------
// What the dispatchers ask of the current device, queried once per device
// (conv2d_dispatch.cu).
struct DeviceInfo {
  int cc = 0;
  bool mem_pools = false;
  int sm_count = 0;
  bool wgmma = false;  // cc 9.0 and this build holds the kernel's sm_90a code
};

DeviceInfo device_info();

// Device memory for one call, ordered on the call's stream: freed on that stream
// after the kernels that use it, so the caller's stream never waits for the host.
class Workspace {
 public:
  Workspace(std::size_t bytes, cudaStream_t stream, bool pools) : stream_(stream), pools_(pools) {
    if (bytes == 0) return;
    if (pools_) check_cuda(cudaMallocAsync(&ptr_, bytes, stream_), "cudaMallocAsync(conv2d workspace)");
    else check_cuda(cudaMalloc(&ptr_, bytes), "cudaMalloc(conv2d workspace)");
  }
  ~Workspace() {
    if (!ptr_) return;
    if (pools_) {
      cudaFreeAsync(ptr_, stream_);
    } else {
      cudaStreamSynchronize(stream_);
      cudaFree(ptr_);
    }
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  char* get() const { return static_cast<char*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
  bool pools_;
};

// ---- argument checks shared by the convolution and its gradients ----------------------
// Sizes, kernel, stride, dilation, groups and OH/OW; every extent the kernels form from
// them stays far inside int64. Throws CudaError("<op>: ...").
inline void check_geometry(const Conv2dArgs& a, const char* op) {
  const std::string name(op);
  for (int64_t v : {a.N, a.C, a.H, a.W, a.OC, a.OH, a.OW, a.pad_top, a.pad_left})
    if (v < 0) throw CudaError(name + ": negative size or padding");
  if (a.KH < 1 || a.KW < 1 || a.stride_h < 1 || a.stride_w < 1 || a.dil_h < 1 || a.dil_w < 1 || a.groups < 1)
    throw CudaError(name + ": kernel size, stride, dilation and groups must be at least 1");
  if (a.C % a.groups != 0 || a.OC % a.groups != 0)
    throw CudaError(name + ": groups must divide the input and output channels");
  // Below 2**62 each (and their products with the output extent) leave int64 headroom.
  constexpr int64_t kLimit = int64_t(1) << 62;
  auto small = [&](int64_t v, int64_t times) { return times <= 1 || v <= kLimit / times; };
  for (int64_t v : {a.N, a.C, a.H, a.W, a.OC, a.OH, a.OW, a.KH, a.KW, a.pad_top, a.pad_left})
    if (v > (int64_t(1) << 40)) throw CudaError(name + ": a size or padding beyond 2**40");
  if (!small(a.stride_h, a.OH) || !small(a.stride_w, a.OW) || !small(a.dil_h, a.KH) || !small(a.dil_w, a.KW))
    throw CudaError(name + ": stride or dilation beyond the 64-bit index range");
  // The bottom/right padding is implied by OH/OW; like the top/left one it may be at
  // most the dilated kernel extent minus one, which bounds OH/OW on both sides.
  auto out_ok = [](int64_t out, int64_t in, int64_t pad, int64_t k, int64_t dil, int64_t stride) {
    const int64_t ext = dil * (k - 1) + 1, span = in + pad;
    const int64_t lo = span >= ext ? (span - ext) / stride + 1 : 1, hi = (span - 1) / stride + 1;
    return out == 0 || (span >= 1 && out >= lo && out <= hi);
  };
  if (!out_ok(a.OH, a.H, a.pad_top, a.KH, a.dil_h, a.stride_h) ||
      !out_ok(a.OW, a.W, a.pad_left, a.KW, a.dil_w, a.stride_w))
    throw CudaError(name + ": OH/OW do not follow from the input size, kernel, stride, dilation and padding");
}

// The stride of a dimension of extent 1 is never used: give it a value that the layout
// checks accept (1 for channels, 0 elsewhere), as DLPack producers differ.
inline void normalise_strides(Conv2dArgs& a) {
  const int64_t xd[4] = {a.N, a.C, a.H, a.W}, wd[4] = {a.OC, a.C / a.groups, a.KH, a.KW},
                yd[4] = {a.N, a.OC, a.OH, a.OW};
  auto one = [](int64_t (&s)[4], const int64_t (&dims)[4]) {
    for (int i = 0; i < 4; ++i)
      if (dims[i] == 1) s[i] = (i == 1) ? 1 : 0;
  };
  one(a.xs, xd);
  one(a.ws, wd);
  one(a.ys, yd);
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
