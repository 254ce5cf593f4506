#pragma once
// The op schemas, defined once: fastattn (csrc/bindings.cpp) and the test-only
// fastattn_emu namespace (csrc/emu/ops_module.cpp) declare the same ops.
// Every attention op returns (out, lse); the Python layer drops lse unless
// return_lse=True, so one schema serves both and torch.compile sees one graph.
#include <torch/library.h>

namespace fastattn::ops {

inline void define_ops(torch::Library& m) {
  m.def(
      "attention(Tensor q, Tensor k, Tensor v, Tensor? kv_lens, float softmax_scale, "
      "bool causal, int window_left, int window_right, float softcap) -> (Tensor, Tensor)");
  m.def(
      "attention_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, "
      "Tensor cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, float softmax_scale, "
      "bool causal, int window_left, int window_right, float softcap) -> (Tensor, Tensor)");
  m.def(
      "paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, "
      "Tensor seq_lens, Tensor? cu_seqlens_q, int max_seqlen_q, float softmax_scale, "
      "bool causal, int window_left, int window_right, float softcap, "
      "Tensor? k_scale=None, Tensor? v_scale=None, float k_scale_value=1., "
      "float v_scale_value=1.) -> (Tensor, Tensor)");
  // fp8 caches: a scale is k_scale_value times k_scale (a tensor [] or [Hk]) when given.
  m.def(
      "append_kv(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, "
      "Tensor slot_mapping, Tensor? k_scale=None, Tensor? v_scale=None, "
      "float k_scale_value=1., float v_scale_value=1.) -> ()");
  m.def(
      "merge_attention_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b) "
      "-> (Tensor, Tensor)");
}

}  // namespace fastattn::ops
