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

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

// Dense, cross, varlen and paged-extend forward (FlashAttention-2 style, tensor cores).
// Reads K/V through the block table when p.block_table is set. Writes p.o and p.lse.
void attention_fwd(const AttnParams& p, DType dtype, void* stream);

// Paged decode (p.seqlen_q == 1, no cu_seqlens_q), GQA-packed, split-KV.
// num_splits comes from shapes only (CUDA-graph safe); workspace holds
// decode_workspace_floats(p, num_splits) floats (none needed when num_splits == 1).
int decode_num_splits(const AttnParams& p, int num_sms);
int64_t decode_workspace_floats(const AttnParams& p, int num_splits);
void paged_decode(const AttnParams& p, DType dtype, float* workspace, int num_splits,
                  void* stream);

void append_kv(const AppendKVParams& p, DType dtype, void* stream);
void merge_attention_states(const MergeParams& p, DType dtype, void* stream);

}  // namespace fastattn::kernels
