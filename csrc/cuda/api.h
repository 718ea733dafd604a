// Host-side interface of the CUDA kernels, in plain C++ so that the pybind11
// bindings compile without nvcc. Every function throws lepton::CudaError on failure.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace lepton {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- devices and memory (device.cu) -----------------------------------------
int device_count();  // 0 when no driver or no device; never throws for that
struct DeviceProps {
  std::string name;
  int major = 0, minor = 0, sm_count = 0;
  std::size_t total_memory = 0;
  int clock_khz = 0, memory_clock_khz = 0, memory_bus_width = 0;
  std::size_t l2_bytes = 0;
};
DeviceProps device_props(int device);
std::string runtime_status();  // "" when usable, else why not (driver missing, no device...)

std::uintptr_t device_malloc(std::size_t bytes);
void device_free(std::uintptr_t ptr);
void copy_host_to_device(std::uintptr_t dst, const void* src, std::size_t bytes, std::uintptr_t stream);
void copy_device_to_host(void* dst, std::uintptr_t src, std::size_t bytes, std::uintptr_t stream);
void fill_device(std::uintptr_t dst, int byte, std::size_t bytes, std::uintptr_t stream);
void stream_synchronize(std::uintptr_t stream);
std::uintptr_t stream_create();  // a non-blocking stream
void stream_destroy(std::uintptr_t stream);

// ---- matrix multiply (matmul_*.cu) --------------------------------------------
enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, i8 = 3, i32 = 4 };
enum class Activation : int { none = 0, relu = 1, gelu_tanh = 2 };
// Which kernel family to prefer. auto_ picks the fastest that can run the problem;
// a named family is used when it can run the problem, else the chain falls back
// (wgmma -> mma -> simt -> generic) and the returned name says what ran.
// With auto_, the environment variable LEPTON_ACCEL_GEMM_KERNEL may name one.
enum class GemmKernel : int { auto_ = 0, generic = 1, simt = 2, mma = 3, wgmma = 4 };

// C[b] = act(A[b] @ B[b] + bias), element strides in elements (any sign-free
// layout: row and column strides are independent, so transposes need no copy).
struct GemmArgs {
  std::uintptr_t a = 0, b = 0, c = 0, bias = 0;  // bias: length N, dtype of C (0: none)
  std::int64_t batch = 1, M = 0, N = 0, K = 0;
  std::int64_t a_batch = 0, a_row = 0, a_col = 0;  // element strides of A (M x K)
  std::int64_t b_batch = 0, b_row = 0, b_col = 0;  // element strides of B (K x N)
  std::int64_t c_batch = 0, c_row = 0, c_col = 0;  // element strides of C (M x N)
  DType in_dtype = DType::f32, out_dtype = DType::f32;
  Activation activation = Activation::none;
  bool allow_tf32 = false;
  std::uintptr_t stream = 0;
  GemmKernel kernel = GemmKernel::auto_;
};
// Runs the best kernel for the device and arguments; returns the kernel's name.
std::string gemm(const GemmArgs& args);

}  // namespace lepton
