#pragma once
// Helpers shared by the kernel sources: the element types behind kernels::DType, and the
// error report for index and scale values found out of range on the device.
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "cuda/kernels.h"
#include "fastattn/device/device.h"
#include "fastattn/mask.h"
#include "fastattn/softmax.h"

namespace fastattn::kernels {

namespace dev = ::fastattn::device;

// Records an out-of-range index value (ErrorBits); the caller then skips the access.
FA_DEVICE void report_error(int32_t* flag, int32_t bits) {
  if (flag) dev::atomic_or(flag, bits);
}

// Block-table entries [first, end) of batch row b are checked without being read
// through: the kernels never load the pages a sequence keeps but no query sees (below a
// sliding window, or all of them for a sequence with no query tokens), yet an
// out-of-range entry there is as invalid as on the CPU, which checks every page below
// seq_len. Both paged kernels call this, so one rule holds on every device. Entry
// first + k * step is this thread's share.
FA_DEVICE void check_unread_pages(const AttnParams& p, int b, int first, int end, int step) {
  const int32_t* row = p.block_table + int64_t(b) * p.block_table_stride;
  bool bad = false;
  for (int pg = first; pg < end; pg += step) bad |= row[pg] < 0 || row[pg] >= p.num_pages;
  if (bad) report_error(p.error_flag, kErrBlockTable);
}

// The fp8 scale of KV head h (mask.h kv_scale). A scale tensor's values cannot be checked
// on the host without a sync, so the kernels check the ones they use: a tensor value that is
// not positive and finite sets `bit` (kErrKScale / kErrVScale), the rule the CPU op applies
// on the host (the Python float is checked there on every device). Returns the scale.
FA_DEVICE float checked_kv_scale(const KVScale& s, int h, int32_t* flag, int32_t bit) {
  if (s.tensor) {
    const float t = s.tensor[int64_t(h) * s.stride];
    if (!(t > 0.f && t < INFINITY)) report_error(flag, bit);  // NaN fails `t > 0`
  }
  return kv_scale(s, h);
}

// Bounds of batch row b with every index value checked before use. A bad value adds its
// ErrorBits to err and empties what it describes (q_len or k_len = 0), so that nothing is
// read through it.
FA_DEVICE SeqBounds checked_seq_bounds(const AttnParams& p, int b, int& err) {
  if (p.cu_seqlens_q) {
    const int64_t q0 = p.cu_seqlens_q[b], q1 = p.cu_seqlens_q[b + 1];
    if (q0 < 0 || q1 < q0 || q1 > p.total_q || q1 - q0 > p.seqlen_q ||
        (b == 0 && q0 != 0) || (b == p.batch - 1 && q1 != p.total_q)) {
      err |= kErrCuSeqlensQ;
    }
  }
  if (p.kv_lens) {
    const int32_t len = p.kv_lens[b];
    // Paged rows hold their query tokens too (0 marks a padding row).
    if (len < 0 || len > p.seqlen_k) err |= kErrSeqLens;
  } else if (p.cu_seqlens_k) {
    const int64_t k0 = p.cu_seqlens_k[b], k1 = p.cu_seqlens_k[b + 1];
    if (k0 < 0 || k1 < k0 || k1 > p.total_k || k1 - k0 > p.seqlen_k ||
        (b == 0 && k0 != 0) || (b == p.batch - 1 && k1 != p.total_k)) {
      err |= kErrCuSeqlensK;
    }
  }
  SeqBounds s = seq_bounds(p, b);
  if (err & kErrCuSeqlensQ) {
    s.q_start = 0;
    s.q_len = 0;
  }
  if (err & (kErrSeqLens | kErrCuSeqlensK)) {
    s.k_start = 0;
    s.k_len = 0;
  }
  if (p.block_table && s.k_len != 0 && s.q_len > s.k_len) {
    err |= kErrSeqLens;  // the new tokens are part of seq_lens
    s.k_len = 0;
  }
  return s;
}

// One forward block's share of a (batch row, KV head): packed query rows [m0, m_end)
// (row m is position m / group of query head hk * group + m % group) and the keys they see.
// Both forward kernels (attention_fwd.cuh, attention_fwd_sm90.cuh) start here.
struct FwdBlock {
  SeqBounds s;  // index values checked (checked_seq_bounds)
  int seq_err;  // their ErrorBits, the same in every thread: thread 0 reports them
  int group;    // Hq / Hk
  int m0, m_end;  // m0 >= m_end: no rows; the block returns before any barrier
  int i_first, i_last;  // query positions of rows m0 and m_end - 1
  KeyRange keys;        // keys some row of the block sees
};

FA_DEVICE FwdBlock fwd_block(const AttnParams& p, int b, int hk, int m_block, int block_m,
                             int tid, int threads) {
  FwdBlock f;
  f.seq_err = 0;
  f.s = checked_seq_bounds(p, b, f.seq_err);
  f.group = p.num_heads_q / p.num_heads_k;
  const int rows = f.s.q_len * f.group;
  if (p.block_table && hk == 0 && m_block == 0 && f.s.k_len > 0) {
    // The blocks of a sequence read the pages from its first query's first visible key up
    // to k_len (the ranges are contiguous and end at k_len); one block per sequence checks
    // the entries below, all of them when it has no query tokens.
    const int unread_keys =
        f.s.q_len > 0 ? visible_keys(0, f.s.q_len, f.s.k_len, p.causal, p.window_left,
                                     p.window_right).lo
                      : f.s.k_len;
    check_unread_pages(p, b, tid, (unread_keys + p.page_size - 1) / p.page_size, threads);
  }
  f.m0 = m_block * block_m;
  f.m_end = rows < f.m0 + block_m ? rows : f.m0 + block_m;
  f.i_first = f.m0 / f.group;
  f.i_last = f.m_end > f.m0 ? (f.m_end - 1) / f.group : f.i_first;
  f.keys = f.m_end > f.m0 ? visible_keys_of_rows(f.i_first, f.i_last + 1, f.s.q_len, f.s.k_len,
                                                 p.causal, p.window_left, p.window_right)
                          : KeyRange{0, 0};
  return f;
}

// Keys packed row m of the block sees; none for a padding row (m >= m_end).
FA_DEVICE KeyRange fwd_row_keys(const AttnParams& p, const FwdBlock& f, int m) {
  if (m >= f.m_end) return KeyRange{0, 0};
  return visible_keys(m / f.group, f.s.q_len, f.s.k_len, p.causal, p.window_left,
                      p.window_right);
}

// Keys every row of the block sees: tiles inside [lo, hi) need no mask.
FA_DEVICE KeyRange fwd_unmasked_keys(const AttnParams& p, const FwdBlock& f) {
  return KeyRange{
      visible_keys(f.i_last, f.s.q_len, f.s.k_len, p.causal, p.window_left, p.window_right).lo,
      visible_keys(f.i_first, f.s.q_len, f.s.k_len, p.causal, p.window_left, p.window_right)
          .hi};
}

// Host: the forward grid, x = blocks of block_m packed rows (max_seqlen_q * Hq / Hk, which the
// kernels index with int; one block when there is none), y = KV heads, z = batch rows.
// Throws std::invalid_argument when a launch cannot take it.
inline dev::dim3 fwd_grid(const AttnParams& p, int block_m) {
  const int64_t rows = int64_t(p.seqlen_q) * (p.num_heads_q / p.num_heads_k);
  if (rows > INT_MAX - block_m || p.num_heads_k > 65535 || p.batch > 65535) {
    throw std::invalid_argument(
        "attention_fwd: grid too large (max_seqlen_q * Hq / Hk = " + std::to_string(rows) +
        ", Hk = " + std::to_string(p.num_heads_k) + ", batch = " + std::to_string(p.batch) +
        "; limits 2^31 - 1 - " + std::to_string(block_m) + ", 65535, 65535)");
  }
  const int64_t m_blocks = rows > 0 ? (rows + block_m - 1) / block_m : 1;
  return dev::dim3(unsigned(m_blocks), unsigned(p.num_heads_k), unsigned(p.batch));
}

// The compiled head dim (64, 128 or 256) that runs head_dim: every multiple of 8 up to
// 256, zero-padded to the next compiled size; 0 when none does.
inline int compiled_head_dim(int head_dim) {
  if (head_dim <= 0 || head_dim % 8 != 0 || head_dim > 256) return 0;
  return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256;
}

// Whether kBytes-wide accesses of T are allowed: every base pointer kBytes-aligned and
// every stride (in elements) a multiple of kBytes / sizeof(T).
template <typename T, int kBytes = 16>
bool vec_ok(std::initializer_list<const void*> ptrs, std::initializer_list<int64_t> strides) {
  constexpr int64_t kVec = kBytes / sizeof(T);
  static_assert(kVec >= 1, "accesses of at least one element");
  for (const void* ptr : ptrs)
    if (reinterpret_cast<uintptr_t>(ptr) % kBytes != 0) return false;
  for (int64_t s : strides)
    if (s % kVec != 0) return false;
  return true;
}

template <typename T>
bool vec16_ok(std::initializer_list<const void*> ptrs, std::initializer_list<int64_t> strides) {
  return vec_ok<T, 16>(ptrs, strides);
}

// Calls fn(T{}) with the device element type of dtype (fp16 or bf16).
template <class Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat16: return fn(dev::half_t{});
    case DType::kBFloat16: return fn(dev::bf16_t{});
    default: break;
  }
  throw std::invalid_argument("fastattn: unsupported dtype for the CUDA kernels");
}

constexpr bool is_fp8(DType d) { return d == DType::kFp8E4M3 || d == DType::kFp8E5M2; }

// Calls fn(T{}, C{}) with the element type T of dtype and the cache element type C of
// cache_dtype: T itself, or fp8_e4m3_t / fp8_e5m2_t.
template <class Fn>
void dispatch_cache_dtype(DType dtype, DType cache_dtype, Fn&& fn) {
  dispatch_dtype(dtype, [&](auto t) {
    if (cache_dtype == dtype) return fn(t, t);
    switch (cache_dtype) {
      case DType::kFp8E4M3: return fn(t, dev::fp8_e4m3_t{});
      case DType::kFp8E5M2: return fn(t, dev::fp8_e5m2_t{});
      default: break;
    }
    throw std::invalid_argument("fastattn: a KV cache holds the dtype of q (or of k) or fp8");
  });
}

}  // namespace fastattn::kernels
