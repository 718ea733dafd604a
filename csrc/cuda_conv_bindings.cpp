// pybind11 entry point for the CUDA convolution kernels: argument marshalling only.
// CudaError's Python class and translator are registered by register_cuda().
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <array>
#include <cstdint>
#include "cuda/conv2d_api.h"

namespace py = pybind11;
using namespace lepton;

void register_cuda_conv(py::module_& m) {
  m.def(
      "cuda_conv2d",
      [](std::uintptr_t x, std::uintptr_t w, std::uintptr_t y, std::uintptr_t bias,
         std::array<std::int64_t, 9> dims, std::array<std::int64_t, 7> params,
         std::array<std::int64_t, 4> x_strides, std::array<std::int64_t, 4> w_strides,
         std::array<std::int64_t, 4> y_strides, int in_dtype, int out_dtype, int bias_dtype,
         int activation, std::uintptr_t stream, const std::string& kernel) {
        Conv2dArgs a;
        a.x = x; a.w = w; a.y = y; a.bias = bias;
        a.N = dims[0]; a.C = dims[1]; a.H = dims[2]; a.W = dims[3];
        a.OC = dims[4]; a.KH = dims[5]; a.KW = dims[6]; a.OH = dims[7]; a.OW = dims[8];
        a.stride_h = params[0]; a.stride_w = params[1];
        a.pad_top = params[2]; a.pad_left = params[3];
        a.dil_h = params[4]; a.dil_w = params[5]; a.groups = params[6];
        for (int i = 0; i < 4; ++i) {
          a.xs[i] = x_strides[i];
          a.ws[i] = w_strides[i];
          a.ys[i] = y_strides[i];
        }
        a.in_dtype = static_cast<DType>(in_dtype);
        a.out_dtype = static_cast<DType>(out_dtype);
        a.bias_dtype = static_cast<DType>(bias_dtype);
        a.activation = static_cast<Activation>(activation);
        a.stream = stream;
        if (kernel == "auto") a.kernel = ConvKernel::auto_;
        else if (kernel == "generic") a.kernel = ConvKernel::generic;
        else if (kernel == "depthwise") a.kernel = ConvKernel::depthwise;
        else if (kernel == "mma") a.kernel = ConvKernel::mma;
        else if (kernel == "wgmma") a.kernel = ConvKernel::wgmma;
        else throw py::value_error("kernel must be auto, generic, depthwise, mma or wgmma");
        py::gil_scoped_release nogil;
        return conv2d(a);
      },
      py::arg("x"), py::arg("w"), py::arg("y"), py::arg("bias"), py::arg("dims"),
      py::arg("params"), py::arg("x_strides"), py::arg("w_strides"), py::arg("y_strides"),
      py::arg("in_dtype"), py::arg("out_dtype"), py::arg("bias_dtype"), py::arg("activation"),
      py::arg("stream") = 0, py::kw_only(), py::arg("kernel") = "auto",
      "y = act(conv2d(x, w) + bias) on device pointers; returns the kernel name.\n"
      "dims (N, C, H, W, OC, KH, KW, OH, OW); params (stride_h, stride_w, pad_top, pad_left,\n"
      "dil_h, dil_w, groups); strides in elements along (n, c, h, w) for x and y and\n"
      "(oc, c, kh, kw) for w, so any layout works. dtype codes as cuda_gemm; bias_dtype is\n"
      "the output dtype or float32 (float outputs). kernel: 'auto' (or\n"
      "LEPTON_ACCEL_CONV_KERNEL), 'generic', 'depthwise', 'mma' or 'wgmma'; a family that\n"
      "cannot run the problem falls back (wgmma -> mma -> generic, depthwise -> generic).");
}
