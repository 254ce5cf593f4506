#pragma once
// Build mode of the device layer, the portable kernel qualifiers, thread and block indices,
// vector types, and shared memory.
//
// A kernel source (.cuh) is compiled in one of two modes and is identical in both:
//   - nvcc (__CUDACC__): the wrappers are inline PTX or CUDA intrinsics.
//   - host emulation (FASTATTN_EMULATION, g++/clang): the wrappers call the runtime in
//     csrc/emu, which runs every CUDA thread of a block as its own fiber so that barriers,
//     warp collectives and shared memory behave as on the GPU (see emu_runtime.h).
//
// Kernel sources use, from this header: FA_KERNEL, FA_DEVICE, FA_LAUNCH_BOUNDS, FA_UNROLL,
// FA_SHARED, threadIdx/blockIdx/blockDim/gridDim, lane_id()/warp_id()/thread_rank(),
// dynamic_smem<T>(), the vector types (uint4, float2, ...) and half_t/bf16_t. Include the
// device headers after any torch/pybind11 header: under emulation threadIdx and friends
// are macros.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(FASTATTN_EMULATION) && defined(__CUDACC__)
#error "fastattn/device: FASTATTN_EMULATION is for host compilers; nvcc builds the real kernels"
#endif
#if !defined(FASTATTN_EMULATION) && !defined(__CUDACC__)
#error "fastattn/device: compile with nvcc, or define FASTATTN_EMULATION for the CPU emulation"
#endif

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#else
#include "fastattn/device/emu_runtime.h"
#endif

// Device passes of nvcc that may use Hopper instructions: FA_SM90 for sm_90 and later
// (mbarrier tx-counts, TMA, elect.sync, fence.proxy.async), FA_SM90A for the
// architecture-specific sm_90a ones (wgmma, setmaxnreg). Other passes (sm_80) compile the
// Hopper wrappers to a trap: a kernel using them must not be launched there.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FA_SM90 1
#endif
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FA_SM90A 1
#endif

// The two builds put their device functions in different inline namespaces: one binary may
// hold the same kernel source compiled both ways (the test module does), and the inline
// functions of the two must not be merged by the linker.
#if defined(__CUDACC__)
#define FA_DEVICE_NAMESPACE_BEGIN \
  namespace fastattn::device {    \
  inline namespace cuda_v1 {
#else
#define FA_DEVICE_NAMESPACE_BEGIN \
  namespace fastattn::device {    \
  inline namespace emu_v1 {
#endif
#define FA_DEVICE_NAMESPACE_END \
  }                             \
  }

#if defined(__CUDACC__)
// A kernel entry point (launch it with fastattn::device::launch).
#define FA_KERNEL __global__
// A function called from kernels.
#define FA_DEVICE __device__ __forceinline__
// __launch_bounds__(max_threads[, min_blocks]): register allocation hint, no-op when emulated.
#define FA_LAUNCH_BOUNDS(...) __launch_bounds__(__VA_ARGS__)
#define FA_UNROLL _Pragma("unroll")
// A loop kept rolled: fewer registers where they are scarce (a setmaxnreg-lowered producer).
#define FA_NO_UNROLL _Pragma("unroll 1")
// Block-scope static shared memory: FA_SHARED(float[4][64], red);  (T may be an array type;
// no initializer, as for __shared__). 16-byte aligned so ldmatrix/cp.async rows can live there.
#define FA_SHARED(T, name) __shared__ __align__(16) std::type_identity_t<T> name
#else
#define FA_KERNEL
#define FA_DEVICE inline
#define FA_LAUNCH_BOUNDS(...)
#define FA_UNROLL
#define FA_NO_UNROLL
// Emulation: a reference to a per-block allocation that the runtime makes when the first
// thread of the block reaches the declaration and frees when the block ends. Each block
// starts from poisoned bytes (0xFF: NaN for fp32, fp16 and bf16), like uninitialised
// shared memory, and ASan sees each variable as its own heap object.
#define FA_SHARED(T, name) auto& name = ::fastattn::device::detail::static_shared<T>([] {})

// CUDA's built-in variables, read from the running fiber (thread_local would be per OS
// thread, shared by all fibers of a block).
#define threadIdx (::fastattn::emu::current().thread_idx)
#define blockIdx (::fastattn::emu::current().block_idx)
#define blockDim (::fastattn::emu::current().block_dim)
#define gridDim (::fastattn::emu::current().grid_dim)
#endif

FA_DEVICE_NAMESPACE_BEGIN

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

#if defined(__CUDACC__)
using ::dim3;
using ::float2;
using ::float4;
using ::int2;
using ::int4;
using ::uint2;
using ::uint3;
using ::uint4;
using half_t = ::__half;
using bf16_t = ::__nv_bfloat16;
#else
using ::fastattn::emu::dim3;
using ::fastattn::emu::uint3;
// Same size and alignment as CUDA's vector types, so 8- and 16-byte accesses through them
// have the same alignment requirements in both builds.
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
// Storage-only 16-bit floats (convert with to_float / from_float in math.h). Layout
// compatible with __half, __nv_bfloat16, at::Half and at::BFloat16.
struct alignas(2) half_t {
  uint16_t bits;
};
struct alignas(2) bf16_t {
  uint16_t bits;
};
#endif
static_assert(sizeof(half_t) == 2 && sizeof(bf16_t) == 2, "16-bit float storage");

// Linear thread index inside the block: x fastest, as CUDA numbers lanes and warps.
FA_DEVICE unsigned thread_rank() {
#if defined(__CUDACC__)
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
#else
  return ::fastattn::emu::current().linear_tid;
#endif
}

// Lane inside the warp (0..31). Warps are consecutive groups of 32 linear thread indices.
FA_DEVICE unsigned lane_id() {
#if defined(__CUDACC__)
  unsigned lane;
  asm("mov.u32 %0, %%laneid;" : "=r"(lane));
  return lane;
#else
  return ::fastattn::emu::current().lane;
#endif
}

FA_DEVICE unsigned warp_id() { return thread_rank() / kWarpSize; }

// The block's dynamic shared memory (the smem_bytes of the launch), 16-byte aligned.
template <class T>
FA_DEVICE T* dynamic_smem() {
#if defined(__CUDACC__)
  // One declaration type for every T: nvcc rejects extern __shared__ arrays that are
  // redeclared with different types in one translation unit.
  extern __shared__ __align__(16) unsigned char fa_dynamic_smem_[];
  return reinterpret_cast<T*>(fa_dynamic_smem_);
#else
  return static_cast<T*>(::fastattn::emu::dynamic_smem());
#endif
}

#if !defined(__CUDACC__)
namespace detail {
// The unique lambda type of each FA_SHARED declaration site selects a distinct `key`.
template <class T, class Site>
inline T& static_shared(Site) {
  static_assert(std::is_trivially_default_constructible_v<T> &&
                    std::is_trivially_destructible_v<T>,
                "shared variables must be trivial, as under CUDA");
  static char key;
  constexpr std::size_t align = alignof(T) > 16 ? alignof(T) : 16;
  return *static_cast<T*>(::fastattn::emu::static_smem(&key, sizeof(T), align));
}
}  // namespace detail
#endif

// The shared-window address of a pointer into shared memory (cvta.to.shared): what
// mbarrier, TMA and wgmma descriptors take. The emulation keeps a window of its own
// (emu_runtime.h: shared_address) with the same alignment as the kernel's pointers.
FA_DEVICE uint32_t smem_u32(const void* p) {
#if defined(__CUDACC__)
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#else
  return ::fastattn::emu::shared_address(p);
#endif
}

// Aborts the kernel: __trap() on the GPU (the launch fails with an error), an error naming
// the thread under emulation.
FA_DEVICE void trap() {
#if defined(__CUDACC__)
  __trap();
#else
  ::fastattn::emu::fail("trap() called");
#endif
}

FA_DEVICE_NAMESPACE_END
