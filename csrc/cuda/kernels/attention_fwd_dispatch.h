#pragma once
// dtype x head-dim dispatch of the attention forward, shared by the nvcc build
// (csrc/cuda/attention_fwd.cu) and the emulation build (csrc/emu/attention_fwd_emu.cpp).
// Each build includes this once, in the translation unit that defines
// fastattn::kernels::attention_fwd; the launchers it names are instantiated from
// kernels/attention_fwd.cuh (per head dim under nvcc, all in one TU under emulation).
//
// Head dims: every multiple of 8 up to 256 runs on the next compiled size of {64, 128, 256}
// (zero padding; see attention_fwd.cuh). Anything else is an error naming the value.
#include <stdexcept>
#include <string>

#include "cuda/kernels.h"
#include "fastattn/device/config.h"
#include "fastattn/params.h"

namespace fastattn::kernels {

template <typename T, int kHeadDim>
void launch_attention_fwd(const AttnParams& p, void* stream);

// The compiled head dim that runs head_dim, or 0 when none does.
inline int attention_fwd_kernel_head_dim(int head_dim) {
  if (head_dim <= 0 || head_dim % 8 != 0 || head_dim > 256) return 0;
  return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256;
}

template <typename T>
void dispatch_attention_fwd_head_dim(const AttnParams& p, void* stream) {
  switch (attention_fwd_kernel_head_dim(p.head_dim)) {
    case 64: return launch_attention_fwd<T, 64>(p, stream);
    case 128: return launch_attention_fwd<T, 128>(p, stream);
    case 256: return launch_attention_fwd<T, 256>(p, stream);
    default:
      throw std::invalid_argument("attention_fwd: head_dim = " + std::to_string(p.head_dim) +
                                  " is not supported (multiples of 8 up to 256)");
  }
}

inline void dispatch_attention_fwd(const AttnParams& p, DType dtype, void* stream) {
  switch (dtype) {
    case DType::kFloat16:
      return dispatch_attention_fwd_head_dim<::fastattn::device::half_t>(p, stream);
    case DType::kBFloat16:
      return dispatch_attention_fwd_head_dim<::fastattn::device::bf16_t>(p, stream);
    default:
      throw std::invalid_argument("attention_fwd: dtype " + std::to_string(int(dtype)) +
                                  " is not supported (float16 or bfloat16)");
  }
}

}  // namespace fastattn::kernels
