#pragma once
// Attention forward for sm_90a (Hopper), FlashAttention-3 style, for dense, cross, varlen
// and paged-extend inputs: the same AttnParams, masks and GQA row packing as the mma.sync
// kernel (attention_fwd.cuh), on warpgroup MMAs fed by a warp-specialised pipeline.
//
// Roles. A block has three warpgroups. Warpgroup 0 is the producer: it lowers its register
// budget (setmaxnreg) and fills a shared-memory ring of kStages K tiles and kStages V tiles,
// each guarded by a "full" mbarrier (producer -> consumers) and an "empty" one (consumers ->
// producer). Warpgroups 1 and 2 are the consumers: each owns 64 of the block's kBlockM = 128
// packed query rows and raises its register budget; both read every K/V tile.
//
// Loads. Q (once) and K/V tiles come by TMA when a tensor map describes them: Q as a box of
// (64 columns, group heads, kBlockM / group positions) per 64-column chunk, which is exactly
// the packed row order; K/V as (64 columns, 1 head, kBlockN keys). Otherwise (paged K/V
// through the block table, a tile reaching past the sequence's keys, a GQA group that does
// not divide kBlockM, strides TMA cannot describe) the producer warpgroup copies 16-byte
// chunks with cp.async, zero-filling what no row may see, and publishes them with
// fence.proxy.async (the MMAs read through the async proxy) before it arrives. Every tile
// lives in the 128-byte swizzled layout TMA writes: 64-column chunks of [rows][128 bytes].
//
// Consumers. S = Q K^T is wgmma_ss (Q and K K-major); O += P V is wgmma_rs, P from the S
// accumulators converted in registers, V read MN-major from the same tile layout. Within a
// warpgroup, the softmax of tile j overlaps the MMA P(j-1) V(j-1): both GEMMs are issued,
// the warpgroup waits for S(j) only (wait_group<1>), computes the scores' max and
// probabilities, then waits for P V and rescales O. Across the two warpgroups, named
// barriers make them issue their GEMMs in turn (ping-pong), so one's softmax overlaps the
// other's MMAs. The online softmax, masks, softcap, kv_lens and lse are those of softmax.h
// and mask.h; tiles above the causal diagonal or outside a window are skipped.
//
// Grid: x = tile of kBlockM packed rows (reversed when causal, longest blocks first), y = KV
// head, z = batch row, as the mma.sync kernel. Blocks past their sequence's rows return
// before any barrier.
//
// Only the sm_90a pass of nvcc compiles the body; other passes get a trap (the dispatch
// never launches them there). Head dims: compiled for 64, 128, 256; a runtime head dim below
// runs zero-padded, as in the mma.sync kernel. fp16 and bf16 with caches of the same dtype
// (fp8 caches stay on the mma.sync kernel).
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
namespace attn_fwd_sm90 {

namespace dev = ::fastattn::device;

template <int kHeadDim_>
struct Sm90Config {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;  // packed query rows: 64 per consumer warpgroup
  // Keys per tile. At D = 256, O alone takes 128 of a consumer's 232 registers, and S and
  // P of 64 keys made ptxas spill (nvcc 13.0); 48 keys compile clean.
  static constexpr int kBlockN = kHeadDim <= 128 ? 128 : 48;
  static constexpr int kStages = 2;    // ring depth of K and of V
  static constexpr int kThreads = 3 * 128;
  static constexpr int kChunkCols = 64;  // columns per 128-byte swizzled row
  static constexpr int kDChunks = kHeadDim / kChunkCols;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kTileBytes = kBlockN * kHeadDim * 2;
  static constexpr int kAlign = 1024;  // the 128-byte swizzle's period
  static constexpr std::size_t kSmemBytes =
      std::size_t(kQBytes) + 2 * kStages * std::size_t(kTileBytes) + kAlign;
  // Registers per thread after setmaxnreg: 128 * 40 + 256 * 232 = 64512, the pool the block
  // starts with (384 threads at 168). The producer spilled at 24 (and the consumers at 240
  // could not be afforded above it); the consumers spilled at 224.
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;

  static_assert(kHeadDim % kChunkCols == 0, "whole 64-column chunks");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "wgmma N");
  static_assert(kSmemBytes <= 227 * 1024, "the sm_90 shared-memory limit");
};

// Which loads may use TMA (tma_flags bits); the maps are only encoded for those.
enum : int { kTmaQ = 1, kTmaKV = 2 };

// Named barriers: 1 + w orders the GEMM issue of consumer warpgroup w (ping-pong), 3 + w
// publishes w's output staging. 0 is sync_block's.
constexpr unsigned kSchedBarrier = 1;
constexpr unsigned kEpilogueBarrier = 3;

// Byte offset of 16-byte chunk c (8 elements) of row r in a tile of `rows` rows stored as
// 64-column chunks of [rows][128 bytes], 128-byte swizzled (the tile starts on 1024 bytes).
FA_DEVICE uint32_t tile_offset(int rows, int r, int c) {
  const uint32_t plain = uint32_t((c / 8) * rows * 128 + r * 128 + (c % 8) * 16);
  return dev::swizzle_address(dev::Swizzle::k128B, plain);
}

// cp.async of K (kIsK) or V rows [n0, n0 + kBlockN) into `tile` by the 128 producer threads:
// keys at or beyond k_hi, columns at or beyond D and keys whose page is out of range
// (flagged) are zero-filled without a read.
template <typename T, int kHeadDim, bool kIsK>
FA_DEVICE void copy_kv_tile(uint8_t* tile, const AttnParams& p, const SeqBounds& s, int b,
                            int hk, int n0, int k_hi, int ptid, int& err) {
  using Cfg = Sm90Config<kHeadDim>;
  constexpr int kChunks = kHeadDim / 8;
  const T* base = static_cast<const T*>(kIsK ? p.k : p.v);  // [B, Sk, Hk, D] | [Tk, Hk, D] |
                                                            // [P, page_size, Hk, D]
  const int64_t batch_stride = kIsK ? p.k_batch_stride : p.v_batch_stride;
  const int64_t row_stride = kIsK ? p.k_row_stride : p.v_row_stride;
  const int64_t head = hk * (kIsK ? p.k_head_stride : p.v_head_stride);
  // A thread keeps one column chunk (128 % kChunks == 0) and walks rows.
  const int c = ptid % kChunks;
  const bool col_ok = c * 8 < p.head_dim;
  FA_NO_UNROLL  // the producer's 40-odd registers
  for (int it = 0; it < Cfg::kBlockN * kChunks / 128; ++it) {
    const int r = (ptid + it * 128) / kChunks;
    const int j = n0 + r;
    bool valid = col_ok && j < k_hi;
    const T* src = base;
    if (valid && p.block_table) {
      const int32_t page = page_of(p, b, j);  // read once, checked before use
      if (page < 0 || page >= p.num_pages) {
        err |= kErrBlockTable;
        valid = false;
      } else {
        src = base + paged_token_offset(p, page, j, batch_stride, row_stride) + head + c * 8;
      }
    } else if (valid) {
      src = base + kv_token_offset(p, s, b, j, batch_stride, row_stride) + head + c * 8;
    }
    dev::cp_async_16(tile + tile_offset(Cfg::kBlockN, r, c), src, valid ? 16u : 0u);
  }
}

// Waits for this thread's cp.async copies and hands them to the async proxy, then arrives.
FA_DEVICE void publish_copies(uint64_t* full) {
  dev::cp_async_commit();
  dev::cp_async_wait<0>();
  dev::fence_proxy_async();
  dev::mbarrier_arrive(full);
}

struct Tiles {
  uint8_t* q;  // [kBlockM, kHeadDim] swizzled
  uint8_t* k;  // kStages x [kBlockN, kHeadDim] swizzled
  uint8_t* v;  // likewise
  uint64_t* q_full;
  uint64_t* k_full;   // [kStages]
  uint64_t* k_empty;  // [kStages]
  uint64_t* v_full;
  uint64_t* v_empty;
};

// Producer warpgroup: Q once, then K(j), V(j) for every key tile, into stage j % kStages
// once both consumers released its previous round. Every producer thread arrives on every
// full barrier (count 128); with TMA one of them also expects the bytes and issues the copy.
template <typename T, int kHeadDim>
FA_DEVICE void produce(const dev::TensorMap& q_map, const dev::TensorMap& k_map,
                       const dev::TensorMap& v_map, const AttnParams& p, int tma_flags,
                       const Tiles& sm, const FwdBlock& blk, int b, int hk, int n_tiles,
                       int ptid, int& err) {
  using Cfg = Sm90Config<kHeadDim>;
  const SeqBounds& s = blk.s;
  const int m0 = blk.m0, m_end = blk.m_end, group = blk.group;
  const int key_lo = blk.keys.lo, key_hi = blk.keys.hi;
  constexpr int kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN;
  const bool varlen_q = p.cu_seqlens_q != nullptr;
  const bool varlen_k = p.cu_seqlens_k != nullptr;

  if (tma_flags & kTmaQ) {
    if (ptid == 0) {
      dev::mbarrier_arrive_expect_tx(sm.q_full, Cfg::kQBytes);
      // Packed row m0 is position m0 / group, head hk * group (group divides kBlockM).
      const int32_t pos = int32_t(s.q_start + m0 / group);
      FA_UNROLL
      for (int c = 0; c < Cfg::kDChunks; ++c) {
        uint8_t* dst = sm.q + c * kBlockM * 128;
        const int32_t col = c * Cfg::kChunkCols, head = hk * group;
        if (varlen_q) {
          dev::tma_load<3>(dst, &q_map, sm.q_full, {col, head, pos});
        } else {
          dev::tma_load<4>(dst, &q_map, sm.q_full, {col, head, pos, int32_t(b)});
        }
      }
    } else {
      dev::mbarrier_arrive(sm.q_full);
    }
  } else {
    constexpr int kChunks = kHeadDim / 8;
    const T* q = static_cast<const T*>(p.q);  // [B, Sq, Hq, D] | [Tq, Hq, D]
    const int c = ptid % kChunks;
    FA_NO_UNROLL
    for (int it = 0; it < kBlockM * kChunks / 128; ++it) {
      const int r = (ptid + it * 128) / kChunks;
      const int m = m0 + r;
      const bool valid = c * 8 < p.head_dim && m < m_end;
      const T* src = valid ? q + q_offset(p, s, b, m / group, hk * group + m % group) + c * 8 : q;
      dev::cp_async_16(sm.q + tile_offset(kBlockM, r, c), src, valid ? 16u : 0u);
    }
    publish_copies(sm.q_full);
  }

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int st = tile % Cfg::kStages;
    const int round = tile / Cfg::kStages;
    const int n0 = key_lo + tile * kBlockN;
    // TMA only for tiles wholly inside the sequence's keys: the rest must be zero beyond
    // key_hi (a masked key's V would still meet P = 0, and 0 * NaN is NaN).
    const bool tma = (tma_flags & kTmaKV) && n0 + kBlockN <= key_hi;
    FA_NO_UNROLL
    for (int which = 0; which < 2; ++which) {
      uint64_t* full = (which == 0 ? sm.k_full : sm.v_full) + st;
      uint64_t* empty = (which == 0 ? sm.k_empty : sm.v_empty) + st;
      uint8_t* dst = (which == 0 ? sm.k : sm.v) + st * Cfg::kTileBytes;
      if (round > 0) dev::mbarrier_wait(empty, unsigned((round - 1) & 1));
      if (tma) {
        if (ptid == 0) {
          const dev::TensorMap* map = which == 0 ? &k_map : &v_map;
          dev::mbarrier_arrive_expect_tx(full, Cfg::kTileBytes);
          const int32_t row = int32_t(s.k_start + n0);
          FA_UNROLL
          for (int c = 0; c < Cfg::kDChunks; ++c) {
            const int32_t col = c * Cfg::kChunkCols;
            if (varlen_k) {
              dev::tma_load<3>(dst + c * kBlockN * 128, map, full, {col, int32_t(hk), row});
            } else {
              dev::tma_load<4>(dst + c * kBlockN * 128, map, full,
                               {col, int32_t(hk), row, int32_t(b)});
            }
          }
        } else {
          dev::mbarrier_arrive(full);
        }
      } else {
        if (which == 0) {
          copy_kv_tile<T, kHeadDim, true>(dst, p, s, b, hk, n0, key_hi, ptid, err);
        } else {
          copy_kv_tile<T, kHeadDim, false>(dst, p, s, b, hk, n0, key_hi, ptid, err);
        }
        publish_copies(full);
      }
    }
  }
}

// Scores of one key tile in this thread's accumulator fragment -> probabilities in place:
// scale, softcap and log2(e) (base 2: exp2f), mask (only for tiles some row sees
// partially), then the online softmax.
// Returns, per row, the factor by which O must be rescaled.
template <int kBlockN>
FA_DEVICE void softmax_tile(float (&acc_s)[kBlockN / 2], OnlineSoftmax2 (&state)[2],
                            float (&alpha)[2], const AttnParams& p, float scale, int n0,
                            bool masked, const int (&row_lo)[2], const int (&row_hi)[2], int t) {
  if (p.softcap > 0.f) {
    FA_UNROLL
    for (int i = 0; i < kBlockN / 2; ++i) {
      acc_s[i] = apply_softcap(acc_s[i] * scale, p.softcap) * kLog2e;
    }
  } else {
    FA_UNROLL
    for (int i = 0; i < kBlockN / 2; ++i) acc_s[i] *= scale * kLog2e;
  }
  if (masked) {
    FA_UNROLL
    for (int nt = 0; nt < kBlockN / 8; ++nt) {
      FA_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int j = n0 + nt * 8 + 2 * t + (e & 1);
        if (j < row_lo[e >> 1] || j >= row_hi[e >> 1]) acc_s[4 * nt + e] = kNegInf;
      }
    }
  }
  FA_UNROLL
  for (int r = 0; r < 2; ++r) {
    float tile_max = kNegInf;
    FA_UNROLL
    for (int nt = 0; nt < kBlockN / 8; ++nt) {
      tile_max = fmaxf(tile_max, fmaxf(acc_s[4 * nt + 2 * r], acc_s[4 * nt + 2 * r + 1]));
    }
    tile_max = fmaxf(tile_max, dev::shfl_xor(tile_max, 1));
    tile_max = fmaxf(tile_max, dev::shfl_xor(tile_max, 2));
    alpha[r] = state[r].rescale(tile_max);
    FA_UNROLL
    for (int nt = 0; nt < kBlockN / 8; ++nt) {
      FA_UNROLL
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        acc_s[4 * nt + e] = state[r].prob(acc_s[4 * nt + e]);
        state[r].add(acc_s[4 * nt + e]);
      }
    }
  }
}

// The probabilities of 16 keys ks * 16.. as wgmma's A fragment: accumulator blocks 2ks and
// 2ks + 1 hold columns 2t, 2t + 1 and 8 + 2t, 8 + 2t + 1 of rows g and g + 8 (wgmma.h).
template <typename T, int kBlockN>
FA_DEVICE void probs_to_a(uint32_t (&a)[kBlockN / 16][4], const float (&acc_s)[kBlockN / 2]) {
  FA_UNROLL
  for (int ks = 0; ks < kBlockN / 16; ++ks) {
    const float* lo = acc_s + 8 * ks;
    a[ks][0] = dev::pack2<T>(lo[0], lo[1]);
    a[ks][1] = dev::pack2<T>(lo[2], lo[3]);
    a[ks][2] = dev::pack2<T>(lo[4], lo[5]);
    a[ks][3] = dev::pack2<T>(lo[6], lo[7]);
  }
}

// Consumer warpgroup cw's epilogue (see the kernel).
template <typename T, int kHeadDim>
FA_DEVICE void store_output(const AttnParams& p, const SeqBounds& s,
                            const float (&acc_o)[kHeadDim / 2], OnlineSoftmax2 (&state)[2],
                            uint8_t* stage, int b, int hk, int m0, int m_end, int group, int cw,
                            int ctid) {
  constexpr int kBlockM = Sm90Config<kHeadDim>::kBlockM;
  const int warp = ctid / 32, lane = ctid % 32;
  const int g = lane >> 2, t = lane & 3;
  float inv_sum[2];
  FA_UNROLL
  for (int r = 0; r < 2; ++r) {
    state[r].row_sum += dev::shfl_xor(state[r].row_sum, 1);
    state[r].row_sum += dev::shfl_xor(state[r].row_sum, 2);
    inv_sum[r] = state[r].inv_sum();  // 0 for a row that saw no key: output 0
  }
  FA_UNROLL
  for (int dt = 0; dt < kHeadDim / 8; ++dt) {
    FA_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int row = cw * 64 + warp * 16 + g + 8 * r;
      const uint32_t off = tile_offset(kBlockM, row, dt) + uint32_t(t) * 4;
      *reinterpret_cast<uint32_t*>(stage + off) = dev::pack2<T>(
          acc_o[4 * dt + 2 * r] * inv_sum[r], acc_o[4 * dt + 2 * r + 1] * inv_sum[r]);
    }
  }
  dev::named_barrier_sync(kEpilogueBarrier + unsigned(cw), 128);
  T* o = static_cast<T*>(p.o);  // [B, Sq, Hq, D] | [Tq, Hq, D]
  constexpr int kChunks = kHeadDim / 8;
  for (int idx = ctid; idx < 64 * kChunks; idx += 128) {
    const int r = idx / kChunks, c = idx % kChunks;
    const int m = m0 + cw * 64 + r;
    if (m < m_end && c * 8 < p.head_dim) {
      *reinterpret_cast<dev::uint4*>(o + o_offset(p, s, b, m / group, hk * group + m % group) +
                                     c * 8) =
          *reinterpret_cast<const dev::uint4*>(stage + tile_offset(kBlockM, cw * 64 + r, c));
    }
  }
  if (t == 0 && p.lse) {  // float* [B, Sq, Hq] | [Tq, Hq]
    FA_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int m = m0 + cw * 64 + warp * 16 + g + 8 * r;
      if (m < m_end) p.lse[lse_offset(p, s, b, m / group, hk * group + m % group)] = state[r].lse();
    }
  }
}

template <typename T, int kHeadDim>
FA_KERNEL void FA_LAUNCH_BOUNDS(Sm90Config<kHeadDim>::kThreads, 1)
    attention_fwd_sm90_kernel(const FA_GRID_CONSTANT dev::TensorMap q_map,
                              const FA_GRID_CONSTANT dev::TensorMap k_map,
                              const FA_GRID_CONSTANT dev::TensorMap v_map, const AttnParams p,
                              const int tma_flags) {
#if defined(__CUDA_ARCH__) && !defined(FA_SM90A)
  dev::trap();  // only the sm_90a pass has these instructions
#else
  using Cfg = Sm90Config<kHeadDim>;
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kStages = Cfg::kStages;

  const int tid = int(dev::thread_rank());
  const int b = int(blockIdx.z);
  const int hk = int(blockIdx.y);
  const int m_block = p.causal ? int(gridDim.x - 1 - blockIdx.x) : int(blockIdx.x);
  int page_err = 0;  // this producer thread's bad block-table reads
  const FwdBlock blk = fwd_block(p, b, hk, m_block, kBlockM, tid, Cfg::kThreads);
  const int seq_err = blk.seq_err;
  if (blk.m0 >= blk.m_end) {  // uniform over the block, before any barrier
    if (seq_err && tid == 0) report_error(p.error_flag, seq_err);
    return;
  }
  const int m0 = blk.m0;
  const KeyRange keys = blk.keys;
  const int n_tiles = (keys.hi - keys.lo + kBlockN - 1) / kBlockN;

  FA_SHARED(uint64_t[1 + 4 * kStages], bars);
  uint8_t* smem = dev::dynamic_smem<uint8_t>();
  smem += (Cfg::kAlign - dev::smem_u32(smem) % Cfg::kAlign) % Cfg::kAlign;
  Tiles sm;
  sm.q = smem;
  sm.k = sm.q + Cfg::kQBytes;
  sm.v = sm.k + kStages * Cfg::kTileBytes;
  sm.q_full = &bars[0];
  sm.k_full = &bars[1];
  sm.k_empty = &bars[1 + kStages];
  sm.v_full = &bars[1 + 2 * kStages];
  sm.v_empty = &bars[1 + 3 * kStages];
  if (tid == 0) {
    dev::mbarrier_init(sm.q_full, 128);
    for (int st = 0; st < kStages; ++st) {
      dev::mbarrier_init(&sm.k_full[st], 128);
      dev::mbarrier_init(&sm.v_full[st], 128);
      dev::mbarrier_init(&sm.k_empty[st], 8);  // lane 0 of each consumer warp
      dev::mbarrier_init(&sm.v_empty[st], 8);
    }
    dev::fence_mbarrier_init();
  }
  dev::sync_block();

  // Warp-uniform by a shuffle from lane 0, so that ptxas keeps the role and the values
  // derived from it (barrier ids) in uniform registers: the consumers' registers are all
  // taken by the accumulators.
  const int wg = dev::shfl_idx(tid / 128, 0);
  if (wg == 0) {
    dev::setmaxnreg_dec<Cfg::kProducerRegs>();
    if (n_tiles > 0) {
      produce<T, kHeadDim>(q_map, k_map, v_map, p, tma_flags, sm, blk, b, hk, n_tiles, tid,
                           page_err);
    }
    if (page_err) report_error(p.error_flag, page_err);
    if (seq_err && tid == 0) report_error(p.error_flag, seq_err);
    return;
  }
  dev::setmaxnreg_inc<Cfg::kConsumerRegs>();

  const int cw = wg - 1;  // consumer warpgroup 0 or 1: packed rows m0 + 64 cw ..
  const int ctid = tid % 128;
  const int warp = dev::shfl_idx(ctid / 32, 0), lane = ctid % 32;
  const int g = lane >> 2, t = lane & 3;
  const KeyRange unmasked = fwd_unmasked_keys(p, blk);
  const int full_lo = unmasked.lo, full_hi = unmasked.hi;
  int row_lo[2], row_hi[2];
  FA_UNROLL
  for (int r = 0; r < 2; ++r) {
    const KeyRange kr = fwd_row_keys(p, blk, m0 + cw * 64 + warp * 16 + g + 8 * r);
    row_lo[r] = kr.lo;
    row_hi[r] = kr.hi;
  }

  // Descriptors: Q rows 64 cw.. (K-major), K (K-major) and V (MN-major) of a stage. K slice
  // ks of 16 columns sits in chunk ks / 4 at byte (ks % 4) * 32 of each 128-byte row.
  const auto q_desc = [&](int ks) {
    return dev::make_smem_desc(sm.q + (ks / 4) * kBlockM * 128 + cw * 64 * 128 + (ks % 4) * 32,
                               dev::Swizzle::k128B, 16, 1024);
  };
  const auto k_desc = [&](int st, int ks) {
    return dev::make_smem_desc(
        sm.k + st * Cfg::kTileBytes + (ks / 4) * kBlockN * 128 + (ks % 4) * 32,
        dev::Swizzle::k128B, 16, 1024);
  };
  // V: keys ks * 16.. start 16 rows of 128 bytes further; the 64-column chunks of D are
  // kBlockN rows apart (LBO), groups of 8 keys 1024 bytes (SBO).
  const auto v_desc = [&](int st, int ks) {
    return dev::make_smem_desc(sm.v + st * Cfg::kTileBytes + ks * 16 * 128, dev::Swizzle::k128B,
                               kBlockN * 128, 1024);
  };
  const unsigned my_turn = kSchedBarrier + unsigned(cw);
  const unsigned their_turn = kSchedBarrier + unsigned(1 - cw);
  // Consumer 0 issues first: consumer 1 opens its turn.
  if (cw == 1) dev::named_barrier_arrive(kSchedBarrier, 256);

  OnlineSoftmax2 state[2];
  state[0].init();
  state[1].init();
  float acc_o[kHeadDim / 2];
  FA_UNROLL
  for (int i = 0; i < kHeadDim / 2; ++i) acc_o[i] = 0.f;
  float acc_s[kBlockN / 2];
  uint32_t p_frag[kBlockN / 16][4];
  float alpha[2];

  const auto issue_s = [&](int st) {
    FA_UNROLL
    for (int ks = 0; ks < kHeadDim / 16; ++ks) {
      dev::wgmma_ss<T, kBlockN>(acc_s, q_desc(ks), k_desc(st, ks), ks > 0);
    }
    dev::wgmma_commit_group();
  };
  // P's registers are read by the MMA until its wait: fenced on both sides, so that nvcc
  // neither moves the next probs_to_a above the wait nor the conversion below the issue.
  const auto fence_p = [&] {
    FA_UNROLL
    for (int ks = 0; ks < kBlockN / 16; ++ks) dev::wgmma_fence_operand(p_frag[ks]);
  };
  const auto issue_pv = [&](int st) {
    fence_p();
    FA_UNROLL
    for (int ks = 0; ks < kBlockN / 16; ++ks) {
      dev::wgmma_rs<T, kHeadDim, dev::Major::kMN>(acc_o, p_frag[ks], v_desc(st, ks), true);
    }
    dev::wgmma_commit_group();
    fence_p();
  };
  const auto release = [&](uint64_t* empty) {
    if (lane == 0) dev::mbarrier_arrive(empty);
  };
  const auto is_masked = [&](int n0) { return n0 < full_lo || n0 + kBlockN > full_hi; };

  if (n_tiles > 0) {
    dev::mbarrier_wait(sm.q_full, 0);
    // Tile 0: S only.
    dev::mbarrier_wait(&sm.k_full[0], 0);
    dev::named_barrier_sync(my_turn, 256);
    dev::wgmma_fence_operand(acc_s);
    dev::wgmma_fence();
    issue_s(0);
    dev::named_barrier_arrive(their_turn, 256);
    dev::wgmma_wait_group<0>();
    dev::wgmma_fence_operand(acc_s);
    release(&sm.k_empty[0]);
    softmax_tile<kBlockN>(acc_s, state, alpha, p, p.softmax_scale, keys.lo, is_masked(keys.lo),
                          row_lo, row_hi, t);
    probs_to_a<T, kBlockN>(p_frag, acc_s);

    for (int tile = 1; tile < n_tiles; ++tile) {
      const int st = tile % kStages, prev = (tile - 1) % kStages;
      const int n0 = keys.lo + tile * kBlockN;
      dev::mbarrier_wait(&sm.k_full[st], unsigned((tile / kStages) & 1));
      dev::mbarrier_wait(&sm.v_full[prev], unsigned(((tile - 1) / kStages) & 1));
      dev::named_barrier_sync(my_turn, 256);
      dev::wgmma_fence_operand(acc_s);
      dev::wgmma_fence_operand(acc_o);
      dev::wgmma_fence();
      issue_s(st);
      issue_pv(prev);
      dev::named_barrier_arrive(their_turn, 256);
      dev::wgmma_wait_group<1>();  // S(tile); P V(tile - 1) may still run
      dev::wgmma_fence_operand(acc_s);
      release(&sm.k_empty[st]);
      softmax_tile<kBlockN>(acc_s, state, alpha, p, p.softmax_scale, n0, is_masked(n0), row_lo,
                            row_hi, t);
      dev::wgmma_wait_group<0>();
      dev::wgmma_fence_operand(acc_o);
      fence_p();
      release(&sm.v_empty[prev]);
      FA_UNROLL
      for (int i = 0; i < kHeadDim / 2; ++i) acc_o[i] *= alpha[(i >> 1) & 1];
      probs_to_a<T, kBlockN>(p_frag, acc_s);
    }

    const int last = (n_tiles - 1) % kStages;
    dev::mbarrier_wait(&sm.v_full[last], unsigned(((n_tiles - 1) / kStages) & 1));
    dev::named_barrier_sync(my_turn, 256);
    dev::wgmma_fence_operand(acc_o);
    dev::wgmma_fence();
    issue_pv(last);
    dev::named_barrier_arrive(their_turn, 256);
    dev::wgmma_wait_group<0>();
    dev::wgmma_fence_operand(acc_o);
    release(&sm.v_empty[last]);
  }
  // Balances consumer 1's opening arrival, so that no barrier phase is left half done.
  if (cw == 0) dev::named_barrier_sync(kSchedBarrier, 256);

  // Epilogue: O / row_sum staged in this warpgroup's Q rows (no MMA reads them any more),
  // then 16-byte rows to global memory. The block's coordinates are derived again from
  // blockIdx and p: kept live through the main loop, they spilled (ptxas, sm_90a). A bad
  // cu_seqlens_q value returned early, so seq_bounds gives the checked q_start and q_len.
  {
    const int b = int(blockIdx.z);
    const int hk = int(blockIdx.y);
    const int m0 = (p.causal ? int(gridDim.x - 1 - blockIdx.x) : int(blockIdx.x)) * kBlockM;
    const int group = p.num_heads_q / p.num_heads_k;
    const SeqBounds s = seq_bounds(p, b);
    const int rows = s.q_len * group;
    const int m_end = rows < m0 + kBlockM ? rows : m0 + kBlockM;
    store_output<T, kHeadDim>(p, s, acc_o, state, sm.q, b, hk, m0, m_end, group, cw, ctid);
  }
#endif
}

}  // namespace attn_fwd_sm90

// Host: tensor maps for the loads TMA can make, then the launch. Returns the tma_flags.
template <typename T, int kHeadDim>
int make_sm90_tensor_maps(const AttnParams& p, ::fastattn::device::TensorMap (&maps)[3]) {
  namespace dev = ::fastattn::device;
  using Cfg = attn_fwd_sm90::Sm90Config<kHeadDim>;
  const auto type = std::is_same_v<T, dev::bf16_t> ? dev::TmaType::kBF16 : dev::TmaType::kF16;
  const int group = p.num_heads_q / p.num_heads_k;
  // A map the encoder refuses (a zero or unaligned stride, an extent beyond 2^32) leaves
  // that load on the cp.async path; the result is the same.
  const auto try_map = [&](dev::TensorMap* map, const dev::TensorMapSpec& spec) {
    try {
      dev::make_tensor_map(map, spec);
      return true;
    } catch (const std::exception&) {
      return false;
    }
  };
  // [B, S, H, D] (4-D map: D, H, S, B) or packed [T, H, D] (3-D: D, H, T), 128-byte
  // swizzled boxes of (64 columns, box_heads, box_rows).
  const auto spec_of = [&](const void* ptr, bool packed, int heads, int64_t rows,
                           int64_t head_stride, int64_t row_stride, int64_t batch_stride,
                           int box_heads, int box_rows) {
    dev::TensorMapSpec m{};
    m.type = type;
    m.global = ptr;
    m.swizzle = dev::Swizzle::k128B;
    m.rank = packed ? 3 : 4;
    const uint64_t dims[4] = {uint64_t(p.head_dim), uint64_t(heads), uint64_t(rows),
                              uint64_t(p.batch)};
    const uint64_t strides[4] = {2, uint64_t(head_stride) * 2, uint64_t(row_stride) * 2,
                                 uint64_t(batch_stride) * 2};
    const uint32_t box[4] = {uint32_t(Cfg::kChunkCols), uint32_t(box_heads),
                             uint32_t(box_rows), 1};
    for (int i = 0; i < 4; ++i) {
      m.dims[i] = dims[i];
      m.strides[i] = strides[i];
      m.box[i] = box[i];
    }
    return m;
  };
  int flags = 0;
  // TMA coordinates are int32: longer packed tensors take the cp.async path.
  const int64_t q_rows = p.cu_seqlens_q ? p.total_q : p.seqlen_q;
  if (Cfg::kBlockM % group == 0 && q_rows > 0 && q_rows <= INT32_MAX - Cfg::kBlockM &&
      try_map(&maps[0], spec_of(p.q, p.cu_seqlens_q, p.num_heads_q, q_rows, p.q_head_stride,
                                p.q_row_stride, p.q_batch_stride, group,
                                Cfg::kBlockM / group))) {
    flags |= attn_fwd_sm90::kTmaQ;
  }
  const int64_t k_rows = p.cu_seqlens_k ? p.total_k : p.seqlen_k;
  if (!p.block_table && k_rows > 0 && k_rows <= INT32_MAX - Cfg::kBlockN &&
      try_map(&maps[1], spec_of(p.k, p.cu_seqlens_k, p.num_heads_k, k_rows, p.k_head_stride,
                                p.k_row_stride, p.k_batch_stride, 1, Cfg::kBlockN)) &&
      try_map(&maps[2], spec_of(p.v, p.cu_seqlens_k, p.num_heads_k, k_rows, p.v_head_stride,
                                p.v_row_stride, p.v_batch_stride, 1, Cfg::kBlockN))) {
    flags |= attn_fwd_sm90::kTmaKV;
  }
  return flags;
}

// Launches the sm_90a forward kernel (same contract as launch_attention_fwd with C = T).
template <typename T, int kHeadDim>
void launch_attention_fwd_sm90(const AttnParams& p, void* stream) {
  namespace dev = ::fastattn::device;
  using Cfg = attn_fwd_sm90::Sm90Config<kHeadDim>;
  if (p.batch <= 0 || p.num_heads_k <= 0) return;
  if (p.seqlen_q <= 0 && !p.block_table) return;  // paged extend still checks its table
  const dev::dim3 grid = fwd_grid(p, Cfg::kBlockM);
  dev::TensorMap maps[3] = {};
  const int flags = make_sm90_tensor_maps<T, kHeadDim>(p, maps);
  const dev::LaunchConfig cfg{grid, dev::dim3(Cfg::kThreads), Cfg::kSmemBytes,
                              static_cast<dev::stream_t>(stream)};
  dev::launch(attn_fwd_sm90::attention_fwd_sm90_kernel<T, kHeadDim>, cfg, maps[0], maps[1],
              maps[2], p, flags);
}

#define FASTATTN_INSTANTIATE_ATTENTION_FWD_SM90(D)                                          \
  template void launch_attention_fwd_sm90<::fastattn::device::half_t, D>(const AttnParams&, \
                                                                         void*);            \
  template void launch_attention_fwd_sm90<::fastattn::device::bf16_t, D>(const AttnParams&, \
                                                                         void*);

}  // namespace fastattn::kernels
