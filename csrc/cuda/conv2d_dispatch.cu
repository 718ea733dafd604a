// Chooses the convolution kernel for the device and the arguments.
// Order of preference: depthwise (channels-last vectors, groups == C == OC) ->
// Hopper implicit GEMM (wgmma, compute capability 9.0 with sm_90a code in the build,
// f16/bf16, C/groups a multiple of 64) -> tensor-core implicit GEMM (mma.sync, sm_80+,
// 16/8-bit types, C/groups a multiple of 16 bytes) -> generic direct convolution
// (everything else). Before either implicit GEMM, x and w are rewritten channels-last
// into a stream-ordered workspace when they are not already in the layout it reads.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include "cuda/conv2d_common.cuh"
#include "cuda/conv2d_wgmma_sm90.h"
#include "cuda/kernel_family.h"

namespace lepton {

DeviceInfo device_info() {
  static std::mutex mu;
  static std::unordered_map<int, DeviceInfo> cache;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(dev);
  if (it != cache.end()) return it->second;
  int major = 0, minor = 0, pools = 0, sms = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
             "cudaDeviceGetAttribute(major)");
  check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev),
             "cudaDeviceGetAttribute(minor)");
  check_cuda(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev),
             "cudaDeviceGetAttribute(memory pools)");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
             "cudaDeviceGetAttribute(multiprocessors)");
  DeviceInfo info;
  info.cc = major * 10 + minor;
  info.mem_pools = pools != 0;
  info.sm_count = sms;
  // sm_90a machine code runs on 9.0 parts only.
  info.wgmma = info.cc == 90 && conv2d_wgmma_sm90_compiled();
  cache.emplace(dev, info);
  return info;
}

namespace {

bool mma_dtype_ok(const Conv2dArgs& a) {
  switch (a.in_dtype) {
    case DType::f16: return a.out_dtype == DType::f16 || a.out_dtype == DType::f32;
    case DType::bf16: return a.out_dtype == DType::bf16 || a.out_dtype == DType::f32;
    case DType::i8: return a.out_dtype == DType::i32;
    default: return false;
  }
}

constexpr int64_t kIntLimit = int64_t(1) << 30;

// What the tensor-core kernel needs beyond the operand layouts (which the dispatcher
// can establish with a layout change): dtype, device, C/groups in whole 16-byte
// chunks, and every index the kernel keeps in 32 bits well inside int range.
bool mma_ok(const Conv2dArgs& a, const DeviceInfo& dev) {
  if (!mma_dtype_ok(a) || dev.cc < 80) return false;
  const int64_t vec = 16 / int64_t(dtype_size(a.in_dtype));
  const int64_t Cg = a.C / a.groups, OCg = a.OC / a.groups;
  if (Cg == 0 || Cg % vec != 0) return false;
  if (a.groups > 65535) return false;
  const int64_t ext_h = a.dil_h * (a.KH - 1) + 1, ext_w = a.dil_w * (a.KW - 1) + 1;
  for (int64_t v : {a.N * a.OH * a.OW, a.H, a.W, OCg, a.KH * a.KW * Cg, ext_h, ext_w,
                    a.stride_h * a.OH, a.stride_w * a.OW, a.pad_top, a.pad_left})
    if (v >= kIntLimit) return false;
  return true;
}

bool chunked(std::uintptr_t ptr, const int64_t (&s)[4], int64_t vec) {
  return s[1] == 1 && s[0] % vec == 0 && s[2] % vec == 0 && s[3] % vec == 0 && ptr % 16 == 0;
}

// Whole filter rows contiguous: w(oc, kh, kw, c) at oc*ws[0] + (kh*KW + kw)*Cg + c, the
// K-major GEMM operand the wgmma kernel reads by TMA (16-byte aligned base and row
// stride, rows that do not overlap). PyTorch channels_last filters and the transform's
// output are like that. (Strides of extent-1 dimensions were normalised to 0 / 1.)
bool w_rows_dense(const Conv2dArgs& a) {
  const int64_t Cg = a.C / a.groups, K = a.KH * a.KW * Cg;
  return a.ws[1] == 1 && (a.KW == 1 || a.ws[3] == Cg) && (a.KH == 1 || a.ws[2] == a.KW * Cg) &&
         (a.OC == 1 || (a.ws[0] % 8 == 0 && a.ws[0] >= K)) && a.w % 16 == 0;
}

// The Hopper kernel's own conditions on top of mma_ok: device and build, 16-bit
// types, 64-channel k-steps (one filter tap per step).
bool wgmma_ok(const Conv2dArgs& a, const DeviceInfo& dev) {
  if (!dev.wgmma || (a.in_dtype != DType::f16 && a.in_dtype != DType::bf16)) return false;
  if (!mma_ok(a, dev)) return false;
  return (a.C / a.groups) % 64 == 0;
}

// x and w in the layouts an implicit-GEMM kernel reads: x channels-last in 16-byte
// chunks; w in 16-byte chunks along C (mma.sync) or with whole contiguous rows
// (wgmma, dense_w). Operands already like that are used in place; the others are
// rewritten into a workspace that lives, stream-ordered, as long as this object.
class ImplicitGemmOperands {
 public:
  ImplicitGemmOperands(const Conv2dArgs& a, const DeviceInfo& dev, bool dense_w) : args_(a) {
    const int elem = int(dtype_size(a.in_dtype));
    const int64_t vec = 16 / elem;
    const int64_t Cg = a.C / a.groups;
    const bool x_ok = chunked(a.x, a.xs, vec);
    const bool w_ok = dense_w ? w_rows_dense(a) : chunked(a.w, a.ws, vec);
    const std::size_t x_bytes = x_ok ? 0 : std::size_t(a.N * a.H * a.W * a.C) * elem;
    const std::size_t x_pad = (x_bytes + 255) / 256 * 256;
    const std::size_t w_bytes = w_ok ? 0 : std::size_t(a.OC * a.KH * a.KW * Cg) * elem;
    ws_ = std::make_unique<Workspace>(x_pad + w_bytes, as_stream(a.stream), dev.mem_pools);
    if (!x_ok) {
      to_channels_last(reinterpret_cast<const void*>(a.x), ws_->get(), a.N, a.C, a.H, a.W, a.xs, elem,
                       a.stream);
      args_.x = reinterpret_cast<std::uintptr_t>(ws_->get());
      const int64_t s[4] = {a.H * a.W * a.C, 1, a.W * a.C, a.C};
      std::memcpy(args_.xs, s, sizeof s);
      suffix_ += "+x_to_nhwc";
    }
    if (!w_ok) {
      to_channels_last(reinterpret_cast<const void*>(a.w), ws_->get() + x_pad, a.OC, Cg, a.KH, a.KW, a.ws,
                       elem, a.stream);
      args_.w = reinterpret_cast<std::uintptr_t>(ws_->get() + x_pad);
      const int64_t s[4] = {a.KH * a.KW * Cg, 1, a.KW * Cg, Cg};
      std::memcpy(args_.ws, s, sizeof s);
      suffix_ += "+w_to_ohwi";
    }
  }
  const Conv2dArgs& args() const { return args_; }
  const std::string& suffix() const { return suffix_; }

 private:
  Conv2dArgs args_;
  std::string suffix_;
  std::unique_ptr<Workspace> ws_;
};

std::string run_mma(const Conv2dArgs& a, const DeviceInfo& dev) {
  ImplicitGemmOperands ops(a, dev, false);
  return conv2d_igemm_sm80(ops.args()) + ops.suffix();
}

// The operands the wgmma kernel reads (dense filter rows) also satisfy the mma.sync
// kernel, so when the driver refuses the filter's tensor map the same operands go there.
std::string run_wgmma(const Conv2dArgs& a, const DeviceInfo& dev) {
  ImplicitGemmOperands ops(a, dev, true);
  std::string name = conv2d_wgmma_sm90(ops.args(), dev.sm_count);
  if (name.empty()) name = conv2d_igemm_sm80(ops.args());
  return name + ops.suffix();
}

bool bias_dtype_ok(DType out, DType bias) {
  if (out == DType::i32) return bias == DType::i32;
  return bias == DType::f32 || bias == DType::f16 || bias == DType::bf16;
}

}  // namespace

std::string conv2d(const Conv2dArgs& in) {
  Conv2dArgs a = in;
  check_geometry(a, "conv2d");
  if (!(a.in_dtype == DType::f32 && a.out_dtype == DType::f32) && !mma_dtype_ok(a))
    throw CudaError("conv2d: unsupported dtype combination");
  if (a.bias && !bias_dtype_ok(a.out_dtype, a.bias_dtype))
    throw CudaError("conv2d: bias dtype does not fit the output dtype");
  if (a.N == 0 || a.OC == 0 || a.OH == 0 || a.OW == 0) return "empty";
  normalise_strides(a);

  // A forced family that cannot run the problem falls down the chain
  // wgmma -> mma -> generic; depthwise -> generic.
  const ConvKernel want = requested_kernel(a.kernel);
  if (want == ConvKernel::generic) return conv2d_generic(a);
  if ((want == ConvKernel::auto_ || want == ConvKernel::depthwise) && depthwise_vec_ok(a))
    return conv2d_depthwise_nhwc(a);
  if (want == ConvKernel::auto_ || want == ConvKernel::wgmma || want == ConvKernel::mma) {
    const DeviceInfo dev = device_info();
    if (want != ConvKernel::mma && wgmma_ok(a, dev)) return run_wgmma(a, dev);
    if (mma_ok(a, dev)) return run_mma(a, dev);
  }
  return conv2d_generic(a);
}

}  // namespace lepton
