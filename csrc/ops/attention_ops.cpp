// CPU registration of the attention ops: host value checks, then the CPU kernel.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/cpu_kernels.h"
#include "ops/ops.h"

namespace fastattn::ops {

namespace {

TensorPair attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& kv_lens, double softmax_scale,
                         bool causal, int64_t window_left, int64_t window_right,
                         double softcap) {
  check_dense_inputs(q, k, v, kv_lens);
  if (kv_lens.has_value()) check_kv_lens_host(*kv_lens, k.size(1));
  auto [out, lse] = alloc_out_lse(q);
  if (q.numel() == 0) return {out, lse};
  const AttnParams p = make_dense_params(q, k, v, kv_lens, out, lse, softmax_scale, causal,
                                         window_left, window_right, softcap);
  cpu::attention_fwd(p, q.scalar_type(), q.scalar_type());
  return {out, lse};
}

TensorPair attention_varlen_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                                int64_t max_seqlen_q, int64_t max_seqlen_k,
                                double softmax_scale, bool causal, int64_t window_left,
                                int64_t window_right, double softcap) {
  check_varlen_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  check_cu_seqlens_host(cu_seqlens_q, q.size(0), max_seqlen_q, "cu_seqlens_q", "q.shape[0]",
                        "max_seqlen_q");
  check_cu_seqlens_host(cu_seqlens_k, k.size(0), max_seqlen_k, "cu_seqlens_k", "k.shape[0]",
                        "max_seqlen_k");
  auto [out, lse] = alloc_out_lse(q);
  if (q.numel() == 0) return {out, lse};
  const AttnParams p =
      make_varlen_params(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, out,
                         lse, softmax_scale, causal, window_left, window_right, softcap);
  cpu::attention_fwd(p, q.scalar_type(), q.scalar_type());
  return {out, lse};
}

TensorPair paged_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache,
                               const at::Tensor& v_cache, const at::Tensor& block_table,
                               const at::Tensor& seq_lens,
                               const std::optional<at::Tensor>& cu_seqlens_q,
                               int64_t max_seqlen_q, double softmax_scale, bool causal,
                               int64_t window_left, int64_t window_right, double softcap,
                               const std::optional<at::Tensor>& k_scale,
                               const std::optional<at::Tensor>& v_scale, double k_scale_value,
                               double v_scale_value) {
  check_paged_inputs(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q);
  const KVScale ks = kv_scale_param(k_scale, k_scale_value, k_cache, "k_scale");
  const KVScale vs = kv_scale_param(v_scale, v_scale_value, v_cache, "v_scale");
  check_kv_scale_host(k_scale, "k_scale");
  check_kv_scale_host(v_scale, "v_scale");
  if (cu_seqlens_q.has_value())
    check_cu_seqlens_host(*cu_seqlens_q, q.size(0), max_seqlen_q, "cu_seqlens_q", "q.shape[0]",
                          "max_seqlen_q");
  check_paged_host(block_table, seq_lens, cu_seqlens_q, k_cache.size(0), k_cache.size(1));
  auto [out, lse] = alloc_out_lse(q);
  if (q.numel() == 0) return {out, lse};
  AttnParams p =
      make_paged_params(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q,
                        out, lse, softmax_scale, causal, window_left, window_right, softcap);
  p.k_scale = ks;
  p.v_scale = vs;
  cpu::attention_fwd(p, q.scalar_type(), k_cache.scalar_type());
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_varlen", &attention_varlen_cpu);
  m.impl("paged_attention", &paged_attention_cpu);
}

}  // namespace fastattn::ops
