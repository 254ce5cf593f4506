#pragma once
// Which keys a query sees, and where a key lives in memory. Shared by every
// kernel and by the CPU implementation, so CI exercises this math on each change. Also
// the scale an fp8 cache's codes read with.
#include <cstdint>

#include "fastattn/macros.h"
#include "fastattn/params.h"

namespace fastattn {

// The scale of KV head hk of an fp8 cache (1 for other caches).
FA_HD float kv_scale(const KVScale& s, int hk) {
  return s.tensor ? s.value * s.tensor[int64_t(hk) * s.stride] : s.value;
}

// Per-sequence extents of one batch row.
struct SeqBounds {
  int64_t q_start;  // first packed query row (0 for dense rows)
  int64_t k_start;  // first packed key row (0 for dense and paged rows)
  int q_len;
  int k_len;
};

FA_HD SeqBounds seq_bounds(const AttnParams& p, int b) {
  SeqBounds s;
  if (p.cu_seqlens_q) {
    s.q_start = p.cu_seqlens_q[b];
    s.q_len = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
  } else {
    s.q_start = 0;
    s.q_len = p.seqlen_q;
  }
  s.k_start = p.cu_seqlens_k ? p.cu_seqlens_k[b] : 0;
  if (p.kv_lens) {
    s.k_len = p.kv_lens[b];
  } else if (p.cu_seqlens_k) {
    s.k_len = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
  } else {
    s.k_len = p.seqlen_k;
  }
  return s;
}

// Half-open range [lo, hi) of keys visible to query i. Bottom-right aligned:
// query i sits at key position i + k_len - q_len. Empty when hi <= lo.
struct KeyRange {
  int lo;
  int hi;
};

FA_HD KeyRange visible_keys(int i, int q_len, int k_len, bool causal, int window_left,
                            int window_right) {
  // int64: windows may be huge and positions negative before clamping.
  const int64_t diag = int64_t(i) + k_len - q_len;
  int64_t hi = k_len;
  if (causal && diag + 1 < hi) hi = diag + 1;
  if (window_right >= 0 && diag + window_right + 1 < hi) hi = diag + window_right + 1;
  int64_t lo = 0;
  if (window_left >= 0 && diag - window_left > lo) lo = diag - window_left;
  if (hi < lo) hi = lo;
  KeyRange r;
  r.lo = int(lo > k_len ? k_len : lo);
  r.hi = int(hi < 0 ? 0 : hi);
  if (r.hi < r.lo) r.hi = r.lo;
  return r;
}

// Keys visible to any query in [i_begin, i_end): the bounds are monotone in i.
FA_HD KeyRange visible_keys_of_rows(int i_begin, int i_end, int q_len, int k_len, bool causal,
                                    int window_left, int window_right) {
  KeyRange first = visible_keys(i_begin, q_len, k_len, causal, window_left, window_right);
  KeyRange last = visible_keys(i_end - 1, q_len, k_len, causal, window_left, window_right);
  KeyRange r;
  r.lo = first.lo;
  r.hi = last.hi > first.lo ? last.hi : first.lo;
  return r;
}

// Element offset of query row i (0-based inside its sequence), head h.
FA_HD int64_t q_offset(const AttnParams& p, const SeqBounds& s, int b, int i, int h) {
  return int64_t(b) * p.q_batch_stride + (s.q_start + i) * p.q_row_stride +
         int64_t(h) * p.q_head_stride;
}

FA_HD int64_t o_offset(const AttnParams& p, const SeqBounds& s, int b, int i, int h) {
  return int64_t(b) * p.o_batch_stride + (s.q_start + i) * p.o_row_stride +
         int64_t(h) * p.o_head_stride;
}

FA_HD int64_t lse_offset(const AttnParams& p, const SeqBounds& s, int b, int i, int h) {
  return int64_t(b) * p.lse_batch_stride + (s.q_start + i) * p.lse_row_stride +
         int64_t(h) * p.lse_head_stride;
}

// Token j of batch row b, without the head term: through the block table when
// paged, else the dense or packed row. Callers only pass j < k_len, so unused
// block-table entries and unused cache slots are never touched.
FA_HD int32_t page_of(const AttnParams& p, int b, int j) {
  return p.block_table[int64_t(b) * p.block_table_stride + j / p.page_size];
}

// Token j at its slot of `page` (already read with page_of, e.g. to check it).
FA_HD int64_t paged_token_offset(const AttnParams& p, int32_t page, int j, int64_t batch_stride,
                                 int64_t row_stride) {
  return int64_t(page) * batch_stride + int64_t(j % p.page_size) * row_stride;
}

FA_HD int64_t kv_token_offset(const AttnParams& p, const SeqBounds& s, int b, int j,
                              int64_t batch_stride, int64_t row_stride) {
  if (p.block_table) return paged_token_offset(p, page_of(p, b, j), j, batch_stride, row_stride);
  return int64_t(b) * batch_stride + (s.k_start + j) * row_stride;
}

FA_HD int64_t k_offset(const AttnParams& p, const SeqBounds& s, int b, int j, int hk) {
  return kv_token_offset(p, s, b, j, p.k_batch_stride, p.k_row_stride) +
         int64_t(hk) * p.k_head_stride;
}

FA_HD int64_t v_offset(const AttnParams& p, const SeqBounds& s, int b, int j, int hk) {
  return kv_token_offset(p, s, b, j, p.v_batch_stride, p.v_row_stride) +
         int64_t(hk) * p.v_head_stride;
}

// Slot -> (page, offset) for append_kv.
FA_HD int64_t slot_page(int64_t slot, int page_size) { return slot / page_size; }
FA_HD int64_t slot_in_page(int64_t slot, int page_size) { return slot % page_size; }

}  // namespace fastattn
