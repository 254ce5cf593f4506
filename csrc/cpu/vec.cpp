// Multiversioned row kernels (see vec.h). Written so that GCC vectorises each
// loop: no branches in loop bodies, reductions marked `omp simd`.
#include "cpu/fp8.h"
#include "cpu/vec.h"

#include "cpu/simd.h"

#include <algorithm>
#include <bit>
#include <type_traits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>


namespace fastattn::cpu::vec {
namespace {

// exp(x) for x <= 0 (scores minus their running max), relative error ~2e-7.
// 2^n * p(r) with n = round(x / ln2), r = x - n ln2 (two-part ln2) and the
// classic Cephes degree-7 polynomial for exp(r);
// x below the float range (-inf included) gives exactly 0.
FA_INLINE float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  const bool underflow = x < -87.0f;
  const float xc = underflow ? -87.0f : x;
  const float n = std::nearbyint(xc * kLog2e);
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = std::bit_cast<float>((int32_t(n) + 127) << 23);
  return underflow ? 0.0f : p * scale;
}

}  // namespace

Isa isa() {
  static const Isa level = [] {
    Isa hw = Isa::generic;
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
      hw = __builtin_cpu_supports("avx512bf16") ? Isa::avx512_bf16 : Isa::avx512;
    }
#endif
    const char* cap = std::getenv("FASTATTN_CPU_ISA");
    if (!cap || !*cap) return hw;
    if (std::strcmp(cap, "generic") == 0) return Isa::generic;
    if (std::strcmp(cap, "avx512") == 0) return std::min(hw, Isa::avx512);
    if (std::strcmp(cap, "avx512_bf16") != 0)
      std::fprintf(stderr, "fastattn: ignoring FASTATTN_CPU_ISA=%s (expected generic, avx512 or "
                   "avx512_bf16)\n", cap);
    return hw;
  }();
  return level;
}

FA_MULTIVERSION void scale(float* x, float a, int n) {
  for (int i = 0; i < n; ++i) x[i] *= a;
}

FA_MULTIVERSION float mask_max(float* x, int n, int lo, int hi) {
  for (int j = 0; j < lo; ++j) x[j] = -INFINITY;
  for (int j = hi; j < n; ++j) x[j] = -INFINITY;
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int j = lo; j < hi; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

FA_MULTIVERSION float exp_sum(float* x, float shift, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < n; ++j) {
    const float e = exp_nonpositive(x[j] - shift);
    x[j] = e;
    s += e;
  }
  return s;
}

FA_MULTIVERSION void bf16_to_f32(const uint16_t* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = std::bit_cast<float>(uint32_t(src[i]) << 16);
}

FA_MULTIVERSION void f16_to_f32(const uint16_t* src, float* dst, int n) {
  // IEEE half -> float without lookup tables (normals, subnormals, inf/NaN).
  for (int i = 0; i < n; ++i) {
    const uint32_t h = src[i];
    const uint32_t sign = (h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    // Normal and inf/NaN: rebias the exponent. Subnormal: mant * 2^-24 exactly.
    const uint32_t normal = sign | ((exp == 0x1fu ? 0xffu : exp + 112u) << 23) | (mant << 13);
    const float sub = std::bit_cast<float>(sign | 0x33800000u) * float(mant);  // +-2^-24 * mant
    dst[i] = exp == 0 ? sub : std::bit_cast<float>(normal);
  }
}

namespace {

// The codes of n floats, in integer arithmetic on their bits (no dependence on the FP
// environment's rounding mode) and without branches, so that the loop vectorises. Normals
// round their mantissa to nearest even (a carry bumps the exponent); below the smallest
// normal the value is the mantissa shifted to units of the smallest subnormal, rounded
// the same way (the device's software path, device/fp8.h, is the same rule). Checked
// vectorised with -fopt-info-vec (GCC 12, x86-64-v4 clone).
template <typename E>
FA_MULTIVERSION void quantize_floats(const float* x, uint8_t* dst, int n, float scale) {
  constexpr bool kE4m3 = std::is_same_v<E, c10::Float8_e4m3fn>;
  constexpr int kMant = kE4m3 ? 3 : 2, kBias = kE4m3 ? 7 : 15, kDrop = 23 - kMant;
  constexpr uint32_t kMinNormal = uint32_t(128 - kBias) << 23;
  for (int i = 0; i < n; ++i) {
    const float y = x[i] / scale;
    const uint32_t bits = std::bit_cast<uint32_t>(y);
    const uint32_t sign = (bits >> 24) & 0x80u;
    // Saturate first (infinities included), as the rule says; NaN is fixed up below.
    const float fa = std::fabs(y);
    const float ay = fa < kFp8Max<E> ? fa : kFp8Max<E>;
    const uint32_t a = std::bit_cast<uint32_t>(ay);
    const uint32_t normal = ((a + (1u << (kDrop - 1)) - 1u + ((a >> kDrop) & 1u)) >> kDrop) -
                            (uint32_t(127 - kBias) << kMant);
    const uint32_t e = a >> 23;
    const uint32_t mant = e ? ((a & 0x7fffffu) | 0x800000u) : a;
    // mant * 2^(e - 150) in units of 2^(1 - bias - kMant); shifts past 25 give 0 like 25
    // (the clamp also keeps the unused normal lanes' shifts defined).
    const int sh = 151 - kBias - kMant - int(e ? e : 1u);
    const uint32_t shift = uint32_t(sh < 1 ? 1 : sh > 25 ? 25 : sh);
    const uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    // Selects, not bool arithmetic: GCC does not vectorise a conversion to bool.
    const uint32_t sub = q + ((rem > half ? 1u : 0u) | (rem == half ? (q & 1u) : 0u));
    const uint32_t code = sign | (a >= kMinNormal ? normal : sub);
    dst[i] = uint8_t(y != y ? 0x7fu : code);
  }
}

}  // namespace

template <typename T, typename E>
void fp8_quantize(const T* src, E* dst, int n, float scale) {
  uint8_t* out = reinterpret_cast<uint8_t*>(dst);
  if constexpr (std::is_same_v<T, float>) {
    quantize_floats<E>(src, out, n, scale);
  } else {
    float buf[256];
    for (int i = 0; i < n; i += 256) {
      const int m = std::min(256, n - i);
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        bf16_to_f32(reinterpret_cast<const uint16_t*>(src + i), buf, m);
      } else {
        f16_to_f32(reinterpret_cast<const uint16_t*>(src + i), buf, m);
      }
      quantize_floats<E>(buf, out + i, m, scale);
    }
  }
}

#define FA_QUANTIZE(T, E) template void fp8_quantize<T, E>(const T*, E*, int, float);
FA_QUANTIZE(float, c10::Float8_e4m3fn)
FA_QUANTIZE(float, c10::Float8_e5m2)
FA_QUANTIZE(c10::BFloat16, c10::Float8_e4m3fn)
FA_QUANTIZE(c10::BFloat16, c10::Float8_e5m2)
FA_QUANTIZE(c10::Half, c10::Float8_e4m3fn)
FA_QUANTIZE(c10::Half, c10::Float8_e5m2)
#undef FA_QUANTIZE

FA_MULTIVERSION void fp8_to_f32(const c10::Float8_e4m3fn* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = fp8_to_float(src[i]);
}

FA_MULTIVERSION void fp8_to_f32(const c10::Float8_e5m2* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = fp8_to_float(src[i]);
}

}  // namespace fastattn::cpu::vec
