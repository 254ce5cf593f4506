#pragma once
// Entry points of the CUDA kernels. The same kernel sources (csrc/cuda/kernels/*.cuh,
// written on fastattn/device) are compiled twice: by nvcc into fastattn._C, and by the
// host compiler with FASTATTN_EMULATION into the test-only fastattn._emu_ops, where they
// run on the CPU emulation. Each build defines every function below once; this header
// has no device or torch types so that the op glue (csrc/ops/kernel_ops.cpp) is shared.
//
// All functions launch on `stream` (a cudaStream_t; ignored, and synchronous, under
// emulation), never synchronise and never allocate. Params are validated on the host for
// shapes; index *values* are checked by the kernels (ErrorBits in params.h).
#include <cstdint>

#include "fastattn/params.h"

namespace fastattn::kernels {

// q, k, v, out: fp16 or bf16. A paged KV cache: the dtype of q (of k for append_kv), or
// fp8 with the scales of p.k_scale / p.v_scale (params.h).
enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFp8E4M3 = 2, kFp8E5M2 = 3 };

// Dense, cross, varlen and paged-extend forward (FlashAttention-2 style, tensor cores).
// Reads K/V through the block table when p.block_table is set. Writes p.o and p.lse.
// kv_dtype is dtype except for an fp8 paged cache (which needs head_dim % 16 == 0).
void attention_fwd(const AttnParams& p, DType dtype, DType kv_dtype, void* stream);

// Paged decode (p.seqlen_q == 1, no cu_seqlens_q), GQA-packed, split-KV.
// num_splits comes from shapes only (CUDA-graph safe); workspace holds
// decode_workspace_floats(p, num_splits) floats (none needed when num_splits == 1).
int decode_num_splits(const AttnParams& p, DType kv_dtype, int num_sms);
int64_t decode_workspace_floats(const AttnParams& p, int num_splits);
void paged_decode(const AttnParams& p, DType dtype, DType kv_dtype, float* workspace,
                  int num_splits, void* stream);

// dtype: of k and v; cache_dtype: dtype, or fp8 (append_kv quantizes).
void append_kv(const AppendKVParams& p, DType dtype, DType cache_dtype, void* stream);
void merge_attention_states(const MergeParams& p, DType dtype, void* stream);

}  // namespace fastattn::kernels
