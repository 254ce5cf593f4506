#pragma once
// append_kv: copy new keys and values into their cache slots, quantizing them for an fp8
// cache.
//
// Grid-to-work mapping: one warp per token, kWarps tokens per block, grid =
// ceil(T / kWarps). The lanes of a warp stride over the token's Hk x D elements of k
// and of v in chunks of kVec elements (16 bytes of k/v when every pointer and stride allows
// it, else one element). slot < 0: padding, skipped. slot >= num_slots: reported in
// error_flag (kErrSlotMapping) and skipped; the cache is never written out of bounds.
//
// fp8 caches (C = fp8_e4m3_t / fp8_e5m2_t): code = saturate(round_nearest_even(x / scale)),
// the division in fp32 (IEEE: nvcc's default -prec-div=true), as the CPU op. The scale of
// head h is read on the device; the first block checks every head's (kErrKScale/VScale).
#include <stdexcept>

#include "cuda/kernels/common.cuh"

namespace fastattn::kernels {

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Vec {
  T v[kVec];
};

// kVec elements of src (type T) stored into dst (type C): a copy, or fp8 quantization.
template <typename T, typename C, int kVec>
FA_DEVICE void store_chunk(C* dst, const T* src, float scale) {
  if constexpr (dev::is_fp8_v<C>) {
    const Vec<T, kVec> x = *reinterpret_cast<const Vec<T, kVec>*>(src);
    Vec<C, kVec> q;
    FA_UNROLL
    for (int i = 0; i < kVec; i += 2) {
      const float lo = dev::to_float(x.v[i]) / scale;
      const float hi = i + 1 < kVec ? dev::to_float(x.v[i + 1]) / scale : 0.f;
      const uint16_t codes = dev::float2_to_fp8x2<C>(lo, hi);
      q.v[i].bits = uint8_t(codes);
      if (i + 1 < kVec) q.v[i + 1].bits = uint8_t(codes >> 8);
    }
    *reinterpret_cast<Vec<C, kVec>*>(dst) = q;
  } else {
    static_assert(std::is_same_v<T, C>, "a 16-bit cache holds k's own dtype");
    *reinterpret_cast<Vec<T, kVec>*>(dst) = *reinterpret_cast<const Vec<T, kVec>*>(src);
  }
}

template <typename T, typename C, int kVec, int kWarps>
FA_KERNEL void FA_LAUNCH_BOUNDS(kWarps * 32) append_kv_kernel(const AppendKVParams p) {
  if constexpr (dev::is_fp8_v<C>) {
    if (blockIdx.x == 0) {
      for (int h = int(dev::thread_rank()); h < p.num_heads_k; h += kWarps * 32) {
        checked_kv_scale(p.k_scale, h, p.error_flag, kErrKScale);
        checked_kv_scale(p.v_scale, h, p.error_flag, kErrVScale);
      }
    }
  }
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
  const T* k = static_cast<const T*>(p.k) + t * p.k_token_stride;
  const T* v = static_cast<const T*>(p.v) + t * p.v_token_stride;
  C* kc = static_cast<C*>(p.k_cache) + page * p.kc_page_stride + off * p.kc_row_stride;
  C* vc = static_cast<C*>(p.v_cache) + page * p.vc_page_stride + off * p.vc_row_stride;
  for (int c = dev::lane_id(); c < chunks; c += 32) {
    const int h = c / chunks_per_head;
    const int d = (c % chunks_per_head) * kVec;
    float ks = 1.f, vs = 1.f;
    if constexpr (dev::is_fp8_v<C>) {
      ks = kv_scale(p.k_scale, h);
      vs = kv_scale(p.v_scale, h);
    }
    store_chunk<T, C, kVec>(kc + h * p.kc_head_stride + d, k + h * p.k_head_stride + d, ks);
    store_chunk<T, C, kVec>(vc + h * p.vc_head_stride + d, v + h * p.v_head_stride + d, vs);
  }
}

// 16-byte reads of k/v (and kVec-element writes of the cache) need every base pointer and
// every stride aligned to them.
template <typename T, typename C>
bool append_kv_vectorizable(const AppendKVParams& p) {
  constexpr int kCacheBytes = 16 / sizeof(T) * sizeof(C);  // 16, or 8 for fp8
  return vec16_ok<T>({p.k, p.v}, {p.k_token_stride, p.k_head_stride, p.v_token_stride,
                                  p.v_head_stride, p.head_dim}) &&
         vec_ok<C, kCacheBytes>({p.k_cache, p.v_cache},
                                {p.kc_page_stride, p.kc_row_stride, p.kc_head_stride,
                                 p.vc_page_stride, p.vc_row_stride, p.vc_head_stride});
}

template <typename T, typename C>
void launch_append_kv(const AppendKVParams& p, void* stream) {
  constexpr int kWarps = 4;
  if (p.num_tokens == 0) return;
  const dev::LaunchConfig cfg{dev::dim3(unsigned((p.num_tokens + kWarps - 1) / kWarps)),
                              dev::dim3(kWarps * 32), 0,
                              static_cast<dev::stream_t>(stream)};
  if (append_kv_vectorizable<T, C>(p)) {
    dev::launch(append_kv_kernel<T, C, 16 / sizeof(T), kWarps>, cfg, p);
  } else {
    dev::launch(append_kv_kernel<T, C, 1, kWarps>, cfg, p);
  }
}

}  // namespace fastattn::kernels
