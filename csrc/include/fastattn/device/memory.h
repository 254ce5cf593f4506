#pragma once
// Asynchronous global -> shared copies (cp.async, sm_80+) and atomics.
//
// cp.async: a copy issued by a thread may land in shared memory at any time up to the
// cp.async.wait_group that covers its group, and the data is only guaranteed visible to
// the issuing thread after that wait; other threads need a block barrier after it. No
// order between copies is guaranteed. The emulation lands copies as late (at the wait),
// as early (at issue) or as randomly as the schedule says, so a missing wait or a missing
// barrier before a buffer is refilled changes the result.
#include "fastattn/device/config.h"

#if !defined(__CUDACC__)
#include <atomic>
#endif

FA_DEVICE_NAMESPACE_BEGIN

// cp.async.cg.shared.global [smem_dst], [gmem_src], 16, src_bytes: copies src_bytes
// (0..16) bytes and zero-fills the rest of the 16, bypassing L1. Both addresses must be
// 16-byte aligned; smem_dst must be shared memory. src_bytes = 0 reads nothing (the usual
// way to zero-fill rows past the end of a tensor; gmem_src must still be a valid address).
FA_DEVICE void cp_async_16(void* smem_dst, const void* gmem_src, unsigned src_bytes = 16) {
#if defined(__CUDACC__)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
#else
  ::fastattn::emu::cp_async(smem_dst, gmem_src, 16, src_bytes);
#endif
}

// cp.async.commit_group: closes the group of this thread's copies issued since the last
// commit (possibly empty; empty groups count for wait_group).
FA_DEVICE void cp_async_commit() {
#if defined(__CUDACC__)
  asm volatile("cp.async.commit_group;" ::: "memory");
#else
  ::fastattn::emu::cp_async_commit();
#endif
}

// cp.async.wait_group N: waits until at most the N most recent committed groups of this
// thread are pending (all older ones landed). Uncommitted copies are not waited for.
template <int N>
FA_DEVICE void cp_async_wait() {
  static_assert(N >= 0, "wait_group takes a non-negative immediate");
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#else
  ::fastattn::emu::cp_async_wait(unsigned(N));
#endif
}

// cp.async.wait_all: commit_group then wait_group 0.
FA_DEVICE void cp_async_wait_all() {
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_all;" ::: "memory");
#else
  ::fastattn::emu::cp_async_commit();
  ::fastattn::emu::cp_async_wait(0);
#endif
}

// ---------------------------------------------------------------------------------------
// Atomics on global or shared memory: relaxed read-modify-write at device scope, returning
// the old value (CUDA's atomicXxx). The emulation uses std::atomic_ref: blocks of one launch
// run on several OS threads at once, so cross-block atomics race for real there too.
// ---------------------------------------------------------------------------------------
#if defined(__CUDACC__)
#define FA_ATOMIC_RMW(name, cuda_fn, std_op, T) \
  FA_DEVICE T name(T* addr, T v) { return cuda_fn(addr, v); }
#else
#define FA_ATOMIC_RMW(name, cuda_fn, std_op, T)                    \
  FA_DEVICE T name(T* addr, T v) {                                 \
    return std::atomic_ref<T>(*addr).std_op(v, std::memory_order_relaxed); \
  }
#endif

FA_ATOMIC_RMW(atomic_add, atomicAdd, fetch_add, float)
FA_ATOMIC_RMW(atomic_add, atomicAdd, fetch_add, int)
FA_ATOMIC_RMW(atomic_add, atomicAdd, fetch_add, unsigned)
FA_ATOMIC_RMW(atomic_or, atomicOr, fetch_or, int)
FA_ATOMIC_RMW(atomic_or, atomicOr, fetch_or, unsigned)
FA_ATOMIC_RMW(atomic_and, atomicAnd, fetch_and, int)
FA_ATOMIC_RMW(atomic_and, atomicAnd, fetch_and, unsigned)
FA_ATOMIC_RMW(atomic_exch, atomicExch, exchange, int)
FA_ATOMIC_RMW(atomic_exch, atomicExch, exchange, unsigned)
FA_ATOMIC_RMW(atomic_exch, atomicExch, exchange, float)
#undef FA_ATOMIC_RMW

#if !defined(__CUDACC__)
namespace detail {
template <class T, class Better>
inline T atomic_update_if(T* addr, T v, Better better) {
  std::atomic_ref<T> ref(*addr);
  T old = ref.load(std::memory_order_relaxed);
  while (better(v, old) &&
         !ref.compare_exchange_weak(old, v, std::memory_order_relaxed, std::memory_order_relaxed)) {
  }
  return old;
}
}  // namespace detail
#endif

// atomicMax / atomicMin on 32-bit integers.
#if defined(__CUDACC__)
FA_DEVICE int atomic_max(int* addr, int v) { return atomicMax(addr, v); }
FA_DEVICE unsigned atomic_max(unsigned* addr, unsigned v) { return atomicMax(addr, v); }
FA_DEVICE int atomic_min(int* addr, int v) { return atomicMin(addr, v); }
FA_DEVICE unsigned atomic_min(unsigned* addr, unsigned v) { return atomicMin(addr, v); }
#else
FA_DEVICE int atomic_max(int* addr, int v) {
  return detail::atomic_update_if(addr, v, [](int a, int b) { return a > b; });
}
FA_DEVICE unsigned atomic_max(unsigned* addr, unsigned v) {
  return detail::atomic_update_if(addr, v, [](unsigned a, unsigned b) { return a > b; });
}
FA_DEVICE int atomic_min(int* addr, int v) {
  return detail::atomic_update_if(addr, v, [](int a, int b) { return a < b; });
}
FA_DEVICE unsigned atomic_min(unsigned* addr, unsigned v) {
  return detail::atomic_update_if(addr, v, [](unsigned a, unsigned b) { return a < b; });
}
#endif

// atomicCAS: stores v if *addr == compare; returns the old value either way.
template <class T>
FA_DEVICE T atomic_cas(T* addr, T compare, T v) {
  static_assert(std::is_same_v<T, int> || std::is_same_v<T, unsigned> ||
                    std::is_same_v<T, unsigned long long>,
                "atomicCAS types");
#if defined(__CUDACC__)
  return atomicCAS(addr, compare, v);
#else
  std::atomic_ref<T>(*addr).compare_exchange_strong(compare, v, std::memory_order_relaxed,
                                                    std::memory_order_relaxed);
  return compare;
#endif
}

FA_DEVICE_NAMESPACE_END
