// pybind11 entry points for the CUDA kernels: argument marshalling only.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include "cuda/api.h"
#include "cuda/kernel_family.h"

namespace py = pybind11;
using namespace lepton;

namespace {
// The copies move size * itemsize bytes from the buffer's start, so a strided view
// (a NumPy slice, say) would copy the wrong bytes: refuse it before any CUDA call.
void require_contiguous(const py::buffer_info& info, const char* arg) {
  py::ssize_t expected = info.itemsize;
  for (py::ssize_t i = info.ndim - 1; i >= 0; --i) {
    if (info.shape[i] != 1 && info.strides[i] != expected)
      throw py::value_error(std::string(arg) + ": the host buffer must be C-contiguous");
    expected *= info.shape[i];
  }
}
}  // namespace

void register_cuda(py::module_& m) {
  static py::exception<CudaError> cuda_error(m, "CudaError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const CudaError& e) {
      py::set_error(cuda_error, e.what());
    }
  });

  m.def("cuda_device_count", &device_count);
  m.def("cuda_runtime_status", &runtime_status);
  m.def("cuda_device_props", [](int d) {
    DeviceProps p = device_props(d);
    py::dict out;
    out["name"] = p.name;
    out["compute_capability"] = py::make_tuple(p.major, p.minor);
    out["sm_count"] = p.sm_count;
    out["total_memory"] = p.total_memory;
    out["clock_khz"] = p.clock_khz;
    out["memory_clock_khz"] = p.memory_clock_khz;
    out["memory_bus_width"] = p.memory_bus_width;
    out["l2_bytes"] = p.l2_bytes;
    return out;
  });

  m.def("cuda_malloc", &device_malloc, py::arg("nbytes"));
  m.def("cuda_free", &device_free, py::arg("ptr"));
  m.def("cuda_memset", &fill_device, py::arg("ptr"), py::arg("byte"), py::arg("nbytes"),
        py::arg("stream") = 0);
  m.def("cuda_stream_synchronize", &stream_synchronize, py::arg("stream") = 0);
  m.def("cuda_stream_create", &stream_create, "A new non-blocking stream (a handle as int).");
  m.def("cuda_stream_destroy", &stream_destroy, py::arg("stream"));
  // Host buffers come in as Python buffers (NumPy arrays), contiguous.
  m.def(
      "cuda_copy_to_device",
      [](std::uintptr_t dst, py::buffer src, std::uintptr_t stream) {
        py::buffer_info info = src.request();
        require_contiguous(info, "src");
        py::gil_scoped_release nogil;
        copy_host_to_device(dst, info.ptr, std::size_t(info.size * info.itemsize), stream);
      },
      py::arg("dst"), py::arg("src"), py::arg("stream") = 0);
  m.def(
      "cuda_copy_to_host",
      [](py::buffer dst, std::uintptr_t src, std::uintptr_t stream) {
        py::buffer_info info = dst.request(true);
        require_contiguous(info, "dst");
        py::gil_scoped_release nogil;
        copy_device_to_host(info.ptr, src, std::size_t(info.size * info.itemsize), stream);
      },
      py::arg("dst"), py::arg("src"), py::arg("stream") = 0);

  m.def(
      "cuda_gemm",
      [](const GemmArgs& problem, std::uintptr_t a, std::uintptr_t b, std::uintptr_t c, std::uintptr_t bias,
         std::uintptr_t stream, const std::string& kernel) {
        GemmArgs g = problem;
        g.a = a; g.b = b; g.c = c; g.bias = bias;
        g.stream = stream;
        g.kernel = parse_kernel<GemmKernel>(kernel, "kernel");
        py::gil_scoped_release nogil;
        return gemm(g);
      },
      py::arg("problem"), py::arg("a"), py::arg("b"), py::arg("c"), py::arg("bias") = 0, py::kw_only(),
      py::arg("stream") = 0, py::arg("kernel") = "auto",
      "C[b] = act(A[b] @ B[b] + bias) for the GemmProblem on device pointers (bias: N values of\n"
      "out_dtype, or 0). Returns the name of the kernel that ran. kernel: a GemmKernel name, 'auto'\n"
      "(or LEPTON_ACCEL_GEMM_KERNEL from the environment), 'generic', 'simt', 'mma' or 'wgmma'; a\n"
      "family that cannot run the problem falls back to the next one.");
}
