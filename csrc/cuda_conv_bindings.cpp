// pybind11 entry points for the CUDA convolution kernels and their gradients: pointers
// and launch options onto the named Conv2dProblem (cuda_types_bindings.cpp). CudaError's
// Python class and translator are registered by register_cuda().
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cstdint>
#include <string>
#include "cuda/conv2d_api.h"
#include "cuda/kernel_family.h"

namespace py = pybind11;
using namespace lepton;

void register_cuda_conv(py::module_& m) {
  m.def(
      "cuda_conv2d",
      [](const Conv2dArgs& problem, std::uintptr_t x, std::uintptr_t w, std::uintptr_t y, std::uintptr_t bias,
         std::uintptr_t stream, const std::string& kernel) {
        Conv2dArgs a = problem;
        a.x = x; a.w = w; a.y = y; a.bias = bias;
        a.stream = stream;
        a.kernel = parse_kernel<ConvKernel>(kernel, "kernel");
        py::gil_scoped_release nogil;
        return conv2d(a);
      },
      py::arg("problem"), py::arg("x"), py::arg("w"), py::arg("y"), py::arg("bias") = 0, py::kw_only(),
      py::arg("stream") = 0, py::arg("kernel") = "auto",
      "y = act(conv2d(x, w) + bias) for the Conv2dProblem on device pointers (bias: OC values of\n"
      "problem.bias_dtype, or 0); returns the kernel name. kernel: a ConvKernel name, 'auto' (or\n"
      "LEPTON_ACCEL_CONV_KERNEL), 'generic', 'depthwise', 'mma' or 'wgmma'; a family that cannot\n"
      "run the problem falls back (wgmma -> mma -> generic, depthwise -> generic).");

  m.def(
      "cuda_conv2d_grad_input",
      [](const Conv2dArgs& problem, std::uintptr_t dy, std::uintptr_t w, std::uintptr_t dx, std::uintptr_t stream,
         const std::string& kernel) {
        Conv2dArgs a = problem;
        a.x = dx; a.w = w; a.y = dy;
        a.stream = stream;
        const ConvGradKernel k = parse_kernel<ConvGradKernel>(kernel, "kernel");
        py::gil_scoped_release nogil;
        return conv2d_grad_input(a, k);
      },
      py::arg("problem"), py::arg("dy"), py::arg("w"), py::arg("dx"), py::kw_only(), py::arg("stream") = 0,
      py::arg("kernel") = "auto",
      "dx = the gradient of conv2d(x, w) with respect to x, from dy (laid out as y) and w, written\n"
      "through x_strides; problem.out_dtype is dx's dtype. No bias or activation. kernel: a\n"
      "ConvGradKernel name, 'auto' (or LEPTON_ACCEL_CONV_GRAD_KERNEL), 'generic' or 'simt'.");

  m.def(
      "cuda_conv2d_grad_weight",
      [](const Conv2dArgs& problem, std::uintptr_t x, std::uintptr_t dy, std::uintptr_t dw, std::uintptr_t stream,
         const std::string& kernel) {
        Conv2dArgs a = problem;
        a.x = x; a.w = dw; a.y = dy;
        a.stream = stream;
        const ConvGradKernel k = parse_kernel<ConvGradKernel>(kernel, "kernel");
        py::gil_scoped_release nogil;
        return conv2d_grad_weight(a, k);
      },
      py::arg("problem"), py::arg("x"), py::arg("dy"), py::arg("dw"), py::kw_only(), py::arg("stream") = 0,
      py::arg("kernel") = "auto",
      "dw = the gradient of conv2d(x, w) with respect to w, from x and dy (laid out as y), written\n"
      "through w_strides; problem.out_dtype is dw's dtype. No bias or activation. kernel as for\n"
      "cuda_conv2d_grad_input.");
}
