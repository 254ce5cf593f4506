// CPU registration of append_kv and merge_attention_states.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/cpu_kernels.h"
#include "ops/ops.h"

namespace fastattn::ops {

namespace {

void append_kv_cpu(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& slot_mapping,
                   const std::optional<at::Tensor>& k_scale,
                   const std::optional<at::Tensor>& v_scale, double k_scale_value,
                   double v_scale_value) {
  check_append_inputs(k_cache, v_cache, k, v, slot_mapping);
  AppendKVParams p = make_append_params(k_cache, v_cache, k, v, slot_mapping);
  p.k_scale = kv_scale_param(k_scale, k_scale_value, k_cache, "k_scale");
  p.v_scale = kv_scale_param(v_scale, v_scale_value, v_cache, "v_scale");
  check_kv_scale_host(k_scale, "k_scale");
  check_kv_scale_host(v_scale, "v_scale");
  check_slots_host(slot_mapping, k_cache.size(0) * k_cache.size(1));
  cpu::append_kv(p, k.scalar_type(), k_cache.scalar_type());
}

TensorPair merge_attention_states_cpu(const at::Tensor& out_a, const at::Tensor& lse_a,
                                      const at::Tensor& out_b, const at::Tensor& lse_b) {
  auto out = at::empty(out_a.sizes(), out_a.options());
  auto lse = at::empty(lse_a.sizes(), lse_a.options());
  const MergeInputs in(out_a, lse_a, out_b, lse_b);
  const MergeParams p = in.params(out, lse);
  cpu::merge_attention_states(p, out_a.scalar_type());
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CPU, m) {
  m.impl("append_kv", &append_kv_cpu);
  m.impl("merge_attention_states", &merge_attention_states_cpu);
}

}  // namespace fastattn::ops
