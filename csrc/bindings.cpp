// Op schemas (TORCH_LIBRARY, from csrc/ops/schemas.h) and the pybind11 module shell
// `fastattn._C`. Implementations register per dispatch key: CPU in csrc/ops/*_ops.cpp,
// CUDA in csrc/ops/kernel_ops.cpp.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "cpu/vec.h"
#include "ops/ops.h"
#include "ops/schemas.h"

#ifndef FASTATTN_VERSION
#define FASTATTN_VERSION "0+unknown"
#endif
#ifndef FASTATTN_TORCH_VERSION
#define FASTATTN_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(fastattn, m) { fastattn::ops::define_ops(m); }

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
#ifdef FASTATTN_WITH_CUDA
  m.def("check_errors", &fastattn::ops::check_kernel_errors,
        "Synchronise every device, then raise ValueError for index values that CUDA kernels "
        "found out of range since the last check");
#endif
}
