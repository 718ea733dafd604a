// pybind11 entry points for the CUDA kernels: argument marshalling only.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include "cuda/api.h"

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
      [](std::uintptr_t a, std::uintptr_t b, std::uintptr_t c, std::uintptr_t bias,
         std::int64_t batch, std::int64_t M, std::int64_t N, std::int64_t K,
         std::tuple<std::int64_t, std::int64_t, std::int64_t> sa,
         std::tuple<std::int64_t, std::int64_t, std::int64_t> sb,
         std::tuple<std::int64_t, std::int64_t, std::int64_t> sc, int in_dtype, int out_dtype,
         int activation, bool allow_tf32, std::uintptr_t stream, const std::string& kernel) {
        GemmArgs g;
        g.a = a; g.b = b; g.c = c; g.bias = bias;
        g.batch = batch; g.M = M; g.N = N; g.K = K;
        std::tie(g.a_batch, g.a_row, g.a_col) = sa;
        std::tie(g.b_batch, g.b_row, g.b_col) = sb;
        std::tie(g.c_batch, g.c_row, g.c_col) = sc;
        g.in_dtype = static_cast<DType>(in_dtype);
        g.out_dtype = static_cast<DType>(out_dtype);
        g.activation = static_cast<Activation>(activation);
        g.allow_tf32 = allow_tf32;
        g.stream = stream;
        if (kernel == "auto") g.kernel = GemmKernel::auto_;
        else if (kernel == "generic") g.kernel = GemmKernel::generic;
        else if (kernel == "simt") g.kernel = GemmKernel::simt;
        else if (kernel == "mma") g.kernel = GemmKernel::mma;
        else if (kernel == "wgmma") g.kernel = GemmKernel::wgmma;
        else throw py::value_error("kernel must be auto, generic, simt, mma or wgmma");
        py::gil_scoped_release nogil;
        return gemm(g);
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("bias"), py::arg("batch"), py::arg("M"),
      py::arg("N"), py::arg("K"), py::arg("a_strides"), py::arg("b_strides"),
      py::arg("c_strides"), py::arg("in_dtype"), py::arg("out_dtype"), py::arg("activation"),
      py::arg("allow_tf32") = false, py::arg("stream") = 0, py::kw_only(),
      py::arg("kernel") = "auto",
      "C[b] = act(A[b] @ B[b] + bias); strides (batch, row, col) in elements. Returns the kernel name.\n"
      "kernel: 'auto' (or LEPTON_ACCEL_GEMM_KERNEL from the environment), 'generic', 'simt',\n"
      "'mma' or 'wgmma'; a family that cannot run the problem falls back to the next one.");
}
