// pybind11 entry points for the CPU kernels in csrc/cpu/: argument checks and marshalling.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <climits>
#include <string>
#include <utility>
#include <vector>
#include "cpu/depthwise_conv2d.h"

namespace py = pybind11;
using namespace lepton;

namespace {

// A Python integer (anything with __index__, never a float), of any size.
py::int_ as_index(py::handle v, const char* what) {
  PyObject* i = PyNumber_Index(v.ptr());
  if (!i) {
    PyErr_Clear();
    throw py::type_error(std::string("cpu_depthwise_conv2d: ") + what + " must be integers");
  }
  return py::reinterpret_steal<py::int_>(i);
}

std::pair<py::int_, py::int_> index_pair(py::handle v, const char* what) {
  py::sequence seq = py::reinterpret_borrow<py::sequence>(v);
  if (!PySequence_Check(v.ptr()) || py::len(seq) != 2)
    throw py::type_error(std::string("cpu_depthwise_conv2d: ") + what + " must be a pair of integers");
  return {as_index(seq[0], what), as_index(seq[1], what)};
}

py::int_ floordiv(const py::int_& a, const py::int_& b) {
  PyObject* r = PyNumber_FloorDivide(a.ptr(), b.ptr());
  if (!r) throw py::error_already_set();
  return py::reinterpret_steal<py::int_>(r);
}

// The value of a Python integer when it fits an int64, else false.
bool fits(const py::int_& v, int64_t& out) {
  int overflow = 0;
  const long long r = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
  if (overflow) return false;
  out = r;
  return true;
}

// One spatial axis as the kernel walks it: stride, padding and dilation when every index
// the kernel forms (out*stride + k*dil + pad + in, with headroom) fits 64 bits, else an
// exact tap table built here in Python integers. Validation may accept any size: a stride
// of 2**70 with one output row is an ordinary problem.
struct Axis {
  int64_t stride = 1, pad = 0, dil = 1;
  std::vector<int64_t> taps;  // empty: use stride/pad/dil
};

Axis plan_axis(const py::int_& stride, const py::int_& pad, const py::int_& dil, int64_t in, int64_t k,
               int64_t out) {
  Axis ax;
  // Parameters that cannot matter: the stride of a single output row, the dilation of a
  // single tap. Dropping them is exact.
  int64_t s = 1, p = 0, d = 1;
  const bool s_ok = out <= 1 || fits(stride, s);
  const bool d_ok = k <= 1 || fits(dil, d);
  const bool p_ok = fits(pad, p);
  if (s_ok && d_ok && p_ok) {
    const __int128 reach = __int128(out) * s + __int128(k) * d + __int128(p) + in;
    if (reach < (__int128(1) << 62)) {
      ax.stride = s; ax.pad = p; ax.dil = d;
      return ax;
    }
  }
  // Tap k lands on output rows o with 0 <= o*stride - (pad - k*dil) < in: a run of rows
  // found by two floor divisions, filled in 64 bits (within a run the step is the
  // stride, which is then below `in`).
  ax.taps.assign(std::size_t(out * k), -1);
  const py::int_ zero(0), one(1), in_(in), s_(stride);
  for (int64_t kk = 0; kk < k; ++kk) {
    const py::int_ q = py::int_(pad - py::int_(kk) * dil);
    const py::int_ first_obj = -floordiv(-q, s_);               // ceil(q / stride)
    const py::int_ last_obj = floordiv(q + in_ - one, s_);       // floor((q + in - 1) / stride)
    if (last_obj < zero || first_obj > py::int_(out - 1)) continue;
    const int64_t first = first_obj < zero ? 0 : first_obj.cast<int64_t>();
    const int64_t last = last_obj > py::int_(out - 1) ? out - 1 : last_obj.cast<int64_t>();
    if (first > last) continue;
    const int64_t i0 = py::int_(py::int_(first) * s_ - q).cast<int64_t>();  // in [0, in)
    const int64_t step = first < last ? s_.cast<int64_t>() : 0;
    for (int64_t o = first; o <= last; ++o) ax.taps[std::size_t(o * k + kk)] = i0 + (o - first) * step;
  }
  return ax;
}

struct Geometry {
  std::pair<py::int_, py::int_> stride, pad, dil;
};

template <typename T>
void depthwise(py::array x_obj, py::array w_obj, py::array y_obj, const Geometry& geo, py::object bias_obj,
               bool relu, int64_t max_threads) {
  using Arr = py::array_t<T, py::array::c_style>;
  if (!Arr::check_(x_obj) || !Arr::check_(w_obj) || !Arr::check_(y_obj))
    throw py::type_error("cpu_depthwise_conv2d: x, w and y must be C-contiguous arrays of one dtype");
  auto x = py::reinterpret_borrow<Arr>(x_obj);
  auto w = py::reinterpret_borrow<Arr>(w_obj);
  auto y = py::reinterpret_borrow<Arr>(y_obj);
  if (x.ndim() != 4 || w.ndim() != 3 || y.ndim() != 4)
    throw py::value_error("cpu_depthwise_conv2d: x (N, H, W, C), w (KH, KW, C), y (N, OH, OW, C)");
  if (!y.writeable()) throw py::value_error("cpu_depthwise_conv2d: y is read-only");
  DepthwiseArgs a;
  a.N = x.shape(0); a.H = x.shape(1); a.W = x.shape(2); a.C = x.shape(3);
  a.KH = w.shape(0); a.KW = w.shape(1);
  a.OH = y.shape(1); a.OW = y.shape(2);
  a.max_threads = max_threads;
  if (w.shape(2) != a.C || y.shape(0) != a.N || y.shape(3) != a.C)
    throw py::value_error("cpu_depthwise_conv2d: x, w and y disagree on N or C");
  const py::int_ zero(0), one(1);
  for (const auto* v : {&geo.stride.first, &geo.stride.second, &geo.dil.first, &geo.dil.second})
    if (*v < one) throw py::value_error("cpu_depthwise_conv2d: stride and dilation must be >= 1, padding >= 0");
  if (geo.pad.first < zero || geo.pad.second < zero)
    throw py::value_error("cpu_depthwise_conv2d: stride and dilation must be >= 1, padding >= 0");
  const Axis rows = plan_axis(geo.stride.first, geo.pad.first, geo.dil.first, a.H, a.KH, a.OH);
  const Axis cols = plan_axis(geo.stride.second, geo.pad.second, geo.dil.second, a.W, a.KW, a.OW);
  a.stride_h = rows.stride; a.pad_top = rows.pad; a.dil_h = rows.dil;
  a.stride_w = cols.stride; a.pad_left = cols.pad; a.dil_w = cols.dil;
  if (!rows.taps.empty()) a.h_taps = rows.taps.data();
  if (!cols.taps.empty()) a.w_taps = cols.taps.data();
  Arr bias;
  if (!bias_obj.is_none()) {
    if (!Arr::check_(bias_obj)) throw py::type_error("cpu_depthwise_conv2d: bias must be a C-contiguous array of x's dtype");
    bias = py::reinterpret_borrow<Arr>(bias_obj);
    if (bias.ndim() != 1 || bias.shape(0) != a.C) throw py::value_error("cpu_depthwise_conv2d: bias must have C values");
    a.bias = bias.data();
  }
  a.relu = relu;
  const T* xp = x.data();
  const T* wp = w.data();
  T* yp = y.mutable_data();
  py::gil_scoped_release nogil;
  depthwise_conv2d_nhwc(a, xp, wp, yp);
}

}  // namespace

void register_cpu(py::module_& m) {
  m.def(
      "cpu_depthwise_conv2d",
      [](py::array x, py::array w, py::array y, py::object stride, py::object padding, py::object dilation,
         py::object bias, bool relu, int64_t max_threads) {
        const Geometry geo{index_pair(stride, "stride"), index_pair(padding, "padding"),
                           index_pair(dilation, "dilation")};
        if (py::array_t<float>::check_(x))
          depthwise<float>(x, w, y, geo, bias, relu, max_threads);
        else if (py::array_t<int32_t>::check_(x))
          depthwise<int32_t>(x, w, y, geo, bias, relu, max_threads);
        else throw py::type_error("cpu_depthwise_conv2d: x must be float32 or int32");
      },
      py::arg("x"), py::arg("w"), py::arg("y"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
      py::arg("bias") = py::none(), py::arg("relu") = false, py::arg("max_threads") = 0,
      "Depthwise conv2d, NHWC: y[n,oh,ow,c] = act(sum x[n,ih,iw,c] * w[kh,kw,c] + bias[c]) (top/left\n"
      "padding given, bottom/right implied by y's shape; act: ReLU, which keeps NaN, or none).\n"
      "stride, padding and dilation are pairs of integers of any size. float32, or int32 wrapping\n"
      "modulo 2**32.");
}
