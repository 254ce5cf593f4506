// Row kernels (see vec.h): a few query rows of a range of KV heads against a
// tile of tokens, read in place in their dtype through per-token row pointers,
// while the next tile is prefetched. Used by paged/dense decode and by the
// few-rows tiles of the general path.
//
// A decode step moves every cached byte once and does only 2 * group FLOPs per
// element: on a CPU core it is bound by how many cache lines are in flight,
// then by loads per FMA, not by FMAs. Hence:
//  - No staging copy: bf16/fp16 rows are widened in registers (bf16 Q.K uses the
//    AVX512-BF16 dot product on the raw rows, with the scale applied to the sums; fp8 K
//    rows meet bf16 queries there too, widened to bf16 by table lookup).
//  - Register blocking: Q.K keeps R rows x T tokens of partial sums and reduces
//    them together (one 16-way transpose-add instead of R * T horizontal sums);
//    P.V keeps R rows x C 16-wide column chunks in registers across TP tokens.
//  - Prefetch in memory order: the next tile is requested line after line, a
//    token's values for all the call's heads before the next token's, at the
//    rate this tile is consumed. Rows of one head sit a token apart (often a new
//    4 KiB page, which the hardware prefetchers do not cross); measured here,
//    requests that walk each page through before the next (~43 GB/s on 2 cores)
//    beat requests interleaved over several pages (~33 GB/s).
#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu/fp8.h"
#include "cpu/simd.h"
#include "cpu/vec.h"

namespace fastattn::cpu::vec {
namespace {

template <typename E>
float widen(E x) {
  if constexpr (kIsFp8<E>) return fp8_to_float(x);
  return static_cast<float>(x);
}

// The queries the bf16 dot product reads for a cache of E (qk_rows' q_native).
template <typename E>
using NativeQ = std::conditional_t<kIsFp8<E>, c10::BFloat16, E>;

FA_INLINE float head_scale_of(const float* head_scale, int h) {
  return head_scale ? head_scale[h] : 1.f;
}

// Issues one prefetch (into L2) per 64 bytes the caller reports consumed,
// walking the tile described by `next` in memory order.
template <typename E>
class Prefetcher {
 public:
  Prefetcher(const RowTile<E>& next, int64_t hs, int D)
      : next_(next), hs_(hs * int64_t(sizeof(E))) {
    // Adjacent heads of a token form one span.
    contiguous_ = hs == D || next.heads == 1;
    span_ = (contiguous_ ? (next.heads - 1) * hs + D : D) * int64_t(sizeof(E));
    if (next.n > 0 && next.heads > 0) start(0, 0);
  }

  FA_INLINE void advance(int64_t bytes) {
    budget_ += bytes;
    while (budget_ >= 64 && p_) {
      __builtin_prefetch(p_, 0, 2);
      p_ += 64;
      budget_ -= 64;
      if (p_ >= end_) next_span();
    }
  }

 private:
  void start(int j, int h) {
    j_ = j;
    h_ = h;
    const char* first = reinterpret_cast<const char*>(next_.rows[j] + next_.off) + h * hs_;
    end_ = first + span_;
    // From the line holding the first byte, so that the last line is reached too.
    p_ = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(first) & ~uintptr_t(63));
  }
  __attribute__((noinline)) void next_span() {
    int j = j_, h = h_ + 1;
    if (contiguous_ || h == next_.heads) {
      h = 0;
      ++j;
    }
    if (j < next_.n) {
      start(j, h);
    } else {
      p_ = nullptr;
    }
  }

  const RowTile<E>& next_;
  const int64_t hs_;
  bool contiguous_;
  int64_t span_;
  const char* p_ = nullptr;
  const char* end_ = nullptr;
  int j_ = 0, h_ = 0;
  int64_t budget_ = 0;
};

// Plain loops: the path on CPUs without AVX-512 (and under FASTATTN_CPU_ISA=generic),
// vectorised by the compiler for each x86 level (see simd.h).

template <typename E>
FA_MULTIVERSION void qk_generic(const float* q, int group, int heads, const E* const* k,
                                int64_t off, int64_t hs, int n, int D, float scale,
                                const float* head_scale, float* s, int64_t lds,
                                Prefetcher<E>& pf) {
  for (int j = 0; j < n; ++j)
    for (int h = 0; h < heads; ++h) {
      const E* kj = k[j] + off + h * hs;
      const float sh = scale * head_scale_of(head_scale, h);
      pf.advance(D * int64_t(sizeof(E)));
      for (int r = h * group; r < (h + 1) * group; ++r) {
        const float* qr = q + int64_t(r) * D;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < D; ++d) dot += qr[d] * widen(kj[d]);
        s[r * lds + j] = dot * sh;
      }
    }
}

template <typename E>
FA_MULTIVERSION void pv_generic(const float* p, int64_t ldp, int group, int heads, const E* const* v, int64_t off,
                int64_t hs, int n, int D, float* acc, Prefetcher<E>& pf) {
  for (int j = 0; j < n; ++j)
    for (int h = 0; h < heads; ++h) {
      const E* vj = v[j] + off + h * hs;
      pf.advance(D * int64_t(sizeof(E)));
      for (int r = h * group; r < (h + 1) * group; ++r) {
        const float pj = p[r * ldp + j];
        float* a = acc + int64_t(r) * D;
        for (int d = 0; d < D; ++d) a[d] += pj * widen(vj[d]);
      }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
// Every vector helper carries the BF16 target so that the bf16 dot product can
// inline into the shared block templates. GCC emits BF16 instructions only for
// the BF16 intrinsics, which only Bf16Dot uses (isa() >= avx512_bf16), so the
// widening instantiations run on any AVX-512 CPU; FASTATTN_CPU_ISA=avx512 runs
// them in tests/test_cpu_isa.py.
#define FA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// 16 fp32 values from 16 elements (fewer under the mask, zeros elsewhere).
FA_AVX512 FA_INLINE __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
FA_AVX512 FA_INLINE __m512 load16(const c10::BFloat16* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
FA_AVX512 FA_INLINE __m512 load16(const c10::Half* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
// fp8 through fp16, exactly: e5m2 is the upper byte of an fp16; e4m3fn's exponent and
// mantissa placed in an fp16 read 2^-8 times its value (subnormals included: the fp16
// conversion handles them whatever MXCSR says), and its NaN code 0x7f needs a fix-up.
FA_AVX512 FA_INLINE __m512 load16(const c10::Float8_e5m2* p, __mmask16 m) {
  const __m256i x = _mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8(m, p));
  return _mm512_cvtph_ps(_mm256_slli_epi16(x, 8));
}
FA_AVX512 FA_INLINE __m512 load16(const c10::Float8_e4m3fn* p, __mmask16 m) {
  const __m256i x = _mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8(m, p));
  const __m256i mag = _mm256_and_si256(x, _mm256_set1_epi16(0x7f));
  const __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_xor_si256(x, mag), 8),
                                    _mm256_slli_epi16(mag, 7));
  const __m512 v = _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.f));
  const __mmask16 nan = _mm256_cmpeq_epi16_mask(mag, _mm256_set1_epi16(0x7f));
  return _mm512_mask_mov_ps(v, nan, _mm512_set1_ps(__builtin_nanf("")));
}

// fp8 codes to bf16 for the BF16 dot product, exactly (every fp8 value is a bf16 value,
// subnormals as normals): each 16-bit lane holds a code, and two 64-entry word permutes
// (vpermi2w, AVX512-BW) look up the bf16 image of its 7-bit magnitude in a 128-entry table
// held in four registers; the sign bit is moved over. 32 codes in 8 instructions, in
// memory order.
template <typename E>
struct Fp8Bf16Table {
  alignas(64) uint16_t bits[128];
  constexpr Fp8Bf16Table() : bits() {
    for (int c = 0; c < 128; ++c) {
      const uint32_t f = std::bit_cast<uint32_t>(kFp8Table<E>[c]);
      bits[c] = uint16_t(f >> 16);  // exact: the low half is zero (NaN: 0x7fc0)
    }
  }
};
template <typename E>
inline constexpr Fp8Bf16Table<E> kFp8Bf16 = Fp8Bf16Table<E>();

template <typename E>
FA_AVX512 FA_INLINE __m512i fp8_to_bf16x32(const E* p, __mmask32 m) {
  const uint16_t* t = kFp8Bf16<E>.bits;
  const __m512i x = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, p));
  const __m512i lo =
      _mm512_permutex2var_epi16(_mm512_load_si512(t), x, _mm512_load_si512(t + 32));
  const __m512i hi =
      _mm512_permutex2var_epi16(_mm512_load_si512(t + 64), x, _mm512_load_si512(t + 96));
  const __mmask32 upper = _mm512_test_epi16_mask(x, _mm512_set1_epi16(0x40));
  const __m512i mag = _mm512_mask_blend_epi16(upper, lo, hi);
  // mag | (x << 8 & 0x8000): the code's sign bit into the bf16 sign.
  return _mm512_ternarylogic_epi32(mag, _mm512_slli_epi16(x, 8),
                                   _mm512_set1_epi16(int16_t(0x8000)), 0xf8);
}

// Lane i of the result is the sum of the lanes of v[i]: 45 shuffles/adds for 16
// horizontal sums instead of 16 separate reductions.
FA_AVX512 FA_INLINE __m512 reduce16(const __m512 (&v)[16]) {
  __m512 w[8], x[4];
  for (int k = 0; k < 8; ++k)
    w[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]),
                         _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
  for (int m = 0; m < 4; ++m) {
    const __m512d c = _mm512_castps_pd(w[2 * m]), d = _mm512_castps_pd(w[2 * m + 1]);
    x[m] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
  }
  constexpr int kEven = _MM_SHUFFLE(2, 0, 2, 0), kOdd = _MM_SHUFFLE(3, 1, 3, 1);
  const __m512 p01 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], kEven),
                                   _mm512_shuffle_f32x4(x[0], x[1], kOdd));
  const __m512 p23 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], kEven),
                                   _mm512_shuffle_f32x4(x[2], x[3], kOdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(p01, p23, kEven), _mm512_shuffle_f32x4(p01, p23, kOdd));
}

// Q.K policies: W elements per step, partial sums in fp32 lanes.
// Widen: any dtype to fp32, fp32 FMAs against fp32 queries.
template <typename E>
struct WidenDot {
  using Q = float;
  static constexpr int W = 16;
  using Mask = __mmask16;
  using KReg = __m512;
  FA_AVX512 static FA_INLINE Mask mask(int left) { return mask16(left); }
  FA_AVX512 static FA_INLINE KReg load_k(const E* p, Mask m) { return load16(p, m); }
  FA_AVX512 static FA_INLINE __m512 dot(__m512 acc, const Q* q, Mask m, KReg k) {
    return _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q), k, acc);
  }
};

// bf16 pairs straight from the cache into the BF16 dot product (exact products,
// fp32 sums) against the bf16 queries as given.
struct Bf16Dot {
  using Q = c10::BFloat16;
  static constexpr int W = 32;
  using Mask = __mmask32;
  using KReg = __m512i;
  FA_AVX512 static FA_INLINE Mask mask(int left) { return mask32(left); }
  FA_AVX512 static FA_INLINE KReg load_k(const c10::BFloat16* p, Mask m) {
    return _mm512_maskz_loadu_epi16(m, p);
  }
  FA_AVX512 static FA_INLINE __m512 dot(__m512 acc, const Q* q, Mask m, KReg k) {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(m, q), (__m512bh)k);
  }
};

// fp8 codes widened to bf16 (fp8_to_bf16x32) into the BF16 dot product against bf16 queries
// as given: the products are exact, as for a bf16 cache, and the K scale is applied to the
// sums (qk_rows' head_scale).
template <typename E>
struct Fp8Bf16Dot : Bf16Dot {
  FA_AVX512 static FA_INLINE KReg load_k(const E* p, Mask m) { return fp8_to_bf16x32(p, m); }
};

// R query rows against tokens [0, nt) of k, nt <= T (missing tokens repeat the
// last one and are not stored).
template <typename P, typename E, int R, int T>
FA_AVX512 FA_INLINE void qk_block(const typename P::Q* q, const E* const* k, int64_t off, int nt,
                                  int D, float scale, float* s, int64_t lds, Prefetcher<E>& pf) {
  static_assert(R * T <= 16);
  const E* kr[T];
  for (int t = 0; t < T; ++t) kr[t] = k[t < nt ? t : nt - 1] + off;
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (int d0 = 0; d0 < D; d0 += P::W) {
    const typename P::Mask m = P::mask(D - d0);
    typename P::KReg kv[T];
    for (int t = 0; t < T; ++t) kv[t] = P::load_k(kr[t] + d0, m);
    pf.advance(nt * P::W * int64_t(sizeof(E)));
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) acc[r * T + t] = P::dot(acc[r * T + t], q + r * D + d0, m, kv[t]);
  }
  alignas(64) float out[16];
  _mm512_store_ps(out, _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale)));
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < nt; ++t) s[r * lds + t] = out[r * T + t];
}

// R rows of each of `heads` KV heads (head h's rows at q + h * group * D, its
// values at off + h * hs in a token row), tokens in blocks of T, every head of a
// block before the next block.
template <typename P, typename E, int R>
FA_AVX512 void qk_rows_of(const typename P::Q* q, int group, int heads, const E* const* k,
                          int64_t off, int64_t hs, int n, int D, float scale,
                          const float* head_scale, float* s, int64_t lds, Prefetcher<E>& pf) {
  // R * T partial sums and T key registers fit in the 32 vector registers.
  constexpr int T = R <= 2 ? 8 : R == 3 ? 5 : R == 4 ? 4 : 2;
  for (int j0 = 0; j0 < n; j0 += T)
    for (int h = 0; h < heads; ++h)
      qk_block<P, E, R, T>(q + int64_t(h) * group * D, k + j0, off + h * hs, std::min(T, n - j0),
                           D, scale * head_scale_of(head_scale, h),
                           s + int64_t(h) * group * lds + j0, lds, pf);
}

// acc[r] += sum_j p[r][j] * v_j, same layout and order as qk_rows_of: per block
// of TP tokens and head, R x C accumulators of 16 columns are loaded once, take
// TP tokens, and are stored back.
template <typename E, int R, int C>
FA_AVX512 void pv_rows_of(const float* p, int64_t ldp, int group, int heads, const E* const* v,
                          int64_t off, int64_t hs, int n, int D, float* acc, Prefetcher<E>& pf) {
  constexpr int TP = 8;
  for (int j0 = 0; j0 < n; j0 += TP) {
    const int nt = std::min(TP, n - j0);
    for (int h = 0; h < heads; ++h) {
      const float* ph = p + int64_t(h) * group * ldp + j0;
      float* ah = acc + int64_t(h) * group * D;
      const int64_t oh = off + h * hs;
      for (int d0 = 0; d0 < D; d0 += 16 * C) {
        __mmask16 m[C];
        __m512 a[R][C];
        for (int c = 0; c < C; ++c) {
          m[c] = mask16(std::max(0, D - d0 - 16 * c));
          for (int r = 0; r < R; ++r) a[r][c] = _mm512_maskz_loadu_ps(m[c], ah + r * D + d0 + 16 * c);
        }
        for (int t = 0; t < nt; ++t) {
          const E* vj = v[j0 + t] + oh + d0;
          pf.advance(16 * C * int64_t(sizeof(E)));
          __m512 vv[C];
          for (int c = 0; c < C; ++c) vv[c] = load16(vj + 16 * c, m[c]);
          for (int r = 0; r < R; ++r) {
            const __m512 pr = _mm512_set1_ps(ph[r * ldp + t]);
            for (int c = 0; c < C; ++c) a[r][c] = _mm512_fmadd_ps(pr, vv[c], a[r][c]);
          }
        }
        for (int c = 0; c < C; ++c)
          for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(ah + r * D + d0 + 16 * c, m[c], a[r][c]);
      }
    }
  }
}

// Rows in blocks of at most 8 (a GQA group larger than 8 takes several passes).
template <typename Fn>
FA_INLINE void by_rows(int rows, Fn&& fn) {
  int r0 = 0;
  for (; r0 + 8 <= rows; r0 += 8) fn(std::integral_constant<int, 8>{}, r0);
  if (r0 < rows) with_rows<7>(rows - r0, [&](auto R) { fn(R, r0); });
}

template <typename P, typename E>
FA_AVX512 void qk_avx512(const typename P::Q* q, int group, int heads, const E* const* k,
                         int64_t off, int64_t hs, int n, int D, float scale,
                         const float* head_scale, float* s, int64_t lds, Prefetcher<E>& pf) {
  by_rows(group, [&](auto R, int r0) {
    qk_rows_of<P, E, decltype(R)::value>(q + int64_t(r0) * D, group, heads, k, off, hs, n, D,
                                         scale, head_scale, s + r0 * lds, lds, pf);
  });
}

template <typename E>
FA_AVX512 void pv_avx512(const float* p, int64_t ldp, int group, int heads, const E* const* v,
                         int64_t off, int64_t hs, int n, int D, float* acc, Prefetcher<E>& pf) {
  by_rows(group, [&](auto R, int r0) {
    constexpr int kR = decltype(R)::value;
    pv_rows_of<E, kR, kR <= 4 ? 4 : 2>(p + r0 * ldp, ldp, group, heads, v, off, hs, n, D,
                                        acc + int64_t(r0) * D, pf);
  });
}
#endif

template <typename E>
void qk_rows_impl(const float* q, const NativeQ<E>* q_native, int group, int heads,
                  const E* const* k, int64_t off, int64_t hs, int n, int D, float scale,
                  const float* head_scale, float* s, int64_t lds, const RowTile<E>& next) {
  Prefetcher<E> pf(next, hs, D);
#if defined(__x86_64__) && defined(__GNUC__)
  const Isa level = isa();
  if constexpr (std::is_same_v<E, c10::BFloat16>) {
    if (level >= Isa::avx512_bf16)
      return qk_avx512<Bf16Dot, E>(q_native, group, heads, k, off, hs, n, D, scale, head_scale,
                                   s, lds, pf);
  }
  if constexpr (kIsFp8<E>) {
    if (level >= Isa::avx512_bf16 && q_native)
      return qk_avx512<Fp8Bf16Dot<E>, E>(q_native, group, heads, k, off, hs, n, D, scale,
                                         head_scale, s, lds, pf);
  }
  if (level >= Isa::avx512)
    return qk_avx512<WidenDot<E>, E>(q, group, heads, k, off, hs, n, D, scale, head_scale, s,
                                     lds, pf);
#endif
  qk_generic(q, group, heads, k, off, hs, n, D, scale, head_scale, s, lds, pf);
}

template <typename E>
void pv_rows_impl(const float* p, int64_t ldp, int group, int heads, const E* const* v,
                    int64_t off, int64_t hs, int n, int D, float* acc, const RowTile<E>& next) {
  Prefetcher<E> pf(next, hs, D);
#if defined(__x86_64__) && defined(__GNUC__)
  if (isa() >= Isa::avx512) return pv_avx512(p, ldp, group, heads, v, off, hs, n, D, acc, pf);
#endif
  pv_generic(p, ldp, group, heads, v, off, hs, n, D, acc, pf);
}

}  // namespace

#define FA_ROW_ENTRIES(E)                                                                    \
  void qk_rows(const float* q, const NativeQ<E>* q_native, int group, int heads,               \
               const E* const* k, int64_t off, int64_t hs, int n, int D, float scale,          \
               const float* head_scale, float* s, int64_t lds, const RowTile<E>& next) {       \
    qk_rows_impl(q, q_native, group, heads, k, off, hs, n, D, scale, head_scale, s, lds, next); \
  }                                                                                             \
  void pv_rows(const float* p, int64_t ldp, int group, int heads, const E* const* v,         \
                 int64_t off, int64_t hs, int n, int D, float* acc, const RowTile<E>& next) { \
    pv_rows_impl(p, ldp, group, heads, v, off, hs, n, D, acc, next);                         \
  }
FA_ROW_ENTRIES(float)
FA_ROW_ENTRIES(c10::BFloat16)
FA_ROW_ENTRIES(c10::Half)
FA_ROW_ENTRIES(c10::Float8_e4m3fn)
FA_ROW_ENTRIES(c10::Float8_e5m2)
#undef FA_ROW_ENTRIES

}  // namespace fastattn::cpu::vec
