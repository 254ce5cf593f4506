// The ops on the CUDA kernels (csrc/cuda/kernels.h). Included by exactly two
// translation units, each defining its mode first:
//  - csrc/ops/cuda_ops.cpp (FASTATTN_KERNEL_OPS_CUDA), into fastattn._C: namespace
//    fastattn, CUDA dispatch key; kernels run on the current stream.
//  - csrc/emu/ops_emu.cpp (FASTATTN_KERNEL_OPS_EMU), into the test-only
//    fastattn._emu_ops: namespace fastattn_emu, CPU dispatch key; the same kernel
//    sources run on the CPU emulation.
//
// Index values (block tables, lengths, cu_seqlens, slots) are checked by the kernels,
// which report out-of-range values in an error flag and never read through them:
// checking them here would need a device-to-host copy, a sync that breaks CUDA graphs.
// CUDA: the flag is pinned host memory mapped into the device. Every op reads it, without
// a sync, before it launches, and raises ValueError for errors of earlier launches on
// that device; fastattn.check_errors() synchronises and raises. So an invalid index
// surfaces at the next fastattn call (or check_errors), never as a bad memory access.
// Emulation: launches are synchronous, so the op that got the bad value raises.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <mutex>
#include <string>
#include <vector>

#include "cuda/kernels.h"
#include "ops/kernel_errors.h"
#include "ops/ops.h"

#if defined(FASTATTN_KERNEL_OPS_CUDA)
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#define FASTATTN_OPS_NAMESPACE fastattn
#define FASTATTN_OPS_KEY CUDA
#elif defined(FASTATTN_KERNEL_OPS_EMU)
#include "fastattn/device/emu_runtime.h"
#define FASTATTN_OPS_NAMESPACE fastattn_emu
#define FASTATTN_OPS_KEY CPU
#else
#error "define FASTATTN_KERNEL_OPS_CUDA or FASTATTN_KERNEL_OPS_EMU"
#endif

namespace fastattn::ops {
namespace {

kernels::DType kernel_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kHalf: return kernels::DType::kFloat16;
    case at::kBFloat16: return kernels::DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, name, ": the CUDA kernels take float16 or bfloat16, got ",
                       t.scalar_type());
  }
}

// A paged cache: the dtype of q (of k, for append_kv; checked before) or fp8.
kernels::DType kernel_cache_dtype(const at::Tensor& cache) {
  switch (cache.scalar_type()) {
    case at::kFloat8_e4m3fn: return kernels::DType::kFp8E4M3;
    case at::kFloat8_e5m2: return kernels::DType::kFp8E5M2;
    default: return kernel_dtype(cache, "k_cache");
  }
}

#if defined(FASTATTN_KERNEL_OPS_CUDA)

struct ErrorFlag {
  int32_t* host = nullptr;    // pinned, mapped
  int32_t* device = nullptr;  // the same word, as the device sees it
};

// One per device, sized once (so references stay valid), allocated on first use.
std::mutex g_flags_mutex;
std::vector<ErrorFlag> g_flags;

ErrorFlag& error_flag(int device) {
  std::lock_guard<std::mutex> lock(g_flags_mutex);
  if (g_flags.empty()) g_flags.resize(c10::cuda::device_count());
  ErrorFlag& f = g_flags.at(device);
  if (!f.host) {
    // The first call on a device may come while a CUDA graph is being captured (servers
    // capture their decode graphs at start-up, often before any eager call). Under the
    // default (global) capture mode the runtime rejects cudaHostAlloc as potentially
    // unsafe and invalidates the capture; it is not a stream operation, so this thread
    // makes it in relaxed mode, as PyTorch's own allocators do.
    const c10::cuda::CUDAStreamCaptureModeGuard relaxed(cudaStreamCaptureModeRelaxed);
    C10_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&f.host), sizeof(int32_t),
                                 cudaHostAllocMapped));
    *f.host = 0;
    C10_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&f.device), f.host, 0));
  }
  return f;
}

void raise_if_flagged(ErrorFlag& f, const char* when) {
  const int32_t bits = __atomic_exchange_n(f.host, 0, __ATOMIC_ACQ_REL);
  TORCH_CHECK_VALUE(bits == 0, kernel_error_message(bits, when));
}

// What fastattn needs of a device, queried once: the multiprocessor count (decode sizes
// its split-KV by it) and the compute capability.
struct DeviceInfo {
  int num_sms = 0;
  int major = 0;
  int minor = 0;
};

const DeviceInfo& device_info(int device) {
  static std::mutex mutex;
  static std::vector<DeviceInfo> infos;
  std::lock_guard<std::mutex> lock(mutex);
  if (infos.empty()) infos.resize(c10::cuda::device_count());
  DeviceInfo& d = infos.at(device);
  if (d.num_sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.num_sms, cudaDevAttrMultiProcessorCount, device));
  }
  return d;
}

// The build carries sm_80 and sm_90a machine code plus compute_80 PTX, which newer GPUs
// (sm_100, sm_120) JIT-compile; older ones cannot run mma.sync.m16n8k16 at all, and
// would otherwise fail at the first launch with "no kernel image is available".
void check_compute_capability(int device) {
  const DeviceInfo& d = device_info(device);
  if (d.major >= 8) return;
  cudaDeviceProp prop;
  C10_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  TORCH_CHECK(false, unsupported_gpu_message(device, prop.name, d.major, d.minor));
}

// The device must be able to run the kernels before anything is allocated for it.
ErrorFlag& checked_error_flag(int device) {
  check_compute_capability(device);
  return error_flag(device);
}

struct Launch {
  explicit Launch(const at::Tensor& t)
      : guard(t.device()), device(t.get_device()), flag(checked_error_flag(device)) {
    raise_if_flagged(flag, "before this call,");
    stream = c10::cuda::getCurrentCUDAStream(device).stream();
  }
  int32_t* error_flag_ptr() const { return flag.device; }
  void done() const {}
  int num_sms() const { return device_info(device).num_sms; }
  c10::cuda::CUDAGuard guard;
  int device;
  ErrorFlag& flag;
  void* stream;
};

#else  // emulation

// The multiprocessor count the emulated decode sizes its split-KV for; tests vary it.
int g_emu_num_sms = 4;

struct Launch {
  explicit Launch(const at::Tensor&) {}
  int32_t* error_flag_ptr() { return &flag; }
  void done() const { TORCH_CHECK_VALUE(flag == 0, kernel_error_message(flag, "")); }
  int num_sms() const { return g_emu_num_sms; }
  int32_t flag = 0;
  void* stream = nullptr;
};

#endif

// Launch-grid limits of the kernels (grid y and z are 16-bit; the attention kernel
// indexes a (batch row, KV head)'s packed query rows with int), checked before any
// launch so that they raise ValueError naming the argument.
void check_grid(const AttnParams& p, bool decode) {
  TORCH_CHECK_VALUE(p.num_heads_q <= 65535, "q: Hq = ", p.num_heads_q,
                    " query heads; the CUDA kernels take at most 65535");
  if (decode) return;  // decode puts the batch on grid x
  TORCH_CHECK_VALUE(p.batch <= 65535, "q: ", p.batch,
                    " sequences in one call; the CUDA attention kernel takes at most 65535");
  const int64_t rows = int64_t(p.seqlen_q) * (p.num_heads_q / p.num_heads_k);
  TORCH_CHECK_VALUE(rows <= (int64_t(1) << 31) - 65, "q: max_seqlen_q * Hq / Hk = ", rows,
                    " query rows per sequence and KV head; the CUDA attention kernel takes "
                    "at most 2^31 - 65");
}

// The tensor-core kernel copies 16-byte chunks (cp.async): every row it reads must
// start on a 16-byte boundary.
bool rows_aligned_16(const at::Tensor& t) {
  const int64_t vec = 16 / t.element_size();
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int64_t d = 0; d + 1 < t.dim(); ++d)
    if (t.size(d) > 1 && t.stride(d) % vec != 0) return false;
  return t.size(-1) % vec == 0;
}

// q, k, v of dense and varlen calls: a misaligned view (e.g. sliced at an odd
// offset) is copied, which costs a copy but keeps any valid input working.
at::Tensor aligned_16(const at::Tensor& t) {
  return rows_aligned_16(t) ? t : t.clone(at::MemoryFormat::Contiguous);
}

// The paged cache is never copied: it must be aligned.
void check_cache_aligned(const at::Tensor& cache, const char* name) {
  TORCH_CHECK_VALUE(rows_aligned_16(cache), name,
                    ": the CUDA extend kernel needs 16-byte aligned rows (data pointer and "
                    "strides multiples of 16 bytes", is_fp8(cache.scalar_type()) ?
                    "; an fp8 cache's head_dim a multiple of 16" : "", "); got shape ",
                    cache.sizes(), ", strides ", cache.strides(),
                    " and a data pointer offset by ",
                    reinterpret_cast<uintptr_t>(cache.data_ptr()) % 16, " bytes");
}

TensorPair attention_k(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                       const std::optional<at::Tensor>& kv_lens, double softmax_scale,
                       bool causal, int64_t window_left, int64_t window_right, double softcap) {
  check_dense_inputs(q_in, k_in, v_in, kv_lens);
  Launch launch(q_in);
  const at::Tensor q = aligned_16(q_in), k = aligned_16(k_in), v = aligned_16(v_in);
  auto [out, lse] = alloc_out_lse(q);
  if (q.numel() == 0) return {out, lse};
  AttnParams p = make_dense_params(q, k, v, kv_lens, out, lse, softmax_scale, causal,
                                   window_left, window_right, softcap);
  check_grid(p, false);
  p.error_flag = launch.error_flag_ptr();
  kernels::attention_fwd(p, kernel_dtype(q, "q"), kernel_dtype(q, "q"), launch.stream);
  launch.done();
  return {out, lse};
}

TensorPair attention_varlen_k(const at::Tensor& q_in, const at::Tensor& k_in,
                              const at::Tensor& v_in, const at::Tensor& cu_seqlens_q,
                              const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                              int64_t max_seqlen_k, double softmax_scale, bool causal,
                              int64_t window_left, int64_t window_right, double softcap) {
  check_varlen_inputs(q_in, k_in, v_in, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  Launch launch(q_in);
  const at::Tensor q = aligned_16(q_in), k = aligned_16(k_in), v = aligned_16(v_in);
  auto [out, lse] = alloc_out_lse(q);
  if (q.numel() == 0) return {out, lse};
  AttnParams p = make_varlen_params(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, out, lse, softmax_scale, causal, window_left,
                                    window_right, softcap);
  check_grid(p, false);
  p.error_flag = launch.error_flag_ptr();
  kernels::attention_fwd(p, kernel_dtype(q, "q"), kernel_dtype(q, "q"), launch.stream);
  launch.done();
  return {out, lse};
}

TensorPair paged_attention_k(const at::Tensor& q_in, const at::Tensor& k_cache,
                             const at::Tensor& v_cache, const at::Tensor& block_table,
                             const at::Tensor& seq_lens,
                             const std::optional<at::Tensor>& cu_seqlens_q, int64_t max_seqlen_q,
                             double softmax_scale, bool causal, int64_t window_left,
                             int64_t window_right, double softcap,
                             const std::optional<at::Tensor>& k_scale,
                             const std::optional<at::Tensor>& v_scale, double k_scale_value,
                             double v_scale_value) {
  check_paged_inputs(q_in, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q);
  // Scale tensor values are checked by the kernels (a host check would sync).
  const KVScale ks = kv_scale_param(k_scale, k_scale_value, k_cache, "k_scale");
  const KVScale vs = kv_scale_param(v_scale, v_scale_value, v_cache, "v_scale");
  Launch launch(q_in);
  // Decode reads unaligned rows with scalar loads; extend runs the tensor-core kernel.
  const at::Tensor q = cu_seqlens_q.has_value() ? aligned_16(q_in) : q_in;
  if (cu_seqlens_q.has_value()) {
    check_cache_aligned(k_cache, "k_cache");
    check_cache_aligned(v_cache, "v_cache");
  }
  auto [out, lse] = alloc_out_lse(q);
  // Extend with no query token still checks the block table, as on the CPU.
  if (block_table.size(0) == 0 || (q.numel() == 0 && !cu_seqlens_q.has_value())) {
    return {out, lse};
  }
  AttnParams p = make_paged_params(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q,
                                   max_seqlen_q, out, lse, softmax_scale, causal, window_left,
                                   window_right, softcap);
  check_grid(p, !cu_seqlens_q.has_value());
  p.k_scale = ks;
  p.v_scale = vs;
  p.error_flag = launch.error_flag_ptr();
  if (cu_seqlens_q.has_value()) {
    kernels::attention_fwd(p, kernel_dtype(q, "q"), kernel_cache_dtype(k_cache),
                           launch.stream);
  } else {
    // The split count and workspace depend on shapes only, so the call is
    // capturable in a CUDA graph.
    const kernels::DType cache_dtype = kernel_cache_dtype(k_cache);
    const int splits = kernels::decode_num_splits(p, cache_dtype, launch.num_sms());
    const int64_t floats = kernels::decode_workspace_floats(p, splits);
    at::Tensor workspace;
    if (floats > 0) workspace = at::empty({floats}, q.options().dtype(at::kFloat));
    kernels::paged_decode(p, kernel_dtype(q, "q"), cache_dtype,
                          floats > 0 ? workspace.data_ptr<float>() : nullptr, splits,
                          launch.stream);
  }
  launch.done();
  return {out, lse};
}

void append_kv_k(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k,
                 const at::Tensor& v, const at::Tensor& slot_mapping,
                 const std::optional<at::Tensor>& k_scale,
                 const std::optional<at::Tensor>& v_scale, double k_scale_value,
                 double v_scale_value) {
  check_append_inputs(k_cache, v_cache, k, v, slot_mapping);
  const KVScale ks = kv_scale_param(k_scale, k_scale_value, k_cache, "k_scale");
  const KVScale vs = kv_scale_param(v_scale, v_scale_value, v_cache, "v_scale");
  Launch launch(k_cache);
  if (k.size(0) == 0) return;
  AppendKVParams p = make_append_params(k_cache, v_cache, k, v, slot_mapping);
  p.k_scale = ks;
  p.v_scale = vs;
  p.error_flag = launch.error_flag_ptr();
  kernels::append_kv(p, kernel_dtype(k, "k"), kernel_cache_dtype(k_cache), launch.stream);
  launch.done();
}

TensorPair merge_attention_states_k(const at::Tensor& out_a, const at::Tensor& lse_a,
                                    const at::Tensor& out_b, const at::Tensor& lse_b) {
  Launch launch(out_a);
  auto out = at::empty(out_a.sizes(), out_a.options());
  auto lse = at::empty(lse_a.sizes(), lse_a.options());
  if (out.numel() == 0) return {out, lse};
  const MergeInputs in(out_a, lse_a, out_b, lse_b);
  kernels::merge_attention_states(in.params(out, lse), kernel_dtype(out_a, "out_a"),
                                  launch.stream);
  launch.done();
  return {out, lse};
}

}  // namespace

#if defined(FASTATTN_KERNEL_OPS_CUDA)
int32_t take_kernel_error_bits() {
  // Only devices fastattn launched on have a flag; each is synchronised before its
  // flag is read, so kernels still running there report now.
  std::vector<int> used;
  {
    std::lock_guard<std::mutex> lock(g_flags_mutex);
    for (int d = 0; d < int(g_flags.size()); ++d)
      if (g_flags[d].host) used.push_back(d);
  }
  // Every device is checked for capture before any flag is taken, so a refusal loses no
  // error bits. Only the current streams are checked: a capture on another stream or thread
  // in global mode would still be invalidated by the sync (documented).
  for (int d : used) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(d).stream(), &capture));
    TORCH_CHECK(capture == cudaStreamCaptureStatusNone,
                "fastattn.check_errors() synchronises the device, which a CUDA graph capture "
                "on the current stream of cuda:", d, " does not allow; call it after the "
                "capture (e.g. after a replay)");
  }
  int32_t bits = 0;
  for (int d : used) {
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(d));
    C10_CUDA_CHECK(cudaDeviceSynchronize());
    bits |= __atomic_exchange_n(g_flags[d].host, 0, __ATOMIC_ACQ_REL);
  }
  return bits;
}
#else
void set_emu_num_sms(int n) { g_emu_num_sms = n; }
#endif

TORCH_LIBRARY_IMPL(FASTATTN_OPS_NAMESPACE, FASTATTN_OPS_KEY, m) {
  m.impl("attention", &attention_k);
  m.impl("attention_varlen", &attention_varlen_k);
  m.impl("paged_attention", &paged_attention_k);
  m.impl("append_kv", &append_kv_k);
  m.impl("merge_attention_states", &merge_attention_states_k);
}

}  // namespace fastattn::ops
