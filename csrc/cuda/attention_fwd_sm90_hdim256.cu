// sm_90a attention forward kernels for head dims up to 256 (fp16 and bf16); see
// kernels/attention_fwd_sm90.cuh. Other architectures' passes compile a trap.
#include "cuda/kernels/attention_fwd_sm90.cuh"

namespace fastattn::kernels {

FASTATTN_INSTANTIATE_ATTENTION_FWD_SM90(256)

}  // namespace fastattn::kernels
