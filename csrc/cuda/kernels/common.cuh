#pragma once
// Helpers shared by the kernel sources: the element types behind kernels::DType, and the
// error report for index values found out of range on the device.
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

// The compiled head dim (64, 128 or 256) that runs head_dim: every multiple of 8 up to
// 256, zero-padded to the next compiled size; 0 when none does.
inline int compiled_head_dim(int head_dim) {
  if (head_dim <= 0 || head_dim % 8 != 0 || head_dim > 256) return 0;
  return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256;
}

// Whether 16-byte accesses of T are allowed: every base pointer 16-byte aligned
// and every stride (in elements) a multiple of 16 / sizeof(T).
template <typename T>
bool vec16_ok(std::initializer_list<const void*> ptrs, std::initializer_list<int64_t> strides) {
  constexpr int64_t kVec = 16 / sizeof(T);
  for (const void* ptr : ptrs)
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  for (int64_t s : strides)
    if (s % kVec != 0) return false;
  return true;
}

// Calls fn(T{}) with the device element type of dtype.
template <class Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat16: return fn(dev::half_t{});
    case DType::kBFloat16: return fn(dev::bf16_t{});
  }
  throw std::invalid_argument("fastattn: unsupported dtype for the CUDA kernels");
}

}  // namespace fastattn::kernels
