#pragma once
// CPU implementations of every op, on the shared params structs. Inputs are
// validated by the caller (csrc/ops); these functions trust the params.
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e5m2.h>
#include <c10/util/Half.h>

#include "fastattn/params.h"

namespace fastattn::cpu {

// dtype: q and out; kv_dtype: k and v, the same or (paged) an fp8 cache.
void attention_fwd(const AttnParams& p, c10::ScalarType dtype, c10::ScalarType kv_dtype);
// dtype: k and v; cache_dtype: the same, or fp8 (quantized with p.k_scale / p.v_scale).
void append_kv(const AppendKVParams& p, c10::ScalarType dtype, c10::ScalarType cache_dtype);
void merge_attention_states(const MergeParams& p, c10::ScalarType dtype);

// fn(T{}) for the CPU dtypes (float32, float16, bfloat16); anything else is a TypeError.
template <typename Fn>
void dispatch_float(c10::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case c10::ScalarType::Float: return fn(float());
    case c10::ScalarType::Half: return fn(c10::Half());
    case c10::ScalarType::BFloat16: return fn(c10::BFloat16());
    default: TORCH_CHECK_TYPE(false, "fastattn (CPU): unsupported dtype ", dtype);
  }
}

// fn(T{}, KV{}) for the dtype pairs of the paged ops: KV = T (q's dtype), or an fp8 cache
// type for any T; anything else is a TypeError.
template <typename Fn>
void dispatch_q_kv(c10::ScalarType dtype, c10::ScalarType kv_dtype, Fn&& fn) {
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    switch (kv_dtype) {
      case c10::ScalarType::Float8_e4m3fn: return fn(t, c10::Float8_e4m3fn());
      case c10::ScalarType::Float8_e5m2: return fn(t, c10::Float8_e5m2());
      default:
        TORCH_CHECK_TYPE(kv_dtype == c10::CppTypeToScalarType<T>::value, "fastattn (CPU): ",
                         kv_dtype, " keys/values with ", dtype, " queries");
        return fn(t, t);
    }
  });
}

}  // namespace fastattn::cpu
