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
//    tiles through ATen (the BLAS torch links);
//  - few rows (decode): direct loops, since the data moved dominates and a
//    GEMM call per tile would cost more than it computes.
//
// Work split: at::parallel_for over items ordered (batch, kv head, q tile).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/cpu_kernels.h"
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

inline void prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off);
}

// fp32 copies of a row.
inline void to_float(const float* src, float* dst, int n) { std::memcpy(dst, src, n * sizeof(float)); }

inline void to_float(const c10::BFloat16* src, float* dst, int n) {
  vec::bf16_to_f32(reinterpret_cast<const uint16_t*>(src), dst, n);
}

inline void to_float(const c10::Half* src, float* dst, int n) {
  vec::f16_to_f32(reinterpret_cast<const uint16_t*>(src), dst, n);
}

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
  std::vector<float> s;    // scores, then probabilities [rows, N]
  std::vector<float> acc;  // unnormalised output [rows, D]
  std::vector<OnlineSoftmax> state;
  std::vector<KeyRange> ranges;
};

template <typename T>
class AttentionTile {
 public:
  AttentionTile(const AttnParams& p, int m_block) : p_(p), m_block_(m_block) {
    group_ = p.num_heads_q / p.num_heads_k;
    const int D = p.head_dim;
    const size_t max_rows = size_t(group_) * m_block;
    ws_.q.resize(max_rows * D);
    ws_.k.resize(size_t(kBlockN) * D);
    ws_.v.resize(size_t(kBlockN) * D);
    ws_.s.resize(max_rows * kBlockN);
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
    for (int r = 0; r < rows_; ++r) {
      float* dst = &ws_.q[size_t(r) * D];
      to_float(q + q_offset(p_, s, b, i0 + r / group_, hk * group_ + r % group_), dst, D);
      vec::scale(dst, p_.softmax_scale, D);
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
      at::Tensor scores = view(sc, nr, n);
      at::mm_out(scores, view(q, nr, D, D), view(k_tile_, n, D, k_ld_).t());
      softmax_tile(n0, n, r0, nr);
      view(acc, nr, D).addmm_(scores, view(v_tile_, n, D, v_ld_));
    } else {
      vec::qk_rows(q, nr, k_tile_, k_ld_, n, D, sc, n);
      softmax_tile(n0, n, r0, nr);
      vec::pv_rows(sc, n, nr, n, v_tile_, v_ld_, D, acc);
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
  // fp32 dense keys are used where they lie; anything else (paged, fp16, bf16) is
  // converted into the workspace.
  void stage_kv(const SeqBounds& s, int b, int hk, int n0, int n) {
    const int D = p_.head_dim;
    const T* k = static_cast<const T*>(p_.k);
    const T* v = static_cast<const T*>(p_.v);
    if constexpr (std::is_same_v<T, float>) {
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
    const int64_t row_bytes = int64_t(D) * sizeof(T);
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

  // Masks, caps and exponentiates the tile's scores in place (row stride n),
  // updating each row's running max and sum and rescaling its accumulator.
  void softmax_tile(int n0, int n, int r0, int nr) {
    const int D = p_.head_dim;
    for (int r = r0; r < r0 + nr; ++r) {
      float* sr = &ws_.s[size_t(r - r0) * n];
      const KeyRange kr = ws_.ranges[r / group_];
      const int lo = std::clamp(kr.lo - n0, 0, n);
      const int hi = std::clamp(kr.hi - n0, lo, n);
      softmax_row(sr, n, lo, hi, p_.softcap, ws_.state[r], &ws_.acc[size_t(r) * D], D);
    }
  }

  void write_out(const SeqBounds& s, int b, int hk, int i0) {
    const int D = p_.head_dim;
    T* o = static_cast<T*>(p_.o);
    for (int r = 0; r < rows_; ++r) {
      const int i = i0 + r / group_;
      const int h = hk * group_ + r % group_;
      const float inv = ws_.state[r].inv_sum();
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
  int group_;
  int m_block_;
  int m_ = 0;
  int rows_ = 0;
};

// Paged decode of one whole batch row: every KV head at once, so that each page run
// (tokens x Hk x D, contiguous in a contiguous cache) streams into the workspace in
// one sequential copy the hardware prefetchers follow, instead of one head's rows a
// token apart. Used when batch rows alone keep every core busy.
template <typename T>
class DecodeRow {
 public:
  explicit DecodeRow(const AttnParams& p) : p_(p) {
    group_ = p.num_heads_q / p.num_heads_k;
    const size_t hq = p.num_heads_q, D = p.head_dim, hkd = size_t(p.num_heads_k) * D;
    q_.resize(hq * D);
    // One page run at a time is converted (non-fp32 caches).
    k_.resize(std::min<size_t>(kKeys, p.page_size) * hkd);
    v_.resize(std::min<size_t>(kKeys, p.page_size) * hkd);
    s_.resize(hq * kKeys);
    acc_.resize(hq * D);
    state_.resize(hq);
  }

  // A contiguous [page_size, Hk, D] block per page: the precondition for this path.
  static bool applies(const AttnParams& p) {
    const int64_t hkd = int64_t(p.num_heads_k) * p.head_dim;
    return p.block_table && !p.cu_seqlens_q && p.seqlen_q == 1 &&
           p.k_head_stride == p.head_dim && p.v_head_stride == p.head_dim &&
           p.k_row_stride == hkd && p.v_row_stride == hkd;
  }

  void run(int b) {
    const SeqBounds s = seq_bounds(p_, b);
    const int D = p_.head_dim, Hq = p_.num_heads_q, Hk = p_.num_heads_k;
    const int64_t hkd = int64_t(Hk) * D;
    const KeyRange kr =
        visible_keys(0, s.q_len, s.k_len, p_.causal, p_.window_left, p_.window_right);
    const T* q = static_cast<const T*>(p_.q);
    for (int h = 0; h < Hq; ++h) {
      to_float(q + q_offset(p_, s, b, 0, h), &q_[size_t(h) * D], D);
      vec::scale(&q_[size_t(h) * D], p_.softmax_scale, D);
      state_[h].init();
    }
    std::fill(acc_.begin(), acc_.end(), 0.f);
    for (int n0 = kr.lo; n0 < kr.hi; n0 += kKeys) {
      const int n = std::min(kKeys, kr.hi - n0);
      // Scores of every head against each page run of the tile, read in place
      // (fp32) or converted once per run; the next run is prefetched meanwhile.
      for_each_run(s, b, n0, n, p_.k, p_.k_batch_stride, k_.data(),
                   [&](const float* rows, int j, int len) {
                     for (int hk = 0; hk < Hk; ++hk)
                       vec::qk_rows(&q_[size_t(hk) * group_ * D], group_, rows + hk * D, hkd,
                                    len, D, &s_[size_t(hk) * group_ * n + j], n);
                   });
      for (int h = 0; h < Hq; ++h) {
        softmax_row(&s_[size_t(h) * n], n, 0, n, p_.softcap, state_[h], &acc_[size_t(h) * D], D);
      }
      for_each_run(s, b, n0, n, p_.v, p_.v_batch_stride, v_.data(),
                   [&](const float* rows, int j, int len) {
                     for (int hk = 0; hk < Hk; ++hk)
                       vec::pv_rows(&s_[size_t(hk) * group_ * n + j], n, group_, len,
                                    rows + hk * D, hkd, D, &acc_[size_t(hk) * group_ * D]);
                   });
    }
    T* o = static_cast<T*>(p_.o);
    for (int h = 0; h < Hq; ++h) {
      const float inv = state_[h].inv_sum();
      T* dst = o + o_offset(p_, s, b, 0, h);
      for (int d = 0; d < D; ++d) dst[d] = T(acc_[size_t(h) * D + d] * inv);
      if (p_.lse) p_.lse[lse_offset(p_, s, b, 0, h)] = state_[h].lse();
    }
  }

 private:
  static constexpr int kKeys = 64;  // keys per tile: K and V of all heads stay in L2

  // Calls fn(rows, j, len) for each page run of tokens [n0, n0 + n): rows is fp32
  // [len, Hk, D], the cache itself for fp32, else converted into scratch.
  template <typename Fn>
  void for_each_run(const SeqBounds& s, int b, int n0, int n, const void* base,
                    int64_t page_stride, float* scratch, Fn&& fn) {
    const T* src = static_cast<const T*>(base);
    const int64_t hkd = int64_t(p_.num_heads_k) * p_.head_dim;
    auto run_at = [&](int token) { return src + kv_token_offset(p_, s, b, token, page_stride, hkd); };
    auto run_len = [&](int token, int left) {
      return std::min(left, p_.page_size - token % p_.page_size);
    };
    for (int j = 0; j < n;) {
      const int len = run_len(n0 + j, n - j);
      if (j + len < n)
        prefetch(run_at(n0 + j + len), run_len(n0 + j + len, n - j - len) * hkd * int64_t(sizeof(T)));
      const T* run = run_at(n0 + j);
      if constexpr (std::is_same_v<T, float>) {
        fn(run, j, len);
      } else {
        to_float(run, scratch, int(len * hkd));
        fn(scratch, j, len);
      }
      j += len;
    }
  }

  const AttnParams& p_;
  int group_;
  std::vector<float> q_, k_, v_, s_, acc_;
  std::vector<OnlineSoftmax> state_;
};

template <typename T>
void attention_fwd_impl(const AttnParams& p) {
  if (DecodeRow<T>::applies(p) && p.batch >= 2 * at::get_num_threads()) {
    at::parallel_for(0, p.batch, 1, [&](int64_t begin, int64_t end) {
      DecodeRow<T> row(p);
      for (int64_t b = begin; b < end; ++b) row.run(int(b));
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
    AttentionTile<T> tile(p, m_block);
    for (int64_t item = begin; item < end; ++item) {
      const int t = int(item % q_tiles);
      const int hk = int((item / q_tiles) % p.num_heads_k);
      const int b = int(item / (int64_t(q_tiles) * p.num_heads_k));
      tile.run(b, hk, t * m_block);
    }
  });
}

}  // namespace

void attention_fwd(const AttnParams& p, c10::ScalarType dtype) {
  FASTATTN_CPU_DISPATCH(dtype, attention_fwd_impl, p)
}

}  // namespace fastattn::cpu
