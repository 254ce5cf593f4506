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

FA_MULTIVERSION void fp8_to_f32(const c10::Float8_e4m3fn* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = fp8_to_float(src[i]);
}

FA_MULTIVERSION void fp8_to_f32(const c10::Float8_e5m2* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = fp8_to_float(src[i]);
}

}  // namespace fastattn::cpu::vec
