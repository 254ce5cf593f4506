// CPU attention forward for dense, varlen and paged (decode/extend) inputs.
//
// Algorithm: FlashAttention-style tiling. A work item is one (batch row, KV
// head, tile of kBlockM query positions); it owns the rows of every query head
// in that KV head's group (GQA), so each K/V tile is staged (converted to fp32,
// read through the block table when paged) once for the whole group. Key tiles
// of kBlockN stream through an online softmax; output and lse are written once.
// Only keys inside the union of the rows' visible ranges are read, so tiles
// above the causal diagonal or outside a window are skipped, and paged keys are
// never read past seq_len (unused slots may hold anything, NaN included).
//
// Two inner paths share the staging and the softmax bookkeeping:
//  - many rows (prefill, extend, cross): Q.K^T and P.V are GEMMs on the fp32
//    tiles: AVX-512 micro-kernels (tile_gemm.cpp), else ATen's matmul;
//  - few rows: direct loops, since the data moved dominates and a GEMM call per
//    tile would cost more than it computes.
// Work split: at::parallel_for over items ordered (batch, kv head, q tile).
//
// Paged decode (one query per sequence) has its own path, Decode below: it is
// bound by how fast the cache streams in, so it reads the cache in place in its
// dtype (no staging) and prefetches in memory order (csrc/cpu/row_kernels.cpp).
//
// fp8 caches (KV = c10::Float8_*; paged ops only): codes are widened exactly, the V scale is
// applied to the output and the K scale to the queries (tiles) or the scores (decode, where
// bf16 queries meet the codes widened to bf16 in the BF16 dot product).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu/fp8.h"
#include "cpu/vec.h"
#include "fastattn/mask.h"
#include "fastattn/softmax.h"

namespace fastattn::cpu {
namespace {

constexpr int kBlockN = 1024;     // keys per tile that every row of the item sees
constexpr int kDirectBlockN = 256;  // keys per tile on the few-rows path
constexpr int kSubBlockN = 64;    // keys per sub-tile where rows see different keys
constexpr int kGemmRows = 256;    // target rows (query positions x group heads) per item
constexpr int kMinGemmRows = 16;  // below this, direct loops beat a GEMM call
constexpr int kPrefetch = 32;     // keys staged ahead of use

// Every cache line of [p, p + bytes), the last of an unaligned range included.
inline void prefetch(const void* p, int64_t bytes) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(p);
  for (uintptr_t line = first & ~uintptr_t(63); line < first + bytes; line += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(line));
}

// fp32 copies of a row.
inline void to_float(const float* src, float* dst, int n) { std::memcpy(dst, src, n * sizeof(float)); }

inline void to_float(const c10::BFloat16* src, float* dst, int n) {
  vec::bf16_to_f32(reinterpret_cast<const uint16_t*>(src), dst, n);
}

inline void to_float(const c10::Half* src, float* dst, int n) {
  vec::f16_to_f32(reinterpret_cast<const uint16_t*>(src), dst, n);
}

inline void to_float(const c10::Float8_e4m3fn* src, float* dst, int n) { vec::fp8_to_f32(src, dst, n); }
inline void to_float(const c10::Float8_e5m2* src, float* dst, int n) { vec::fp8_to_f32(src, dst, n); }

// One row's online-softmax step over a tile of n scores, in place: caps them, masks
// keys outside [lo, hi), rescales the row's accumulator acc [D] to the new max and
// replaces the scores by their exponentials, adding their sum to the state.
inline void softmax_row(float* scores, int n, int lo, int hi, float softcap, OnlineSoftmax& st,
                        float* acc, int D) {
  if (softcap > 0.f)
    for (int j = lo; j < hi; ++j) scores[j] = apply_softcap(scores[j], softcap);
  const float alpha = st.rescale(vec::mask_max(scores, n, lo, hi));
  if (alpha != 1.f) vec::scale(acc, alpha, D);
  // A row that has seen only masked keys keeps max -inf: shift by 0 so that its
  // scores stay -inf and exponentiate to 0.
  st.add(vec::exp_sum(scores, st.row_max == kNegInf ? 0.f : st.row_max, n));
}

struct Workspace {
  std::vector<float> q;    // scaled queries [rows, D]
  std::vector<float> k;    // key tile [N, D]
  std::vector<float> v;    // value tile [N, D]
  std::vector<float> kt;   // key tile transposed for the AVX-512 GEMM [D, N]
  std::vector<float> s;    // scores, then probabilities [rows, N]
  std::vector<float> acc;  // unnormalised output [rows, D]
  std::vector<OnlineSoftmax> state;
  std::vector<KeyRange> ranges;
};

// T: queries and output; KV: keys and values (T, or an fp8 cache type).
template <typename T, typename KV>
class AttentionTile {
 public:
  AttentionTile(const AttnParams& p, int m_block) : p_(p), m_block_(m_block) {
    group_ = p.num_heads_q / p.num_heads_k;
    const int D = p.head_dim;
    const size_t max_rows = size_t(group_) * m_block;
    ws_.q.resize(max_rows * D);
    ws_.k.resize(size_t(kBlockN) * D);
    ws_.v.resize(size_t(kBlockN) * D);
    ws_.kt.resize(size_t(D) * vec::gemm_qk_stride(kBlockN));
    ws_.s.resize(max_rows * vec::gemm_qk_stride(kBlockN));
    ws_.acc.resize(max_rows * D);
    ws_.state.resize(max_rows);
    ws_.ranges.resize(m_block);
  }

  // Rows are position-major, r = (i - i0) * group + g: query position i of head
  // hk * group + g. The rows that see any key of a tile then form one
  // contiguous range (visible ranges are monotone in i), which is all a tile
  // computes on.
  void run(int b, int hk, int i0) {
    const SeqBounds s = seq_bounds(p_, b);
    if (i0 >= s.q_len) return;
    const int D = p_.head_dim;
    m_ = std::min(m_block_, s.q_len - i0);
    rows_ = group_ * m_;
    for (int i = 0; i < m_; ++i)
      ws_.ranges[i] = visible_keys(i0 + i, s.q_len, s.k_len, p_.causal, p_.window_left,
                                   p_.window_right);
    const KeyRange keys = visible_keys_of_rows(i0, i0 + m_, s.q_len, s.k_len, p_.causal,
                                               p_.window_left, p_.window_right);
    const T* q = static_cast<const T*>(p_.q);
    const float q_scale = p_.softmax_scale * kv_scale(p_.k_scale, hk);
    for (int r = 0; r < rows_; ++r) {
      float* dst = &ws_.q[size_t(r) * D];
      to_float(q + q_offset(p_, s, b, i0 + r / group_, hk * group_ + r % group_), dst, D);
      vec::scale(dst, q_scale, D);
      ws_.state[r].init();
    }
    std::fill_n(ws_.acc.begin(), size_t(rows_) * D, 0.f);

    // Keys every row sees run in large tiles (fewer, larger GEMMs); the keys
    // near the causal diagonal or a window edge, which rows see differently,
    // run in sub-tiles on just the rows that see them, so masked corners are
    // mostly not computed.
    int full_lo = std::max(keys.lo, ws_.ranges[m_ - 1].lo);
    int full_hi = std::min(keys.hi, ws_.ranges[0].hi);
    if (full_hi <= full_lo) full_lo = full_hi = keys.lo;
    partial_tiles(s, b, hk, keys.lo, full_lo);
    // Direct (decode) tiles stay small enough that the staged K and V stay in L2.
    const int block = rows_ >= kMinGemmRows ? kBlockN : kDirectBlockN;
    for (int n0 = full_lo; n0 < full_hi; n0 += block)
      tile(s, b, hk, n0, std::min(block, full_hi - n0), 0, rows_);
    partial_tiles(s, b, hk, full_hi, keys.hi);
    write_out(s, b, hk, i0);
  }

 private:
  void partial_tiles(const SeqBounds& s, int b, int hk, int begin, int end) {
    for (int a = begin; a < end; a += kSubBlockN) {
      const int na = std::min(kSubBlockN, end - a);
      int first = 0;
      while (first < m_ && ws_.ranges[first].hi <= a) ++first;
      int last = m_;
      while (last > first && ws_.ranges[last - 1].lo >= a + na) --last;
      if (first < last) tile(s, b, hk, a, na, first * group_, (last - first) * group_);
    }
  }

  // Keys [n0, n0 + n) against rows [r0, r0 + nr).
  void tile(const SeqBounds& s, int b, int hk, int n0, int n, int r0, int nr) {
    stage_kv(s, b, hk, n0, n);
    const int D = p_.head_dim;
    const float* q = &ws_.q[size_t(r0) * D];
    float* acc = &ws_.acc[size_t(r0) * D];
    float* sc = ws_.s.data();
    if (nr >= kMinGemmRows) {
      const int lds = vec::gemm_qk_stride(n);
      if (tile_gemm_) {
        vec::gemm_qk(q, nr, k_tile_, k_ld_, n, D, ws_.kt.data(), sc, lds);
        softmax_tile(n0, n, r0, nr, lds);
        vec::gemm_pv(sc, lds, nr, v_tile_, v_ld_, n, D, acc);
      } else {
        at::Tensor scores = view(sc, nr, n);
        at::mm_out(scores, view(q, nr, D, D), view(k_tile_, n, D, k_ld_).t());
        softmax_tile(n0, n, r0, nr, n);
        view(acc, nr, D).addmm_(scores, view(v_tile_, n, D, v_ld_));
      }
    } else {
      for (int j = 0; j < n; ++j) {
        k_rows_[j] = k_tile_ + j * k_ld_;
        v_rows_[j] = v_tile_ + j * v_ld_;
      }
      vec::qk_rows(q, q, nr, 1, k_rows_.data(), 0, 0, n, D, 1.f, nullptr, sc, n, {});
      softmax_tile(n0, n, r0, nr, n);
      vec::pv_rows(sc, n, nr, 1, v_rows_.data(), 0, 0, n, D, acc, {});
    }
  }

  static at::Tensor view(const float* data, int64_t rows, int64_t cols, int64_t ld) {
    return at::from_blob(const_cast<float*>(data), {rows, cols}, {ld, 1},
                         at::TensorOptions().dtype(at::kFloat));
  }
  static at::Tensor view(float* data, int64_t rows, int64_t cols) {
    return view(data, rows, cols, cols);
  }

  // Points k_tile_/v_tile_ at fp32 [n, D] rows with leading dimensions k_ld_/v_ld_:
  // fp32 dense keys are used where they lie; anything else (paged, fp16, bf16, fp8) is
  // converted into the workspace.
  void stage_kv(const SeqBounds& s, int b, int hk, int n0, int n) {
    const int D = p_.head_dim;
    const KV* k = static_cast<const KV*>(p_.k);
    const KV* v = static_cast<const KV*>(p_.v);
    if constexpr (std::is_same_v<KV, float>) {
      if (!p_.block_table) {
        k_tile_ = k + k_offset(p_, s, b, n0, hk);
        v_tile_ = v + v_offset(p_, s, b, n0, hk);
        k_ld_ = p_.k_row_stride;
        v_ld_ = p_.v_row_stride;
        return;
      }
    }
    k_tile_ = ws_.k.data();
    v_tile_ = ws_.v.data();
    k_ld_ = v_ld_ = D;
    // Paged rows of one head sit a whole token apart (often beyond the 4 KiB the
    // hardware prefetchers follow), so each row would pay a DRAM latency:
    // request rows kPrefetch keys ahead.
    const int64_t row_bytes = int64_t(D) * sizeof(KV);
    for (int j = 0; j < std::min(n, kPrefetch); ++j) {
      prefetch(k + k_offset(p_, s, b, n0 + j, hk), row_bytes);
      prefetch(v + v_offset(p_, s, b, n0 + j, hk), row_bytes);
    }
    for (int j = 0; j < n; ++j) {
      if (j + kPrefetch < n) {
        prefetch(k + k_offset(p_, s, b, n0 + j + kPrefetch, hk), row_bytes);
        prefetch(v + v_offset(p_, s, b, n0 + j + kPrefetch, hk), row_bytes);
      }
      to_float(k + k_offset(p_, s, b, n0 + j, hk), &ws_.k[size_t(j) * D], D);
      to_float(v + v_offset(p_, s, b, n0 + j, hk), &ws_.v[size_t(j) * D], D);
    }
  }

  // Masks, caps and exponentiates the tile's scores in place (row stride lds),
  // updating each row's running max and sum and rescaling its accumulator.
  void softmax_tile(int n0, int n, int r0, int nr, int lds) {
    const int D = p_.head_dim;
    for (int r = r0; r < r0 + nr; ++r) {
      float* sr = &ws_.s[size_t(r - r0) * lds];
      const KeyRange kr = ws_.ranges[r / group_];
      const int lo = std::clamp(kr.lo - n0, 0, n);
      const int hi = std::clamp(kr.hi - n0, lo, n);
      softmax_row(sr, n, lo, hi, p_.softcap, ws_.state[r], &ws_.acc[size_t(r) * D], D);
    }
  }

  void write_out(const SeqBounds& s, int b, int hk, int i0) {
    const int D = p_.head_dim;
    T* o = static_cast<T*>(p_.o);
    const float v_scale = kv_scale(p_.v_scale, hk);
    for (int r = 0; r < rows_; ++r) {
      const int i = i0 + r / group_;
      const int h = hk * group_ + r % group_;
      const float inv = ws_.state[r].inv_sum() * v_scale;
      T* dst = o + o_offset(p_, s, b, i, h);
      const float* acc = &ws_.acc[size_t(r) * D];
      for (int d = 0; d < D; ++d) dst[d] = T(acc[d] * inv);
      if (p_.lse) p_.lse[lse_offset(p_, s, b, i, h)] = ws_.state[r].lse();
    }
  }

  const AttnParams& p_;
  Workspace ws_;
  const float* k_tile_ = nullptr;
  const float* v_tile_ = nullptr;
  int64_t k_ld_ = 0;
  int64_t v_ld_ = 0;
  const bool tile_gemm_ = vec::has_tile_gemm();
  std::vector<const float*> k_rows_ = std::vector<const float*>(kBlockN);
  std::vector<const float*> v_rows_ = std::vector<const float*>(kBlockN);
  int group_;
  int m_block_;
  int m_ = 0;
  int rows_ = 0;
};

// Paged decode (one query token per sequence). A work item is one batch row and a
// range of its KV heads: whole rows when the batch alone fills the cores, else
// rows split by heads. Keys run in tiles addressed through per-token row pointers
// (one block-table lookup per token, shared by all heads); the decode kernels read
// the rows in place, in the cache dtype, and prefetch the tile that comes next
// (the next item's first tile after an item's last), so the cache streams in
// while the current tile computes.
template <typename T, typename KV>
class Decode {
 public:
  // Items are (batch row, chunk of `per` KV heads), chunk-minor.
  Decode(const AttnParams& p, int per) : p_(p), per_(per) {
    group_ = p.num_heads_q / p.num_heads_k;
    chunks_ = (p.num_heads_k + per - 1) / per;
    const int D = p.head_dim;
    // ~64 KiB of keys per tile: this tile and the next, K and V, stay in L2.
    const int64_t token_bytes = int64_t(per) * D * sizeof(KV);
    keys_ = int(std::clamp<int64_t>(kTileBytes / token_bytes / 16 * 16, 16, 256));
    const size_t rows = size_t(per) * group_;
    qf_.resize(rows * D);
    if constexpr (kNativeQ) qn_.resize(rows * D);
    if constexpr (kIsFp8<KV>) k_scale_.resize(per);
    s_.resize(rows * keys_);
    acc_.resize(rows * D);
    state_.resize(rows);
    for (int i = 0; i < 2; ++i) {
      k_[i].resize(keys_);
      v_[i].resize(keys_);
    }
  }

  // One query per batch row: paged decode, and dense or cross attention with Sq = 1.
  static bool applies(const AttnParams& p) { return !p.cu_seqlens_q && p.seqlen_q == 1; }

  void run(int64_t begin, int64_t end) {
    int ready = -1;  // buffer already holding (and prefetching) the item's first tile
    Item it = item(begin), next{};
    for (int64_t i = begin; i < end; ++i) {
      const bool has_next = i + 1 < end;
      if (has_next) next = item(i + 1);
      ready = run_item(it, has_next ? &next : nullptr, ready);
      it = next;
    }
  }

 private:
  static constexpr int64_t kTileBytes = 64 * 1024;

  struct Item {
    int b, hk0, hk1;
    SeqBounds s;
    KeyRange keys;
  };

  Item item(int64_t i) const {
    Item it{};
    it.b = int(i / chunks_);
    it.hk0 = int(i % chunks_) * per_;
    it.hk1 = std::min(p_.num_heads_k, it.hk0 + per_);
    it.s = seq_bounds(p_, it.b);
    it.keys = visible_keys(0, it.s.q_len, it.s.k_len, p_.causal, p_.window_left, p_.window_right);
    return it;
  }

  // `next` (may be null) is the item run after this one: its first tile is filled
  // into a buffer and prefetched during this item's last, and that buffer is
  // returned (-1 if none) to be passed as `ready` to the next call. With ready < 0
  // this item's first tile is filled and prefetched up front.
  int run_item(const Item& it, const Item* next, int ready) {
    const int D = p_.head_dim;
    const int h0 = it.hk0 * group_, rows = (it.hk1 - it.hk0) * group_;
    const int64_t khs = p_.k_head_stride, vhs = p_.v_head_stride;
    const T* q = static_cast<const T*>(p_.q);
    for (int r = 0; r < rows; ++r) {
      const T* src = q + q_offset(p_, it.s, it.b, 0, h0 + r);
      if constexpr (kNativeQ) std::copy_n(src, D, &qn_[size_t(r) * D]);
      to_float(src, &qf_[size_t(r) * D], D);
      state_[r].init();
    }
    // fp8: the K scale of each head multiplies its scores (the bf16 queries stay exact).
    if constexpr (kIsFp8<KV>)
      for (int hk = it.hk0; hk < it.hk1; ++hk) k_scale_[hk - it.hk0] = kv_scale(p_.k_scale, hk);
    std::fill_n(acc_.begin(), size_t(rows) * D, 0.f);

    const KeyRange kr = it.keys;
    int cur = ready < 0 ? 0 : ready;
    if (kr.hi > kr.lo && ready < 0) {
      const int n = fill(it, kr.lo, cur);
      for (int j = 0; j < n; ++j)
        for (int hk = it.hk0; hk < it.hk1; ++hk) {
          prefetch(k_[cur][j] + hk * khs, D * int64_t(sizeof(KV)));
          prefetch(v_[cur][j] + hk * vhs, D * int64_t(sizeof(KV)));
        }
    }
    int next_ready = -1;
    for (int n0 = kr.lo; n0 < kr.hi; n0 += keys_, cur ^= 1) {
      const int n = std::min(keys_, kr.hi - n0);
      vec::RowTile<KV> nk, nv;
      if (n0 + keys_ < kr.hi) {
        nk.n = nv.n = fill(it, n0 + keys_, cur ^ 1);
        nk.heads = nv.heads = it.hk1 - it.hk0;
        nk.off = it.hk0 * khs;
        nv.off = it.hk0 * vhs;
      } else if (next && next->keys.hi > next->keys.lo) {
        nk.n = nv.n = fill(*next, next->keys.lo, cur ^ 1);
        nk.heads = nv.heads = next->hk1 - next->hk0;
        nk.off = next->hk0 * khs;
        nv.off = next->hk0 * vhs;
        next_ready = cur ^ 1;
      }
      nk.rows = k_[cur ^ 1].data();
      nv.rows = v_[cur ^ 1].data();
      vec::qk_rows(qf_.data(), q_native(), group_, it.hk1 - it.hk0, k_[cur].data(),
                   it.hk0 * khs, khs, n, D, p_.softmax_scale,
                   kIsFp8<KV> ? k_scale_.data() : nullptr, s_.data(), keys_, nk);
      for (int r = 0; r < rows; ++r)
        softmax_row(&s_[size_t(r) * keys_], n, 0, n, p_.softcap, state_[r],
                    &acc_[size_t(r) * D], D);
      vec::pv_rows(s_.data(), keys_, group_, it.hk1 - it.hk0, v_[cur].data(), it.hk0 * vhs, vhs,
                     n, D, acc_.data(), nv);
    }

    T* o = static_cast<T*>(p_.o);
    for (int r = 0; r < rows; ++r) {
      const float inv = state_[r].inv_sum() * kv_scale(p_.v_scale, it.hk0 + r / group_);
      T* dst = o + o_offset(p_, it.s, it.b, 0, h0 + r);
      for (int d = 0; d < D; ++d) dst[d] = T(acc_[size_t(r) * D + d] * inv);
      if (p_.lse) p_.lse[lse_offset(p_, it.s, it.b, 0, h0 + r)] = state_[r].lse();
    }
    return next_ready;
  }

  // Row pointers of the tile of `it` starting at key n0 into buffer i; returns
  // its length.
  int fill(const Item& it, int n0, int i) {
    const int n = std::clamp(it.keys.hi - n0, 0, keys_);
    const KV* k = static_cast<const KV*>(p_.k);
    const KV* v = static_cast<const KV*>(p_.v);
    for (int j = 0; j < n; ++j) {
      k_[i][j] = k + kv_token_offset(p_, it.s, it.b, n0 + j, p_.k_batch_stride, p_.k_row_stride);
      v_[i][j] = v + kv_token_offset(p_, it.s, it.b, n0 + j, p_.v_batch_stride, p_.v_row_stride);
    }
    return n;
  }

  const AttnParams& p_;
  int per_, chunks_, group_, keys_;
  std::vector<float> qf_, s_, acc_;
  // bf16 queries as given, for the bf16 dot product over bf16 and fp8 caches; fp32 reads qf_
  // itself; other pairs have none.
  static constexpr bool kNativeQ =
      std::is_same_v<T, c10::BFloat16> && (std::is_same_v<KV, T> || kIsFp8<KV>);
  using NativeQ = std::conditional_t<kIsFp8<KV>, c10::BFloat16, KV>;
  const NativeQ* q_native() const {
    if constexpr (std::is_same_v<KV, float>) return qf_.data();
    if constexpr (kNativeQ) return qn_.data();
    return nullptr;
  }
  std::vector<T> qn_;
  std::vector<float> k_scale_;  // fp8: K scale of each head of the item
  std::vector<OnlineSoftmax> state_;
  std::vector<const KV*> k_[2], v_[2];
};

template <typename T, typename KV>
void attention_fwd_impl(const AttnParams& p) {
  if (Decode<T, KV>::applies(p)) {
    // Batch rows, split by KV heads until there are two items per thread.
    const int64_t threads = at::get_num_threads();
    const int Hk = p.num_heads_k;
    const int splits = int(std::clamp<int64_t>((2 * threads + p.batch - 1) / p.batch, 1, Hk));
    const int per = (Hk + splits - 1) / splits;
    const int64_t items = int64_t(p.batch) * ((Hk + per - 1) / per);
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      Decode<T, KV>(p, per).run(begin, end);
    });
    return;
  }
  const int group = p.num_heads_q / p.num_heads_k;
  // Enough query positions per item that the group's rows fill a GEMM.
  const int m_block = std::max(1, std::min(p.seqlen_q, std::max(1, kGemmRows / group)));
  const int q_tiles = std::max(1, (p.seqlen_q + m_block - 1) / m_block);
  const int64_t num_items = int64_t(p.batch) * p.num_heads_k * q_tiles;
  at::parallel_for(0, num_items, 1, [&](int64_t begin, int64_t end) {
    // The GEMMs below run on plain fp32 buffers; keep autograd out of them.
    c10::InferenceMode guard;
    AttentionTile<T, KV> tile(p, m_block);
    for (int64_t item = begin; item < end; ++item) {
      const int t = int(item % q_tiles);
      const int hk = int((item / q_tiles) % p.num_heads_k);
      const int b = int(item / (int64_t(q_tiles) * p.num_heads_k));
      tile.run(b, hk, t * m_block);
    }
  });
}

}  // namespace

void attention_fwd(const AttnParams& p, c10::ScalarType dtype, c10::ScalarType kv_dtype) {
  dispatch_q_kv(dtype, kv_dtype, [&](auto t, auto kv) {
    attention_fwd_impl<decltype(t), decltype(kv)>(p);
  });
}

}  // namespace fastattn::cpu
