// Placeholders for kernel entry points that have not landed yet: weak, so the real
// definition (csrc/cuda/<op>.cu, csrc/emu/<op>_emu.cpp) replaces each as it lands.
#include <c10/util/Exception.h>

#include "cuda/kernels.h"

namespace fastattn::kernels {

#define FASTATTN_PENDING(op) \
  TORCH_CHECK_NOT_IMPLEMENTED(false, "fastattn::" op ": CUDA kernel not implemented yet")

__attribute__((weak)) void attention_fwd(const AttnParams&, DType, void*) {
  FASTATTN_PENDING("attention");
}
__attribute__((weak)) int decode_num_splits(const AttnParams&, int) { return 1; }
__attribute__((weak)) int64_t decode_workspace_floats(const AttnParams&, int) { return 0; }
__attribute__((weak)) void paged_decode(const AttnParams&, DType, float*, int, void*) {
  FASTATTN_PENDING("paged_attention");
}
__attribute__((weak)) void append_kv(const AppendKVParams&, DType, void*) {
  FASTATTN_PENDING("append_kv");
}
__attribute__((weak)) void merge_attention_states(const MergeParams&, DType, void*) {
  FASTATTN_PENDING("merge_attention_states");
}

}  // namespace fastattn::kernels
