// The names the CUDA entry points speak, bound in every build (they are plain C++):
// the dtype, activation and kernel-family enums, and the problem descriptions
// GemmProblem and Conv2dProblem, classes with named fields built by keyword. The
// kernels themselves are bound in cuda_bindings.cpp / cuda_conv_bindings.cpp.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <array>
#include <cstdint>
#include <string>
#include <vector>
#include "cuda/api.h"
#include "cuda/conv2d_api.h"
#include "cuda/kernel_family.h"

namespace py = pybind11;
using namespace lepton;

namespace {

// A pybind11 class whose every field is named: built only by keyword (required ones
// must be given, an unknown one is a TypeError naming it), with a repr of all fields.
template <typename T>
class Described {
 public:
  Described(py::module_& m, const char* name, const char* doc) : cls_(m, name, doc), name_(name) {}

  template <typename V>
  Described& field(const char* name, V T::*member, const char* doc) {
    cls_.def_readwrite(name, member, doc);
    fields_.push_back(name);
    return *this;
  }
  // A field stored in several members, seen from Python as one tuple.
  template <std::size_t N>
  Described& tuple(const char* name, std::array<std::int64_t T::*, N> members, const char* doc) {
    cls_.def_property(
        name,
        [members](const T& t) {
          py::tuple v(N);
          for (std::size_t i = 0; i < N; ++i) v[i] = py::int_(t.*members[i]);
          return v;
        },
        [members](T& t, const std::array<std::int64_t, N>& v) {
          for (std::size_t i = 0; i < N; ++i) t.*members[i] = v[i];
        },
        doc);
    fields_.push_back(name);
    return *this;
  }
  // An array member (int64_t[N]) seen as a tuple.
  template <std::size_t N>
  Described& array(const char* name, std::int64_t (T::*member)[N], const char* doc) {
    cls_.def_property(
        name,
        [member](const T& t) {
          py::tuple v(N);
          for (std::size_t i = 0; i < N; ++i) v[i] = py::int_((t.*member)[i]);
          return v;
        },
        [member](T& t, const std::array<std::int64_t, N>& v) {
          for (std::size_t i = 0; i < N; ++i) (t.*member)[i] = v[i];
        },
        doc);
    fields_.push_back(name);
    return *this;
  }

  // __init__(**fields), __repr__, and `fields` (the names, in order).
  void finish(std::vector<std::string> required, void (*complete)(T&, const py::kwargs&) = nullptr) {
    const std::string cls_name = name_;
    const std::vector<std::string> fields = fields_;
    cls_.def(py::init([cls_name, fields, required, complete](const py::kwargs& kw) {
               std::string missing;
               for (const auto& r : required)
                 if (!kw.contains(r.c_str())) missing += (missing.empty() ? "" : ", ") + r;
               if (!missing.empty()) throw py::type_error(cls_name + ": missing field(s) " + missing);
               py::object obj = py::cast(T{});
               for (const auto& item : kw) {
                 const std::string key = py::str(item.first);
                 bool known = false;
                 for (const auto& f : fields) known = known || f == key;
                 if (!known) throw py::type_error(cls_name + ": unknown field '" + key + "'");
                 try {
                   py::setattr(obj, item.first, item.second);
                 } catch (py::error_already_set& e) {
                   throw py::type_error(cls_name + "." + key + ": cannot take " +
                                        std::string(py::repr(item.second)) + " (" + e.what() + ")");
                 }
               }
               T t = obj.cast<T>();
               if (complete) complete(t, kw);
               return t;
             }),
             "Every field by keyword; see `fields`.");
    cls_.def("__repr__", [cls_name, fields](py::object self) {
      std::string out = cls_name + "(";
      for (std::size_t i = 0; i < fields.size(); ++i) {
        if (i) out += ", ";
        out += fields[i] + "=" + std::string(py::repr(self.attr(fields[i].c_str())));
      }
      return out + ")";
    });
    py::list names;
    for (const auto& f : fields_) names.append(f);
    cls_.attr("fields") = py::tuple(names);
  }

 private:
  py::class_<T> cls_;
  std::string name_;
  std::vector<std::string> fields_;
};

template <typename Kernel>
void bind_kernel_families(py::module_& m, const char* name, const char* doc) {
  py::enum_<Kernel> e(m, name, doc);
  for (const auto& [n, k] : KernelFamilies<Kernel>::names) e.value(n, k);
}

}  // namespace

void register_cuda_types(py::module_& m) {
  // Value names are the package's own dtype and activation names.
  py::enum_<DType>(m, "DType", "Element types of the CUDA kernels, named as lepton_accel.dtypes names them.")
      .value("float32", DType::f32)
      .value("float16", DType::f16)
      .value("bfloat16", DType::bf16)
      .value("int8", DType::i8)
      .value("int32", DType::i32);
  py::enum_<Activation>(m, "Activation", "Fused activations: none, relu, gelu (tanh approximation).")
      .value("none", Activation::none)
      .value("relu", Activation::relu)
      .value("gelu", Activation::gelu_tanh);
  bind_kernel_families<GemmKernel>(m, "GemmKernel", "Matrix-multiply kernel families (kernel= names).");
  bind_kernel_families<ConvKernel>(m, "ConvKernel", "Convolution kernel families (kernel= names).");
  bind_kernel_families<ConvGradKernel>(m, "ConvGradKernel",
                                       "Convolution-gradient kernel families (kernel= names).");

  Described<GemmArgs>(m, "GemmProblem",
                      "C[b] = act(A[b] @ B[b] + bias) for b < batch: sizes, element strides along (batch, row,\n"
                      "col) of A (M x K), B (K x N) and C (M x N), dtypes and epilogue. Pointers, stream and\n"
                      "kernel family are given to cuda_gemm.")
      .field("batch", &GemmArgs::batch, "number of products (default 1)")
      .field("M", &GemmArgs::M, "rows of A and C")
      .field("N", &GemmArgs::N, "columns of B and C")
      .field("K", &GemmArgs::K, "columns of A, rows of B")
      .tuple<3>("a_strides", {&GemmArgs::a_batch, &GemmArgs::a_row, &GemmArgs::a_col}, "(batch, row, col)")
      .tuple<3>("b_strides", {&GemmArgs::b_batch, &GemmArgs::b_row, &GemmArgs::b_col}, "(batch, row, col)")
      .tuple<3>("c_strides", {&GemmArgs::c_batch, &GemmArgs::c_row, &GemmArgs::c_col}, "(batch, row, col)")
      .field("in_dtype", &GemmArgs::in_dtype, "DType of A and B")
      .field("out_dtype", &GemmArgs::out_dtype, "DType of C and of the bias")
      .field("activation", &GemmArgs::activation, "Activation (default none)")
      .field("allow_tf32", &GemmArgs::allow_tf32, "float32 may run as TF32 (default False)")
      .finish({"M", "N", "K", "a_strides", "b_strides", "c_strides", "in_dtype", "out_dtype"});

  Described<Conv2dArgs>(m, "Conv2dProblem",
                        "y = act(conv2d(x, w) + bias), PyTorch's cross-correlation, described by logical sizes\n"
                        "and element strides along (n, c, h, w) for x and y and (oc, c/groups, kh, kw) for w, so\n"
                        "any layout works. The bottom/right padding is implied by OH/OW. The gradient entry\n"
                        "points take the same description (out_dtype: the dtype of their result).")
      .field("N", &Conv2dArgs::N, "batch")
      .field("C", &Conv2dArgs::C, "input channels")
      .field("H", &Conv2dArgs::H, "input height")
      .field("W", &Conv2dArgs::W, "input width")
      .field("OC", &Conv2dArgs::OC, "output channels")
      .field("KH", &Conv2dArgs::KH, "filter height")
      .field("KW", &Conv2dArgs::KW, "filter width")
      .field("OH", &Conv2dArgs::OH, "output height")
      .field("OW", &Conv2dArgs::OW, "output width")
      .field("stride_h", &Conv2dArgs::stride_h, "(default 1)")
      .field("stride_w", &Conv2dArgs::stride_w, "(default 1)")
      .field("pad_top", &Conv2dArgs::pad_top, "(default 0)")
      .field("pad_left", &Conv2dArgs::pad_left, "(default 0)")
      .field("dil_h", &Conv2dArgs::dil_h, "(default 1)")
      .field("dil_w", &Conv2dArgs::dil_w, "(default 1)")
      .field("groups", &Conv2dArgs::groups, "(default 1)")
      .array<4>("x_strides", &Conv2dArgs::xs, "element strides of x along (n, c, h, w)")
      .array<4>("w_strides", &Conv2dArgs::ws, "element strides of w along (oc, c/groups, kh, kw)")
      .array<4>("y_strides", &Conv2dArgs::ys, "element strides of y along (n, oc, oh, ow)")
      .field("in_dtype", &Conv2dArgs::in_dtype, "DType of the operands")
      .field("out_dtype", &Conv2dArgs::out_dtype, "DType of the result")
      .field("bias_dtype", &Conv2dArgs::bias_dtype,
             "DType of the bias: out_dtype (the default) or float32 for float outputs")
      .field("activation", &Conv2dArgs::activation, "Activation (default none)")
      .finish({"N", "C", "H", "W", "OC", "KH", "KW", "OH", "OW", "x_strides", "w_strides", "y_strides",
               "in_dtype", "out_dtype"},
              [](Conv2dArgs& a, const py::kwargs& kw) {
                if (!kw.contains("bias_dtype")) a.bias_dtype = a.out_dtype;
              });
}
