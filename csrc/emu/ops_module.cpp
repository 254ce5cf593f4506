// fastattn._emu_ops (tests only): torch.ops.fastattn_emu.* take CPU tensors and run the
// CUDA kernel sources on the CPU emulation, with the schemas of torch.ops.fastattn.*.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "fastattn/device/emu_runtime.h"
#include "ops/ops.h"
#include "ops/schemas.h"

TORCH_LIBRARY(fastattn_emu, m) { fastattn::ops::define_ops(m); }

PYBIND11_MODULE(_emu_ops, m) {
  m.doc() = "Test-only: torch.ops.fastattn_emu.* run the CUDA kernels on the CPU emulation";
  m.def(
      "set_schedule",
      [](uint64_t seed) {
        fastattn::emu::options().schedule = fastattn::emu::Schedule::from_seed(seed);
      },
      pybind11::arg("seed"),
      "Thread order and cp.async timing of this thread's later launches (see csrc/emu/README.md)");
  m.def(
      "set_sm",
      [](int sm) {
        if (sm != 80 && sm != 90) throw pybind11::value_error("set_sm: 80 or 90");
        fastattn::emu::options().sm = sm;
      },
      pybind11::arg("sm"),
      "Compute capability x 10 the emulated dispatch sees: 90 selects the sm_90a kernels");
  m.def("set_num_sms", &fastattn::ops::set_emu_num_sms, pybind11::arg("n"),
        "Multiprocessor count the emulated decode sizes its split-KV for");
}
