#pragma once
// merge_attention_states: out = w_a * out_a + w_b * out_b, with (w_a, w_b, lse) from
// merge_weights(lse_a, lse_b) (softmax.h: the CPU op's math, in the CPU op's order). A side
// whose weight is 0 is never read, so a non-finite out of an empty partial state (lse -inf)
// contributes nothing; both sides -inf give out 0 and lse -inf.
//
// Grid-to-work mapping: the N x D output is cut into chunks of kElems elements of one row
// (8 elements = 16 bytes when every pointer and row stride allows it, else 1). Thread i of
// the grid takes chunks i, i + gridDim.x * kMergeThreads, ... (grid-stride loop; the grid
// comes from shapes only, capped at kMaxMergeBlocks). Consecutive threads take consecutive
// chunks of a row, so loads and stores are coalesced across the warp. Each thread computes
// its row's weights itself (two fp32 loads that the warp shares through L1); the thread
// holding chunk 0 of a row writes the row's lse. The kernel is memory-bound: it moves
// 3 * N * D elements and 3 * N floats.
#include <algorithm>

#include "cuda/kernels/common.cuh"

namespace fastattn::kernels {

constexpr int kMergeThreads = 256;
constexpr int64_t kMaxMergeBlocks = 1 << 16;

template <typename T, bool kVec16>
FA_KERNEL void FA_LAUNCH_BOUNDS(kMergeThreads) merge_states_kernel(const MergeParams p) {
  constexpr int kElems = kVec16 ? 16 / int(sizeof(T)) : 1;
  const int64_t chunks_per_row = p.head_dim / kElems;
  const int64_t num_chunks = p.num_rows * chunks_per_row;
  const int64_t step = int64_t(gridDim.x) * kMergeThreads;
  for (int64_t i = int64_t(blockIdx.x) * kMergeThreads + threadIdx.x; i < num_chunks;
       i += step) {
    // 32-bit division whenever the chunk count fits (below 2^31 chunks): a 64-bit one is
    // a long instruction sequence on the GPU.
    int64_t row;
    if (num_chunks <= INT32_MAX) {
      row = int64_t(uint32_t(i) / uint32_t(chunks_per_row));
    } else {
      row = i / chunks_per_row;
    }
    const int64_t d = (i - row * chunks_per_row) * kElems;
    const MergeWeights w = merge_weights(p.lse_a[row], p.lse_b[row]);
    if (d == 0) p.lse[row] = w.lse;
    const T* a = static_cast<const T*>(p.out_a) + row * p.out_a_row_stride + d;  // [kElems]
    const T* b = static_cast<const T*>(p.out_b) + row * p.out_b_row_stride + d;  // [kElems]
    T* o = static_cast<T*>(p.out) + row * p.out_row_stride + d;                  // [kElems]
    if constexpr (kVec16) {
      dev::uint4 va{0u, 0u, 0u, 0u}, vb{0u, 0u, 0u, 0u};
      if (w.w_a != 0.f) va = *reinterpret_cast<const dev::uint4*>(a);
      if (w.w_b != 0.f) vb = *reinterpret_cast<const dev::uint4*>(b);
      const uint32_t wa[4] = {va.x, va.y, va.z, va.w};
      const uint32_t wb[4] = {vb.x, vb.y, vb.z, vb.w};
      uint32_t r[4];
      FA_UNROLL
      for (int j = 0; j < 4; ++j) {
        const dev::float2 fa = dev::unpack2<T>(wa[j]);
        const dev::float2 fb = dev::unpack2<T>(wb[j]);
        r[j] = dev::pack2<T>(merge_value(w, fa.x, fb.x), merge_value(w, fa.y, fb.y));
      }
      *reinterpret_cast<dev::uint4*>(o) = dev::uint4{r[0], r[1], r[2], r[3]};
    } else {
      const float fa = w.w_a != 0.f ? dev::to_float(*a) : 0.f;
      const float fb = w.w_b != 0.f ? dev::to_float(*b) : 0.f;
      *o = dev::from_float<T>(merge_value(w, fa, fb));
    }
  }
}

// 16-byte chunks need the three row pointers, their row strides and head_dim aligned.
template <typename T>
bool merge_vectorizable(const MergeParams& p) {
  return vec16_ok<T>({p.out_a, p.out_b, p.out},
                     {p.head_dim, p.out_a_row_stride, p.out_b_row_stride, p.out_row_stride});
}

template <typename T>
void launch_merge_states(const MergeParams& p, void* stream) {
  if (p.num_rows == 0 || p.head_dim == 0) return;
  const bool vec = merge_vectorizable<T>(p);
  const int64_t chunks = p.num_rows * (vec ? p.head_dim / (16 / int64_t(sizeof(T))) : p.head_dim);
  const int64_t blocks = std::min<int64_t>((chunks + kMergeThreads - 1) / kMergeThreads,
                                           kMaxMergeBlocks);
  const dev::LaunchConfig cfg{dev::dim3(unsigned(blocks)), dev::dim3(kMergeThreads), 0,
                              static_cast<dev::stream_t>(stream)};
  if (vec) {
    dev::launch(merge_states_kernel<T, true>, cfg, p);
  } else {
    dev::launch(merge_states_kernel<T, false>, cfg, p);
  }
}

}  // namespace fastattn::kernels
