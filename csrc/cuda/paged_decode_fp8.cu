// Paged decode over fp8 KV caches (e4m3, e5m2; fp16 or bf16 queries): the instantiations
// that csrc/cuda/paged_decode.cu dispatches to, in their own translation unit so that the
// two build in parallel. csrc/emu/paged_decode_fp8_emu.cpp compiles it for the emulation.
#include "cuda/kernels/paged_decode.cuh"

namespace fastattn::kernels {

namespace dev = ::fastattn::device;
template void launch_paged_decode<dev::half_t, dev::fp8_e4m3_t>(
    const AttnParams&, float*, int, void*);
template void launch_paged_decode<dev::half_t, dev::fp8_e5m2_t>(
    const AttnParams&, float*, int, void*);
template void launch_paged_decode<dev::bf16_t, dev::fp8_e4m3_t>(
    const AttnParams&, float*, int, void*);
template void launch_paged_decode<dev::bf16_t, dev::fp8_e5m2_t>(
    const AttnParams&, float*, int, void*);

}  // namespace fastattn::kernels
