// CPU attention forward for dense, varlen and paged (decode/extend) inputs.
//
// Algorithm: FlashAttention-style tiling. A work item is one (batch row, KV
// head, tile of kBlockM query positions); it owns the rows of every query head
// in that KV head's group (GQA), so each K/V tile is converted to fp32 once and
// reused by the whole group. Key tiles of kBlockN stream through an online
// softmax; output and lse are written once. Only keys inside the union of the
// rows' visible ranges are read, so tiles above the causal diagonal or outside a
// window are skipped, and paged keys are read in place through the block table
// (never past seq_len: unused slots may hold anything, NaN included).
//
// Work split: at::parallel_for over items ordered (batch, kv head, q tile).
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "fastattn/mask.h"
#include "fastattn/softmax.h"

namespace fastattn::cpu {
namespace {

constexpr int kBlockM = 32;  // query positions per item
constexpr int kBlockN = 64;  // keys per tile

template <typename T>
void attention_fwd_impl(const AttnParams& p) {
  const int D = p.head_dim;
  const int group = p.num_heads_q / p.num_heads_k;
  const int q_tiles = std::max(1, (p.seqlen_q + kBlockM - 1) / kBlockM);
  const int64_t num_items = int64_t(p.batch) * p.num_heads_k * q_tiles;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* o = static_cast<T*>(p.o);

  at::parallel_for(0, num_items, 1, [&](int64_t begin, int64_t end) {
    const int max_rows = group * kBlockM;
    std::vector<float> q_f(size_t(max_rows) * D);      // scaled queries, [rows, D]
    std::vector<float> k_t(size_t(D) * kBlockN);       // key tile, transposed [D, N]
    std::vector<float> v_f(size_t(kBlockN) * D);       // value tile [N, D]
    std::vector<float> acc_o(size_t(max_rows) * D);    // unnormalised output [rows, D]
    std::vector<float> scores(kBlockN);
    std::vector<OnlineSoftmax> state(max_rows);
    std::vector<KeyRange> ranges(kBlockM);

    for (int64_t item = begin; item < end; ++item) {
      const int tile = int(item % q_tiles);
      const int hk = int((item / q_tiles) % p.num_heads_k);
      const int b = int(item / (int64_t(q_tiles) * p.num_heads_k));
      const SeqBounds s = seq_bounds(p, b);
      const int i0 = tile * kBlockM;
      if (i0 >= s.q_len) continue;
      const int m = std::min(kBlockM, s.q_len - i0);
      const int rows = group * m;  // row r: head hk*group + r/m, query i0 + r%m

      for (int r = 0; r < m; ++r)
        ranges[r] = visible_keys(i0 + r, s.q_len, s.k_len, p.causal, p.window_left,
                                 p.window_right);
      const KeyRange tile_keys = visible_keys_of_rows(i0, i0 + m, s.q_len, s.k_len, p.causal,
                                                      p.window_left, p.window_right);

      for (int r = 0; r < rows; ++r) {
        const T* src = q + q_offset(p, s, b, i0 + r % m, hk * group + r / m);
        float* dst = &q_f[size_t(r) * D];
        for (int d = 0; d < D; ++d) dst[d] = float(src[d]) * p.softmax_scale;
        state[r].init();
      }
      std::fill(acc_o.begin(), acc_o.begin() + size_t(rows) * D, 0.f);

      for (int n0 = tile_keys.lo; n0 < tile_keys.hi; n0 += kBlockN) {
        const int n = std::min(kBlockN, tile_keys.hi - n0);
        for (int jj = 0; jj < n; ++jj) {
          const T* ks = k + k_offset(p, s, b, n0 + jj, hk);
          const T* vs = v + v_offset(p, s, b, n0 + jj, hk);
          float* vd = &v_f[size_t(jj) * D];
          for (int d = 0; d < D; ++d) {
            k_t[size_t(d) * kBlockN + jj] = float(ks[d]);
            vd[d] = float(vs[d]);
          }
        }
        for (int r = 0; r < rows; ++r) {
          const KeyRange kr = ranges[r % m];
          const int lo = std::max(kr.lo - n0, 0);
          const int hi = std::min(kr.hi - n0, n);
          if (hi <= lo) continue;  // this row sees nothing in the tile
          const float* qr = &q_f[size_t(r) * D];
          // d outer, keys inner: contiguous, vectorisable without reassociation.
          std::fill(scores.begin(), scores.begin() + n, 0.f);
          for (int d = 0; d < D; ++d) {
            const float qd = qr[d];
            const float* kd = &k_t[size_t(d) * kBlockN];
            for (int jj = 0; jj < n; ++jj) scores[jj] += qd * kd[jj];
          }
          float tile_max = kNegInf;
          for (int jj = lo; jj < hi; ++jj) {
            scores[jj] = apply_softcap(scores[jj], p.softcap);
            tile_max = std::max(tile_max, scores[jj]);
          }
          OnlineSoftmax& st = state[r];
          const float alpha = st.rescale(tile_max);
          float* acc = &acc_o[size_t(r) * D];
          if (alpha != 1.f)
            for (int d = 0; d < D; ++d) acc[d] *= alpha;
          for (int jj = lo; jj < hi; ++jj) {
            const float pr = st.prob(scores[jj]);
            st.add(pr);
            const float* vr = &v_f[size_t(jj) * D];
            for (int d = 0; d < D; ++d) acc[d] += pr * vr[d];
          }
        }
      }

      for (int r = 0; r < rows; ++r) {
        const int i = i0 + r % m;
        const int h = hk * group + r / m;
        const float inv = state[r].inv_sum();
        T* dst = o + o_offset(p, s, b, i, h);
        const float* acc = &acc_o[size_t(r) * D];
        for (int d = 0; d < D; ++d) dst[d] = T(acc[d] * inv);
        if (p.lse) p.lse[lse_offset(p, s, b, i, h)] = state[r].lse();
      }
    }
  });
}

}  // namespace

void attention_fwd(const AttnParams& p, c10::ScalarType dtype) {
  FASTATTN_CPU_DISPATCH(dtype, attention_fwd_impl, p)
}

}  // namespace fastattn::cpu
