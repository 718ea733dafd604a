// pybind11 entry points for the CPU kernels in csrc/cpu/: argument checks and marshalling.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <string>
#include "cpu/depthwise_conv2d.h"

namespace py = pybind11;
using namespace lepton;

namespace {

template <typename T>
void depthwise(py::array x_obj, py::array w_obj, py::array y_obj, std::pair<int64_t, int64_t> stride,
               std::pair<int64_t, int64_t> pad, std::pair<int64_t, int64_t> dil, py::object bias_obj, bool relu,
               int64_t max_threads) {
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
  a.stride_h = stride.first; a.stride_w = stride.second;
  a.pad_top = pad.first; a.pad_left = pad.second;
  a.dil_h = dil.first; a.dil_w = dil.second;
  a.max_threads = max_threads;
  if (w.shape(2) != a.C || y.shape(0) != a.N || y.shape(3) != a.C)
    throw py::value_error("cpu_depthwise_conv2d: x, w and y disagree on N or C");
  if (a.stride_h < 1 || a.stride_w < 1 || a.dil_h < 1 || a.dil_w < 1 || a.pad_top < 0 || a.pad_left < 0)
    throw py::value_error("cpu_depthwise_conv2d: stride and dilation must be >= 1, padding >= 0");
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
      [](py::array x, py::array w, py::array y, std::pair<int64_t, int64_t> stride,
         std::pair<int64_t, int64_t> padding, std::pair<int64_t, int64_t> dilation, py::object bias, bool relu,
         int64_t max_threads) {
        if (py::array_t<float>::check_(x))
          depthwise<float>(x, w, y, stride, padding, dilation, bias, relu, max_threads);
        else if (py::array_t<int32_t>::check_(x))
          depthwise<int32_t>(x, w, y, stride, padding, dilation, bias, relu, max_threads);
        else throw py::type_error("cpu_depthwise_conv2d: x must be float32 or int32");
      },
      py::arg("x"), py::arg("w"), py::arg("y"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
      py::arg("bias") = py::none(), py::arg("relu") = false, py::arg("max_threads") = 0,
      "Depthwise conv2d, NHWC: y[n,oh,ow,c] = act(sum x[n,ih,iw,c] * w[kh,kw,c] + bias[c]) (top/left\n"
      "padding given, bottom/right implied by y's shape; act: ReLU or none). float32, or int32\n"
      "wrapping modulo 2**32.");
}
