// Op schemas (TORCH_LIBRARY, from csrc/ops/schemas.h) and the pybind11 module shell
// `fastattn._C`. Implementations register per dispatch key: CPU in csrc/ops/*_ops.cpp,
// CUDA in csrc/ops/kernel_ops.cpp.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <atomic>
#include <string>

#include "cpu/vec.h"
#include "ops/kernel_errors.h"
#include "ops/ops.h"
#include "ops/schemas.h"

#ifndef FASTATTN_VERSION
#define FASTATTN_VERSION "0+unknown"
#endif
#ifndef FASTATTN_TORCH_VERSION
#define FASTATTN_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(fastattn, m) { fastattn::ops::define_ops(m); }

namespace {
// ErrorBits set by _inject_kernel_errors: they take the same path to Python as a CUDA
// kernel's, so that path is tested on machines without a GPU.
std::atomic<int32_t> g_injected_errors{0};
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastattn native extension: ops are registered under torch.ops.fastattn";
  m.def("build_info", []() {
    pybind11::dict info;
    info["version"] = FASTATTN_VERSION;
    info["torch_version"] = FASTATTN_TORCH_VERSION;
#ifdef FASTATTN_WITH_CUDA
    info["cuda"] = true;
    info["cuda_archs"] = FASTATTN_CUDA_ARCHS;
#else
    info["cuda"] = false;
    info["cuda_archs"] = "";
#endif
    // The CPU kernels picked at load time (see FASTATTN_CPU_ISA in the README).
    switch (fastattn::cpu::vec::isa()) {
      case fastattn::cpu::vec::Isa::generic: info["cpu_isa"] = "generic"; break;
      case fastattn::cpu::vec::Isa::avx512: info["cpu_isa"] = "avx512"; break;
      case fastattn::cpu::vec::Isa::avx512_bf16: info["cpu_isa"] = "avx512_bf16"; break;
    }
    return info;
  });
  // The error is returned, not thrown: a c10::ValueError thrown through a plain pybind11
  // binding reaches Python as RuntimeError unless this module's pybind11 is torch's own.
  m.def(
      "take_kernel_errors",
      []() -> std::string {
        int32_t bits = 0;
#ifdef FASTATTN_WITH_CUDA
        bits = fastattn::ops::take_kernel_error_bits();  // may refuse (capture): first
#endif
        bits |= g_injected_errors.exchange(0);
        return bits ? fastattn::ops::kernel_error_message(bits, "since the last check,") : "";
      },
      // Other Python threads of a server keep running while the devices synchronise.
      pybind11::call_guard<pybind11::gil_scoped_release>(),
      "Synchronise every device fastattn used, then return the message for the invalid "
      "index values its CUDA kernels found since the last check ('' when none) and clear them");
  m.def(
      "_inject_kernel_errors", [](int32_t bits) { g_injected_errors |= bits; },
      "Test hook: report ErrorBits at the next take_kernel_errors(), as a kernel would",
      pybind11::arg("bits"));
  m.def("_unsupported_gpu_message", &fastattn::ops::unsupported_gpu_message,
        "Test hook: the error a device of this compute capability gets ('' when supported)",
        pybind11::arg("device"), pybind11::arg("name"), pybind11::arg("major"),
        pybind11::arg("minor"));
}
