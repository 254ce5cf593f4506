#pragma once
// Host glue shared by the CPU and CUDA registrations: tensors -> params, and
// the checks on index *values* (shapes, dtypes and devices are checked in
// Python before the op is called). Value checks raise c10::ValueError, which
// Python sees as ValueError.
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "fastattn/params.h"

namespace fastattn::ops {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;

// Output and lse allocated for queries q: out like q (contiguous), lse
// float32 with shape q.shape[:-1].
TensorPair alloc_out_lse(const at::Tensor& q);

// q [B, Sq, Hq, D]; k, v [B, Sk, Hk, D]; kv_lens int32 [B] or none.
AttnParams make_dense_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const std::optional<at::Tensor>& kv_lens, const at::Tensor& out,
                             const at::Tensor& lse, double softmax_scale, bool causal,
                             int64_t window_left, int64_t window_right, double softcap);

// q [Tq, Hq, D]; k, v [Tk, Hk, D]; cu_seqlens int32 [B + 1].
AttnParams make_varlen_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                              int64_t max_seqlen_q, int64_t max_seqlen_k, const at::Tensor& out,
                              const at::Tensor& lse, double softmax_scale, bool causal,
                              int64_t window_left, int64_t window_right, double softcap);

// q [B, Hq, D] (decode) or [Tq, Hq, D] with cu_seqlens_q [B + 1] (extend);
// caches [P, page_size, Hk, D]; block_table int32 [B, max_pages]; seq_lens int32 [B].
AttnParams make_paged_params(const at::Tensor& q, const at::Tensor& k_cache,
                             const at::Tensor& v_cache, const at::Tensor& block_table,
                             const at::Tensor& seq_lens,
                             const std::optional<at::Tensor>& cu_seqlens_q, int64_t max_seqlen_q,
                             const at::Tensor& out, const at::Tensor& lse, double softmax_scale,
                             bool causal, int64_t window_left, int64_t window_right,
                             double softcap);

AppendKVParams make_append_params(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& slot_mapping);

// merge_attention_states inputs flattened to rows of D (views when possible).
struct MergeInputs {
  MergeInputs(const at::Tensor& out_a, const at::Tensor& lse_a, const at::Tensor& out_b,
              const at::Tensor& lse_b);
  // out like out_a (contiguous), lse like lse_a.
  MergeParams params(const at::Tensor& out, const at::Tensor& lse) const;
  at::Tensor a, b, la, lb;
};

// Shapes, dtypes and devices of the operands and index tensors, checked again in C++
// because the ops can be called directly (torch.ops.fastattn.*) without the Python
// layer; merge_attention_states' inputs are checked by MergeInputs.
void check_dense_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const std::optional<at::Tensor>& kv_lens);
void check_varlen_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                         int64_t max_seqlen_q, int64_t max_seqlen_k);
void check_paged_inputs(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& block_table, const at::Tensor& seq_lens,
                        const std::optional<at::Tensor>& cu_seqlens_q, int64_t max_seqlen_q);
void check_append_inputs(const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& slot_mapping);

// fp8 KV caches (float8_e4m3fn, float8_e5m2).
bool is_fp8(at::ScalarType t);
// A scale argument (`name`: "k_scale" or "v_scale") of a paged op on `cache`: the tensor,
// when given, is float32 of shape [] or [Hk] on the cache's device; the value a positive
// finite float; both only with an fp8 cache. Returns the KVScale the kernels read.
KVScale kv_scale_param(const std::optional<at::Tensor>& tensor, double value,
                       const at::Tensor& cache, const char* name);
// The tensor's values (host tensors): positive and finite.
void check_kv_scale_host(const std::optional<at::Tensor>& tensor, const char* name);

// Value checks for index tensors that live on the host.
void check_kv_lens_host(const at::Tensor& kv_lens, int64_t seqlen_k);
void check_cu_seqlens_host(const at::Tensor& cu_seqlens, int64_t total, int64_t max_seqlen,
                           const char* name, const char* total_name, const char* max_name);
void check_paged_host(const at::Tensor& block_table, const at::Tensor& seq_lens,
                      const std::optional<at::Tensor>& cu_seqlens_q, int64_t num_pages,
                      int64_t page_size);
void check_slots_host(const at::Tensor& slot_mapping, int64_t num_slots);

// CUDA build: synchronises every device fastattn launched on, then returns (and clears)
// the ErrorBits its kernels flagged since the last check (see csrc/ops/kernel_ops.h).
int32_t take_kernel_error_bits();
// Emulation build (tests): the multiprocessor count the decode split-KV is sized for.
void set_emu_num_sms(int n);

}  // namespace fastattn::ops
