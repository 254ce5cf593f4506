// merge_attention_states for the CUDA build; csrc/emu/merge_emu.cpp compiles this same
// file for the CPU emulation.
#include "cuda/kernels/merge.cuh"

namespace fastattn::kernels {

void merge_attention_states(const MergeParams& p, DType dtype, void* stream) {
  dispatch_dtype(dtype, [&](auto t) { launch_merge_states<decltype(t)>(p, stream); });
}

}  // namespace fastattn::kernels
