#pragma once
// Plain parameter structs, one per op family. No torch types: the CPU kernels,
// the CUDA kernels and the emulation build all consume these. Strides are in
// elements and int64 so that offsets never overflow on large caches.
#include <cstdint>

namespace fastattn {

// Bits a CUDA kernel sets in *error_flag when an index value is out of range (or
// a scale tensor value is not positive and finite). Such values cannot be checked on
// the host without a device sync, so the kernel checks each one before use, never
// dereferences a bad address, and reports here; the host raises ValueError naming the argument (see
// csrc/ops/kernel_ops.cpp for when).
enum ErrorBits : int32_t {
  kErrBlockTable = 1 << 0,   // block_table entry outside [0, num_pages) for a used page
  kErrSeqLens = 1 << 1,      // seq_lens / kv_lens outside their range
  kErrCuSeqlensQ = 1 << 2,   // cu_seqlens_q not non-decreasing from 0 to Tq, or > max_seqlen_q
  kErrCuSeqlensK = 1 << 3,   // cu_seqlens_k likewise
  kErrSlotMapping = 1 << 4,  // slot_mapping entry >= num_pages * page_size
  kErrKScale = 1 << 5,       // an fp8 k_scale tensor value that is not positive and finite
  kErrVScale = 1 << 6,       // likewise v_scale
};

// Scales of an fp8 KV cache: a stored code reads as float(code) * scale, with
// scale = value * (tensor ? tensor[hk * stride] : 1): a per-tensor scale has stride 0,
// a per-head scale [Hk] stride 1 (kv_scale in mask.h). Without an fp8 cache the scale is 1.
struct KVScale {
  const float* tensor;  // fp32 [] or [Hk] on the cache's device, or null
  int stride;           // 0 ([]) or 1 ([Hk])
  float value;          // the Python float (1 when a tensor is given)
};


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

  int num_pages;                // paged: k/v cache pages, for the block-table range check
  int total_q;                  // varlen/extend: Tq, for the cu_seqlens_q check
  int total_k;                  // varlen: Tk

  float softmax_scale;
  KVScale k_scale, v_scale;     // fp8 caches (paged only); see KVScale
  float softcap;                // 0: off
  bool causal;
  int window_left;              // -1: unbounded
  int window_right;             // -1: unbounded

  int32_t* error_flag;          // CUDA kernels: ErrorBits sink; null on the CPU (host checks)
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
  int64_t num_slots;            // num_pages * page_size
  // fp8 caches: stored = saturate(round_nearest_even(x / scale)), x / scale in fp32.
  KVScale k_scale, v_scale;
  int32_t* error_flag;          // CUDA kernels: ErrorBits sink; null on the CPU
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
