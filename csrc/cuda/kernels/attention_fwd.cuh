#pragma once
// Attention forward, FlashAttention-2 style, for dense, cross, varlen and paged-extend inputs.
//
// Algorithm. A block owns kBlockM packed query rows of one (batch row b, KV head hk): row m
// is query position m / group of query head hk * group + m % group (group = Hq / Hk), so the
// query heads that share a KV head read each K/V tile once (GQA/MQA). Rows are
// position-major, so the visible key ranges are monotone in m and the block streams only
// the key tiles in the union of its rows' ranges (mask.h): tiles above the causal diagonal,
// outside a window or past kv_len are skipped, not masked; only tiles that some row sees
// partially are masked. Each warp owns 16 rows: S = Q K^T and O += P V run on
// mma.sync.m16n8k16 (fp16/bf16 in, fp32 accumulate) with operands from ldmatrix (.trans for
// V); the online softmax (softmax.h) stays in registers, the row max reduced across the
// quad of lanes that share a row. Output and lse are written once, the output through
// shared memory as 16-byte rows.
//
// Pipeline (FlashAttention-2's schedule): one shared buffer each for Q, K and V, the K and V
// copies double-buffered against each other: V(j) streams in (cp.async) while Q K(j)^T
// runs, K(j+1) while the softmax and P V(j) run. Two block barriers per key tile.
//
// Grid: x = tile of kBlockM packed rows (reversed when causal, so the longest blocks start
// first), y = KV head, z = batch row. p.seqlen_q is max_seqlen_q for varlen/extend; blocks
// past their sequence's rows return before any barrier.
//
// Head dims: compiled for kHeadDim in {64, 128, 256}. A runtime head dim D <= kHeadDim that
// is a multiple of 8 runs on the next compiled size: columns >= D are zero-filled on load,
// MMA steps wholly beyond D are skipped, and nothing beyond D is stored. Other head dims
// are rejected by the dispatch (attention_fwd_dispatch.h).
//
// Index values are checked in the kernel, never on the host (that would need a sync): a
// bad cu_seqlens/kv_lens entry makes its sequence empty, a bad block-table entry reads
// nothing (zero-filled key), and either sets its bit in *p.error_flag (ErrorBits, params.h).
//
// Requirements the host glue must guarantee (cp.async and the 16-byte stores need them):
// q, k, v, o 16-byte aligned, every row/batch/head stride a multiple of 8 elements, last
// dimension contiguous.
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/kernels/common.cuh"
#include "fastattn/device/device.h"
#include "fastattn/mask.h"
#include "fastattn/params.h"
#include "fastattn/softmax.h"

namespace fastattn::kernels {
namespace attn_fwd {

namespace dev = ::fastattn::device;

template <int kHeadDim_>
struct FwdConfig {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 64;                         // packed query rows per block
  static constexpr int kBlockN = kHeadDim <= 128 ? 64 : 32;  // keys per tile (register budget)
  static constexpr int kWarps = kBlockM / 16;                // 16 rows per warp
  static constexpr int kThreads = kWarps * dev::kWarpSize;
  // Row pitch in elements: 16 bytes of padding shift consecutive rows by 16 bytes modulo
  // 128, so the 8 rows an ldmatrix phase reads hit 8 distinct bank groups.
  static constexpr int kStride = kHeadDim + 8;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static constexpr std::size_t kSmemBytes = std::size_t(kBlockM + 2 * kBlockN) * kStride * 2;

  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0, "MMA tile shapes");
  static_assert(kThreads % kChunks == 0, "a thread copies one fixed column chunk");
  static_assert((kBlockM * kChunks) % kThreads == 0 && (kBlockN * kChunks) % kThreads == 0,
                "whole copy passes");
};

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

// cp.async of rows [n0, n0 + kBlockN) of K (kIsK) or V into dst [kBlockN, kStride]. Keys at
// or beyond k_hi (never visible to the block) and columns at or beyond D are zero-filled
// without a read; so is a key whose page is out of range (flagged).
template <typename T, int kHeadDim, bool kIsK>
FA_DEVICE void load_kv_tile(T* dst, const AttnParams& p, const SeqBounds& s, int b, int hk,
                            int n0, int k_hi, int tid, int& err) {
  using Cfg = FwdConfig<kHeadDim>;
  const T* base = static_cast<const T*>(kIsK ? p.k : p.v);  // [B, Sk, Hk, D] | [Tk, Hk, D] |
                                                            // [P, page_size, Hk, D]
  const int c = tid % Cfg::kChunks;
  const bool col_ok = c * 8 < p.head_dim;
  FA_UNROLL
  for (int it = 0; it < Cfg::kBlockN * Cfg::kChunks / Cfg::kThreads; ++it) {
    const int r = (tid + it * Cfg::kThreads) / Cfg::kChunks;
    const int j = n0 + r;
    bool valid = col_ok && j < k_hi;
    const T* src = base;
    const int64_t batch_stride = kIsK ? p.k_batch_stride : p.v_batch_stride;
    const int64_t row_stride = kIsK ? p.k_row_stride : p.v_row_stride;
    int64_t row = 0;
    if (valid && p.block_table) {
      // Read once, checked before any address is formed from it.
      const int32_t page = page_of(p, b, j);
      if (page < 0 || page >= p.num_pages) {
        err |= kErrBlockTable;
        valid = false;
      }
      row = paged_token_offset(p, page, j, batch_stride, row_stride);
    } else if (valid) {
      row = kv_token_offset(p, s, b, j, batch_stride, row_stride);
    }
    if (valid) src = base + row + hk * (kIsK ? p.k_head_stride : p.v_head_stride) + c * 8;
    dev::cp_async_16(dst + r * Cfg::kStride + c * 8, src, valid ? 16u : 0u);
  }
}

template <typename T, int kHeadDim>
FA_KERNEL void FA_LAUNCH_BOUNDS(FwdConfig<kHeadDim>::kThreads)
    attention_fwd_kernel(const AttnParams p) {
  using Cfg = FwdConfig<kHeadDim>;
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kStride = Cfg::kStride;
  constexpr int kChunks = Cfg::kChunks;
  constexpr int kThreads = Cfg::kThreads;

  const int tid = int(dev::thread_rank());
  const int lane = int(dev::lane_id());
  const int warp = int(dev::warp_id());
  const int g = lane >> 2;  // fragment row (and row + 8)
  const int t = lane & 3;   // fragment column pair
  const int b = int(blockIdx.z);
  const int hk = int(blockIdx.y);
  const int m_block = p.causal ? int(gridDim.x - 1 - blockIdx.x) : int(blockIdx.x);
  const int group = p.num_heads_q / p.num_heads_k;

  int seq_err = 0;   // the same in every thread: thread 0 reports it
  int page_err = 0;  // this thread's bad block-table reads
  const SeqBounds s = checked_seq_bounds(p, b, seq_err);
  const int rows = s.q_len * group;  // packed rows of this (b, hk)
  if (p.block_table && hk == 0 && m_block == 0 && s.k_len > 0) {
    // The blocks of a sequence read the pages from its first query's first visible key up
    // to k_len (the ranges are contiguous and end at k_len); one block per sequence checks
    // the entries below, all of them when it has no query tokens.
    const int unread_keys =
        s.q_len > 0 ? visible_keys(0, s.q_len, s.k_len, p.causal, p.window_left,
                                   p.window_right).lo
                    : s.k_len;
    check_unread_pages(p, b, tid, (unread_keys + p.page_size - 1) / p.page_size, kThreads);
  }
  const int m0 = m_block * kBlockM;
  if (m0 >= rows) {  // uniform over the block, before any barrier
    if (seq_err && tid == 0) report_error(p.error_flag, seq_err);
    return;
  }
  const int m_end = rows < m0 + kBlockM ? rows : m0 + kBlockM;

  // Keys some row of the block sees, and keys every row sees (tiles inside need no mask).
  const int i_first = m0 / group, i_last = (m_end - 1) / group;
  const KeyRange keys = visible_keys_of_rows(i_first, i_last + 1, s.q_len, s.k_len, p.causal,
                                             p.window_left, p.window_right);
  const int full_lo =
      visible_keys(i_last, s.q_len, s.k_len, p.causal, p.window_left, p.window_right).lo;
  const int full_hi =
      visible_keys(i_first, s.q_len, s.k_len, p.causal, p.window_left, p.window_right).hi;
  const int n_tiles = (keys.hi - keys.lo + kBlockN - 1) / kBlockN;

  // This thread's two rows: warp * 16 + g and + 8. Padding rows see nothing.
  int row_lo[2], row_hi[2];
  FA_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int m = m0 + warp * 16 + g + 8 * r;
    row_lo[r] = row_hi[r] = 0;
    if (m < m_end) {
      const KeyRange kr =
          visible_keys(m / group, s.q_len, s.k_len, p.causal, p.window_left, p.window_right);
      row_lo[r] = kr.lo;
      row_hi[r] = kr.hi;
    }
  }

  T* sQ = dev::dynamic_smem<T>();    // [kBlockM, kStride], later the output staging
  T* sK = sQ + kBlockM * kStride;    // [kBlockN, kStride]
  T* sV = sK + kBlockN * kStride;    // [kBlockN, kStride]
  const T* q = static_cast<const T*>(p.q);  // [B, Sq, Hq, D] | [Tq, Hq, D]
  T* o = static_cast<T*>(p.o);              // like q

  // Q tile: packed row m -> (position m / group, head hk * group + m % group). Nothing is
  // issued when no key tile runs, so no copy is ever in flight at the epilogue.
  if (n_tiles > 0) {
    const int c = tid % kChunks;
    const bool col_ok = c * 8 < p.head_dim;
    FA_UNROLL
    for (int it = 0; it < kBlockM * kChunks / kThreads; ++it) {
      const int r = (tid + it * kThreads) / kChunks;
      const int m = m0 + r;
      const bool valid = col_ok && m < m_end;
      const T* src = q;
      if (valid) src = q + q_offset(p, s, b, m / group, hk * group + m % group) + c * 8;
      dev::cp_async_16(sQ + r * kStride + c * 8, src, valid ? 16u : 0u);
    }
    dev::cp_async_commit();
    load_kv_tile<T, kHeadDim, true>(sK, p, s, b, hk, keys.lo, keys.hi, tid, page_err);
    dev::cp_async_commit();
  }

  OnlineSoftmax state[2];  // rows g and g + 8: row_max (quad-uniform), this lane's row_sum
  state[0].init();
  state[1].init();
  float acc_o[kHeadDim / 8][4];  // [16 rows, kHeadDim] of this warp, C-fragment layout
  FA_UNROLL
  for (int dt = 0; dt < kHeadDim / 8; ++dt) {
    FA_UNROLL
    for (int e = 0; e < 4; ++e) acc_o[dt][e] = 0.f;
  }

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int n0 = keys.lo + tile * kBlockN;
    dev::cp_async_wait<0>();
    // K(tile) and Q landed for every thread; every warp is done with P V(tile - 1): sV is free.
    dev::sync_block();
    load_kv_tile<T, kHeadDim, false>(sV, p, s, b, hk, n0, keys.hi, tid, page_err);
    dev::cp_async_commit();

    // S = Q K^T: [16 rows of this warp, kBlockN keys].
    float acc_s[kBlockN / 8][4];
    FA_UNROLL
    for (int nt = 0; nt < kBlockN / 8; ++nt) {
      FA_UNROLL
      for (int e = 0; e < 4; ++e) acc_s[nt][e] = 0.f;
    }
    FA_UNROLL
    for (int ks = 0; ks < kHeadDim / 16; ++ks) {
      if (ks * 16 < p.head_dim) {  // zero-filled columns contribute nothing
        uint32_t a[4];
        dev::ldmatrix<4>(a, sQ + (warp * 16 + (lane & 15)) * kStride + ks * 16 + (lane >> 4) * 8);
        FA_UNROLL
        for (int np = 0; np < kBlockN / 16; ++np) {
          // Matrices: keys +0..7 / +8..15 (lane bit 4) x columns +0..7 / +8..15 (lane bit 3).
          uint32_t bk[4];
          dev::ldmatrix<4>(bk, sK + (np * 16 + (lane & 7) + (lane >> 4) * 8) * kStride +
                                   ks * 16 + ((lane >> 3) & 1) * 8);
          const uint32_t b0[2] = {bk[0], bk[1]};
          const uint32_t b1[2] = {bk[2], bk[3]};
          dev::mma_m16n8k16<T>(acc_s[2 * np], a, b0, acc_s[2 * np]);
          dev::mma_m16n8k16<T>(acc_s[2 * np + 1], a, b1, acc_s[2 * np + 1]);
        }
      }
    }

    // Scores: scale, softcap, then mask (only tiles some row sees partially).
    FA_UNROLL
    for (int nt = 0; nt < kBlockN / 8; ++nt) {
      FA_UNROLL
      for (int e = 0; e < 4; ++e) acc_s[nt][e] *= p.softmax_scale;
    }
    if (p.softcap > 0.f) {
      FA_UNROLL
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        FA_UNROLL
        for (int e = 0; e < 4; ++e) acc_s[nt][e] = apply_softcap(acc_s[nt][e], p.softcap);
      }
    }
    if (n0 < full_lo || n0 + kBlockN > full_hi) {
      FA_UNROLL
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        FA_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int j = n0 + nt * 8 + 2 * t + (e & 1);
          if (j < row_lo[e >> 1] || j >= row_hi[e >> 1]) acc_s[nt][e] = kNegInf;
        }
      }
    }

    dev::cp_async_wait<0>();
    // V(tile) landed for every thread; every warp is done reading sK.
    dev::sync_block();
    if (tile + 1 < n_tiles) {
      load_kv_tile<T, kHeadDim, true>(sK, p, s, b, hk, n0 + kBlockN, keys.hi, tid, page_err);
    }
    dev::cp_async_commit();

    // Online softmax: the row max over the quad, rescale acc_o, scores -> probabilities.
    FA_UNROLL
    for (int r = 0; r < 2; ++r) {
      float tile_max = kNegInf;
      FA_UNROLL
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        tile_max = fmaxf(tile_max, fmaxf(acc_s[nt][2 * r], acc_s[nt][2 * r + 1]));
      }
      tile_max = fmaxf(tile_max, dev::shfl_xor(tile_max, 1));
      tile_max = fmaxf(tile_max, dev::shfl_xor(tile_max, 2));
      const float alpha = state[r].rescale(tile_max);
      FA_UNROLL
      for (int dt = 0; dt < kHeadDim / 8; ++dt) {
        acc_o[dt][2 * r] *= alpha;
        acc_o[dt][2 * r + 1] *= alpha;
      }
      FA_UNROLL
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        FA_UNROLL
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          acc_s[nt][e] = state[r].prob(acc_s[nt][e]);
          state[r].add(acc_s[nt][e]);
        }
      }
    }

    // O += P V: the S accumulators of key tiles 2ks, 2ks + 1 are the A fragment of step ks.
    FA_UNROLL
    for (int ks = 0; ks < kBlockN / 16; ++ks) {
      const uint32_t a[4] = {
          dev::pack2<T>(acc_s[2 * ks][0], acc_s[2 * ks][1]),
          dev::pack2<T>(acc_s[2 * ks][2], acc_s[2 * ks][3]),
          dev::pack2<T>(acc_s[2 * ks + 1][0], acc_s[2 * ks + 1][1]),
          dev::pack2<T>(acc_s[2 * ks + 1][2], acc_s[2 * ks + 1][3]),
      };
      FA_UNROLL
      for (int dp = 0; dp < kHeadDim / 16; ++dp) {
        if (dp * 16 < p.head_dim) {
          // Transposed matrices: keys +0..7 / +8..15 (lane bit 3) x columns +0..7 / +8..15
          // (lane bit 4).
          uint32_t bv[4];
          dev::ldmatrix<4, true>(
              bv, sV + (ks * 16 + (lane & 15)) * kStride + dp * 16 + (lane >> 4) * 8);
          const uint32_t b0[2] = {bv[0], bv[1]};
          const uint32_t b1[2] = {bv[2], bv[3]};
          dev::mma_m16n8k16<T>(acc_o[2 * dp], a, b0, acc_o[2 * dp]);
          dev::mma_m16n8k16<T>(acc_o[2 * dp + 1], a, b1, acc_o[2 * dp + 1]);
        }
      }
    }
  }

  // Epilogue. No block barrier: no copy is in flight (the last V was waited for; without a
  // tile nothing was issued), and each warp stages its output in its own 16 sQ rows, which
  // only its own ldmatrix reads.
  float inv_sum[2];
  FA_UNROLL
  for (int r = 0; r < 2; ++r) {
    state[r].row_sum += dev::shfl_xor(state[r].row_sum, 1);
    state[r].row_sum += dev::shfl_xor(state[r].row_sum, 2);
    inv_sum[r] = state[r].inv_sum();  // 0 for a row that saw no key: output 0
  }
  T* sO = sQ + warp * 16 * kStride;  // [16, kStride]
  dev::sync_warp();  // the warp's last ldmatrix reads of these rows precede the stores
  FA_UNROLL
  for (int dt = 0; dt < kHeadDim / 8; ++dt) {
    const int col = dt * 8 + 2 * t;
    *reinterpret_cast<uint32_t*>(sO + g * kStride + col) =
        dev::pack2<T>(acc_o[dt][0] * inv_sum[0], acc_o[dt][1] * inv_sum[0]);
    *reinterpret_cast<uint32_t*>(sO + (g + 8) * kStride + col) =
        dev::pack2<T>(acc_o[dt][2] * inv_sum[1], acc_o[dt][3] * inv_sum[1]);
  }
  dev::sync_warp();
  FA_UNROLL
  for (int it = 0; it < 16 * kChunks / dev::kWarpSize; ++it) {
    const int idx = lane + it * dev::kWarpSize;
    const int r = idx / kChunks, c = idx % kChunks;
    const int m = m0 + warp * 16 + r;
    if (m < m_end && c * 8 < p.head_dim) {
      *reinterpret_cast<dev::uint4*>(
          o + o_offset(p, s, b, m / group, hk * group + m % group) + c * 8) =
          *reinterpret_cast<const dev::uint4*>(sO + r * kStride + c * 8);
    }
  }
  if (t == 0 && p.lse) {  // float* [B, Sq, Hq] | [Tq, Hq]
    FA_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int m = m0 + warp * 16 + g + 8 * r;
      if (m < m_end) p.lse[lse_offset(p, s, b, m / group, hk * group + m % group)] = state[r].lse();
    }
  }

  if (page_err) report_error(p.error_flag, page_err);
  if (seq_err && tid == 0) report_error(p.error_flag, seq_err);
}

}  // namespace attn_fwd

// Launches the forward kernel for inputs of type T (device half_t / bf16_t) whose head dim
// p.head_dim <= kHeadDim is a multiple of 8 (see the header comment). No sync, no allocation.
template <typename T, int kHeadDim>
void launch_attention_fwd(const AttnParams& p, void* stream) {
  namespace dev = ::fastattn::device;
  using Cfg = attn_fwd::FwdConfig<kHeadDim>;
  if (p.batch <= 0 || p.num_heads_k <= 0) return;
  // Paged extend still launches with no query token at all: its blocks check the block
  // table (as the CPU does), then return.
  if (p.seqlen_q <= 0 && !p.block_table) return;
  // Packed rows of one (batch row, KV head); the kernel indexes them with int.
  const int64_t rows = int64_t(p.seqlen_q) * (p.num_heads_q / p.num_heads_k);
  if (rows > INT_MAX - Cfg::kBlockM || p.num_heads_k > 65535 || p.batch > 65535) {
    throw std::invalid_argument(
        "attention_fwd: grid too large (max_seqlen_q * Hq / Hk = " + std::to_string(rows) +
        ", Hk = " + std::to_string(p.num_heads_k) + ", batch = " + std::to_string(p.batch) +
        "; limits 2^31 - 65, 65535, 65535)");
  }
  const int64_t m_blocks = rows > 0 ? (rows + Cfg::kBlockM - 1) / Cfg::kBlockM : 1;
  const dev::LaunchConfig cfg{dev::dim3(unsigned(m_blocks), unsigned(p.num_heads_k),
                                        unsigned(p.batch)),
                              dev::dim3(Cfg::kThreads), Cfg::kSmemBytes,
                              static_cast<dev::stream_t>(stream)};
  dev::launch(attn_fwd::attention_fwd_kernel<T, kHeadDim>, cfg, p);
}

}  // namespace fastattn::kernels
