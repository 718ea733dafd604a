// Host entry points of the Hopper implicit-GEMM convolution (conv2d_wgmma_sm90.cu),
// for the dispatcher. Kept apart from conv2d_common.cuh so that only the files that
// use it see it.
#pragma once
#include <string>
#include "cuda/conv2d_api.h"

namespace lepton {

// This build holds sm_90a machine code of the kernel for the current device (an
// sm_90a pass was compiled and the device runs it natively).
bool conv2d_wgmma_sm90_compiled();

// f16/bf16 in, the same type or f32 out, on a compute-capability 9.0 device with
// conv2d_wgmma_sm90_compiled(). Preconditions (the dispatcher's job):
//   x: unit channel stride, n/h/w strides multiples of 8 elements, base 16-byte aligned;
//   w: OHWI with the whole K = KH*KW*C/groups contiguous per output channel (ws[1] == 1,
//      ws[3] == C/groups unless KW == 1, ws[2] == KW*C/groups unless KH == 1), row
//      stride ws[0] a multiple of 8 elements and >= K (unless OC == 1), base 16-byte aligned;
//   C/groups a multiple of 64; groups <= 65535; N*OH*OW, H, W, OC/groups, K, the
//   padded extents below 2^30 (as for conv2d_igemm_sm80).
// sm_count (the device's multiprocessor count) steers the tile width. Launches on
// a.stream and returns the kernel's name, or "" when the driver refuses the filter's
// tensor map (nothing was launched; the caller falls back).
std::string conv2d_wgmma_sm90(const Conv2dArgs& a, int sm_count);

}  // namespace lepton
