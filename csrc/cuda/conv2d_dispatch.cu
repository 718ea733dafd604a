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
namespace {

struct DeviceInfo {
  int cc = 0;
  bool mem_pools = false;
  int sm_count = 0;
  bool wgmma = false;  // cc 9.0 and this build holds the kernel's sm_90a code
};

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

// The stride of a dimension of extent 1 is never used: give it a value that the
// layout checks accept (1 for channels, 0 elsewhere), as DLPack producers differ.
void normalise(int64_t (&s)[4], const int64_t (&dims)[4]) {
  for (int i = 0; i < 4; ++i)
    if (dims[i] == 1) s[i] = (i == 1) ? 1 : 0;
}

bool bias_dtype_ok(DType out, DType bias) {
  if (out == DType::i32) return bias == DType::i32;
  return bias == DType::f32 || bias == DType::f16 || bias == DType::bf16;
}

}  // namespace

std::string conv2d(const Conv2dArgs& in) {
  Conv2dArgs a = in;
  for (int64_t v : {a.N, a.C, a.H, a.W, a.OC, a.OH, a.OW, a.pad_top, a.pad_left})
    if (v < 0) throw CudaError("conv2d: negative size or padding");
  if (a.KH < 1 || a.KW < 1 || a.stride_h < 1 || a.stride_w < 1 || a.dil_h < 1 || a.dil_w < 1 ||
      a.groups < 1)
    throw CudaError("conv2d: kernel size, stride, dilation and groups must be at least 1");
  if (a.C % a.groups != 0 || a.OC % a.groups != 0)
    throw CudaError("conv2d: groups must divide the input and output channels");
  if (!(a.in_dtype == DType::f32 && a.out_dtype == DType::f32) && !mma_dtype_ok(a))
    throw CudaError("conv2d: unsupported dtype combination");
  if (a.bias && !bias_dtype_ok(a.out_dtype, a.bias_dtype))
    throw CudaError("conv2d: bias dtype does not fit the output dtype");
  // The bottom/right padding is implied by OH/OW; like the top/left one it may be at
  // most the dilated kernel extent minus one, which bounds OH/OW on both sides.
  auto out_ok = [](int64_t out, int64_t in, int64_t pad, int64_t k, int64_t dil, int64_t stride) {
    const int64_t ext = dil * (k - 1) + 1, span = in + pad;
    const int64_t lo = span >= ext ? (span - ext) / stride + 1 : 1, hi = (span - 1) / stride + 1;
    return out == 0 || (span >= 1 && out >= lo && out <= hi);
  };
  if (!out_ok(a.OH, a.H, a.pad_top, a.KH, a.dil_h, a.stride_h) ||
      !out_ok(a.OW, a.W, a.pad_left, a.KW, a.dil_w, a.stride_w))
    throw CudaError("conv2d: OH/OW do not follow from the input size, kernel, stride, dilation and padding");
  if (a.N == 0 || a.OC == 0 || a.OH == 0 || a.OW == 0) return "empty";
  {
    const int64_t xd[4] = {a.N, a.C, a.H, a.W}, wd[4] = {a.OC, a.C / a.groups, a.KH, a.KW},
                  yd[4] = {a.N, a.OC, a.OH, a.OW};
    normalise(a.xs, xd);
    normalise(a.ws, wd);
    normalise(a.ys, yd);
  }

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
