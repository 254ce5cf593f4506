// Op schemas (TORCH_LIBRARY) and the pybind11 module shell `fastattn._C`.
// Implementations register per dispatch key in csrc/ops (CPU) and csrc/cuda.
// Every attention op returns (out, lse); the Python layer drops lse unless
// return_lse=True, so one schema serves both and torch.compile sees one graph.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#ifndef FASTATTN_VERSION
#define FASTATTN_VERSION "0+unknown"
#endif
#ifndef FASTATTN_TORCH_VERSION
#define FASTATTN_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(fastattn, m) {
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
      "bool causal, int window_left, int window_right, float softcap) -> (Tensor, Tensor)");
  m.def(
      "append_kv(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, "
      "Tensor slot_mapping) -> ()");
  m.def(
      "merge_attention_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b) "
      "-> (Tensor, Tensor)");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastattn native extension: ops are registered under torch.ops.fastattn";
  m.def("build_info", []() {
    pybind11::dict info;
    info["version"] = FASTATTN_VERSION;
    info["torch_version"] = FASTATTN_TORCH_VERSION;
#ifdef FASTATTN_WITH_CUDA
    info["cuda"] = true;
    info["cuda_archs"] = FASTATTN_CUDA_ARCHS;
#else
    info["cuda"] = false;
    info["cuda_archs"] = "";
#endif
    return info;
  });
}
