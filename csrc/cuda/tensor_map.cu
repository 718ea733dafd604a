// cuTensorMapEncodeTiled reached through the runtime's driver entry point, so that the
// extension does not link libcuda. Host code only.
#include <cuda_runtime.h>
#include <cudaTypedefs.h>
#include <mutex>
#include "cuda/tensor_map.h"

namespace lepton {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q) ==
            cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
    cudaGetLastError();
  });
  return fn;
}

}  // namespace

bool make_kmajor_map(CUtensorMap* map, const void* ptr, CUtensorMapDataType dt, int64_t K, int64_t rows,
                     int64_t ld, int64_t batch, int64_t batch_stride, int box_k, int box_rows) {
  auto encode = encode_fn();
  if (!encode) return false;
  const bool batched = batch > 1 && batch_stride != 0;
  cuuint64_t dims[3] = {cuuint64_t(K), cuuint64_t(rows), cuuint64_t(batched ? batch : 1)};
  // Byte strides of dims 1 and 2; an unused batch dimension still needs a legal stride.
  cuuint64_t strides[2] = {cuuint64_t(ld) * 2, cuuint64_t(batched ? batch_stride : ld * rows) * 2};
  cuuint32_t box[3] = {cuuint32_t(box_k), cuuint32_t(box_rows), 1};
  cuuint32_t elem_strides[3] = {1, 1, 1};
  CUresult r = encode(map, dt, 3, const_cast<void*>(ptr), dims, strides, box, elem_strides,
                      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

}  // namespace lepton
