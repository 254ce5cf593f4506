// Attention forward kernels for head dims up to 64 (fp16 and bf16); see
// kernels/attention_fwd.cuh. One head dim per translation unit: they build in parallel.
#include "cuda/kernels/attention_fwd.cuh"

namespace fastattn::kernels {

template void launch_attention_fwd<::fastattn::device::half_t, 64>(const AttnParams&, void*);
template void launch_attention_fwd<::fastattn::device::bf16_t, 64>(const AttnParams&, void*);

}  // namespace fastattn::kernels
