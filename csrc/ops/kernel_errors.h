#pragma once
// Messages for what the CUDA kernels report asynchronously, shared by the op glue
// (csrc/ops/kernel_ops.h: CUDA and the emulation) and fastattn._C's check_errors path
// (csrc/bindings.cpp), which the CPU-only build has too.
#include <cstdint>
#include <string>

#include "fastattn/params.h"

namespace fastattn::ops {

// The ValueError text for the ErrorBits (params.h) a kernel flagged. `when` says which
// launches it covers ("before this call,"), or is empty for the call that found them.
inline std::string kernel_error_message(int32_t bits, const char* when) {
  std::string what;
  auto add = [&](int32_t bit, const char* text) {
    if (bits & bit) what += what.empty() ? text : std::string("; ") + text;
  };
  add(kErrBlockTable,
      "block_table: an entry used by a sequence is outside [0, num_pages)");
  add(kErrSeqLens,
      "seq_lens/kv_lens: a length is negative, beyond the keys available "
      "(max_pages * page_size, or Sk), or smaller than the sequence's query tokens");
  add(kErrCuSeqlensQ,
      "cu_seqlens_q: not non-decreasing from 0 to the number of query tokens, or a "
      "sequence longer than max_seqlen_q");
  add(kErrCuSeqlensK,
      "cu_seqlens_k: not non-decreasing from 0 to the number of key tokens, or a "
      "sequence longer than max_seqlen_k");
  add(kErrSlotMapping, "slot_mapping: an entry is >= num_pages * page_size");
  add(kErrKScale, "k_scale: scales must be positive and finite; a value is not");
  add(kErrVScale, "v_scale: scales must be positive and finite; a value is not");
  const int32_t known = kErrBlockTable | kErrSeqLens | kErrCuSeqlensQ | kErrCuSeqlensK |
                        kErrSlotMapping | kErrKScale | kErrVScale;
  if (bits & ~known) add(bits & ~known, "unknown error bits (a fastattn bug: please report)");
  std::string msg = "fastattn: ";
  if (*when) msg += std::string(when) + " ";
  return msg + "a fastattn kernel found invalid index or scale values (it skipped the "
               "indices; its outputs are not valid): " + what;
}

// Why a GPU of compute capability major.minor cannot run fastattn's CUDA kernels; empty
// when it can (sm_80 and newer: Ampere, Ada, Hopper, Blackwell through compute_80 PTX).
inline std::string unsupported_gpu_message(int device, const std::string& name, int major,
                                           int minor) {
  if (major >= 8) return "";
  return "fastattn: cuda:" + std::to_string(device) + " (" + name + ") has compute capability " +
         std::to_string(major) + "." + std::to_string(minor) + " (sm_" + std::to_string(major) +
         std::to_string(minor) + "); fastattn's CUDA kernels need sm_80 or newer (A100, A10, "
         "L4, RTX 30xx/40xx/50xx, H100, H200, B200). Run on such a GPU, or on CPU tensors.";
}

}  // namespace fastattn::ops
