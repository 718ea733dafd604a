// Error checking shared by every CUDA source: a failing call or launch becomes a
// lepton::CudaError carrying the operation's name and CUDA's error string.
#pragma once
#include <cuda_runtime.h>
#include <string>
#include "cuda/api.h"

namespace lepton {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw CudaError(std::string(what) + ": " + cudaGetErrorName(err) + " (" +
                    cudaGetErrorString(err) + ")");
  }
}

// After a launch: catches bad configurations at once; faults inside the kernel
// surface at the next synchronising call, which is checked too.
inline void check_launch(const char* kernel_name) {
  check_cuda(cudaGetLastError(), kernel_name);
}

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace lepton
