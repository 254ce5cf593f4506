#pragma once
// Paged decode: one query per sequence (its last position) against a paged KV cache,
// GQA-packed and split-KV. Memory-bound, so the design goal is to read every K/V row
// once, with 16-byte loads, and to keep enough blocks in flight (DESIGN.md §3).
//
// Algorithm
//   1. paged_decode_kernel: a block owns (batch row b, KV head hk, query-head chunk,
//      split s). The query heads that share hk (up to kGroup of them) are processed
//      together, so each K/V row is loaded once for all of them. The split's keys
//      (a contiguous range of the visible keys) are dealt round-robin to thread groups:
//      a thread group is kLanes = kHeadDim / kVec lanes that together hold one key row,
//      kVec elements (one 16-byte load: 8 of a 16-bit cache, 16 of an fp8 cache) per
//      lane. With 16-byte cache rows, each thread prefetches the K and V chunks of its
//      rows of the next steps with cp.async into shared-memory slots only it reads (a
//      ring of kStages steps, no barrier, no registers held by loads in flight); otherwise
//      it loads them into registers. Each thread group keeps its own online-softmax state
//      (row_max, row_sum) and acc_o for every packed head in registers; scores are
//      lane-partial dot products summed by shuffles inside the group. At the end the
//      groups of a warp merge by shuffles, the warps merge through shared memory, and
//      the block writes either the final (out, lse) (num_splits == 1) or a normalised
//      fp32 partial (out, lse) into the workspace.
//   2. decode_merge_kernel (num_splits > 1 only): one warp per (b, query head) combines
//      the num_splits partials by their lse (an online softmax over the split lse values)
//      and writes out / lse. Empty splits (lse -inf) are skipped without reading their out.
//
// Grid-to-work mapping
//   paged_decode_kernel: grid (B, Hk * head_chunks, num_splits), kDecodeThreads threads.
//     blockIdx.y = hk * head_chunks + chunk; the chunk covers query heads
//     hk * G + [chunk * heads_per_chunk, min(G, (chunk + 1) * heads_per_chunk)),
//     G = Hq / Hk. Warp w, group g of the warp, tile step t handles key
//     n0 + t * kRowsPerBlock + w * kRowsPerWarp + g of each kBlockN-key step n0.
//   decode_merge_kernel: grid ceil(B * Hq / kMergeWarps), one warp per (b, head).
//
// Head dims: compiled for kHeadDim in {64, 128, 256}; a runtime D must be a multiple of 8
// and at most 256, and runs on the smallest kHeadDim >= D; elements past D are never loaded
// and held as zeros (so D = 40 on a 16-bit cache uses 5 of the 8 lanes of a group).
//
// fp8 caches (C = fp8_e4m3_t / fp8_e5m2_t): a lane loads 16 codes at once, twice the
// keys per load of a 16-bit cache, and widens them in registers (device/fp8.h). The K
// scale of the block's KV head is folded into q's softmax scale, the V scale into the final
// normalisation: no dequantized copy exists. Twice the elements per lane doubles q and
// acc_o per packed head, so fp8 blocks pack at most kDecodeMaxGroupFp8 = 4 query heads
// (GQA-8 runs as two chunks, the second reading the K/V rows mostly from L2) and keep fewer
// rows in flight per thread (the same registers, half or a quarter of the bytes; see kTile).
// Scale tensor values are checked on the device (kErrKScale / kErrVScale).
//
// Split-KV: num_splits comes from shapes only (decode_num_splits_for), so the launch and
// its workspace are CUDA-graph capturable. Each sequence divides its own visible key
// range into num_splits chunks of a multiple of kBlockN keys; splits past the end of a
// short sequence are empty and write lse -inf.
//
// Workspace (num_splits > 1): fp32, partial_out [B, Hq, num_splits, D] followed by
// partial_lse [B, Hq, num_splits]; a (b, head)'s splits are contiguous for the merge.
//
// Index values are checked on the device (ErrorBits): a seq_lens entry outside
// [0, max_pages * page_size] reports kErrSeqLens and the sequence is treated as empty; a
// block_table entry outside [0, num_pages) for a page below seq_len reports
// kErrBlockTable and that page is never read. Nothing at or past seq_len is read.
#include <stdexcept>
#include <string>

#include "cuda/kernels/common.cuh"

namespace fastattn::kernels {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kDecodeMaxHeadDim = 256;
// Elements per lane per key row: one 16-byte load of the cache (8 fp16/bf16, 16 fp8).
template <typename C>
constexpr int kDecodeVec = 16 / int(sizeof(C));
// Query heads per block, largest compiled variant: bounds the per-thread registers
// (q and acc_o are kGroup * kVec floats each). Larger GQA groups are split into chunks.
constexpr int kDecodeMaxGroup = 8;
constexpr int kDecodeMaxGroupFp8 = 4;
// Key rows whose K and V copies each thread keeps in flight ahead of the one it computes on
// (the prefetch ring of paged_decode_kernel).
constexpr int kDecodeMinRowsInFlight = 4;

constexpr int decode_max_group(bool fp8_cache) {
  return fp8_cache ? kDecodeMaxGroupFp8 : kDecodeMaxGroup;
}
template <typename C>
constexpr int decode_max_group() {
  return decode_max_group(dev::is_fp8_v<C>);
}
// Split-KV heuristic: aim for this many blocks per multiprocessor, never give a split
// fewer than kDecodeMinSplitKeys keys of the shape's capacity, and cap the partial count.
constexpr int kDecodeBlocksPerSm = 2;
constexpr int kDecodeMinSplitKeys = 256;
constexpr int kDecodeMaxSplits = 64;
constexpr int kMergeWarps = 4;

// Packed query heads per block: the smallest compiled kGroup >= G (G capped at max_group,
// decode_max_group<C>()), and the chunks a KV head's query heads are split into.
struct DecodeHeads {
  int group;            // G = Hq / Hk
  int kernel_group;     // compiled kGroup: 1, 2, 4 or 8
  int head_chunks;      // blocks per KV head
  int heads_per_chunk;  // <= kernel_group; the last chunk may hold fewer
};

inline DecodeHeads decode_heads(const AttnParams& p, int max_group) {
  DecodeHeads h;
  h.group = p.num_heads_q / p.num_heads_k;
  h.head_chunks = (h.group + max_group - 1) / max_group;
  // Balanced chunks: G = 12 runs as 6 + 6, not 8 + 4.
  h.heads_per_chunk = (h.group + h.head_chunks - 1) / h.head_chunks;
  h.kernel_group = 1;
  while (h.kernel_group < h.heads_per_chunk) h.kernel_group *= 2;
  return h;
}

// Shapes only: batch, KV heads, query heads, the key capacity seqlen_k = max_pages *
// page_size, the packed-head limit of the cache dtype and the multiprocessor count. Never
// the values of seq_lens (graph capture).
inline int decode_num_splits_for(const AttnParams& p, int max_group, int num_sms) {
  if (p.num_heads_k <= 0 || p.num_heads_q < p.num_heads_k) return 1;  // launch rejects it
  const int64_t base_blocks =
      int64_t(p.batch) * p.num_heads_k * decode_heads(p, max_group).head_chunks;
  if (base_blocks <= 0) return 1;
  const int64_t target = int64_t(num_sms > 0 ? num_sms : 1) * kDecodeBlocksPerSm;
  int64_t splits = (target + base_blocks - 1) / base_blocks;
  const int64_t by_keys =
      (int64_t(p.seqlen_k) + kDecodeMinSplitKeys - 1) / kDecodeMinSplitKeys;
  if (splits > by_keys) splits = by_keys;
  if (splits > kDecodeMaxSplits) splits = kDecodeMaxSplits;
  return splits < 1 ? 1 : int(splits);
}

inline int64_t decode_workspace_floats_for(const AttnParams& p, int num_splits) {
  if (num_splits <= 1) return 0;
  return int64_t(p.batch) * p.num_heads_q * num_splits * (int64_t(p.head_dim) + 1);
}

// Runtime arguments of the decode kernel besides the params.
struct DecodeArgs {
  float* ws_out;        // [B, Hq, num_splits, D] or null when num_splits == 1
  float* ws_lse;        // [B, Hq, num_splits]
  int num_splits;
  DecodeHeads heads;    // decode_heads(p, decode_max_group<C>())
  bool vec16;           // q and o allow 16-byte accesses (pointers and strides)
  bool kv_vec16;        // so do the caches, and D is a multiple of kDecodeVec<C>
  bool kv_vec8;         // fp8 caches: 8-byte accesses allowed (D % 8 == 0 always)
};

// Eight consecutive elements as one uint4: a 16-byte load when the address allows it,
// else eight 2-byte loads (a uniform runtime branch, so no extra instantiation).
template <typename T>
FA_DEVICE dev::uint4 load_vec8(const T* src, bool vec16) {
  if (vec16) return *reinterpret_cast<const dev::uint4*>(src);
  dev::uint4 r;
  r.x = dev::pack2_bits(src[0], src[1]);
  r.y = dev::pack2_bits(src[2], src[3]);
  r.z = dev::pack2_bits(src[4], src[5]);
  r.w = dev::pack2_bits(src[6], src[7]);
  return r;
}

template <typename T>
FA_DEVICE void unpack_vec8(const dev::uint4& r, float* f) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
  FA_UNROLL
  for (int i = 0; i < 4; ++i) {
    const dev::float2 x = dev::unpack2<T>(w[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

// The kDecodeVec<C> cache elements at src as one uint4: a 16-byte load when vec16; for fp8
// with vec8 (rows 8-byte aligned, D % 16 == 8), one or two 8-byte loads; else element by
// element. Elements at or past n (n <= kVec, a multiple of 8) are zero.
template <typename C>
FA_DEVICE dev::uint4 load_kv_vec(const C* src, [[maybe_unused]] int n, bool vec16,
                                  [[maybe_unused]] bool vec8) {
  if constexpr (dev::is_fp8_v<C>) {
    if (vec16) return *reinterpret_cast<const dev::uint4*>(src);
    if (vec8) {
      const dev::uint2 lo = *reinterpret_cast<const dev::uint2*>(src);
      const dev::uint2 hi = n > 8 ? *reinterpret_cast<const dev::uint2*>(src + 8)
                                  : dev::uint2{0, 0};
      return dev::uint4{lo.x, lo.y, hi.x, hi.y};
    }
    uint32_t w[4] = {0, 0, 0, 0};
    FA_UNROLL
    for (int e = 0; e < 16; ++e) {
      if (e < n) w[e / 4] |= uint32_t(src[e].bits) << (8 * (e % 4));
    }
    return dev::uint4{w[0], w[1], w[2], w[3]};
  } else {
    return load_vec8(src, vec16);  // D is a multiple of 8: n is 8
  }
}

// The kDecodeVec<C> values of a load_kv_vec, widened to fp32 (exact for every dtype).
template <typename C>
FA_DEVICE void unpack_kv_vec(const dev::uint4& r, float* f) {
  if constexpr (dev::is_fp8_v<C>) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
    FA_UNROLL
    for (int i = 0; i < 8; ++i) {
      const dev::float2 x = dev::fp8x2_to_float2<C>(uint16_t(w[i / 2] >> (16 * (i % 2))));
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  } else {
    unpack_vec8<C>(r, f);
  }
}

// Stores kN (4 or 8) fp32 values as T, vectorised when aligned.
template <typename T, int kN>
FA_DEVICE void store_vals(T* dst, const float* f, bool vec) {
  static_assert(kN == 4 || kN == 8, "4 or 8 values");
  if (vec) {
    uint32_t w[kN / 2];
    FA_UNROLL
    for (int i = 0; i < kN / 2; ++i) w[i] = dev::pack2<T>(f[2 * i], f[2 * i + 1]);
    if constexpr (kN == 8) {
      *reinterpret_cast<dev::uint4*>(dst) = dev::uint4{w[0], w[1], w[2], w[3]};
    } else {
      *reinterpret_cast<dev::uint2*>(dst) = dev::uint2{w[0], w[1]};
    }
  } else {
    FA_UNROLL
    for (int i = 0; i < kN; ++i) dst[i] = dev::from_float<T>(f[i]);
  }
}

// The keys [begin, end) of split `split` of sequence b (empty past the sequence), and the
// sequence's checked length. Shared by every block of the sequence, so the splits tile
// the visible range exactly.
struct DecodeRange {
  int seq_len;  // checked: 0 when the value was out of range
  int lo;       // first visible key of the sequence
  int begin;
  int end;
};

template <int kBlockN>
FA_DEVICE DecodeRange decode_range(const AttnParams& p, const SeqBounds& sb, int split,
                                   int num_splits) {
  DecodeRange r;
  r.seq_len = sb.k_len;
  if (r.seq_len < 0 || r.seq_len > p.seqlen_k) {
    if (dev::thread_rank() == 0) report_error(p.error_flag, kErrSeqLens);
    r.seq_len = 0;
  }
  // The query is the sequence's last position (q_len == 1 for decode).
  const KeyRange kr = visible_keys(sb.q_len - 1, sb.q_len, r.seq_len, p.causal, p.window_left,
                                   p.window_right);
  const int n = kr.hi - kr.lo;
  const int per_split = (n + num_splits - 1) / num_splits;
  const int64_t chunk = int64_t((per_split + kBlockN - 1) / kBlockN) * kBlockN;
  const int64_t begin = kr.lo + int64_t(split) * chunk;
  const int64_t end = begin + chunk < kr.hi ? begin + chunk : kr.hi;
  r.lo = kr.lo;
  r.begin = int(begin < kr.hi ? begin : kr.hi);
  r.end = int(end > r.begin ? end : r.begin);
  return r;
}

// The minimum of kDecodeBlocksPerSm blocks per SM is the occupancy the split heuristic
// assumes. It does not change the register cap (255 either way), but ptxas allocates
// differently with it: without it ptxas chose 168 registers for several variants and spilled
// (nvcc 13.0, sm_90a; scripts/kernel_report.sh), with it none spills.
template <typename T, typename C, int kHeadDim, int kGroup>
FA_KERNEL void FA_LAUNCH_BOUNDS(kDecodeThreads, kDecodeBlocksPerSm)
    paged_decode_kernel(const AttnParams p, const DecodeArgs a) {
  constexpr int kVec = kDecodeVec<C>;                    // elements per lane per row
  constexpr int kHalves = kVec / 8;                      // 8-element pieces of q and out
  static_assert(kHeadDim % kVec == 0 && 32 % (kHeadDim / kVec) == 0 &&
                    kHeadDim <= kDecodeMaxHeadDim,
                "kHeadDim: 64, 128 or 256");
  static_assert(kGroup <= decode_max_group<C>(), "packed heads beyond the register budget");
  constexpr int kLanes = kHeadDim / kVec;                // lanes per key row
  constexpr int kRowsPerWarp = 32 / kLanes;              // key rows per warp per step
  constexpr int kRowsPerBlock = kDecodeWarps * kRowsPerWarp;
  // Rows per thread group per step, widened to floats together (and, without the ring
  // below, loaded together). Eight packed heads already hold 128 floats of q and acc_o per
  // thread, so they get fewer rows to stay clear of spills. An fp8 row holds twice the
  // elements per lane (the same registers as two 16-bit rows), so it gets half the rows.
  // Two fp8 rows at four packed heads compiled without spills but at 244-250 registers,
  // too close to the cap to keep.
  constexpr int kTile = kHalves == 1 ? (kGroup >= 8 ? 2 : 4) : (kGroup >= 4 ? 1 : 2);
  constexpr int kBlockN = kRowsPerBlock * kTile;         // keys per step of the block
  // Prefetch ring (16-byte cache rows, a.kv_vec16): each thread copies the K and V chunks
  // of its rows of the next kStages - 1 steps with cp.async into slots only it reads, so the
  // loads in flight cost no registers and need no barrier: at least kDecodeMinRowsInFlight
  // rows (128 bytes of K and V) per thread, 16 KB per block, 32 KB per SM at the two blocks
  // per SM the largest variants fit (an H200 needs that much in flight to hide HBM latency).
  constexpr int kStages = 1 + (kDecodeMinRowsInFlight + kTile - 1) / kTile;
  constexpr int kRingChunks = kStages * kTile * 2 * kDecodeThreads;  // 16-byte slots

  // One buffer: the ring during the key loop, then the per-warp partial states merged
  // across warps (red_acc [kDecodeWarps][kGroup][kHeadDim], red_state [..][..][2]).
  constexpr int kRedFloats = kDecodeWarps * kGroup * (kHeadDim + 2);
  constexpr int kBufChunks =
      kRingChunks > (kRedFloats + 3) / 4 ? kRingChunks : (kRedFloats + 3) / 4;
  FA_SHARED(dev::uint4[kBufChunks], smem_buf);
  dev::uint4* ring = smem_buf;
  float* red_acc = reinterpret_cast<float*>(smem_buf);
  float* red_state = red_acc + kDecodeWarps * kGroup * kHeadDim;

  const int b = blockIdx.x;
  const DecodeHeads& h = a.heads;
  const int hk = blockIdx.y / h.head_chunks;
  const int chunk = blockIdx.y % h.head_chunks;
  const int split = blockIdx.z;
  const int head0 = chunk * h.heads_per_chunk;  // first packed head, inside the group
  const int rest = h.group - head0;
  const int n_heads = rest < h.heads_per_chunk ? rest : h.heads_per_chunk;  // uniform
  const int hq0 = hk * h.group + head0;

  const int lane = dev::lane_id();
  const int warp = dev::warp_id();
  const int c = lane % kLanes;                 // which kVec elements of the row
  const int row_in_block = warp * kRowsPerWarp + lane / kLanes;
  const int col0 = c * kVec;
  // Elements of this lane's kVec that lie inside D (a multiple of 8).
  int n_cols = p.head_dim - col0;
  n_cols = n_cols < 0 ? 0 : n_cols > kVec ? kVec : n_cols;

  // fp8: the K scale joins the softmax scale, the V scale the final normalisation.
  float q_scale = p.softmax_scale;
  float o_scale = 1.f;
  if constexpr (dev::is_fp8_v<C>) {
    int32_t* flag = dev::thread_rank() == 0 ? p.error_flag : nullptr;  // one report a block
    q_scale *= checked_kv_scale(p.k_scale, hk, flag, kErrKScale);
    o_scale = checked_kv_scale(p.v_scale, hk, flag, kErrVScale);
  }

  const SeqBounds sb = seq_bounds(p, b);
  const DecodeRange range = decode_range<kBlockN>(p, sb, split, a.num_splits);

  // q, pre-scaled as the CPU kernel does; zeros past D. Scores are in base 2
  // (OnlineSoftmax2): without a softcap log2(e) joins the scale here, so a score costs no
  // multiply at all; the softcap must see the natural score, so then it is applied after.
  const float q_scale_log2 = p.softcap > 0.f ? q_scale : q_scale * kLog2e;
  float q[kGroup][kVec];
  const T* q_base = static_cast<const T*>(p.q);
  FA_UNROLL
  for (int i = 0; i < kGroup; ++i) {
    FA_UNROLL
    for (int hv = 0; hv < kHalves; ++hv) {
      const dev::uint4 raw = i < n_heads && 8 * hv < n_cols
                                 ? load_vec8(q_base + q_offset(p, sb, b, 0, hq0 + i) + col0 +
                                                 8 * hv, a.vec16)
                                 : dev::uint4{0, 0, 0, 0};
      unpack_vec8<T>(raw, q[i] + 8 * hv);
    }
    FA_UNROLL
    for (int e = 0; e < kVec; ++e) q[i][e] *= q_scale_log2;
  }

  OnlineSoftmax2 state[kGroup];
  float acc_o[kGroup][kVec];
  FA_UNROLL
  for (int i = 0; i < kGroup; ++i) {
    state[i].init();
    FA_UNROLL
    for (int e = 0; e < kVec; ++e) acc_o[i][e] = 0.f;
  }

  const C* k_base = static_cast<const C*>(p.k);
  const C* v_base = static_cast<const C*>(p.v);
  const int64_t table_row = int64_t(b) * p.block_table_stride;
  const int tid = int(dev::thread_rank());
  // Row t of the step at key n0: valid when inside the split and its page is in range
  // (checked before k_offset/v_offset dereference it; they re-read the same cached entry:
  // keeping the pages live instead cost registers and spilled, scripts/kernel_report.sh).
  const auto row_valid = [&](int j) {
    if (j >= range.end) return false;
    const int32_t page = p.block_table[table_row + j / p.page_size];
    if (page < 0 || page >= p.num_pages) {
      if (c == 0) report_error(p.error_flag, kErrBlockTable);
      return false;
    }
    return true;
  };
  const auto slot = [&](int step, int t, int which) {
    return ring + ((step % kStages * kTile + t) * 2 + which) * kDecodeThreads + tid;
  };
  // Ring: copies of the step at key n0 into its slots (zero-filled where invalid); one
  // commit group per step, empty past the split, so that wait<kStages - 2> always covers
  // the step about to be read. Bit (step % kStages) * kTile + t of ring_valid keeps each
  // slot's row_valid for the step that reads it (no second block-table read).
  static_assert(kStages * kTile <= 32, "one bit per ring row");
  uint32_t ring_valid = 0;
  const auto prefetch = [&](int step, int n0) {
    FA_UNROLL
    for (int t = 0; t < kTile; ++t) {
      const int j = n0 + t * kRowsPerBlock + row_in_block;
      const bool row_ok = n0 < range.end && row_valid(j);
      const uint32_t bit = 1u << (step % kStages * kTile + t);
      ring_valid = row_ok ? ring_valid | bit : ring_valid & ~bit;
      const bool ok = row_ok && n_cols > 0;
      const C* k_src = ok ? k_base + k_offset(p, sb, b, j, hk) + col0 : k_base;
      const C* v_src = ok ? v_base + v_offset(p, sb, b, j, hk) + col0 : v_base;
      dev::cp_async_16(slot(step, t, 0), k_src, ok ? 16u : 0u);
      dev::cp_async_16(slot(step, t, 1), v_src, ok ? 16u : 0u);
    }
    dev::cp_async_commit();
  };
  const bool use_ring = a.kv_vec16;  // uniform over the grid
  if (use_ring) {
    FA_UNROLL
    for (int st = 0; st < kStages - 1; ++st) prefetch(st, range.begin + st * kBlockN);
  }

  int step = 0;
  for (int n0 = range.begin; n0 < range.end; n0 += kBlockN, ++step) {
    float k_f[kTile][kVec];
    float v_f[kTile][kVec];
    bool valid[kTile];
    {
      dev::uint4 k_raw[kTile], v_raw[kTile];
      if (use_ring) {
        // This step's copies (the oldest group) have landed; read them back, then refill
        // the slots the previous step read (its values are already in registers).
        dev::cp_async_wait<kStages - 2>();
        FA_UNROLL
        for (int t = 0; t < kTile; ++t) {
          valid[t] = (ring_valid >> (step % kStages * kTile + t)) & 1u;
          k_raw[t] = *slot(step, t, 0);
          v_raw[t] = *slot(step, t, 1);
        }
        prefetch(step + kStages - 1, n0 + (kStages - 1) * kBlockN);
      } else {
        // Issue every load of the step before using any of them.
        FA_UNROLL
        for (int t = 0; t < kTile; ++t) {
          const int j = n0 + t * kRowsPerBlock + row_in_block;
          valid[t] = row_valid(j);
          k_raw[t] = v_raw[t] = dev::uint4{0, 0, 0, 0};
          if (valid[t] && n_cols > 0) {
            k_raw[t] = load_kv_vec(k_base + k_offset(p, sb, b, j, hk) + col0, n_cols,
                                   a.kv_vec16, a.kv_vec8);
            v_raw[t] = load_kv_vec(v_base + v_offset(p, sb, b, j, hk) + col0, n_cols,
                                   a.kv_vec16, a.kv_vec8);
          }
        }
      }
      // Converted once per row, not once per packed head.
      FA_UNROLL
      for (int t = 0; t < kTile; ++t) {
        unpack_kv_vec<C>(k_raw[t], k_f[t]);
        unpack_kv_vec<C>(v_raw[t], v_f[t]);
      }
    }
    FA_UNROLL
    for (int i = 0; i < kGroup; ++i) {
      if (i >= n_heads) break;  // uniform across the block: every lane skips together
      float s[kTile];
      float tile_max = kNegInf;
      FA_UNROLL
      for (int t = 0; t < kTile; ++t) {
        float dot = 0.f;
        FA_UNROLL
        for (int e = 0; e < kVec; ++e) dot += q[i][e] * k_f[t][e];
        // Sum over the row's lanes; xor masks below kLanes stay inside the group.
        FA_UNROLL
        for (int m = kLanes / 2; m >= 1; m /= 2) dot += dev::shfl_xor(dot, m);
        if (p.softcap > 0.f) dot = apply_softcap(dot, p.softcap) * kLog2e;
        s[t] = valid[t] ? dot : kNegInf;
        tile_max = fmaxf(tile_max, s[t]);
      }
      const float alpha = state[i].rescale(tile_max);
      FA_UNROLL
      for (int e = 0; e < kVec; ++e) acc_o[i][e] *= alpha;
      FA_UNROLL
      for (int t = 0; t < kTile; ++t) {
        // Masked rows give probability 0 and their V registers are zeros: no NaN.
        const float pr = state[i].prob(s[t]);
        state[i].add(pr);
        FA_UNROLL
        for (int e = 0; e < kVec; ++e) acc_o[i][e] += pr * v_f[t][e];
      }
    }
  }

  // Merge the thread groups of the warp (same columns, different keys): butterfly over
  // the group index, so every group ends with the warp's state.
  FA_UNROLL
  for (int i = 0; i < kGroup; ++i) {
    if (i >= n_heads) break;
    FA_UNROLL
    for (int m = kLanes; m < 32; m *= 2) {
      const float other_max = dev::shfl_xor(state[i].row_max, m);
      const float other_sum = dev::shfl_xor(state[i].row_sum, m);
      const float alpha = state[i].rescale(other_max);
      const float beta = state[i].prob(other_max);
      state[i].add(beta * other_sum);
      FA_UNROLL
      for (int e = 0; e < kVec; ++e) {
        const float other = dev::shfl_xor(acc_o[i][e], m);
        acc_o[i][e] = acc_o[i][e] * alpha + other * beta;
      }
    }
  }

  // Merge the warps through shared memory, which the ring used: every thread's copies
  // (the last prefetches are zero fills, which still write) land, and every thread is done
  // reading its slots, before the partial states overwrite them.
  dev::cp_async_wait<0>();
  dev::sync_block();
  if (lane < kLanes) {
    FA_UNROLL
    for (int i = 0; i < kGroup; ++i) {
      if (i >= n_heads) break;
      FA_UNROLL
      for (int e = 0; e < kVec; ++e) red_acc[(warp * kGroup + i) * kHeadDim + col0 + e] = acc_o[i][e];
      if (c == 0) {
        red_state[(warp * kGroup + i) * 2] = state[i].row_max;
        red_state[(warp * kGroup + i) * 2 + 1] = state[i].row_sum;
      }
    }
  }
  dev::sync_block();

  // Thread idx finishes columns [8 idx', 8 idx' + 8) of packed head i (8 columns, whatever
  // the cache dtype): every thread of the block takes part, heads * kHeadDim / 8 items.
  constexpr int kPieces = kHeadDim / 8;
  for (int idx = dev::thread_rank(); idx < n_heads * kPieces; idx += kDecodeThreads) {
    const int i = idx / kPieces;
    const int col = (idx % kPieces) * 8;
    if (col >= p.head_dim) continue;
    OnlineSoftmax2 st;  // the warps' base-2 states
    st.init();
    float o[8];
    FA_UNROLL
    for (int e = 0; e < 8; ++e) o[e] = 0.f;
    FA_UNROLL
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float w_max = red_state[(w * kGroup + i) * 2];
      const float alpha = st.rescale(w_max);
      const float beta = st.prob(w_max);
      st.add(beta * red_state[(w * kGroup + i) * 2 + 1]);
      FA_UNROLL
      for (int e = 0; e < 8; ++e) {
        o[e] = o[e] * alpha + beta * red_acc[(w * kGroup + i) * kHeadDim + col + e];
      }
    }
    const float inv = st.inv_sum() * o_scale;  // 0 when no key was seen: out 0, lse -inf
    FA_UNROLL
    for (int e = 0; e < 8; ++e) o[e] *= inv;
    const int hq = hq0 + i;
    if (a.num_splits == 1) {
      T* out = static_cast<T*>(p.o) + o_offset(p, sb, b, 0, hq) + col;
      store_vals<T, 8>(out, o, a.vec16);
      if (col == 0 && p.lse) p.lse[lse_offset(p, sb, b, 0, hq)] = st.lse();
    } else {
      const int64_t part = (int64_t(b) * p.num_heads_q + hq) * a.num_splits + split;
      float* dst = a.ws_out + part * p.head_dim + col;
      *reinterpret_cast<dev::float4*>(dst) = dev::float4{o[0], o[1], o[2], o[3]};
      *reinterpret_cast<dev::float4*>(dst + 4) = dev::float4{o[4], o[5], o[6], o[7]};
      if (col == 0) a.ws_lse[part] = st.lse();
    }
  }

  // Pages below the visible range are never read: the first head chunk of each sequence
  // checks their entries, shared out over its splits.
  if (blockIdx.y == 0) {
    check_unread_pages(p, b, split * kDecodeThreads + int(dev::thread_rank()),
                       range.lo / p.page_size, a.num_splits * kDecodeThreads);
  }
}

// Combines the num_splits normalised partials of each (b, head) by their lse.
template <typename T>
FA_KERNEL void FA_LAUNCH_BOUNDS(kMergeWarps * 32)
    decode_merge_kernel(const AttnParams p, const DecodeArgs a) {
  constexpr int kChunks = kDecodeMaxHeadDim / (32 * 4);  // float4 columns per lane
  const int64_t row = int64_t(blockIdx.x) * kMergeWarps + dev::warp_id();
  if (row >= int64_t(p.batch) * p.num_heads_q) return;  // no barrier or collective below
  const int b = int(row / p.num_heads_q);
  const int hq = int(row % p.num_heads_q);
  const int lane = dev::lane_id();
  const float* lse_s = a.ws_lse + row * a.num_splits;
  const float* out_s = a.ws_out + row * a.num_splits * p.head_dim;

  // An online softmax over the split lse values: weight exp(lse_s - lse) per split.
  OnlineSoftmax st;
  st.init();
  float acc[kChunks][4];
  FA_UNROLL
  for (int r = 0; r < kChunks; ++r)
    FA_UNROLL
    for (int e = 0; e < 4; ++e) acc[r][e] = 0.f;
  for (int s = 0; s < a.num_splits; ++s) {
    const float l = lse_s[s];
    if (l == kNegInf) continue;  // empty split: its out is never read
    const float alpha = st.rescale(l);
    const float w = st.prob(l);
    st.add(w);
    FA_UNROLL
    for (int r = 0; r < kChunks; ++r) {
      const int col = (r * 32 + lane) * 4;
      if (col >= p.head_dim) break;
      const dev::float4 x =
          *reinterpret_cast<const dev::float4*>(out_s + int64_t(s) * p.head_dim + col);
      acc[r][0] = acc[r][0] * alpha + w * x.x;
      acc[r][1] = acc[r][1] * alpha + w * x.y;
      acc[r][2] = acc[r][2] * alpha + w * x.z;
      acc[r][3] = acc[r][3] * alpha + w * x.w;
    }
  }
  const float inv = st.inv_sum();
  const SeqBounds sb = seq_bounds(p, b);
  T* out = static_cast<T*>(p.o) + o_offset(p, sb, b, 0, hq);
  FA_UNROLL
  for (int r = 0; r < kChunks; ++r) {
    const int col = (r * 32 + lane) * 4;
    if (col >= p.head_dim) break;
    float o[4];
    FA_UNROLL
    for (int e = 0; e < 4; ++e) o[e] = acc[r][e] * inv;
    store_vals<T, 4>(out + col, o, a.vec16);
  }
  if (lane == 0 && p.lse) p.lse[lse_offset(p, sb, b, 0, hq)] = st.lse();
}

// 16-byte accesses need 16-byte aligned bases and strides that are multiples of 16 bytes
// (for q and o, D itself is a multiple of 8 elements); the cache's loads also need D to be
// a multiple of the elements per load.
template <typename T, typename C>
void set_decode_vectorizable(const AttnParams& p, DecodeArgs& a) {
  a.vec16 = vec16_ok<T>({p.q, p.o}, {p.q_batch_stride, p.q_head_stride, p.o_batch_stride,
                                     p.o_head_stride});
  a.kv_vec16 = p.head_dim % kDecodeVec<C> == 0 &&
               vec16_ok<C>({p.k, p.v}, {p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                                        p.v_batch_stride, p.v_row_stride, p.v_head_stride});
  a.kv_vec8 = dev::is_fp8_v<C> &&
              vec_ok<C, 8>({p.k, p.v}, {p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                                        p.v_batch_stride, p.v_row_stride, p.v_head_stride});
}

template <typename T, typename C, int kHeadDim, int kGroup>
void launch_paged_decode_group(const AttnParams& p, const DecodeArgs& a, void* stream) {
  const dev::LaunchConfig cfg{
      dev::dim3(unsigned(p.batch), unsigned(p.num_heads_k * a.heads.head_chunks),
                unsigned(a.num_splits)),
      dev::dim3(kDecodeThreads), 0, static_cast<dev::stream_t>(stream)};
  dev::launch(paged_decode_kernel<T, C, kHeadDim, kGroup>, cfg, p, a);
}

template <typename T, typename C, int kHeadDim>
void launch_paged_decode_dim(const AttnParams& p, const DecodeArgs& a, void* stream) {
  switch (a.heads.kernel_group) {
    case 1: return launch_paged_decode_group<T, C, kHeadDim, 1>(p, a, stream);
    case 2: return launch_paged_decode_group<T, C, kHeadDim, 2>(p, a, stream);
    case 4: return launch_paged_decode_group<T, C, kHeadDim, 4>(p, a, stream);
    case 8:
      if constexpr (decode_max_group<C>() >= 8) {
        return launch_paged_decode_group<T, C, kHeadDim, 8>(p, a, stream);
      }
      break;
  }
  throw std::invalid_argument("fastattn paged decode: unsupported packed head count " +
                              std::to_string(a.heads.kernel_group));
}

// workspace: decode_workspace_floats_for(p, num_splits) floats, or null when
// num_splits == 1. C: the cache element type (T, or fp8_e4m3_t / fp8_e5m2_t).
template <typename T, typename C>
void launch_paged_decode(const AttnParams& p, float* workspace, int num_splits, void* stream) {
  if (p.batch == 0 || p.num_heads_q == 0) return;
  const int head_dim = compiled_head_dim(p.head_dim);
  if (head_dim == 0) {
    throw std::invalid_argument("fastattn paged decode: head_dim = " +
                                std::to_string(p.head_dim) +
                                " unsupported; expected a multiple of 8 up to 256");
  }
  if (p.num_heads_k <= 0 || p.num_heads_q % p.num_heads_k != 0) {
    throw std::invalid_argument("fastattn paged decode: num_heads_q = " +
                                std::to_string(p.num_heads_q) +
                                " is not a multiple of num_heads_k = " +
                                std::to_string(p.num_heads_k));
  }
  if (num_splits < 1 || (num_splits > 1 && !workspace)) {
    throw std::invalid_argument("fastattn paged decode: num_splits = " +
                                std::to_string(num_splits) + " needs a workspace of " +
                                std::to_string(decode_workspace_floats_for(p, num_splits)) +
                                " floats");
  }
  DecodeArgs a;
  a.num_splits = num_splits;
  a.ws_out = num_splits > 1 ? workspace : nullptr;
  a.ws_lse = num_splits > 1
                 ? workspace + int64_t(p.batch) * p.num_heads_q * num_splits * p.head_dim
                 : nullptr;
  a.heads = decode_heads(p, decode_max_group<C>());
  set_decode_vectorizable<T, C>(p, a);

  switch (head_dim) {
    case 64: launch_paged_decode_dim<T, C, 64>(p, a, stream); break;
    case 128: launch_paged_decode_dim<T, C, 128>(p, a, stream); break;
    default: launch_paged_decode_dim<T, C, 256>(p, a, stream); break;
  }
  if (num_splits > 1) {
    const int64_t rows = int64_t(p.batch) * p.num_heads_q;
    const dev::LaunchConfig cfg{dev::dim3(unsigned((rows + kMergeWarps - 1) / kMergeWarps)),
                                dev::dim3(kMergeWarps * 32), 0,
                                static_cast<dev::stream_t>(stream)};
    dev::launch(decode_merge_kernel<T>, cfg, p, a);
  }
}

}  // namespace fastattn::kernels
