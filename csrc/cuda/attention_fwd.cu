// fastattn::kernels::attention_fwd: the dtype x cache dtype x head-dim dispatch
// (kernels/attention_fwd_dispatch.h). Under nvcc the kernels are instantiated one head
// dim per translation unit (attention_fwd_hdim*.cu) so that they compile in parallel;
// the emulation build includes this file after the kernel source (attention_fwd_emu.cpp).
#include "cuda/kernels/attention_fwd_dispatch.h"

namespace fastattn::kernels {

void attention_fwd(const AttnParams& p, DType dtype, DType kv_dtype, void* stream) {
  dispatch_attention_fwd(p, dtype, kv_dtype, stream);
}

}  // namespace fastattn::kernels
