// append_kv for the CUDA build; csrc/emu/append_kv_emu.cpp compiles this same file for
// the CPU emulation.
#include "cuda/kernels/append_kv.cuh"

namespace fastattn::kernels {

void append_kv(const AppendKVParams& p, DType dtype, void* stream) {
  dispatch_dtype(dtype, [&](auto t) { launch_append_kv<decltype(t)>(p, stream); });
}

}  // namespace fastattn::kernels
