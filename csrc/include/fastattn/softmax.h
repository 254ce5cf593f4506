#pragma once
// Online softmax for one query row, and the merge of two partial states.
// Scores are kept in the natural-log domain (OnlineSoftmax, the CPU kernels) or in base 2
// (OnlineSoftmax2, the CUDA kernels); lse = row_max + log(row_sum), natural either way.
#include <cmath>

#include "fastattn/macros.h"

namespace fastattn {

constexpr float kNegInf = -INFINITY;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Applied to the scaled score, before masking (DESIGN.md §1).
FA_HD float apply_softcap(float score, float softcap) {
  return softcap > 0.f ? softcap * tanhf(score / softcap) : score;
}

// kBase2: scores, row_max and the exponentials in base 2. The CUDA kernels fold log2(e)
// into the softmax scale (after the softcap, when there is one) so that each score costs one multiply and exp2f, the
// GPU's native exponential, instead of expf's extra multiply and range handling
// (FlashAttention's trick); lse() still returns the natural-log value.
template <bool kBase2>
struct OnlineSoftmaxT {
  float row_max;
  float row_sum;

  FA_HD static float exp(float x) { return kBase2 ? exp2f(x) : expf(x); }

  FA_HD void init() {
    row_max = kNegInf;
    row_sum = 0.f;
  }

  // Admits a tile whose largest (masked) score is tile_max. Returns the factor
  // by which the caller rescales its output accumulator. A row that has seen
  // only masked keys keeps max -inf and factor 1 (its accumulator is zero), so
  // exp(-inf - -inf) never produces NaN.
  FA_HD float rescale(float tile_max) {
    const float new_max = fmaxf(row_max, tile_max);
    const float alpha = new_max == kNegInf ? 1.f : exp(row_max - new_max);
    row_sum *= alpha;
    row_max = new_max;
    return alpha;
  }

  // Unnormalised probability of a score after rescale(); masked scores give 0.
  FA_HD float prob(float score) const {
    return row_max == kNegInf ? 0.f : exp(score - row_max);
  }

  FA_HD void add(float p) { row_sum += p; }

  // Factor turning the accumulator into the output; 0 for a row with no key.
  FA_HD float inv_sum() const { return row_sum > 0.f ? 1.f / row_sum : 0.f; }

  FA_HD float lse() const {
    if (!(row_sum > 0.f)) return kNegInf;
    return kBase2 ? (row_max + log2f(row_sum)) * kLn2 : row_max + logf(row_sum);
  }
};

using OnlineSoftmax = OnlineSoftmaxT<false>;
using OnlineSoftmax2 = OnlineSoftmaxT<true>;

// Weights for out = w_a * out_a + w_b * out_b and the merged lse, where out_a
// and out_b are normalised partial outputs over disjoint key sets.
struct MergeWeights {
  float w_a;
  float w_b;
  float lse;
};

FA_HD MergeWeights merge_weights(float lse_a, float lse_b) {
  MergeWeights w;
  const float m = fmaxf(lse_a, lse_b);
  if (m == kNegInf) {
    w.w_a = 0.f;
    w.w_b = 0.f;
    w.lse = kNegInf;
    return w;
  }
  const float e_a = expf(lse_a - m);
  const float e_b = expf(lse_b - m);
  const float s = e_a + e_b;
  w.w_a = e_a / s;
  w.w_b = e_b / s;
  w.lse = m + logf(s);
  return w;
}

// One merged element. A side with weight 0 contributes nothing, even where its
// output is not finite (an empty partial state).
FA_HD float merge_value(const MergeWeights& w, float a, float b) {
  float x = 0.f;
  if (w.w_a != 0.f) x += w.w_a * a;
  if (w.w_b != 0.f) x += w.w_b * b;
  return x;
}

}  // namespace fastattn
