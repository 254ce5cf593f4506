#pragma once
// Hopper (sm_90) synchronisation: mbarriers with transaction counts, named barriers, the
// async-proxy fences and elect.sync.
//
// mbarrier (a 64-bit object in shared memory). mbarrier_init(bar, n): n arrivals complete a
// phase. A phase completes when all n arrivals happened and its tx-count is back to 0:
// mbarrier_arrive_expect_tx(bar, bytes) raises the tx-count by `bytes` and arrives; a bulk
// copy (tma.h) completing on the barrier lowers it by the bytes it wrote. Phases alternate
// parity 0, 1, 0, ...; mbarrier_wait(bar, parity) returns once the phase of that parity has
// completed (it waits while the barrier's current phase has that parity), so a consumer
// flips its parity after every phase it consumes.
//
// The emulation keeps each barrier's state aside (keyed by address) and reports misuse:
// arriving at or waiting on a barrier never initialised, more arrivals than the count, and a
// wait that can never complete (a deadlock report naming the barrier's pending arrivals and
// tx-count). Waiting blocks the thread instead of spinning (kernels never spin-wait).
//
// Named barriers: bar.sync / bar.arrive with an id (1..15 here: 0 is sync_block's) and a
// thread count, a multiple of 32 that every arrival of a phase agrees on. Producer warps
// bar_arrive (do not wait), consumer warps bar_sync; the phase completes when `count`
// threads arrived.
#include "fastattn/device/config.h"

#if !defined(__CUDACC__)
#include <atomic>
#endif

FA_DEVICE_NAMESPACE_BEGIN

// mbarrier.init.shared::cta.b64: `count` arrivals per phase; phase 0 begins. One thread
// initialises; fence_mbarrier_init() and a block barrier publish it before others use it.
FA_DEVICE void mbarrier_init(uint64_t* bar, unsigned count) {
#if defined(__CUDACC__)
#if defined(FA_SM90)
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count)
               : "memory");
#else
  __trap();
#endif
#else
  ::fastattn::emu::mbarrier_init(bar, count);
#endif
}

// mbarrier.arrive.shared::cta.b64: one arrival. Returns the barrier state token (unused by
// our kernels; the emulation returns the phase number).
FA_DEVICE uint64_t mbarrier_arrive(uint64_t* bar) {
#if defined(__CUDACC__)
  uint64_t state = 0;
#if defined(FA_SM90)
  asm volatile("mbarrier.arrive.shared::cta.b64 %0, [%1];"
               : "=l"(state) : "r"(smem_u32(bar)) : "memory");
#else
  __trap();
#endif
  return state;
#else
  return ::fastattn::emu::mbarrier_arrive(bar, 0);
#endif
}

// mbarrier.arrive.expect_tx.shared::cta.b64: tx-count += bytes, then one arrival. The
// producer calls it for the bytes its bulk copies will deliver in this phase.
FA_DEVICE uint64_t mbarrier_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
#if defined(__CUDACC__)
  uint64_t state = 0;
#if defined(FA_SM90)
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 %0, [%1], %2;"
               : "=l"(state) : "r"(smem_u32(bar)), "r"(bytes) : "memory");
#else
  __trap();
#endif
  return state;
#else
  return ::fastattn::emu::mbarrier_arrive(bar, bytes);
#endif
}

// mbarrier.expect_tx.relaxed.cta.shared::cta.b64: tx-count += bytes, no arrival.
FA_DEVICE void mbarrier_expect_tx(uint64_t* bar, unsigned bytes) {
#if defined(__CUDACC__)
#if defined(FA_SM90)
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
#else
  __trap();
#endif
#else
  ::fastattn::emu::mbarrier_expect_tx(bar, bytes);
#endif
}

// Waits until the phase of parity `parity` (0 or 1) has completed: mbarrier.try_wait.parity
// in a loop on the GPU (try_wait suspends the thread for a while before it returns false).
// Defining FA_MBARRIER_TIMEOUT_CYCLES (test builds) traps a wait longer than that many
// clock cycles, so that a phase which never completes fails the launch instead of hanging.
FA_DEVICE void mbarrier_wait(uint64_t* bar, unsigned parity) {
#if defined(__CUDACC__)
#if defined(FA_SM90)
  const uint32_t addr = smem_u32(bar);
  uint32_t done = 0;
#if defined(FA_MBARRIER_TIMEOUT_CYCLES)
  const long long start = clock64();
#endif
  do {
    asm volatile(
        "{\n\t.reg .pred p;\n\t"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
        "selp.u32 %0, 1, 0, p;\n\t}"
        : "=r"(done) : "r"(addr), "r"(parity) : "memory");
#if defined(FA_MBARRIER_TIMEOUT_CYCLES)
    if (!done && clock64() - start > (long long)(FA_MBARRIER_TIMEOUT_CYCLES)) __trap();
#endif
  } while (!done);
#else
  __trap();
#endif
#else
  ::fastattn::emu::mbarrier_wait_parity(bar, parity);
#endif
}

// fence.mbarrier_init.release.cluster: makes this thread's mbarrier.init visible to the
// async proxy (TMA completing on the barrier) and to other threads after a block barrier.
FA_DEVICE void fence_mbarrier_init() {
#if defined(__CUDACC__)
#if defined(FA_SM90)
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#else
  __trap();
#endif
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

// fence.proxy.async.shared::cta: orders this thread's ordinary shared-memory writes before
// later reads by the async proxy (wgmma operands, TMA stores). The emulation has one proxy,
// so a missing fence.proxy.async is not detected there (README: what only a GPU shows).
FA_DEVICE void fence_proxy_async() {
#if defined(__CUDACC__)
#if defined(FA_SM90)
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#else
  __trap();
#endif
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

// bar.sync id, count: waits until `count` threads (a multiple of 32, whole warps) arrived at
// barrier `id` (1..15).
FA_DEVICE void named_barrier_sync(unsigned id, unsigned count) {
#if defined(__CUDACC__)
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
#else
  ::fastattn::emu::named_barrier(id, count, /*wait=*/true);
#endif
}

// bar.arrive id, count: arrives at barrier `id` without waiting (the producer side).
FA_DEVICE void named_barrier_arrive(unsigned id, unsigned count) {
#if defined(__CUDACC__)
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(count) : "memory");
#else
  ::fastattn::emu::named_barrier(id, count, /*wait=*/false);
#endif
}

namespace detail {
#if !defined(__CUDACC__)
// The ISA promises one leader, not which lane: the emulation elects lane 0, lane 31 or a
// random lane depending on the schedule, so kernels that assume lane 0 fail under some.
inline void elect_collective(const void* const*, void* const* res) {
  const unsigned leader = ::fastattn::emu::elect_lane();
  for (unsigned lane = 0; lane < 32; ++lane) *static_cast<uint32_t*>(res[lane]) = lane == leader;
}
#endif
}  // namespace detail

// elect.sync with the full mask: true in exactly one lane of the warp (a warp collective).
FA_DEVICE bool elect_one() {
#if defined(__CUDACC__)
#if defined(FA_SM90)
  uint32_t pred = 0;
  asm volatile(
      "{\n\t.reg .pred p;\n\t"
      "elect.sync _|p, %1;\n\t"
      "selp.u32 %0, 1, 0, p;\n\t}"
      : "=r"(pred) : "r"(kFullMask));
  return pred != 0;
#else
  __trap();
  return false;
#endif
#else
  uint32_t r = 0;
  ::fastattn::emu::warp_collective("elect.sync", detail::elect_collective, nullptr, &r);
  return r != 0;
#endif
}

FA_DEVICE_NAMESPACE_END
