// Host entry points of the matmul kernel families, for the dispatcher. Each
// returns the name of the kernel it launched; preconditions are the dispatcher's job.
#pragma once
#include <string>
#include "cuda/matmul_common.cuh"

namespace lepton {

// matmul_simt.cu: float32 in and out, any strides (vector loads where SimtParams says).
enum class SimtLoad : int { scalar_mn_fast = 0, scalar_k_fast = 1, vec_k = 2, vec_mn = 3 };

struct SimtParams {
  GemmProblem p;
  SimtLoad a_mode, b_mode;
  bool c_vec;  // float4 stores: c_n == 1, rows and base 16-byte aligned, N % 4 == 0
};
std::string gemm_simt_f32(const SimtParams& sp);

// matmul_mma_sm80.cu: mma.sync on sm_80+. `in` is f16, bf16, i8, or f32 (run as tf32).
// Each operand has a unit stride along K (k_major) or along M/N, and 16-byte aligned
// base, other stride and batch stride.
std::string gemm_mma_sm80(const GemmProblem& p, DType in, bool a_k_major, bool b_k_major);

// Opts a kernel in to `bytes` of dynamic shared memory, once per kernel and device.
void allow_dynamic_smem(const void* fn, int bytes, const char* kernel_name);

// matmul_wgmma_sm90.cu: sm_90a only. f16/bf16 in, f16/bf16/f32 out; A and B K-major
// (a_k == b_k == 1), bases and strides 16-byte aligned, row strides >= K. Returns ""
// when the driver refuses the tensor maps (the caller falls back).
bool wgmma_sm90_compiled();  // this build holds sm_90a code for the current device
std::string gemm_wgmma_sm90(const GemmProblem& p, DType in);

}  // namespace lepton
