// Host-side TMA tensor maps for the Hopper kernels (matmul_wgmma_sm90.cu,
// conv2d_wgmma_sm90.cu). Only CUDA sources include this (it needs <cuda.h> types).
#pragma once
#include <cuda.h>
#include <cstdint>

namespace lepton {

// A K-major 16-bit operand -- `rows` rows of K elements, row stride `ld` elements,
// `batch` copies `batch_stride` elements apart -- as a 3-D tensor map {K, rows, batch}
// whose box {box_k, box_rows, 1} lands in shared memory with the 128-byte swizzle
// (box_k * 2 must be at most 128 bytes). Out-of-range elements of a box read as zero.
// An unbatched operand (batch <= 1 or batch_stride == 0) gets a batch extent of 1, so
// every batch coordinate must then be 0. Returns false if the driver entry point is
// missing or refuses the map (misaligned base or strides, ...): callers fall back.
bool make_kmajor_map(CUtensorMap* map, const void* ptr, CUtensorMapDataType dt, int64_t K, int64_t rows,
                     int64_t ld, int64_t batch, int64_t batch_stride, int box_k, int box_rows);

}  // namespace lepton
