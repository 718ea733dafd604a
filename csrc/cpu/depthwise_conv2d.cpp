// Depthwise 2-D convolution on the CPU, NHWC: every channel is filtered by its own
// KH x KW taps. A GEMM formulation (what the CPU backend uses for dense convolutions)
// has one output channel per group here, so BLAS gets K = KH*KW-sized products and runs
// far below its rate; this direct loop runs along the contiguous channel axis instead,
// where the compiler vectorises it.
//
// float: float32 accumulation. int32 (int8/int16 operands widened by the caller):
// accumulation in uint32, which is exact modulo 2**32, i.e. the wrapped int32 result.
// Rows of the output (n, oh) are split over threads.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include "cpu/depthwise_conv2d.h"

namespace lepton {
namespace {

template <typename T>
struct Acc {
  using type = T;
};
template <>
struct Acc<int32_t> {
  using type = uint32_t;  // wraps instead of overflowing (signed overflow is undefined)
};

constexpr int CB = 16;        // channels per register block: 2 AVX2 or 1 AVX-512 vector of float
constexpr int MAX_TAPS = 49;  // register-blocked up to 7x7 filters; larger ones take the plain loop

#if defined(__GNUC__)
#define LEPTON_DW_BLOCKED 1
// CB lanes of the accumulator type as one vector value (GCC/Clang vector extension), so
// that a block's accumulator lives in registers whatever the target's vector width.
template <typename A>
struct Lanes {
  typedef A type __attribute__((vector_size(CB * sizeof(A))));
};
typedef int32_t SignedLanes __attribute__((vector_size(CB * sizeof(int32_t))));

// Bias (already gathered into lanes) and ReLU on a finished accumulator; the uint32
// lanes of the integer path hold int32 values, so ReLU compares them signed. ReLU keeps
// NaN (as np.maximum and PyTorch do): only lanes that compare below zero become zero.
inline void finish(Lanes<float>::type& acc, const Lanes<float>::type& bias, bool relu) {
  acc += bias;
  if (relu) acc = acc < 0.0f ? Lanes<float>::type{} : acc;
}
inline void finish(Lanes<uint32_t>::type& acc, const Lanes<uint32_t>::type& bias, bool relu) {
  acc += bias;
  if (relu) {
    SignedLanes v = (SignedLanes)acc;  // a vector cast reinterprets the bits
    v = v > 0 ? v : SignedLanes{};
    acc = (Lanes<uint32_t>::type)v;
  }
}

// One output row (n, oh) for the channels c0 .. c0+CB-1: the block's filter taps are
// gathered once, then each output pixel sums its taps into a CB-lane accumulator held
// in registers and stores it once. ih_list/kh_list name the filter rows that fall
// inside the image for this output row. Columns whose taps all fall inside the image
// (all but the padded edges) take a loop without bounds checks. KHC/KWC > 0 fix the
// number of filter rows inside the image and the filter width at compile time, so that
// loop unrolls and the taps stay in registers (0: any).
template <typename T, int KHC, int KWC>
#if defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void row_block(const DepthwiseArgs& a, const T* __restrict x_img, const T* __restrict w, T* __restrict out_row,
               int64_t c0, const int64_t* ih_list, const int64_t* kh_list, int n_rows) {
  using A = typename Acc<T>::type;
  using V = typename Lanes<A>::type;
  static_assert(sizeof(A) == sizeof(T), "the loads reinterpret T as the accumulator type");
  const int64_t C = a.C, KW = KWC > 0 ? KWC : a.KW, W = a.W, OW = a.OW, sw = a.stride_w, pl = a.pad_left,
                dw = a.dil_w;
  const int R = KHC > 0 ? KHC : n_rows;
  V wb[MAX_TAPS];
  for (int r = 0; r < n_rows; ++r)
    for (int64_t kw = 0; kw < KW; ++kw) std::memcpy(&wb[r * KW + kw], w + (kh_list[r] * KW + kw) * C + c0, sizeof(V));
  V bias = {};
  if (a.bias) std::memcpy(&bias, static_cast<const T*>(a.bias) + c0, sizeof(V));
  const bool relu = a.relu;
  auto fma = [](V& acc, const T* x, const V& wv) {
    V xv;
    std::memcpy(&xv, x, sizeof(V));
    acc += xv * wv;
  };
  const int64_t* w_taps = a.w_taps;
  auto edge_pixel = [&](int64_t ow) {
    V acc = {};
    const int64_t iw0 = ow * sw - pl;
    for (int r = 0; r < n_rows; ++r) {
      const T* x_row = x_img + ih_list[r] * W * C + c0;
      for (int64_t kw = 0; kw < KW; ++kw) {
        const int64_t iw = w_taps ? w_taps[ow * KW + kw] : iw0 + kw * dw;
        if (iw >= 0 && iw < W) fma(acc, x_row + iw * C, wb[r * KW + kw]);
      }
    }
    finish(acc, bias, relu);
    std::memcpy(out_row + ow * C + c0, &acc, sizeof(V));
  };
  // Interior: iw0 = ow*sw - pl >= 0 and iw0 + (KW-1)*dw < W. (With a tap table every
  // column takes the edge path.)
  const int64_t lo = w_taps ? 0 : std::min(OW, (pl + sw - 1) / sw);
  const int64_t last = W - 1 - (KW - 1) * dw + pl;  // ow * sw <= last
  const int64_t hi = w_taps ? 0 : std::max(lo, last < 0 ? int64_t(0) : std::min(OW, last / sw + 1));
  for (int64_t ow = 0; ow < lo; ++ow) edge_pixel(ow);
  for (int64_t ow = lo; ow < hi; ++ow) {
    V acc = {};
    const int64_t iw0 = ow * sw - pl;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const T* xp = x_img + (ih_list[r] * W + iw0) * C + c0;
      const V* wr = wb + r * KW;
      if constexpr (KWC > 0) {
#pragma GCC unroll 8
        for (int kw = 0; kw < KWC; ++kw) fma(acc, xp + kw * dw * C, wr[kw]);
      } else {
        for (int64_t kw = 0; kw < KW; ++kw) fma(acc, xp + kw * dw * C, wr[kw]);
      }
    }
    finish(acc, bias, relu);
    std::memcpy(out_row + ow * C + c0, &acc, sizeof(V));
  }
  for (int64_t ow = hi; ow < OW; ++ow) edge_pixel(ow);
}
#else
#define LEPTON_DW_BLOCKED 0
#endif

// The same for any channel range, without register blocking (channel tails, big filters).
template <typename T>
void row_plain(const DepthwiseArgs& a, const T* x_img, const T* w, T* out_row, int64_t c_begin, int64_t c_end,
               const int64_t* ih_list, const int64_t* kh_list, int n_rows) {
  using A = typename Acc<T>::type;
  const int64_t C = a.C;
  for (int64_t ow = 0; ow < a.OW; ++ow) {
    const int64_t iw0 = ow * a.stride_w - a.pad_left;
    A* o = reinterpret_cast<A*>(out_row + ow * C);
    for (int64_t c = c_begin; c < c_end; ++c) o[c] = 0;
    for (int r = 0; r < n_rows; ++r) {
      for (int64_t kw = 0; kw < a.KW; ++kw) {
        const int64_t iw = a.w_taps ? a.w_taps[ow * a.KW + kw] : iw0 + kw * a.dil_w;
        if (iw < 0 || iw >= a.W) continue;
        const T* xp = x_img + (ih_list[r] * a.W + iw) * C;
        const T* wp = w + (kh_list[r] * a.KW + kw) * C;
        for (int64_t c = c_begin; c < c_end; ++c) o[c] += A(xp[c]) * A(wp[c]);
      }
    }
    const T* bias = static_cast<const T*>(a.bias);
    T* out = out_row + ow * C;
    for (int64_t c = c_begin; c < c_end; ++c) {
      const T v = T(o[c] + (bias ? A(bias[c]) : A(0)));  // int32: the uint32 sum, wrapped
      out[c] = (a.relu && v < T(0)) ? T(0) : v;
    }
  }
}

template <typename T>
void rows(const DepthwiseArgs& a, const T* x, const T* w, T* y, int64_t row_begin, int64_t row_end) {
  const int64_t C = a.C;
  std::vector<int64_t> ih_list(size_t(a.KH)), kh_list(size_t(a.KH));
  const bool blocked = LEPTON_DW_BLOCKED && a.KH * a.KW <= MAX_TAPS;
  const int64_t c_blocked = blocked ? C / CB * CB : 0;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / a.OH, oh = row % a.OH;
    int n_rows = 0;
    for (int64_t kh = 0; kh < a.KH; ++kh) {
      const int64_t ih = a.h_taps ? a.h_taps[oh * a.KH + kh] : oh * a.stride_h - a.pad_top + kh * a.dil_h;
      if (ih < 0 || ih >= a.H) continue;
      ih_list[size_t(n_rows)] = ih;
      kh_list[size_t(n_rows)] = kh;
      ++n_rows;
    }
    const T* x_img = x + n * a.H * a.W * C;
    T* out_row = y + row * a.OW * C;
#if LEPTON_DW_BLOCKED
    for (int64_t c0 = 0; c0 < c_blocked; c0 += CB) {
      if (a.KW == 3 && n_rows == 3)  // three filter rows inside the image, width 3: 3x3 off the edges
        row_block<T, 3, 3>(a, x_img, w, out_row, c0, ih_list.data(), kh_list.data(), n_rows);
      else row_block<T, 0, 0>(a, x_img, w, out_row, c0, ih_list.data(), kh_list.data(), n_rows);
    }
#endif
    if (c_blocked < C) row_plain<T>(a, x_img, w, out_row, c_blocked, C, ih_list.data(), kh_list.data(), n_rows);
  }
}

template <typename T>
void run(const DepthwiseArgs& a, const T* x, const T* w, T* y) {
  const int64_t total = a.N * a.OH;
  if (total == 0 || a.OW == 0 || a.C == 0) return;
  // Enough work per thread to pay for starting it: a thread start costs tens of
  // microseconds, the loop does about 20 multiply-adds per nanosecond.
  const int64_t macs_per_row = a.OW * a.C * a.KH * a.KW;
  const int64_t by_work = std::max<int64_t>(1, total * macs_per_row / 4000000);
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  const int64_t threads = std::min({hw, by_work, total, int64_t(a.max_threads > 0 ? a.max_threads : hw)});
  if (threads == 1) {
    rows<T>(a, x, w, y, 0, total);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t chunk = (total + threads - 1) / threads;
  try {
    for (int64_t t = 1; t < threads; ++t) {
      const int64_t b = t * chunk, e = std::min(total, b + chunk);
      if (b < e) pool.emplace_back(rows<T>, std::cref(a), x, w, y, b, e);
    }
  } catch (...) {  // no thread to be had: the caller's thread does the rest
    const int64_t done_to = int64_t(pool.size() + 1) * chunk;
    rows<T>(a, x, w, y, std::min(total, done_to), total);
  }
  rows<T>(a, x, w, y, 0, std::min(total, chunk));  // the first chunk on the calling thread
  for (auto& th : pool) th.join();
}

}  // namespace

void depthwise_conv2d_nhwc(const DepthwiseArgs& a, const float* x, const float* w, float* y) {
  run<float>(a, x, w, y);
}

void depthwise_conv2d_nhwc(const DepthwiseArgs& a, const int32_t* x, const int32_t* w, int32_t* y) {
  run<int32_t>(a, x, w, y);
}

}  // namespace lepton
