#pragma once
// Helpers shared by the kernel sources: the element types behind kernels::DType, and the
// error report for index values found out of range on the device.
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
