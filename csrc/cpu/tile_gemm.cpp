// AVX-512 GEMMs for the many-rows tiles (see vec.h): S = Q.K^T and O += P.V on
// fp32 tiles.
//
// Why not the BLAS torch links: on this project's AMD CPUs MKL runs its AVX2
// ("def") sgemm kernels, half the width of the AVX-512 FMAs the cores have, and
// reaches ~105 GFLOP/s per core; these register-blocked kernels use the full
// width (measured single-threaded on 256 x 1024 x 128 tiles: Q.K^T ~230, P.V
// ~260 GFLOP/s). They are plain outer-product micro-kernels:
//  - Q.K^T: K is packed transposed once per tile (kt [D, n rounded up to 32],
//    zero-padded, rows gemm_qk_stride(n) apart), then each MR x 32 block of S
//    keeps MR x 2 vector accumulators while d runs over D: 2 loads of kt and MR
//    broadcasts of Q per 2 * MR FMAs.
//  - P.V: V rows are used in place; each MR x 64 block of O keeps MR x 4
//    accumulators while j runs over the keys: 4 loads of V and MR broadcasts of
//    P per 4 * MR FMAs.
// Without AVX-512 (or under FASTATTN_CPU_ISA=generic) has_tile_gemm() is false
// and the caller uses ATen's matmul.
#include <algorithm>
#include <cstdint>
#include <utility>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu/simd.h"
#include "cpu/vec.h"

namespace fastattn::cpu::vec {
namespace {

#if defined(__x86_64__) && defined(__GNUC__)
#define FA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

constexpr int kQkRows = 12;  // MR of Q.K^T: 24 accumulators
constexpr int kPvRows = 6;   // MR of P.V: 24 accumulators

// kt[d * ld + j] = k[j * ldk + d] for j < n, 0 for n <= j < nw (nw a multiple
// of 16): 16 x 16 blocks transposed in registers (64 shuffles per block).
FA_AVX512 void pack_kt(const float* k, int64_t ldk, int n, int D, float* kt, int nw, int64_t ld) {
  constexpr int kEven = _MM_SHUFFLE(2, 0, 2, 0), kOdd = _MM_SHUFFLE(3, 1, 3, 1);
  for (int j0 = 0; j0 < nw; j0 += 16)
    for (int d0 = 0; d0 < D; d0 += 16) {
      const __mmask16 m = mask16(D - d0);
      __m512 r[16], t[16];
      for (int i = 0; i < 16; ++i)
        r[i] = j0 + i < n ? _mm512_maskz_loadu_ps(m, k + (j0 + i) * ldk + d0) : _mm512_setzero_ps();
      for (int i = 0; i < 8; ++i) {  // t[2i], t[2i+1]: rows 2i, 2i+1 interleaved
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      }
      for (int i = 0; i < 4; ++i) {  // r[4i + e], 128-bit lane L: column 4L + e of rows 4i..4i+3
        const __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d b0 = _mm512_castps_pd(t[4 * i + 2]), b1 = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
      }
      for (int e = 0; e < 4; ++e) {  // gather the 128-bit lanes of each column
        t[e] = _mm512_shuffle_f32x4(r[e], r[4 + e], kEven);
        t[4 + e] = _mm512_shuffle_f32x4(r[e], r[4 + e], kOdd);
        t[8 + e] = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], kEven);
        t[12 + e] = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], kOdd);
      }
      for (int e = 0; e < 4; ++e) {  // r[c]: column c of the 16 rows
        r[e] = _mm512_shuffle_f32x4(t[e], t[8 + e], kEven);
        r[8 + e] = _mm512_shuffle_f32x4(t[e], t[8 + e], kOdd);
        r[4 + e] = _mm512_shuffle_f32x4(t[4 + e], t[12 + e], kEven);
        r[12 + e] = _mm512_shuffle_f32x4(t[4 + e], t[12 + e], kOdd);
      }
      for (int c = 0; c < std::min(16, D - d0); ++c)
        _mm512_storeu_ps(kt + (d0 + c) * ld + j0, r[c]);
    }
}

template <int MR>
FA_AVX512 void qk_micro(const float* q, int D, const float* kt, int64_t np, float* s, int64_t lds) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (int d = 0; d < D; ++d) {
    const __m512 b0 = _mm512_loadu_ps(kt + d * np), b1 = _mm512_loadu_ps(kt + d * np + 16);
  #pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(q[r * D + d]);
      c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(s + r * lds, c0[r]);
    _mm512_storeu_ps(s + r * lds + 16, c1[r]);
  }
}

// The accumulators stay in registers only if every loop over r is unrolled:
// with a variable index GCC keeps the arrays in memory and stores them back on
// every iteration (3x slower); hence the pragmas.
template <int MR>
FA_AVX512 void pv_micro(const float* p, int64_t ldp, int n, const float* v, int64_t ldv,
                        __mmask16 m0, __mmask16 m1, __mmask16 m2, __mmask16 m3, float* acc,
                        int D) {
  __m512 c0[MR], c1[MR], c2[MR], c3[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    c0[r] = _mm512_maskz_loadu_ps(m0, acc + r * D);
    c1[r] = _mm512_maskz_loadu_ps(m1, acc + r * D + 16);
    c2[r] = _mm512_maskz_loadu_ps(m2, acc + r * D + 32);
    c3[r] = _mm512_maskz_loadu_ps(m3, acc + r * D + 48);
  }
  for (int j = 0; j < n; ++j) {
    const float* vj = v + j * ldv;
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, vj), b1 = _mm512_maskz_loadu_ps(m1, vj + 16);
    const __m512 b2 = _mm512_maskz_loadu_ps(m2, vj + 32), b3 = _mm512_maskz_loadu_ps(m3, vj + 48);
  #pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(p[r * ldp + j]);
      c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
      c2[r] = _mm512_fmadd_ps(a, b2, c2[r]);
      c3[r] = _mm512_fmadd_ps(a, b3, c3[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(acc + r * D, m0, c0[r]);
    _mm512_mask_storeu_ps(acc + r * D + 16, m1, c1[r]);
    _mm512_mask_storeu_ps(acc + r * D + 32, m2, c2[r]);
    _mm512_mask_storeu_ps(acc + r * D + 48, m3, c3[r]);
  }
}

#endif

}  // namespace

bool has_tile_gemm() {
#if defined(__x86_64__) && defined(__GNUC__)
  return isa() >= Isa::avx512;
#else
  return false;
#endif
}

void gemm_qk(const float* q, int m, const float* k, int64_t ldk, int n, int D, float* kt,
             float* s, int64_t lds) {
#if defined(__x86_64__) && defined(__GNUC__)
  // kt rows (and the caller's score rows) are padded off multiples of 4 KiB, whose
  // rows would all fall in the same L1 set.
  const int nw = (n + 31) / 32 * 32, ld = gemm_qk_stride(n);
  pack_kt(k, ldk, n, D, kt, nw, ld);
  // Key blocks outermost: a 32-key panel of kt (D * 128 bytes) stays in L1
  // while every row block passes over it.
  for (int j0 = 0; j0 < nw; j0 += 32)
    for (int r0 = 0; r0 < m; r0 += kQkRows)
      with_rows<kQkRows>(std::min(kQkRows, m - r0), [&](auto R) {
        qk_micro<decltype(R)::value>(q + int64_t(r0) * D, D, kt + j0, ld, s + r0 * lds + j0, lds);
      });
#endif
}

void gemm_pv(const float* p, int64_t ldp, int m, const float* v, int64_t ldv, int n, int D,
             float* acc) {
#if defined(__x86_64__) && defined(__GNUC__)
  for (int d0 = 0; d0 < D; d0 += 64) {
    const __mmask16 m0 = mask16(D - d0), m1 = mask16(D - d0 - 16), m2 = mask16(D - d0 - 32),
                    m3 = mask16(D - d0 - 48);
    for (int r0 = 0; r0 < m; r0 += kPvRows)
      with_rows<kPvRows>(std::min(kPvRows, m - r0), [&](auto R) {
        pv_micro<decltype(R)::value>(p + r0 * ldp, ldp, n, v + d0, ldv, m0, m1, m2, m3,
                                     acc + int64_t(r0) * D + d0, D);
      });
  }
#endif
}

}  // namespace fastattn::cpu::vec
