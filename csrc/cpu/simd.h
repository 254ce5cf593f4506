#pragma once
// Attributes and lane masks shared by the CPU vector kernels (vec.cpp,
// row_kernels.cpp, tile_gemm.cpp). Internal to csrc/cpu.
#include <cstdint>
#include <type_traits>
#include <utility>

// Helpers must be inlined into each caller to be compiled for its target.
#define FA_INLINE inline __attribute__((always_inline))

// Plain loops compiled for x86-64-v4 (AVX-512), v3 (AVX2 + FMA) and the baseline,
// picked by the CPU at load time. On an AVX-512 machine only the v4 clone runs,
// whatever FASTATTN_CPU_ISA says (that variable selects the hand-written kernels).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FA_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FA_MULTIVERSION
#endif

namespace fastattn::cpu::vec {

// Lanes [0, left) of a 16-lane (32-lane) vector: all for left >= 16 (32), none
// for left <= 0. Plain integers, so usable from any target.
FA_INLINE uint16_t mask16(int left) {
  return left >= 16 ? uint16_t(0xffff) : left <= 0 ? uint16_t(0) : uint16_t((1u << left) - 1);
}
FA_INLINE uint32_t mask32(int left) {
  return left >= 32 ? 0xffffffffu : left <= 0 ? 0u : (1u << left) - 1;
}

// fn(std::integral_constant<int, R>) for R = rows in 1..N.
template <int N, typename Fn>
FA_INLINE void with_rows(int rows, Fn&& fn) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    ((rows == I + 1 ? (fn(std::integral_constant<int, I + 1>{}), true) : false) || ...);
  }(std::make_integer_sequence<int, N>{});
}

}  // namespace fastattn::cpu::vec
