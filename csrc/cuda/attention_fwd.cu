// fastattn::kernels::attention_fwd for the nvcc build: the dtype x head-dim dispatch
// (kernels/attention_fwd_dispatch.h). The kernels are instantiated one head dim per
// translation unit (attention_fwd_hdim*.cu) so that they compile in parallel.
#include "cuda/kernels/attention_fwd_dispatch.h"

namespace fastattn::kernels {

void attention_fwd(const AttnParams& p, DType dtype, void* stream) {
  dispatch_attention_fwd(p, dtype, (cudaStream_t)stream);
}

}  // namespace fastattn::kernels
