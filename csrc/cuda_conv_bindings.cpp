// pybind11 entry points for the CUDA convolution kernels: pointers
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
}
