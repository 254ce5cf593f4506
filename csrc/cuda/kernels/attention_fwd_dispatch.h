#pragma once
// dtype x cache dtype x head-dim dispatch of the attention forward, shared by the nvcc build
// (csrc/cuda/attention_fwd.cu) and the emulation build (csrc/emu/attention_fwd_emu.cpp).
// Each build includes this once, in the translation unit that defines
// fastattn::kernels::attention_fwd; the launchers it names are instantiated from
// kernels/attention_fwd.cuh (per head dim under nvcc, all in one TU under emulation).
//
// Architecture: sm_90 devices run the sm_90a kernels (attention_fwd_sm90.cuh) where they
// apply (sm90_kernels_selected); every other case runs the mma.sync kernels.
//
// Head dims: every multiple of 8 up to 256 runs on the next compiled size of {64, 128, 256}
// (zero padding; see attention_fwd.cuh). Anything else is an error naming the value.
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/kernels.h"
#include "cuda/kernels/common.cuh"
#include "fastattn/params.h"

namespace fastattn::kernels {

template <typename T, typename C, int kHeadDim>
void launch_attention_fwd(const AttnParams& p, void* stream);
template <typename T, int kHeadDim>
void launch_attention_fwd_sm90(const AttnParams& p, void* stream);

// Whether the sm_90a kernels (attention_fwd_sm90.cuh) run this call: the current device is
// sm_90 (H100/H200; sm_90a code does not run on later architectures), the build has sm_90a
// code, the cache is not fp8, and $FASTATTN_CUDA_KERNELS is not "sm80" (which forces the
// mma.sync kernels, for A/B runs). The emulation reports the capability set by
// emu::options().sm.
inline bool sm90_kernels_selected(bool fp8_cache) {
  const char* env = std::getenv("FASTATTN_CUDA_KERNELS");
  const std::string choice = env ? env : "";
  if (!choice.empty() && choice != "auto" && choice != "sm80") {
    throw std::invalid_argument("FASTATTN_CUDA_KERNELS=" + choice +
                                " is not supported (auto or sm80)");
  }
  if (choice == "sm80" || fp8_cache) return false;
#if defined(FASTATTN_EMULATION)
  return ::fastattn::emu::options().sm == 90;
#elif defined(FASTATTN_HAS_SM90A)
  // Per device ordinal, cached: 0 unknown, 1 sm_90, 2 other.
  static std::atomic<int> cached[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (device < 0 || device >= 64) return false;
  int known = cached[device].load(std::memory_order_relaxed);
  if (known == 0) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    known = major == 9 && minor == 0 ? 1 : 2;
    cached[device].store(known, std::memory_order_relaxed);
  }
  return known == 1;
#else
  return false;
#endif
}

template <typename T, typename C>
void dispatch_attention_fwd_head_dim(const AttnParams& p, void* stream) {
  [[maybe_unused]] const bool sm90 = sm90_kernels_selected(!std::is_same_v<T, C>);
  if constexpr (std::is_same_v<T, C>) {
    if (sm90) {
      switch (compiled_head_dim(p.head_dim)) {
        case 64: return launch_attention_fwd_sm90<T, 64>(p, stream);
        case 128: return launch_attention_fwd_sm90<T, 128>(p, stream);
        case 256: return launch_attention_fwd_sm90<T, 256>(p, stream);
        default: break;  // the error below
      }
    }
  }
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
