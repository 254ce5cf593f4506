// Attention forward kernels for head dims up to 64 (fp16 and bf16 queries; K/V of the same
// dtype or fp8); see kernels/attention_fwd.cuh. One head dim per translation unit: they
// build in parallel.
#include "cuda/kernels/attention_fwd.cuh"

namespace fastattn::kernels {

FASTATTN_INSTANTIATE_ATTENTION_FWD(64)

}  // namespace fastattn::kernels
