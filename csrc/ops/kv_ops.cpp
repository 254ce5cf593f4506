// append_kv and merge_attention_states: tensors -> params, host value checks,
// and the CPU registration.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/cpu_kernels.h"
#include "ops/ops.h"

namespace fastattn::ops {

AppendKVParams make_append_params(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& slot_mapping) {
  AppendKVParams p;
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.slot_mapping = slot_mapping.data_ptr<int64_t>();
  p.kc_page_stride = k_cache.stride(0);
  p.kc_row_stride = k_cache.stride(1);
  p.kc_head_stride = k_cache.stride(2);
  p.vc_page_stride = v_cache.stride(0);
  p.vc_row_stride = v_cache.stride(1);
  p.vc_head_stride = v_cache.stride(2);
  p.k_token_stride = k.stride(0);
  p.k_head_stride = k.stride(1);
  p.v_token_stride = v.stride(0);
  p.v_head_stride = v.stride(1);
  p.num_tokens = k.size(0);
  p.num_heads_k = int(k.size(1));
  p.head_dim = int(k.size(2));
  p.page_size = int(k_cache.size(1));
  return p;
}

namespace {

void append_kv_cpu(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& slot_mapping) {
  check_slots_host(slot_mapping, k_cache.size(0) * k_cache.size(1));
  cpu::append_kv(make_append_params(k_cache, v_cache, k, v, slot_mapping),
                 k_cache.scalar_type());
}

TensorPair merge_attention_states_cpu(const at::Tensor& out_a, const at::Tensor& lse_a,
                                      const at::Tensor& out_b, const at::Tensor& lse_b) {
  const int64_t D = out_a.size(-1);
  // Views when the strides allow (the usual case), copies otherwise.
  const at::Tensor a = out_a.reshape({-1, D});
  const at::Tensor b = out_b.reshape({-1, D});
  const at::Tensor la = lse_a.reshape({-1}).contiguous();
  const at::Tensor lb = lse_b.reshape({-1}).contiguous();
  auto out = at::empty(out_a.sizes(), out_a.options());
  auto lse = at::empty(lse_a.sizes(), lse_a.options());
  MergeParams p;
  p.out_a = a.data_ptr();
  p.out_b = b.data_ptr();
  p.lse_a = la.data_ptr<float>();
  p.lse_b = lb.data_ptr<float>();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.out_a_row_stride = a.stride(0);
  p.out_b_row_stride = b.stride(0);
  p.out_row_stride = D;
  p.num_rows = a.size(0);
  p.head_dim = int(D);
  cpu::merge_attention_states(p, out_a.scalar_type());
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CPU, m) {
  m.impl("append_kv", &append_kv_cpu);
  m.impl("merge_attention_states", &merge_attention_states_cpu);
}

}  // namespace fastattn::ops
