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
// fp8 paged caches (C = fp8_e4m3_t / fp8_e5m2_t; T stays the query dtype): K and V tiles
// arrive by cp.async as fp8 codes in a staging buffer (one per operand), and each thread,
// after waiting for its own copies, widens the chunks it copied into sK / sV as T before
// the block barrier that publishes them; no thread reads another's staging bytes, so the
// staging needs no barrier of its own. The MMAs then run as for T caches. The K scale of
// the block's KV head joins the softmax scale, the V scale the final normalisation (checked
// on the device: kErrKScale / kErrVScale). fp8 needs D % 16 == 0 (16-byte chunks).
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

template <int kHeadDim_, int kCacheBytes = 2>
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
  // fp8 caches: 16-byte chunks of kVecC codes, staged unpadded (only the copying thread
  // reads them back).
  static constexpr bool kFp8 = kCacheBytes == 1;
  static constexpr int kVecC = 16 / kCacheBytes;
  static constexpr int kChunksC = kHeadDim / kVecC;
  static constexpr std::size_t kStageBytes = kFp8 ? std::size_t(kBlockN) * kHeadDim : 0;
  static constexpr std::size_t kSmemBytes =
      std::size_t(kBlockM + 2 * kBlockN) * kStride * 2 + 2 * kStageBytes;

  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0, "MMA tile shapes");
  static_assert(kThreads % kChunks == 0, "a thread copies one fixed column chunk");
  static_assert((kBlockM * kChunks) % kThreads == 0 && (kBlockN * kChunksC) % kThreads == 0,
                "whole copy passes");
  static_assert(kThreads % kChunksC == 0, "a thread copies one fixed cache column chunk");
};

// cp.async of rows [n0, n0 + kBlockN) of K (kIsK) or V into dst: [kBlockN, kStride] of T
// for a T cache, the staging buffer [kBlockN, kHeadDim] of codes for fp8. Keys at or beyond
// k_hi (never visible to the block) and columns at or beyond D are zero-filled without a
// read; so is a key whose page is out of range (flagged).
template <typename C, int kHeadDim, bool kIsK>
FA_DEVICE void load_kv_tile(C* dst, const AttnParams& p, const SeqBounds& s, int b, int hk,
                            int n0, int k_hi, int tid, int& err) {
  using Cfg = FwdConfig<kHeadDim, sizeof(C)>;
  constexpr int kPitch = Cfg::kFp8 ? kHeadDim : Cfg::kStride;  // dst row, in elements
  const C* base = static_cast<const C*>(kIsK ? p.k : p.v);  // [B, Sk, Hk, D] | [Tk, Hk, D] |
                                                            // [P, page_size, Hk, D]
  const int c = tid % Cfg::kChunksC;
  const bool col_ok = c * Cfg::kVecC < p.head_dim;
  FA_UNROLL
  for (int it = 0; it < Cfg::kBlockN * Cfg::kChunksC / Cfg::kThreads; ++it) {
    const int r = (tid + it * Cfg::kThreads) / Cfg::kChunksC;
    const int j = n0 + r;
    bool valid = col_ok && j < k_hi;
    const C* src = base;
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
    if (valid) {
      src = base + row + hk * (kIsK ? p.k_head_stride : p.v_head_stride) + c * Cfg::kVecC;
    }
    dev::cp_async_16(dst + r * kPitch + c * Cfg::kVecC, src, valid ? 16u : 0u);
  }
}

// fp8: widens the staged chunks this thread copied (load_kv_tile's mapping; its copies
// waited for) into dst [kBlockN, kStride] of T. Zero-filled chunks give zeros.
template <typename T, typename C, int kHeadDim>
FA_DEVICE void widen_kv_tile(T* dst, const C* stage, int tid) {
  using Cfg = FwdConfig<kHeadDim, sizeof(C)>;
  const int c = tid % Cfg::kChunksC;
  FA_UNROLL
  for (int it = 0; it < Cfg::kBlockN * Cfg::kChunksC / Cfg::kThreads; ++it) {
    const int r = (tid + it * Cfg::kThreads) / Cfg::kChunksC;
    const dev::uint4 codes =
        *reinterpret_cast<const dev::uint4*>(stage + r * kHeadDim + c * Cfg::kVecC);
    const uint32_t w[4] = {codes.x, codes.y, codes.z, codes.w};
    uint32_t out[8];
    FA_UNROLL
    for (int i = 0; i < 4; ++i) {
      const dev::uint2 pair = dev::fp8x4_to_pack2x2<T, C>(w[i]);
      out[2 * i] = pair.x;
      out[2 * i + 1] = pair.y;
    }
    dev::uint4* d = reinterpret_cast<dev::uint4*>(dst + r * Cfg::kStride + c * Cfg::kVecC);
    d[0] = dev::uint4{out[0], out[1], out[2], out[3]};
    d[1] = dev::uint4{out[4], out[5], out[6], out[7]};
  }
}

template <typename T, typename C, int kHeadDim>
FA_KERNEL void FA_LAUNCH_BOUNDS(FwdConfig<kHeadDim>::kThreads)
    attention_fwd_kernel(const AttnParams p) {
  using Cfg = FwdConfig<kHeadDim, sizeof(C)>;
  static_assert(std::is_same_v<C, T> || dev::is_fp8_v<C>, "a cache of T or of fp8");
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
  int page_err = 0;  // this thread's bad block-table reads
  const FwdBlock blk = fwd_block(p, b, hk, m_block, kBlockM, tid, kThreads);
  const SeqBounds& s = blk.s;
  const int seq_err = blk.seq_err;
  const int group = blk.group;

  // fp8: the K scale joins the softmax scale, the V scale the normalisation. Every block
  // reads its KV head's; thread 0 of the first block of each KV head reports a bad value
  // (even when the block has no work, as the CPU op checks every scale).
  float score_scale = p.softmax_scale;
  float v_scale = 1.f;
  if constexpr (Cfg::kFp8) {
    int32_t* flag = tid == 0 && b == 0 && blockIdx.x == 0 ? p.error_flag : nullptr;
    score_scale *= checked_kv_scale(p.k_scale, hk, flag, kErrKScale);
    v_scale = checked_kv_scale(p.v_scale, hk, flag, kErrVScale);
  }
  if (blk.m0 >= blk.m_end) {  // uniform over the block, before any barrier
    if (seq_err && tid == 0) report_error(p.error_flag, seq_err);
    return;
  }
  const int m0 = blk.m0, m_end = blk.m_end;
  const KeyRange keys = blk.keys;
  const KeyRange unmasked = fwd_unmasked_keys(p, blk);
  const int full_lo = unmasked.lo, full_hi = unmasked.hi;
  const int n_tiles = (keys.hi - keys.lo + kBlockN - 1) / kBlockN;

  // This thread's two rows: warp * 16 + g and + 8. Padding rows see nothing.
  int row_lo[2], row_hi[2];
  FA_UNROLL
  for (int r = 0; r < 2; ++r) {
    const KeyRange kr = fwd_row_keys(p, blk, m0 + warp * 16 + g + 8 * r);
    row_lo[r] = kr.lo;
    row_hi[r] = kr.hi;
  }

  T* sQ = dev::dynamic_smem<T>();    // [kBlockM, kStride], later the output staging
  T* sK = sQ + kBlockM * kStride;    // [kBlockN, kStride]
  T* sV = sK + kBlockN * kStride;    // [kBlockN, kStride]
  // fp8 staging [kBlockN, kHeadDim] codes each; for a T cache the tiles land in sK / sV.
  C* stage_k = Cfg::kFp8 ? reinterpret_cast<C*>(sV + kBlockN * kStride) : reinterpret_cast<C*>(sK);
  static_assert(!Cfg::kFp8 || sizeof(C) == 1, "kStageBytes counts one-byte elements");
  C* stage_v = Cfg::kFp8 ? stage_k + Cfg::kStageBytes : reinterpret_cast<C*>(sV);
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
    load_kv_tile<C, kHeadDim, true>(stage_k, p, s, b, hk, keys.lo, keys.hi, tid, page_err);
    dev::cp_async_commit();
  }

  OnlineSoftmax2 state[2];  // rows g and g + 8: row_max (quad-uniform), this lane's row_sum
  const float score_scale_log2 = score_scale * kLog2e;
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
    // fp8: sK is free (every warp's Q K(tile - 1)^T preceded the last barrier).
    if constexpr (Cfg::kFp8) widen_kv_tile<T, C, kHeadDim>(sK, stage_k, tid);
    // K(tile) and Q landed for every thread; every warp is done with P V(tile - 1): sV is free.
    dev::sync_block();
    load_kv_tile<C, kHeadDim, false>(stage_v, p, s, b, hk, n0, keys.hi, tid, page_err);
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

    // Scores in base 2 (OnlineSoftmax2): scale (softcap) and log2(e), then mask (only
    // tiles some row sees partially).
    if (p.softcap > 0.f) {
      FA_UNROLL
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        FA_UNROLL
        for (int e = 0; e < 4; ++e) {
          acc_s[nt][e] = apply_softcap(acc_s[nt][e] * score_scale, p.softcap) * kLog2e;
        }
      }
    } else {
      FA_UNROLL
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        FA_UNROLL
        for (int e = 0; e < 4; ++e) acc_s[nt][e] *= score_scale_log2;
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
    // fp8: sV is free (every warp's P V(tile - 1) preceded this tile's first barrier).
    if constexpr (Cfg::kFp8) widen_kv_tile<T, C, kHeadDim>(sV, stage_v, tid);
    // V(tile) landed for every thread; every warp is done reading sK.
    dev::sync_block();
    if (tile + 1 < n_tiles) {
      load_kv_tile<C, kHeadDim, true>(stage_k, p, s, b, hk, n0 + kBlockN, keys.hi, tid,
                                      page_err);
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
    inv_sum[r] = state[r].inv_sum() * v_scale;  // 0 for a row that saw no key: output 0
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

// Launches the forward kernel for inputs of type T (device half_t / bf16_t) and K/V of type
// C (T, or fp8 for a paged cache) whose head dim p.head_dim <= kHeadDim is a multiple of 8
// (of 16 for fp8; see the header comment). No sync, no allocation.
template <typename T, typename C, int kHeadDim>
void launch_attention_fwd(const AttnParams& p, void* stream) {
  namespace dev = ::fastattn::device;
  using Cfg = attn_fwd::FwdConfig<kHeadDim, sizeof(C)>;
  if (p.batch <= 0 || p.num_heads_k <= 0) return;
  if (Cfg::kFp8 && p.head_dim % Cfg::kVecC != 0) {
    throw std::invalid_argument("attention_fwd: an fp8 KV cache needs head_dim % 16 == 0; got " +
                                std::to_string(p.head_dim));
  }
  // Paged extend still launches with no query token at all: its blocks check the block
  // table (as the CPU does), then return.
  if (p.seqlen_q <= 0 && !p.block_table) return;
  const dev::LaunchConfig cfg{fwd_grid(p, Cfg::kBlockM), dev::dim3(Cfg::kThreads),
                              Cfg::kSmemBytes,
                              static_cast<dev::stream_t>(stream)};
  dev::launch(attn_fwd::attention_fwd_kernel<T, C, kHeadDim>, cfg, p);
}

// Every (T, C) pair of one head dim, for the per-head-dim translation units
// (attention_fwd_hdim*.cu): fp16/bf16 queries over K/V of their own dtype, or of fp8.
#define FASTATTN_INSTANTIATE_ATTENTION_FWD(D)                                              \
  template void launch_attention_fwd<::fastattn::device::half_t, ::fastattn::device::half_t, \
                                     D>(const AttnParams&, void*);                         \
  template void launch_attention_fwd<::fastattn::device::bf16_t, ::fastattn::device::bf16_t, \
                                     D>(const AttnParams&, void*);                         \
  template void launch_attention_fwd<::fastattn::device::half_t,                           \
                                     ::fastattn::device::fp8_e4m3_t, D>(const AttnParams&, \
                                                                        void*);            \
  template void launch_attention_fwd<::fastattn::device::half_t,                           \
                                     ::fastattn::device::fp8_e5m2_t, D>(const AttnParams&, \
                                                                        void*);            \
  template void launch_attention_fwd<::fastattn::device::bf16_t,                           \
                                     ::fastattn::device::fp8_e4m3_t, D>(const AttnParams&, \
                                                                        void*);            \
  template void launch_attention_fwd<::fastattn::device::bf16_t,                           \
                                     ::fastattn::device::fp8_e5m2_t, D>(const AttnParams&, \
                                                                        void*);

}  // namespace fastattn::kernels
