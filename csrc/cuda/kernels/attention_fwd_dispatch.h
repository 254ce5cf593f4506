#pragma once
// dtype x cache dtype x head-dim dispatch of the attention forward, shared by the nvcc build
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
#include "cuda/kernels/common.cuh"
#include "fastattn/params.h"

namespace fastattn::kernels {

template <typename T, typename C, int kHeadDim>
void launch_attention_fwd(const AttnParams& p, void* stream);

template <typename T, typename C>
void dispatch_attention_fwd_head_dim(const AttnParams& p, void* stream) {
  switch (compiled_head_dim(p.head_dim)) {
    case 64: return launch_attention_fwd<T, C, 64>(p, stream);
    case 128: return launch_attention_fwd<T, C, 128>(p, stream);
    case 256: return launch_attention_fwd<T, C, 256>(p, stream);
    default:
      throw std::invalid_argument("attention_fwd: head_dim = " + std::to_string(p.head_dim) +
                                  " is not supported (multiples of 8 up to 256)");
  }
}

inline void dispatch_attention_fwd(const AttnParams& p, DType dtype, DType kv_dtype,
                                   void* stream) {
  dispatch_cache_dtype(dtype, kv_dtype, [&](auto t, auto c) {
    dispatch_attention_fwd_head_dim<decltype(t), decltype(c)>(p, stream);
  });
}

}  // namespace fastattn::kernels
