#pragma once
// fp8 KV-cache codes on the CPU (float8_e4m3fn, float8_e5m2, as c10 stores them):
// exact widening through 256-entry tables; the format's largest value (append_kv's
// quantization, vec::fp8_quantize, saturates to it).
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e5m2.h>

#include <array>
#include <bit>
#include <cstdint>
#include <type_traits>

namespace fastattn::cpu {

template <typename E>
inline constexpr bool kIsFp8 =
    std::is_same_v<E, c10::Float8_e4m3fn> || std::is_same_v<E, c10::Float8_e5m2>;

// The largest finite value: saturation bound of the quantization.
template <typename E>
inline constexpr float kFp8Max = std::is_same_v<E, c10::Float8_e4m3fn> ? 448.f : 57344.f;

// Value of every code, from the format's bit fields (computed at compile time).
template <typename E>
constexpr std::array<float, 256> fp8_table() {
  constexpr bool e4m3 = std::is_same_v<E, c10::Float8_e4m3fn>;
  constexpr int mant_bits = e4m3 ? 3 : 2, bias = e4m3 ? 7 : 15;
  std::array<float, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const int exp = (c & 0x7f) >> mant_bits, mant = c & ((1 << mant_bits) - 1);
    float v;
    if (e4m3 && (c & 0x7f) == 0x7f) {
      v = std::bit_cast<float>(0x7fc00000u);  // e4m3fn: NaN only, no inf
    } else if (!e4m3 && exp == 31) {
      v = mant ? std::bit_cast<float>(0x7fc00000u) : std::bit_cast<float>(0x7f800000u);
    } else {
      // (exp ? 1 + mant / 2^m : mant / 2^m) * 2^(max(exp, 1) - bias), exact in fp32.
      const int m = exp ? (1 << mant_bits) + mant : mant;
      const int e = (exp ? exp : 1) - bias - mant_bits;
      v = float(m);
      for (int i = 0; i < e; ++i) v *= 2.f;
      for (int i = 0; i > e; --i) v *= 0.5f;
    }
    t[c] = (c & 0x80) ? -v : v;
  }
  return t;
}

template <typename E>
inline constexpr std::array<float, 256> kFp8Table = fp8_table<E>();

template <typename E>
inline float fp8_to_float(E x) {
  return kFp8Table<E>[x.x];
}

}  // namespace fastattn::cpu
