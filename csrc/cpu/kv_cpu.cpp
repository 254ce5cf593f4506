// CPU append_kv and merge_attention_states.
//
// append_kv: at::parallel_for over tokens; each token copies its Hk x D rows of
// k and v into the slot's page (quantized for an fp8 cache). Negative slots are skipped.
// merge: at::parallel_for over (token, head) rows.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "cpu/cpu_kernels.h"
#include "cpu/fp8.h"
#include "cpu/vec.h"
#include "fastattn/mask.h"
#include "fastattn/softmax.h"

namespace fastattn::cpu {
namespace {

// n values of src into dst: a copy, or fp8 quantization by `scale`.
template <typename T, typename C>
void store_row(const T* src, C* dst, int n, float scale) {
  if constexpr (kIsFp8<C>) {
    vec::fp8_quantize(src, dst, n, scale);
  } else {
    std::copy_n(src, n, dst);
  }
}

template <typename T, typename C>
void append_kv_impl(const AppendKVParams& p) {
  C* kc = static_cast<C*>(p.k_cache);
  C* vc = static_cast<C*>(p.v_cache);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  at::parallel_for(0, p.num_tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = p.slot_mapping[t];
      if (slot < 0) continue;
      const int64_t page = slot_page(slot, p.page_size);
      const int64_t off = slot_in_page(slot, p.page_size);
      for (int h = 0; h < p.num_heads_k; ++h) {
        store_row(k + t * p.k_token_stride + h * p.k_head_stride,
                  kc + page * p.kc_page_stride + off * p.kc_row_stride + h * p.kc_head_stride,
                  p.head_dim, kv_scale(p.k_scale, h));
        store_row(v + t * p.v_token_stride + h * p.v_head_stride,
                  vc + page * p.vc_page_stride + off * p.vc_row_stride + h * p.vc_head_stride,
                  p.head_dim, kv_scale(p.v_scale, h));
      }
    }
  });
}

template <typename T>
void merge_impl(const MergeParams& p) {
  const T* a = static_cast<const T*>(p.out_a);
  const T* b = static_cast<const T*>(p.out_b);
  T* o = static_cast<T*>(p.out);
  at::parallel_for(0, p.num_rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const MergeWeights w = merge_weights(p.lse_a[r], p.lse_b[r]);
      const T* ar = a + r * p.out_a_row_stride;
      const T* br = b + r * p.out_b_row_stride;
      T* orow = o + r * p.out_row_stride;
      for (int d = 0; d < p.head_dim; ++d) orow[d] = T(merge_value(w, float(ar[d]), float(br[d])));
      p.lse[r] = w.lse;
    }
  });
}

}  // namespace

void append_kv(const AppendKVParams& p, c10::ScalarType dtype, c10::ScalarType cache_dtype) {
  dispatch_q_kv(dtype, cache_dtype, [&](auto t, auto c) {
    append_kv_impl<decltype(t), decltype(c)>(p);
  });
}

void merge_attention_states(const MergeParams& p, c10::ScalarType dtype) {
  dispatch_float(dtype, [&](auto t) { merge_impl<decltype(t)>(p); });
}

}  // namespace fastattn::cpu
