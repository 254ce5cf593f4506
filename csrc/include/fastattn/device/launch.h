#pragma once
// Launching a kernel, identically in both builds:
//
//   fastattn::device::launch(my_kernel<kBlockM>, {grid, block, smem_bytes, stream}, params);
//
// nvcc: kernel<<<grid, block, smem_bytes, stream>>>(args...), raising the kernel's dynamic
// shared-memory limit first when smem_bytes exceeds the 48 KiB default; launch errors throw
// std::runtime_error (the kernel itself runs asynchronously, as usual).
// Emulation: runs the whole grid on the CPU before returning, under the calling thread's
// emu::options() (schedule, workers); errors inside the kernel throw std::runtime_error.
// Arguments are converted to the kernel's parameter types once and every thread gets its
// own copy, as CUDA passes kernel parameters by value.
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "fastattn/device/config.h"

FA_DEVICE_NAMESPACE_BEGIN

#if defined(__CUDACC__)
using stream_t = cudaStream_t;
#else
using stream_t = void*;  // launches are synchronous; kept so launch sites compile unchanged
#endif

struct LaunchConfig {
  dim3 grid;
  dim3 block;
  std::size_t smem_bytes = 0;  // dynamic shared memory per block
  stream_t stream = nullptr;
};

#if defined(__CUDACC__)
namespace detail {
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fastattn: ") + what + ": " + cudaGetErrorString(err));
  }
}
}  // namespace detail

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), const LaunchConfig& cfg, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel argument count");
  constexpr std::size_t kDefaultSmemLimit = 48 * 1024;
  if (cfg.smem_bytes > kDefaultSmemLimit) {
    detail::check_cuda(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(cfg.smem_bytes)),
                       "raising the dynamic shared memory limit");
  }
  kernel<<<cfg.grid, cfg.block, cfg.smem_bytes, cfg.stream>>>(std::forward<Args>(args)...);
  detail::check_cuda(cudaGetLastError(), "kernel launch");
}

// Waits for the stream and reports errors raised while the kernels ran (tests only: ops
// must not synchronise).
inline void synchronize(stream_t stream = nullptr) {
  detail::check_cuda(cudaStreamSynchronize(stream), "kernel execution");
}
#else
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), const LaunchConfig& cfg, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel argument count");
  struct Call {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
    static void run(void* self) {
      auto* call = static_cast<Call*>(self);
      // std::apply passes lvalues: each thread's parameters are copies of these.
      std::apply(call->kernel, call->params);
    }
  };
  Call call{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  ::fastattn::emu::launch(cfg.grid, cfg.block, cfg.smem_bytes, {&Call::run, &call});
}

inline void synchronize(stream_t = nullptr) {}
#endif

FA_DEVICE_NAMESPACE_END
