// Hopper (sm_90a) PTX used by the wgmma kernels (matmul, conv2d): mbarriers, TMA
// tensor loads, proxy fences, wgmma and setmaxnreg. Only meaningful when compiled for
// sm_90a; callers guard every use with LEPTON_SM90A.
#pragma once
#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LEPTON_SM90A 1
#else
#define LEPTON_SM90A 0
#endif

namespace lepton {
namespace sm90 {

#if LEPTON_SM90A

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the other threads and the async proxy.
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Blocks until the phase with the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(bar), "r"(parity)
      : "memory");
}

// One box of a 3-D tensor map (coordinates innermost first) into shared memory,
// completing `bytes` on the mbarrier.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const void* tmap, uint32_t bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n"
      ::"r"(dst), "l"(tmap), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// Orders this thread's earlier generic-proxy accesses to shared memory (plain stores,
// completed cp.async copies) before its later async-proxy ones (wgmma operand reads,
// TMA), and the other way round. A thread that filled a tile with cp.async runs it
// after cp.async.wait_group and before releasing the tile through an mbarrier.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads/writes across wgmma boundaries.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

template <int REGS>
__device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS)); }
template <int REGS>
__device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS)); }

// Shared-memory matrix descriptor for a K-major tile written by TMA with 128-byte
// swizzle: rows of 128 bytes (64 16-bit elements), 8-row groups 1024 bytes apart.
// The tile must start on a 1024-byte boundary; stepping along K inside the 128-byte
// row is done by adding the byte offset to the start address.
__device__ __forceinline__ uint64_t desc_kmajor_sw128(uint32_t smem_addr) {
  uint64_t d = 0;
  d |= uint64_t((smem_addr & 0x3FFFF) >> 4);  // start address
  d |= uint64_t(1) << 16;                      // leading byte offset (unused with swizzle)
  d |= uint64_t(1024 >> 4) << 32;              // stride byte offset: 8 rows x 128 B
  d |= uint64_t(1) << 62;                      // 128-byte swizzle
  return d;
}

// wgmma m64nNk16, f32 += {bf16|f16} x {bf16|f16}, both operands K-major in shared memory
// (descriptors above), accumulators in N/2 registers per thread. `accumulate` = 0 makes
// d = A*B (the registers' old values are ignored), else d += A*B. One macro generates the
// asm of every shape and type: only the shape, the type suffix and the operand count differ.
// Accumulator lists "%0, ..., %(n-1)" and their "+f" operands, built up from 32 at a time.
#define LEPTON_WGMMA_REGS32 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define LEPTON_WGMMA_REGS64 LEPTON_WGMMA_REGS32 ", " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define LEPTON_WGMMA_REGS128 LEPTON_WGMMA_REGS64 ", " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define LEPTON_WGMMA_OPS32 \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define LEPTON_WGMMA_OPS64 LEPTON_WGMMA_OPS32, \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define LEPTON_WGMMA_OPS128 LEPTON_WGMMA_OPS64, \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
  "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
  "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
  "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
// NACC accumulators are operands %0..%(NACC-1); A_IDX, B_IDX, ACC_IDX name the operand
// numbers of the two descriptors and the accumulate flag that follow them.
#define LEPTON_WGMMA_M64NK16(NAME, SHAPE, TYPE, NACC, REGS, OPS, A_IDX, B_IDX, ACC_IDX)             \
  __device__ __forceinline__ void NAME(float (&d)[NACC], uint64_t desc_a, uint64_t desc_b,           \
                                       int accumulate) {                                             \
    asm volatile(                                                                                   \
        "{\n"                                                                                       \
        ".reg .pred p;\n"                                                                            \
        "setp.ne.b32 p, %" ACC_IDX ", 0;\n"                                                          \
        "wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " {" REGS "}, %" A_IDX          \
        ", %" B_IDX ", p, 1, 1, 0, 0;\n"                                                             \
        "}\n"                                                                                       \
        : OPS                                                                                       \
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                               \
  }

LEPTON_WGMMA_M64NK16(wgmma_m64n256k16_bf16, "m64n256k16", "bf16", 128, LEPTON_WGMMA_REGS128, LEPTON_WGMMA_OPS128,
                     "128", "129", "130")
LEPTON_WGMMA_M64NK16(wgmma_m64n256k16_f16, "m64n256k16", "f16", 128, LEPTON_WGMMA_REGS128, LEPTON_WGMMA_OPS128,
                     "128", "129", "130")
LEPTON_WGMMA_M64NK16(wgmma_m64n128k16_bf16, "m64n128k16", "bf16", 64, LEPTON_WGMMA_REGS64, LEPTON_WGMMA_OPS64,
                     "64", "65", "66")
LEPTON_WGMMA_M64NK16(wgmma_m64n128k16_f16, "m64n128k16", "f16", 64, LEPTON_WGMMA_REGS64, LEPTON_WGMMA_OPS64,
                     "64", "65", "66")
LEPTON_WGMMA_M64NK16(wgmma_m64n64k16_bf16, "m64n64k16", "bf16", 32, LEPTON_WGMMA_REGS32, LEPTON_WGMMA_OPS32,
                     "32", "33", "34")
LEPTON_WGMMA_M64NK16(wgmma_m64n64k16_f16, "m64n64k16", "f16", 32, LEPTON_WGMMA_REGS32, LEPTON_WGMMA_OPS32,
                     "32", "33", "34")

#undef LEPTON_WGMMA_M64NK16
#undef LEPTON_WGMMA_OPS128
#undef LEPTON_WGMMA_OPS64
#undef LEPTON_WGMMA_OPS32
#undef LEPTON_WGMMA_REGS128
#undef LEPTON_WGMMA_REGS64
#undef LEPTON_WGMMA_REGS32

#endif  // LEPTON_SM90A

}  // namespace sm90
}  // namespace lepton
