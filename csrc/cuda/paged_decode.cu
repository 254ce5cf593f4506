// Paged decode (GQA-packed, split-KV) for the CUDA build; csrc/emu/paged_decode_emu.cpp
// compiles this same file for the CPU emulation. Dispatch: dtype (fp16, bf16) x cache
// dtype (the same, or fp8 e4m3 / e5m2: paged_decode_fp8.cu, compiled in parallel) x
// kHeadDim (64, 128, 256; a runtime D <= kHeadDim, multiple of 8) x packed heads (1, 2, 4,
// 8; at most 4 for fp8); see csrc/cuda/kernels/paged_decode.cuh.
#include "cuda/kernels/paged_decode.cuh"

namespace fastattn::kernels {

namespace dev = ::fastattn::device;
extern template void launch_paged_decode<dev::half_t, dev::fp8_e4m3_t>(
    const AttnParams&, float*, int, void*);
extern template void launch_paged_decode<dev::half_t, dev::fp8_e5m2_t>(
    const AttnParams&, float*, int, void*);
extern template void launch_paged_decode<dev::bf16_t, dev::fp8_e4m3_t>(
    const AttnParams&, float*, int, void*);
extern template void launch_paged_decode<dev::bf16_t, dev::fp8_e5m2_t>(
    const AttnParams&, float*, int, void*);

int decode_num_splits(const AttnParams& p, DType kv_dtype, int num_sms) {
  return decode_num_splits_for(p, decode_max_group(is_fp8(kv_dtype)), num_sms);
}

int64_t decode_workspace_floats(const AttnParams& p, int num_splits) {
  return decode_workspace_floats_for(p, num_splits);
}

void paged_decode(const AttnParams& p, DType dtype, DType kv_dtype, float* workspace,
                  int num_splits, void* stream) {
  dispatch_cache_dtype(dtype, kv_dtype, [&](auto t, auto c) {
    launch_paged_decode<decltype(t), decltype(c)>(p, workspace, num_splits, stream);
  });
}

}  // namespace fastattn::kernels
