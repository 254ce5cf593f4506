#pragma once
// Row kernels of the CPU attention: plain loops over fp32 rows, compiled for
// several x86 ISA levels (AVX-512, AVX2+FMA, baseline) and picked at load time,
// so one wheel is fast on new CPUs and still runs on old ones.
#include <cstdint>

namespace fastattn::cpu::vec {

// x *= a
void scale(float* x, float a, int n);
// Sets x[j] = -inf outside [lo, hi) and returns the max over [lo, hi)
// (-inf when empty).
float mask_max(float* x, int n, int lo, int hi);
// x[j] = exp(x[j] - shift), returns the sum. exp(-inf) is exactly 0.
float exp_sum(float* x, float shift, int n);
// Scores of a few query rows against n keys: s[r * lds + j] = q[r] . k[j],
// q [rows, D] contiguous, key j at k + j * ldk.
void qk_rows(const float* q, int rows, const float* k, int64_t ldk, int n, int D, float* s,
             int64_t lds);
// acc[r] += sum_j p[r * ldp + j] * v[j], acc [rows, D], value j at v + j * ldv.
void pv_rows(const float* p, int64_t ldp, int rows, int n, const float* v, int64_t ldv, int D,
             float* acc);
// Widening conversions of fp16 / bf16 bit patterns.
void bf16_to_f32(const uint16_t* src, float* dst, int n);
void f16_to_f32(const uint16_t* src, float* dst, int n);

}  // namespace fastattn::cpu::vec
