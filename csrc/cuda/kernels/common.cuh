#pragma once
// Helpers shared by the kernel sources: the element types behind kernels::DType, and the
// error report for index and scale values found out of range on the device.
#include <cstdint>
#include <initializer_list>
#include <stdexcept>

#include "cuda/kernels.h"
#include "fastattn/device/device.h"
#include "fastattn/mask.h"
#include "fastattn/softmax.h"

namespace fastattn::kernels {

namespace dev = ::fastattn::device;

// Records an out-of-range index value (ErrorBits); the caller then skips the access.
FA_DEVICE void report_error(int32_t* flag, int32_t bits) {
  if (flag) dev::atomic_or(flag, bits);
}

// Block-table entries [first, end) of batch row b are checked without being read
// through: the kernels never load the pages a sequence keeps but no query sees (below a
// sliding window, or all of them for a sequence with no query tokens), yet an
// out-of-range entry there is as invalid as on the CPU, which checks every page below
// seq_len. Both paged kernels call this, so one rule holds on every device. Entry
// first + k * step is this thread's share.
FA_DEVICE void check_unread_pages(const AttnParams& p, int b, int first, int end, int step) {
  const int32_t* row = p.block_table + int64_t(b) * p.block_table_stride;
  bool bad = false;
  for (int pg = first; pg < end; pg += step) bad |= row[pg] < 0 || row[pg] >= p.num_pages;
  if (bad) report_error(p.error_flag, kErrBlockTable);
}

// The fp8 scale of KV head h (mask.h kv_scale). A scale tensor's values cannot be checked
// on the host without a sync, so the kernels check the ones they use: a tensor value that is
// not positive and finite sets `bit` (kErrKScale / kErrVScale), the rule the CPU op applies
// on the host (the Python float is checked there on every device). Returns the scale.
FA_DEVICE float checked_kv_scale(const KVScale& s, int h, int32_t* flag, int32_t bit) {
  if (s.tensor) {
    const float t = s.tensor[int64_t(h) * s.stride];
    if (!(t > 0.f && t < INFINITY)) report_error(flag, bit);  // NaN fails `t > 0`
  }
  return kv_scale(s, h);
}

// The compiled head dim (64, 128 or 256) that runs head_dim: every multiple of 8 up to
// 256, zero-padded to the next compiled size; 0 when none does.
inline int compiled_head_dim(int head_dim) {
  if (head_dim <= 0 || head_dim % 8 != 0 || head_dim > 256) return 0;
  return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256;
}

// Whether kBytes-wide accesses of T are allowed: every base pointer kBytes-aligned and
// every stride (in elements) a multiple of kBytes / sizeof(T).
template <typename T, int kBytes = 16>
bool vec_ok(std::initializer_list<const void*> ptrs, std::initializer_list<int64_t> strides) {
  constexpr int64_t kVec = kBytes / sizeof(T);
  static_assert(kVec >= 1, "accesses of at least one element");
  for (const void* ptr : ptrs)
    if (reinterpret_cast<uintptr_t>(ptr) % kBytes != 0) return false;
  for (int64_t s : strides)
    if (s % kVec != 0) return false;
  return true;
}

template <typename T>
bool vec16_ok(std::initializer_list<const void*> ptrs, std::initializer_list<int64_t> strides) {
  return vec_ok<T, 16>(ptrs, strides);
}

// Calls fn(T{}) with the device element type of dtype (fp16 or bf16).
template <class Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat16: return fn(dev::half_t{});
    case DType::kBFloat16: return fn(dev::bf16_t{});
    default: break;
  }
  throw std::invalid_argument("fastattn: unsupported dtype for the CUDA kernels");
}

constexpr bool is_fp8(DType d) { return d == DType::kFp8E4M3 || d == DType::kFp8E5M2; }

// Calls fn(T{}, C{}) with the element type T of dtype and the cache element type C of
// cache_dtype: T itself, or fp8_e4m3_t / fp8_e5m2_t.
template <class Fn>
void dispatch_cache_dtype(DType dtype, DType cache_dtype, Fn&& fn) {
  dispatch_dtype(dtype, [&](auto t) {
    if (cache_dtype == dtype) return fn(t, t);
    switch (cache_dtype) {
      case DType::kFp8E4M3: return fn(t, dev::fp8_e4m3_t{});
      case DType::kFp8E5M2: return fn(t, dev::fp8_e5m2_t{});
      default: break;
    }
    throw std::invalid_argument("fastattn: a KV cache holds the dtype of q (or of k) or fp8");
  });
}

}  // namespace fastattn::kernels
