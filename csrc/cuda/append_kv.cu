// append_kv for the CUDA build; csrc/emu/append_kv_emu.cpp compiles this same file for
// the CPU emulation.
#include "cuda/kernels/append_kv.cuh"

namespace fastattn::kernels {

void append_kv(const AppendKVParams& p, DType dtype, DType cache_dtype, void* stream) {
  dispatch_cache_dtype(dtype, cache_dtype, [&](auto t, auto c) {
    launch_append_kv<decltype(t), decltype(c)>(p, stream);
  });
}

}  // namespace fastattn::kernels
