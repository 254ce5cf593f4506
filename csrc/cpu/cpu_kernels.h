#pragma once
// CPU implementations of every op, on the shared params structs. Inputs are
// validated by the caller (csrc/ops); these functions trust the params.
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "fastattn/params.h"

namespace fastattn::cpu {

void attention_fwd(const AttnParams& p, c10::ScalarType dtype);
void append_kv(const AppendKVParams& p, c10::ScalarType dtype);
void merge_attention_states(const MergeParams& p, c10::ScalarType dtype);

}  // namespace fastattn::cpu

// Instantiates fn<T>(params) for the CPU dtypes; anything else is a TypeError.
#define FASTATTN_CPU_DISPATCH(dtype, fn, params)                                   \
  switch (dtype) {                                                                 \
    case c10::ScalarType::Float: return fn<float>(params);                         \
    case c10::ScalarType::Half: return fn<c10::Half>(params);                      \
    case c10::ScalarType::BFloat16: return fn<c10::BFloat16>(params);              \
    default: TORCH_CHECK_TYPE(false, "fastattn (CPU): unsupported dtype ", dtype); \
  }
