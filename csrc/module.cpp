// The lepton_accel._core extension: build facts, the CPU kernels' entry points, and the
// CUDA ones when the build found a CUDA compiler. Kernels live in csrc/cpu/ and
// csrc/cuda/; this file only binds.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_cpu(py::module_& m);  // csrc/cpu_bindings.cpp
void register_cuda_types(py::module_& m);  // csrc/cuda_types_bindings.cpp (every build)

#ifdef LEPTON_WITH_CUDA
void register_cuda(py::module_& m);  // csrc/cuda_bindings.cpp
void register_cuda_conv(py::module_& m);  // csrc/cuda_conv_bindings.cpp
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "lepton_accel native core";
  py::dict info;
  info["cxx_compiler"] = LEPTON_CXX_COMPILER;
  register_cpu(m);
  register_cuda_types(m);
#ifdef LEPTON_WITH_CUDA
  info["cuda"] = true;
  info["cuda_architectures"] = LEPTON_CUDA_ARCHS;
  info["cuda_compiler"] = LEPTON_CUDA_COMPILER;
  register_cuda(m);
  register_cuda_conv(m);
#else
  info["cuda"] = false;
  info["cuda_architectures"] = "";
  info["cuda_compiler"] = "";
#endif
  m.attr("BUILD_INFO") = info;
}
