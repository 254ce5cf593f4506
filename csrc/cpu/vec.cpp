// Multiversioned row kernels (see vec.h). Written so that GCC vectorises each
// loop: no branches in loop bodies, reductions marked `omp simd`.
#include "cpu/vec.h"

#include <bit>
#include <type_traits>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cmath>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FA_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FA_MULTIVERSION
#endif
// Helpers must be inlined into each clone to be compiled for its ISA.
#define FA_INLINE inline __attribute__((always_inline))

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

FA_INLINE float dot_inline(const float* a, const float* b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

#if defined(__x86_64__) && defined(__GNUC__)
// AVX-512 forms for the few rows of a decode step (the query heads of one KV
// head): each key and value row is loaded once for all R rows, and in pv the R
// accumulator chunks stay in registers across the whole key tile. Written with
// intrinsics because the auto-vectoriser does not find this blocking.
#define FA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

FA_AVX512 inline __mmask16 tail_mask(int remaining) {
  return remaining >= 16 ? __mmask16(0xffff) : __mmask16((1u << remaining) - 1);
}

template <int R>
FA_AVX512 void qk_avx512(const float* q, const float* k, int64_t ldk, int n, int D, float* s,
                         int64_t lds) {
  for (int j = 0; j < n; ++j) {
    const float* kj = k + j * ldk;
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int d0 = 0; d0 < D; d0 += 16) {
      const __mmask16 m = tail_mask(D - d0);
      const __m512 kv = _mm512_maskz_loadu_ps(m, kj + d0);
      for (int r = 0; r < R; ++r)
        acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + r * D + d0), kv, acc[r]);
    }
    for (int r = 0; r < R; ++r) s[r * lds + j] = _mm512_reduce_add_ps(acc[r]);
  }
}

template <int R>
FA_AVX512 void pv_avx512(const float* p, int64_t ldp, int n, const float* v, int64_t ldv, int D,
                         float* out) {
  for (int d0 = 0; d0 < D; d0 += 16) {
    const __mmask16 m = tail_mask(D - d0);
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_maskz_loadu_ps(m, out + r * D + d0);
    for (int j = 0; j < n; ++j) {
      const __m512 vj = _mm512_maskz_loadu_ps(m, v + j * ldv + d0);
      for (int r = 0; r < R; ++r)
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(p[r * ldp + j]), vj, acc[r]);
    }
    for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(out + r * D + d0, m, acc[r]);
  }
}

FA_AVX512 void bf16_to_f32_avx512(const uint16_t* src, float* dst, int n) {
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m256i h = _mm256_maskz_loadu_epi16(m, src + i);
    const __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_castsi512_ps(w));
  }
}

// Rows processed in blocks of at most 8 (the GQA group of a decode step).
template <typename Fn>
FA_AVX512 void by_row_blocks(int rows, Fn&& fn) {
  int r0 = 0;
  for (; r0 + 8 <= rows; r0 += 8) fn(std::integral_constant<int, 8>{}, r0);
  switch (rows - r0) {
    case 1: fn(std::integral_constant<int, 1>{}, r0); break;
    case 2: fn(std::integral_constant<int, 2>{}, r0); break;
    case 3: fn(std::integral_constant<int, 3>{}, r0); break;
    case 4: fn(std::integral_constant<int, 4>{}, r0); break;
    case 5: fn(std::integral_constant<int, 5>{}, r0); break;
    case 6: fn(std::integral_constant<int, 6>{}, r0); break;
    case 7: fn(std::integral_constant<int, 7>{}, r0); break;
    default: break;
  }
}

const bool kHasAvx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl");
#else
const bool kHasAvx512 = false;
#endif

}  // namespace

#if defined(__x86_64__) && defined(__GNUC__)
FA_AVX512 static void qk_rows_avx512(const float* q, int rows, const float* k, int64_t ldk, int n,
                                     int D, float* s, int64_t lds) {
  by_row_blocks(rows, [&](auto R, int r0) {
    qk_avx512<decltype(R)::value>(q + r0 * D, k, ldk, n, D, s + r0 * lds, lds);
  });
}

FA_AVX512 static void pv_rows_avx512(const float* p, int64_t ldp, int rows, int n, const float* v,
                                     int64_t ldv, int D, float* acc) {
  by_row_blocks(rows, [&](auto R, int r0) {
    pv_avx512<decltype(R)::value>(p + r0 * ldp, ldp, n, v, ldv, D, acc + r0 * D);
  });
}
#endif

FA_MULTIVERSION static void qk_rows_generic(const float* q, int rows, const float* k, int64_t ldk,
                                            int n, int D, float* s, int64_t lds) {
  for (int j = 0; j < n; ++j)
    for (int r = 0; r < rows; ++r) s[r * lds + j] = dot_inline(q + r * D, k + j * ldk, D);
}

FA_MULTIVERSION static void pv_rows_generic(const float* p, int64_t ldp, int rows, int n,
                                            const float* v, int64_t ldv, int D, float* acc) {
  for (int j = 0; j < n; ++j)
    for (int r = 0; r < rows; ++r) {
      const float pj = p[r * ldp + j];
      const float* vj = v + j * ldv;
      float* a = acc + r * D;
      for (int d = 0; d < D; ++d) a[d] += pj * vj[d];
    }
}

void qk_rows(const float* q, int rows, const float* k, int64_t ldk, int n, int D, float* s,
             int64_t lds) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (kHasAvx512) return qk_rows_avx512(q, rows, k, ldk, n, D, s, lds);
#endif
  qk_rows_generic(q, rows, k, ldk, n, D, s, lds);
}

void pv_rows(const float* p, int64_t ldp, int rows, int n, const float* v, int64_t ldv, int D,
             float* acc) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (kHasAvx512) return pv_rows_avx512(p, ldp, rows, n, v, ldv, D, acc);
#endif
  pv_rows_generic(p, ldp, rows, n, v, ldv, D, acc);
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

FA_MULTIVERSION static void bf16_to_f32_generic(const uint16_t* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = std::bit_cast<float>(uint32_t(src[i]) << 16);
}

void bf16_to_f32(const uint16_t* src, float* dst, int n) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (kHasAvx512) return bf16_to_f32_avx512(src, dst, n);
#endif
  bf16_to_f32_generic(src, dst, n);
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

}  // namespace fastattn::cpu::vec
