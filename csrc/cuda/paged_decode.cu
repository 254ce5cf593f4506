// Paged decode (GQA-packed, split-KV) for the CUDA build; csrc/emu/paged_decode_emu.cpp
// compiles this same file for the CPU emulation. Dispatch: dtype (fp16, bf16) x kHeadDim
// (64, 128, 256; a runtime D <= kHeadDim, multiple of 8) x packed heads (1, 2, 4, 8);
// see csrc/cuda/kernels/paged_decode.cuh.
#include "cuda/kernels/paged_decode.cuh"

namespace fastattn::kernels {

int decode_num_splits(const AttnParams& p, int num_sms) {
  return decode_num_splits_for(p, num_sms);
}

int64_t decode_workspace_floats(const AttnParams& p, int num_splits) {
  return decode_workspace_floats_for(p, num_splits);
}

void paged_decode(const AttnParams& p, DType dtype, float* workspace, int num_splits,
                  void* stream) {
  dispatch_dtype(dtype, [&](auto t) {
    launch_paged_decode<decltype(t)>(p, workspace, num_splits, stream);
  });
}

}  // namespace fastattn::kernels
