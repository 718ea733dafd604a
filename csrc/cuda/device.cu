// Device discovery and raw memory management for the host side.
#include "cuda/check.cuh"

namespace lepton {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return 0;
  }
  return n;
}

std::string runtime_status() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("CUDA runtime reports ") + cudaGetErrorName(err) + ": " +
           cudaGetErrorString(err);
  }
  if (n == 0) return "no CUDA device present";
  return "";
}

DeviceProps device_props(int device) {
  cudaDeviceProp p{};
  check_cuda(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  DeviceProps out;
  out.name = p.name;
  out.major = p.major;
  out.minor = p.minor;
  out.sm_count = p.multiProcessorCount;
  out.total_memory = p.totalGlobalMem;
  out.l2_bytes = static_cast<std::size_t>(p.l2CacheSize);
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrClockRate, device) == cudaSuccess) out.clock_khz = v;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMemoryClockRate, device) == cudaSuccess)
    out.memory_clock_khz = v;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrGlobalMemoryBusWidth, device) == cudaSuccess)
    out.memory_bus_width = v;
  cudaGetLastError();
  return out;
}

std::uintptr_t device_malloc(std::size_t bytes) {
  void* p = nullptr;
  check_cuda(cudaMalloc(&p, bytes == 0 ? 1 : bytes), "cudaMalloc");
  return reinterpret_cast<std::uintptr_t>(p);
}

void device_free(std::uintptr_t ptr) {
  if (ptr) check_cuda(cudaFree(reinterpret_cast<void*>(ptr)), "cudaFree");
}

void copy_host_to_device(std::uintptr_t dst, const void* src, std::size_t bytes, std::uintptr_t s) {
  if (bytes == 0) return;
  check_cuda(cudaMemcpyAsync(reinterpret_cast<void*>(dst), src, bytes, cudaMemcpyHostToDevice,
                             as_stream(s)),
             "cudaMemcpyAsync(host->device)");
}

void copy_device_to_host(void* dst, std::uintptr_t src, std::size_t bytes, std::uintptr_t s) {
  if (bytes == 0) return;
  check_cuda(cudaMemcpyAsync(dst, reinterpret_cast<const void*>(src), bytes,
                             cudaMemcpyDeviceToHost, as_stream(s)),
             "cudaMemcpyAsync(device->host)");
  check_cuda(cudaStreamSynchronize(as_stream(s)), "cudaStreamSynchronize");
}

void fill_device(std::uintptr_t dst, int byte, std::size_t bytes, std::uintptr_t s) {
  if (bytes == 0) return;
  check_cuda(cudaMemsetAsync(reinterpret_cast<void*>(dst), byte, bytes, as_stream(s)),
             "cudaMemsetAsync");
}

void stream_synchronize(std::uintptr_t s) {
  check_cuda(cudaStreamSynchronize(as_stream(s)), "cudaStreamSynchronize");
}

std::uintptr_t stream_create() {
  cudaStream_t s = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  return reinterpret_cast<std::uintptr_t>(s);
}

void stream_destroy(std::uintptr_t s) {
  if (s) check_cuda(cudaStreamDestroy(as_stream(s)), "cudaStreamDestroy");
}

}  // namespace lepton
