#pragma once
// append_kv: copy new keys and values into their cache slots.
//
// Grid-to-work mapping: one warp per token, kWarps tokens per block, grid =
// ceil(T / kWarps). The lanes of a warp stride over the token's Hk x D elements of k
// and of v in chunks of kVec elements (16 bytes when every pointer and stride allows
// it, else one element). slot < 0: padding, skipped. slot >= num_slots: reported in
// error_flag (kErrSlotMapping) and skipped; the cache is never written out of bounds.
#include <stdexcept>

#include "cuda/kernels/common.cuh"

namespace fastattn::kernels {

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Vec {
  T v[kVec];
};

template <typename T, int kVec, int kWarps>
FA_KERNEL void FA_LAUNCH_BOUNDS(kWarps * 32) append_kv_kernel(const AppendKVParams p) {
  const int64_t t = int64_t(blockIdx.x) * kWarps + dev::warp_id();
  if (t >= p.num_tokens) return;
  const int64_t slot = p.slot_mapping[t];
  if (slot < 0) return;
  if (slot >= p.num_slots) {
    if (dev::lane_id() == 0) report_error(p.error_flag, kErrSlotMapping);
    return;
  }
  const int64_t page = slot_page(slot, p.page_size);
  const int64_t off = slot_in_page(slot, p.page_size);
  const int chunks_per_head = p.head_dim / kVec;
  const int chunks = p.num_heads_k * chunks_per_head;
  using V = Vec<T, kVec>;
  const T* k = static_cast<const T*>(p.k) + t * p.k_token_stride;
  const T* v = static_cast<const T*>(p.v) + t * p.v_token_stride;
  T* kc = static_cast<T*>(p.k_cache) + page * p.kc_page_stride + off * p.kc_row_stride;
  T* vc = static_cast<T*>(p.v_cache) + page * p.vc_page_stride + off * p.vc_row_stride;
  for (int c = dev::lane_id(); c < chunks; c += 32) {
    const int h = c / chunks_per_head;
    const int d = (c % chunks_per_head) * kVec;
    *reinterpret_cast<V*>(kc + h * p.kc_head_stride + d) =
        *reinterpret_cast<const V*>(k + h * p.k_head_stride + d);
    *reinterpret_cast<V*>(vc + h * p.vc_head_stride + d) =
        *reinterpret_cast<const V*>(v + h * p.v_head_stride + d);
  }
}

// 16-byte chunks need every base pointer and every stride aligned to 16 bytes.
template <typename T>
bool append_kv_vectorizable(const AppendKVParams& p) {
  return vec16_ok<T>({p.k_cache, p.v_cache, p.k, p.v},
                     {p.kc_page_stride, p.kc_row_stride, p.kc_head_stride, p.vc_page_stride,
                      p.vc_row_stride, p.vc_head_stride, p.k_token_stride, p.k_head_stride,
                      p.v_token_stride, p.v_head_stride, p.head_dim});
}

template <typename T>
void launch_append_kv(const AppendKVParams& p, void* stream) {
  constexpr int kWarps = 4;
  if (p.num_tokens == 0) return;
  const dev::LaunchConfig cfg{dev::dim3(unsigned((p.num_tokens + kWarps - 1) / kWarps)),
                              dev::dim3(kWarps * 32), 0,
                              static_cast<dev::stream_t>(stream)};
  if (append_kv_vectorizable<T>(p)) {
    dev::launch(append_kv_kernel<T, 16 / sizeof(T), kWarps>, cfg, p);
  } else {
    dev::launch(append_kv_kernel<T, 1, kWarps>, cfg, p);
  }
}

}  // namespace fastattn::kernels
