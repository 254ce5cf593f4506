#pragma once
// Vector kernels of the CPU attention (vec.cpp: softmax steps and conversions;
// row_kernels.cpp: few-row Q.K and P.V; tile_gemm.cpp: many-row GEMMs). The
// row and GEMM kernels have hand-written AVX-512 forms, chosen by isa(); every
// other loop (and the fallbacks) is compiled for several x86 levels and picked
// at load time (simd.h): one wheel is fast on new CPUs and still runs on old ones.
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e5m2.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace fastattn::cpu::vec {

// Instruction sets the hand-written kernels use, in order. The level is what
// the CPU supports, capped by FASTATTN_CPU_ISA=generic|avx512 (read once) so
// that tests can run the fallbacks on a machine that has more. It does not pick
// among the compiler's multiversioned clones: the CPU does (simd.h).
enum class Isa { generic, avx512, avx512_bf16 };
Isa isa();

// x *= a
void scale(float* x, float a, int n);
// Sets x[j] = -inf outside [lo, hi) and returns the max over [lo, hi)
// (-inf when empty).
float mask_max(float* x, int n, int lo, int hi);
// x[j] = exp(x[j] - shift), returns the sum. exp(-inf) is exactly 0.
float exp_sum(float* x, float shift, int n);
// Widening conversions of fp16 / bf16 bit patterns.
void bf16_to_f32(const uint16_t* src, float* dst, int n);
void f16_to_f32(const uint16_t* src, float* dst, int n);
// fp8 codes (cpu/fp8.h), exactly.
void fp8_to_f32(const c10::Float8_e4m3fn* src, float* dst, int n);
void fp8_to_f32(const c10::Float8_e5m2* src, float* dst, int n);
// append_kv's quantization (cpu/fp8.h): dst[i] = saturate(round_nearest_even(src[i] / scale)),
// the division in fp32; NaN gives NaN (0x7f).
template <typename T, typename E>
void fp8_quantize(const T* src, E* dst, int n, float scale);

// GEMMs of the many-rows tiles (tile_gemm.cpp), fp32, AVX-512: callable when
// has_tile_gemm() (else the caller uses ATen's matmul).
bool has_tile_gemm();
// s[r * lds + j] = q[r] . k_j for r < m, j < n: q [m, D] contiguous, k_j at
// k + j * ldk; lds >= n rounded up to 32, and s[r * lds + j] up to there is
// written too (with 0); kt: scratch of D * gemm_qk_stride(n). gemm_qk_stride
// is also the best lds: rows 64 bytes off a multiple of 4 KiB.
inline int gemm_qk_stride(int n) { return (n + 31) / 32 * 32 + 16; }
void gemm_qk(const float* q, int m, const float* k, int64_t ldk, int n, int D, float* kt,
             float* s, int64_t lds);
// acc[r * D + d] += sum_j p[r * ldp + j] * v[j * ldv + d] for r < m, j < n.
void gemm_pv(const float* p, int64_t ldp, int m, const float* v, int64_t ldv, int n, int D,
             float* acc);

// Row kernels (decode, and tiles with few query rows): the query rows of
// `heads` consecutive KV heads (`group` rows each) against n tokens, read in
// place in their dtype E. Token j's
// values for head h (0-based in the call) are at k[j] + off + h * hs.
//
// Row r = h * group + g: s[r * lds + j] = scale * head_scale[h] * (q[r] . k_j) (head_scale
// may be null: 1), q [heads * group, D] in fp32 and, q_native, the same rows in bf16 for a
// bf16 or fp8 cache, in fp32 for an fp32 one (read by the bf16 dot product: may be null
// otherwise, and for fp8 it is used only when not null). fp8 rows are widened exactly:
// their K scale comes in head_scale, their V scale is the caller's (on the output).
// pv_rows: acc[r] += sum_j p[r * ldp + j] * v_j, acc fp32.
//
// `next` is the tile the caller reads next (same hs); the kernels prefetch it
// in memory order as they consume this one.
template <typename E>
struct RowTile {
  const E* const* rows = nullptr;  // token row pointers
  int n = 0;                       // tokens (0: nothing to prefetch)
  int64_t off = 0;                 // offset of its first head in a row
  int heads = 0;
};

void qk_rows(const float* q, const float* q_native, int group, int heads,
               const float* const* k, int64_t off, int64_t hs, int n, int D, float scale,
               const float* head_scale, float* s, int64_t lds, const RowTile<float>& next);
void qk_rows(const float* q, const c10::BFloat16* q_native, int group, int heads,
               const c10::BFloat16* const* k, int64_t off, int64_t hs, int n, int D, float scale,
               const float* head_scale, float* s, int64_t lds,
               const RowTile<c10::BFloat16>& next);
void qk_rows(const float* q, const c10::Half* q_native, int group, int heads,
               const c10::Half* const* k, int64_t off, int64_t hs, int n, int D, float scale,
               const float* head_scale, float* s, int64_t lds, const RowTile<c10::Half>& next);
void qk_rows(const float* q, const c10::BFloat16* q_native, int group, int heads,
               const c10::Float8_e4m3fn* const* k, int64_t off, int64_t hs, int n, int D,
               float scale, const float* head_scale, float* s, int64_t lds,
               const RowTile<c10::Float8_e4m3fn>& next);
void qk_rows(const float* q, const c10::BFloat16* q_native, int group, int heads,
               const c10::Float8_e5m2* const* k, int64_t off, int64_t hs, int n, int D,
               float scale, const float* head_scale, float* s, int64_t lds,
               const RowTile<c10::Float8_e5m2>& next);
void pv_rows(const float* p, int64_t ldp, int group, int heads, const float* const* v,
               int64_t off, int64_t hs, int n, int D, float* acc, const RowTile<float>& next);
void pv_rows(const float* p, int64_t ldp, int group, int heads,
               const c10::BFloat16* const* v, int64_t off, int64_t hs, int n, int D, float* acc,
               const RowTile<c10::BFloat16>& next);
void pv_rows(const float* p, int64_t ldp, int group, int heads, const c10::Half* const* v,
               int64_t off, int64_t hs, int n, int D, float* acc,
               const RowTile<c10::Half>& next);
void pv_rows(const float* p, int64_t ldp, int group, int heads,
               const c10::Float8_e4m3fn* const* v, int64_t off, int64_t hs, int n, int D,
               float* acc, const RowTile<c10::Float8_e4m3fn>& next);
void pv_rows(const float* p, int64_t ldp, int group, int heads,
               const c10::Float8_e5m2* const* v, int64_t off, int64_t hs, int n, int D,
               float* acc, const RowTile<c10::Float8_e5m2>& next);

}  // namespace fastattn::cpu::vec
