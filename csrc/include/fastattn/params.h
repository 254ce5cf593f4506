#pragma once
// Plain parameter structs, one per op family. No torch types: the CPU kernels,
// the CUDA kernels and the emulation build all consume these. Strides are in
// elements and int64 so that offsets never overflow on large caches.
#include <cstdint>

namespace fastattn {

// Dense, varlen and paged attention share one struct: which sequence bounds and
// which key addressing apply are runtime predicates (null pointers), so the
// compile-time axes stay dtype, head dim and causal (DESIGN.md §3).
struct AttnParams {
  const void* q;  // [B, Sq, Hq, D] dense | [Tq, Hq, D] varlen/extend | [B, Hq, D] decode
  const void* k;  // [B, Sk, Hk, D] dense | [Tk, Hk, D] varlen | [P, page_size, Hk, D] paged
  const void* v;  // like k
  void* o;        // like q
  float* lse;     // q.shape[:-1], fp32, natural log

  // Element strides. For q/o/lse "row" is the query position. For k/v the batch
  // stride is the page stride when block_table is set, and the row stride steps
  // one token (inside a page, when paged).
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  int64_t lse_batch_stride, lse_row_stride, lse_head_stride;

  int batch;
  int num_heads_q;
  int num_heads_k;
  int head_dim;
  // Dense: the sizes. Varlen/paged: upper bounds (max_seqlen_*), used to size grids.
  int seqlen_q;
  int seqlen_k;

  const int32_t* cu_seqlens_q;  // [B + 1] or null: packed queries
  const int32_t* cu_seqlens_k;  // [B + 1] or null: packed keys
  const int32_t* kv_lens;       // [B] or null: valid keys per row (dense kv_lens, paged seq_lens)

  const int32_t* block_table;   // [B, max_pages] or null: paged keys
  int64_t block_table_stride;   // elements between rows of block_table
  int page_size;

  float softmax_scale;
  float softcap;                // 0: off
  bool causal;
  int window_left;              // -1: unbounded
  int window_right;             // -1: unbounded
};

struct AppendKVParams {
  void* k_cache;        // [P, page_size, Hk, D]
  void* v_cache;        // [P, page_size, Hk, D]
  const void* k;        // [T, Hk, D]
  const void* v;        // [T, Hk, D]
  const int64_t* slot_mapping;  // [T]; slot = page * page_size + offset, < 0: skip
  int64_t kc_page_stride, kc_row_stride, kc_head_stride;
  int64_t vc_page_stride, vc_row_stride, vc_head_stride;
  int64_t k_token_stride, k_head_stride;
  int64_t v_token_stride, v_head_stride;
  int64_t num_tokens;
  int num_heads_k;
  int head_dim;
  int page_size;
};

struct MergeParams {
  const void* out_a;    // [N, D] rows of (token, head)
  const void* out_b;    // [N, D]
  const float* lse_a;   // [N]
  const float* lse_b;   // [N]
  void* out;            // [N, D]
  float* lse;           // [N]
  int64_t out_a_row_stride, out_b_row_stride, out_row_stride;
  int64_t num_rows;
  int head_dim;
};

}  // namespace fastattn
