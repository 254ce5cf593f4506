#pragma once
// Barriers, memory fences, warp shuffles and warp votes.
//
// All warp-level wrappers use the full member mask: every lane of the warp must reach the
// same call (PTX .sync.aligned forms). The emulation enforces it: lanes at different
// collectives, a collective after a lane exited, or one in a partial warp (block size not
// a multiple of 32) is an error instead of undefined behaviour.
#include <cstring>

#include "fastattn/device/config.h"

#if !defined(__CUDACC__)
#include <atomic>
#endif

FA_DEVICE_NAMESPACE_BEGIN

// __syncthreads (bar.sync 0): waits until every thread of the block arrived; memory
// accesses before it are visible to the whole block after it. Every thread must reach the
// same barrier: the emulation reports a barrier that some threads can never reach (they
// exited, or their warp is stuck in a warp collective) instead of hanging. Stricter than
// hardware, which lets exited threads count as arrived; `bar.sync` is `.aligned`, so such
// code is undefined anyway.
FA_DEVICE void sync_block() {
#if defined(__CUDACC__)
  __syncthreads();
#else
  ::fastattn::emu::block_barrier();
#endif
}

namespace detail {
#if !defined(__CUDACC__)
inline void nop_collective(const void* const*, void* const*) {}
#endif
}  // namespace detail

// __syncwarp(0xffffffff) (bar.warp.sync): the warp's lanes meet; orders their memory
// accesses (shared-memory exchange between lanes of one warp needs it on Volta+).
FA_DEVICE void sync_warp() {
#if defined(__CUDACC__)
  __syncwarp(kFullMask);
#else
  ::fastattn::emu::warp_collective("sync_warp (bar.warp.sync)", detail::nop_collective, nullptr,
                                   nullptr);
#endif
}

// __threadfence (fence.sc.gpu / membar.gl): orders this thread's global-memory accesses for
// all threads of the device, e.g. before publishing a result through an atomic flag.
FA_DEVICE void threadfence() {
#if defined(__CUDACC__)
  __threadfence();
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

// __threadfence_block (membar.cta): the same for the threads of this block. All fibers of
// an emulated block share one OS thread, so a compiler barrier is enough there.
FA_DEVICE void threadfence_block() {
#if defined(__CUDACC__)
  __threadfence_block();
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

// ---------------------------------------------------------------------------------------
// Shuffles: shfl.sync.{up,down,bfly,idx}.b32 with membermask 0xffffffff.
// `width` (a power of two <= 32) splits the warp into segments, as in CUDA's __shfl_*_sync:
// c = ((32 - width) << 8) | clamp, where clamp is 0x1f except for `up` (0). PTX semantics:
//   maxLane = (lane & mask) | (clamp & ~mask);  minLane = lane & mask;  mask = c[12:8]
//   up:   j = lane - b;  valid j >= maxLane      down: j = lane + b;  valid j <= maxLane
//   bfly: j = lane ^ b;  valid j <= maxLane
//   idx:  j = minLane | (b & ~mask);  valid j <= maxLane
// and an invalid j reads the lane's own value. Values of 2, 4 or 8 bytes are moved as one
// or two b32 shuffles, like CUDA's overloads.
// ---------------------------------------------------------------------------------------
namespace detail {

enum class ShflMode { kUp, kDown, kBfly, kIdx };

FA_DEVICE unsigned shfl_c(int width, bool up) {
  return (unsigned(32 - width) << 8) | (up ? 0u : 0x1fu);
}

#if defined(__CUDACC__)
template <ShflMode M>
FA_DEVICE uint32_t shfl_b32(uint32_t v, unsigned b, unsigned c) {
  uint32_t r;
  if constexpr (M == ShflMode::kUp) {
    asm volatile("shfl.sync.up.b32 %0, %1, %2, %3, %4;"
                 : "=r"(r) : "r"(v), "r"(b), "r"(c), "r"(kFullMask));
  } else if constexpr (M == ShflMode::kDown) {
    asm volatile("shfl.sync.down.b32 %0, %1, %2, %3, %4;"
                 : "=r"(r) : "r"(v), "r"(b), "r"(c), "r"(kFullMask));
  } else if constexpr (M == ShflMode::kBfly) {
    asm volatile("shfl.sync.bfly.b32 %0, %1, %2, %3, %4;"
                 : "=r"(r) : "r"(v), "r"(b), "r"(c), "r"(kFullMask));
  } else {
    asm volatile("shfl.sync.idx.b32 %0, %1, %2, %3, %4;"
                 : "=r"(r) : "r"(v), "r"(b), "r"(c), "r"(kFullMask));
  }
  return r;
}
#else
struct ShflOperand {
  uint32_t value;
  unsigned b;
  unsigned c;
};

// Source lane of `lane` under the PTX rule above (own lane when out of range).
template <ShflMode M>
inline unsigned shfl_source(unsigned lane, unsigned b, unsigned c) {
  const unsigned bval = b & 31u, cval = c & 31u, mask = (c >> 8) & 31u;
  const int max_lane = int((lane & mask) | (cval & ~mask));
  const int min_lane = int(lane & mask);
  int j;
  bool valid;
  if constexpr (M == ShflMode::kUp) {
    j = int(lane) - int(bval);
    valid = j >= max_lane;
  } else if constexpr (M == ShflMode::kDown) {
    j = int(lane) + int(bval);
    valid = j <= max_lane;
  } else if constexpr (M == ShflMode::kBfly) {
    j = int(lane ^ bval);
    valid = j <= max_lane;
  } else {
    j = min_lane | int(bval & ~mask);
    valid = j <= max_lane;
  }
  return valid ? unsigned(j) : lane;
}

template <ShflMode M>
inline void shfl_collective(const void* const* ops, void* const* res) {
  for (unsigned lane = 0; lane < 32; ++lane) {
    const auto* op = static_cast<const ShflOperand*>(ops[lane]);
    const unsigned src = shfl_source<M>(lane, op->b, op->c);
    *static_cast<uint32_t*>(res[lane]) = static_cast<const ShflOperand*>(ops[src])->value;
  }
}

template <ShflMode M>
constexpr const char* shfl_name() {
  if constexpr (M == ShflMode::kUp) return "shfl.sync.up.b32";
  if constexpr (M == ShflMode::kDown) return "shfl.sync.down.b32";
  if constexpr (M == ShflMode::kBfly) return "shfl.sync.bfly.b32";
  return "shfl.sync.idx.b32";
}

template <ShflMode M>
inline uint32_t shfl_b32(uint32_t v, unsigned b, unsigned c) {
  ShflOperand op{v, b, c};
  uint32_t r;
  ::fastattn::emu::warp_collective(shfl_name<M>(), shfl_collective<M>, &op, &r);
  return r;
}
#endif

template <ShflMode M, class T>
FA_DEVICE T shfl(T v, unsigned b, int width) {
  static_assert(std::is_trivially_copyable_v<T>, "shuffled values are copied bitwise");
  static_assert(sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "2-, 4- or 8-byte values");
  const unsigned c = shfl_c(width, M == ShflMode::kUp);
  if constexpr (sizeof(T) == 8) {
    uint32_t w[2];
    memcpy(w, &v, 8);
    w[0] = shfl_b32<M>(w[0], b, c);
    w[1] = shfl_b32<M>(w[1], b, c);
    memcpy(&v, w, 8);
  } else {
    uint32_t w = 0;
    memcpy(&w, &v, sizeof(T));
    w = shfl_b32<M>(w, b, c);
    memcpy(&v, &w, sizeof(T));
  }
  return v;
}

}  // namespace detail

// __shfl_xor_sync: the value of lane (lane ^ lane_mask); butterfly reductions.
template <class T>
FA_DEVICE T shfl_xor(T v, int lane_mask, int width = kWarpSize) {
  return detail::shfl<detail::ShflMode::kBfly>(v, unsigned(lane_mask), width);
}

// __shfl_sync: the value of lane src_lane (modulo width, inside the caller's segment).
template <class T>
FA_DEVICE T shfl_idx(T v, int src_lane, int width = kWarpSize) {
  return detail::shfl<detail::ShflMode::kIdx>(v, unsigned(src_lane), width);
}

// __shfl_down_sync: the value of lane + delta, or the caller's own past the segment end.
template <class T>
FA_DEVICE T shfl_down(T v, unsigned delta, int width = kWarpSize) {
  return detail::shfl<detail::ShflMode::kDown>(v, delta, width);
}

// __shfl_up_sync: the value of lane - delta, or the caller's own before the segment start.
template <class T>
FA_DEVICE T shfl_up(T v, unsigned delta, int width = kWarpSize) {
  return detail::shfl<detail::ShflMode::kUp>(v, delta, width);
}

// ---------------------------------------------------------------------------------------
// Votes: vote.sync.{ballot,any,all} with membermask 0xffffffff.
// ---------------------------------------------------------------------------------------
namespace detail {
#if !defined(__CUDACC__)
enum class VoteMode { kBallot, kAny, kAll };

template <VoteMode M>
inline void vote_collective(const void* const* ops, void* const* res) {
  uint32_t ballot = 0;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (*static_cast<const bool*>(ops[lane])) ballot |= 1u << lane;
  }
  uint32_t r = ballot;
  if constexpr (M == VoteMode::kAny) r = ballot != 0;
  if constexpr (M == VoteMode::kAll) r = ballot == kFullMask;
  for (unsigned lane = 0; lane < 32; ++lane) *static_cast<uint32_t*>(res[lane]) = r;
}

template <VoteMode M>
inline uint32_t vote(bool pred, const char* name) {
  uint32_t r;
  ::fastattn::emu::warp_collective(name, vote_collective<M>, &pred, &r);
  return r;
}
#endif
}  // namespace detail

// __ballot_sync: bit i set iff lane i passed true.
FA_DEVICE uint32_t warp_ballot(bool pred) {
#if defined(__CUDACC__)
  return __ballot_sync(kFullMask, pred);
#else
  return detail::vote<detail::VoteMode::kBallot>(pred, "vote.sync.ballot.b32");
#endif
}

// __any_sync: true iff some lane passed true.
FA_DEVICE bool warp_any(bool pred) {
#if defined(__CUDACC__)
  return __any_sync(kFullMask, pred);
#else
  return detail::vote<detail::VoteMode::kAny>(pred, "vote.sync.any.pred") != 0;
#endif
}

// __all_sync: true iff every lane passed true.
FA_DEVICE bool warp_all(bool pred) {
#if defined(__CUDACC__)
  return __all_sync(kFullMask, pred);
#else
  return detail::vote<detail::VoteMode::kAll>(pred, "vote.sync.all.pred") != 0;
#endif
}

FA_DEVICE_NAMESPACE_END
