// The names of the kernel families, and the one parser for them: the `kernel=` argument
// of the bindings, the environment variables that steer `auto`, and the Python enums
// all read the tables below. Plain C++, so the bindings compile without nvcc.
#pragma once
#include <array>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include "cuda/api.h"
#include "cuda/conv2d_api.h"

namespace lepton {

template <typename Kernel>
struct KernelFamilies;

template <>
struct KernelFamilies<GemmKernel> {
  static constexpr const char* env = "LEPTON_ACCEL_GEMM_KERNEL";
  static constexpr std::array<std::pair<const char*, GemmKernel>, 5> names{{
      {"auto", GemmKernel::auto_},
      {"generic", GemmKernel::generic},
      {"simt", GemmKernel::simt},
      {"mma", GemmKernel::mma},
      {"wgmma", GemmKernel::wgmma},
  }};
};

template <>
struct KernelFamilies<ConvKernel> {
  static constexpr const char* env = "LEPTON_ACCEL_CONV_KERNEL";
  static constexpr std::array<std::pair<const char*, ConvKernel>, 5> names{{
      {"auto", ConvKernel::auto_},
      {"generic", ConvKernel::generic},
      {"depthwise", ConvKernel::depthwise},
      {"mma", ConvKernel::mma},
      {"wgmma", ConvKernel::wgmma},
  }};
};

template <>
struct KernelFamilies<ConvGradKernel> {
  static constexpr const char* env = "LEPTON_ACCEL_CONV_GRAD_KERNEL";
  static constexpr std::array<std::pair<const char*, ConvGradKernel>, 3> names{{
      {"auto", ConvGradKernel::auto_},
      {"generic", ConvGradKernel::generic},
      {"simt", ConvGradKernel::simt},
  }};
};

// "auto, generic, simt, mma or wgmma"
template <typename Kernel>
std::string kernel_choices() {
  const auto& names = KernelFamilies<Kernel>::names;
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i) out += (i + 1 == names.size()) ? " or " : ", ";
    out += names[i].first;
  }
  return out;
}

template <typename Kernel>
std::optional<Kernel> kernel_from_name(std::string_view name) {
  for (const auto& [n, k] : KernelFamilies<Kernel>::names)
    if (name == n) return k;
  return std::nullopt;
}

// A family named by a caller's argument: std::invalid_argument (Python's ValueError)
// naming the argument and the choices when the name is unknown.
template <typename Kernel>
Kernel parse_kernel(std::string_view name, const char* argument) {
  if (auto k = kernel_from_name<Kernel>(name)) return *k;
  throw std::invalid_argument(std::string(argument) + " must be " + kernel_choices<Kernel>() + ", not '" +
                              std::string(name) + "'");
}

// The family a dispatcher should prefer: the caller's, or with auto_ the one the
// family's environment variable names (unset or empty: auto_). An unknown name there is
// a CudaError, raised at the call it would have steered.
template <typename Kernel>
Kernel requested_kernel(Kernel k) {
  if (k != Kernel::auto_) return k;
  const char* env = std::getenv(KernelFamilies<Kernel>::env);
  if (!env || !*env) return Kernel::auto_;
  if (auto named = kernel_from_name<Kernel>(env)) return *named;
  throw CudaError(std::string(KernelFamilies<Kernel>::env) + " must be " + kernel_choices<Kernel>() + ", not '" +
                  env + "'");
}

}  // namespace lepton
