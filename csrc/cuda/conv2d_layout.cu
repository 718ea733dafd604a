// Layout change to channels-last: dst[n][h][w][c] = src(n, c, h, w) for any source
// strides. A 32 x 32 tile of (c, w) per step goes through shared memory, so reads
// run along w (NCHW's unit stride) and writes along c, both coalesced. The same
// kernel turns OIHW filters into OHWI (n = OC, c = C/groups, h = KH, w = KW).
#include <algorithm>
#include "cuda/conv2d_common.cuh"

namespace lepton {
namespace {

constexpr int TILE = 32, ROWS = 8;

template <typename E>
__global__ void __launch_bounds__(TILE * ROWS) to_channels_last_kernel(
    const E* __restrict__ src, E* __restrict__ dst, int64_t N, int64_t C, int64_t H, int64_t W,
    int64_t s0, int64_t s1, int64_t s2, int64_t s3, int64_t c_tiles, int64_t w_tiles) {
  __shared__ E tile[TILE][TILE + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles = N * H * c_tiles * w_tiles;
  // The tile index is the same for every thread of the block, so the barriers
  // inside the loop are reached by all of them.
  for (int64_t b = blockIdx.x; b < tiles; b += gridDim.x) {
    int64_t r = b;
    const int64_t wt = r % w_tiles; r /= w_tiles;
    const int64_t ct = r % c_tiles; r /= c_tiles;
    const int64_t h = r % H, n = r / H;
    const int64_t c0 = ct * TILE, w0 = wt * TILE;
#pragma unroll
    for (int i = 0; i < TILE; i += ROWS) {
      const int64_t c = c0 + ty + i, w = w0 + tx;
      if (c < C && w < W) tile[ty + i][tx] = src[n * s0 + c * s1 + h * s2 + w * s3];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < TILE; i += ROWS) {
      const int64_t w = w0 + ty + i, c = c0 + tx;
      if (c < C && w < W) dst[((n * H + h) * W + w) * C + c] = tile[tx][ty + i];
    }
    __syncthreads();  // the tile is rewritten by the next step
  }
}

template <typename E>
void launch(const void* src, void* dst, int64_t N, int64_t C, int64_t H, int64_t W,
            const int64_t (&s)[4], cudaStream_t stream) {
  const int64_t c_tiles = (C + TILE - 1) / TILE, w_tiles = (W + TILE - 1) / TILE;
  const int64_t tiles = N * H * c_tiles * w_tiles;
  const int64_t blocks = std::min<int64_t>(tiles, int64_t(1) << 20);
  to_channels_last_kernel<E><<<unsigned(blocks), dim3(TILE, ROWS), 0, stream>>>(
      static_cast<const E*>(src), static_cast<E*>(dst), N, C, H, W, s[0], s[1], s[2], s[3],
      c_tiles, w_tiles);
  check_launch("to_channels_last_kernel");
}

}  // namespace

void to_channels_last(const void* src, void* dst, int64_t N, int64_t C, int64_t H, int64_t W,
                      const int64_t (&s)[4], int elem_bytes, std::uintptr_t stream) {
  if (N == 0 || C == 0 || H == 0 || W == 0) return;
  const cudaStream_t st = as_stream(stream);
  // Rows that follow one another in memory (contiguous NCHW, OIHW) make one long
  // row of H * W, so small images still fill whole tiles.
  const bool flat = H > 1 && s[2] == W * s[3];
  const int64_t fs[4] = {s[0], s[1], 0, s[3]};
  const int64_t(&ss)[4] = flat ? fs : s;
  const int64_t h = flat ? 1 : H, w = flat ? H * W : W;
  switch (elem_bytes) {
    case 1: launch<uint8_t>(src, dst, N, C, h, w, ss, st); break;
    case 2: launch<uint16_t>(src, dst, N, C, h, w, ss, st); break;
    case 4: launch<uint32_t>(src, dst, N, C, h, w, ss, st); break;
    default: throw CudaError("to_channels_last: element size must be 1, 2 or 4 bytes");
  }
}

}  // namespace lepton
