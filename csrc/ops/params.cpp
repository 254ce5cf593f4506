// Tensors -> params for every op family, and the host value checks used where
// index values already live on the host (CPU tensors). Shared by the CPU
// registration, the CUDA registration and the emulated-kernel test ops.
#include <ATen/ATen.h>

#include <limits>

#include "ops/ops.h"

namespace fastattn::ops {
namespace {

template <typename T>
const T* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

void fill_common(AttnParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& out,
                 const at::Tensor& lse, double softmax_scale, bool causal, int64_t window_left,
                 int64_t window_right, double softcap) {
  p.q = q.data_ptr();
  p.o = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.num_heads_q = int(q.size(-2));
  p.num_heads_k = int(k.size(-2));
  p.head_dim = int(q.size(-1));
  p.softmax_scale = float(softmax_scale);
  p.softcap = float(softcap);
  p.causal = causal;
  // Windows wider than any sequence are unbounded; the clamp keeps int math safe.
  constexpr int64_t kMaxWindow = int64_t(1) << 30;
  p.window_left = int(window_left < 0 ? -1 : std::min(window_left, kMaxWindow));
  p.window_right = int(window_right < 0 ? -1 : std::min(window_right, kMaxWindow));
  p.cu_seqlens_q = nullptr;
  p.cu_seqlens_k = nullptr;
  p.kv_lens = nullptr;
  p.block_table = nullptr;
  p.block_table_stride = 0;
  p.page_size = 1;
  p.num_pages = 0;
  p.total_q = int(q.size(0));
  p.total_k = int(k.size(0));
  p.k_scale = p.v_scale = KVScale{nullptr, 0, 1.f};
  p.error_flag = nullptr;
}

void set_kv_strides(AttnParams& p, const at::Tensor& k, const at::Tensor& v, int64_t batch_dim,
                    int64_t row_dim) {
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.k_batch_stride = batch_dim < 0 ? 0 : k.stride(batch_dim);
  p.v_batch_stride = batch_dim < 0 ? 0 : v.stride(batch_dim);
  p.k_row_stride = k.stride(row_dim);
  p.v_row_stride = v.stride(row_dim);
  p.k_head_stride = k.stride(-2);
  p.v_head_stride = v.stride(-2);
}

// Queries, outputs and lse: batch_dim / row_dim < 0 means "no such dimension".
void set_q_strides(AttnParams& p, const at::Tensor& q, const at::Tensor& out,
                   const at::Tensor& lse, int64_t batch_dim, int64_t row_dim) {
  p.q_batch_stride = batch_dim < 0 ? 0 : q.stride(batch_dim);
  p.o_batch_stride = batch_dim < 0 ? 0 : out.stride(batch_dim);
  p.lse_batch_stride = batch_dim < 0 ? 0 : lse.stride(batch_dim);
  p.q_row_stride = row_dim < 0 ? 0 : q.stride(row_dim);
  p.o_row_stride = row_dim < 0 ? 0 : out.stride(row_dim);
  p.lse_row_stride = row_dim < 0 ? 0 : lse.stride(row_dim);
  p.q_head_stride = q.stride(-2);
  p.o_head_stride = out.stride(-2);
  p.lse_head_stride = lse.stride(-1);
}

}  // namespace

TensorPair alloc_out_lse(const at::Tensor& q) {
  auto out = at::empty(q.sizes(), q.options());
  auto sizes = q.sizes().vec();
  sizes.pop_back();
  auto lse = at::empty(sizes, q.options().dtype(at::kFloat));
  return {out, lse};
}

AttnParams make_dense_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const std::optional<at::Tensor>& kv_lens, const at::Tensor& out,
                             const at::Tensor& lse, double softmax_scale, bool causal,
                             int64_t window_left, int64_t window_right, double softcap) {
  AttnParams p;
  fill_common(p, q, k, out, lse, softmax_scale, causal, window_left, window_right, softcap);
  set_q_strides(p, q, out, lse, 0, 1);
  set_kv_strides(p, k, v, 0, 1);
  p.batch = int(q.size(0));
  p.seqlen_q = int(q.size(1));
  p.seqlen_k = int(k.size(1));
  p.kv_lens = data_or_null<int32_t>(kv_lens);
  return p;
}

AttnParams make_varlen_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                              int64_t max_seqlen_q, int64_t max_seqlen_k, const at::Tensor& out,
                              const at::Tensor& lse, double softmax_scale, bool causal,
                              int64_t window_left, int64_t window_right, double softcap) {
  AttnParams p;
  fill_common(p, q, k, out, lse, softmax_scale, causal, window_left, window_right, softcap);
  set_q_strides(p, q, out, lse, -1, 0);
  set_kv_strides(p, k, v, -1, 0);
  p.batch = int(cu_seqlens_q.size(0) - 1);
  p.seqlen_q = int(max_seqlen_q);
  p.seqlen_k = int(max_seqlen_k);
  p.cu_seqlens_q = cu_seqlens_q.data_ptr<int32_t>();
  p.cu_seqlens_k = cu_seqlens_k.data_ptr<int32_t>();
  return p;
}

AttnParams make_paged_params(const at::Tensor& q, const at::Tensor& k_cache,
                             const at::Tensor& v_cache, const at::Tensor& block_table,
                             const at::Tensor& seq_lens,
                             const std::optional<at::Tensor>& cu_seqlens_q, int64_t max_seqlen_q,
                             const at::Tensor& out, const at::Tensor& lse, double softmax_scale,
                             bool causal, int64_t window_left, int64_t window_right,
                             double softcap) {
  AttnParams p;
  fill_common(p, q, k_cache, out, lse, softmax_scale, causal, window_left, window_right,
              softcap);
  if (cu_seqlens_q.has_value()) {
    set_q_strides(p, q, out, lse, -1, 0);  // extend: packed [Tq, Hq, D]
    p.cu_seqlens_q = cu_seqlens_q->data_ptr<int32_t>();
    p.seqlen_q = int(max_seqlen_q);
  } else {
    set_q_strides(p, q, out, lse, 0, -1);  // decode: [B, Hq, D], one row per sequence
    p.seqlen_q = 1;
  }
  set_kv_strides(p, k_cache, v_cache, 0, 1);
  p.batch = int(block_table.size(0));
  p.page_size = int(k_cache.size(1));
  p.seqlen_k = int(block_table.size(1) * k_cache.size(1));
  p.kv_lens = seq_lens.data_ptr<int32_t>();
  p.block_table = block_table.data_ptr<int32_t>();
  p.block_table_stride = block_table.stride(0);
  p.num_pages = int(k_cache.size(0));
  return p;
}

// ---- operand and index-tensor shapes (for direct calls of torch.ops.fastattn.*,
// which skip the Python checks): the kernels index every operand by the sizes of
// q / the caches, so a short, mistyped or misplaced one would be read (or written)
// out of bounds.

namespace {

void check_index(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const at::Tensor& ref,
                 const char* name, const char* expected) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == numel && t.is_contiguous(), name,
                    ": expected a contiguous tensor of shape ", expected, " = [", numel,
                    "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, ": expected device ", ref.device(),
                    ", got ", t.device());
}

void check_packed(int64_t batch, int64_t total, int64_t max_seqlen, const char* cu_name,
                  const char* t_name, const char* max_name) {
  TORCH_CHECK_VALUE(batch > 0 || total == 0, cu_name, ": B = 0 sequences, but ", t_name,
                    " has ", total, " tokens");
  TORCH_CHECK_VALUE(max_seqlen > 0 || total == 0, max_name, ": 0, but ", t_name, " has ",
                    total, " tokens");
  TORCH_CHECK_VALUE(max_seqlen <= std::numeric_limits<int32_t>::max(), max_name, ": ",
                    max_seqlen, " is beyond int32");
}

// A floating-point operand of `dim` dimensions with the dtype and device of `ref`
// and a contiguous last dimension.
void check_operand(const at::Tensor& t, const at::Tensor& ref, int64_t dim, const char* name,
                   const char* expected) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, ": expected shape ", expected, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ",
                   ref.scalar_type(), " (that of q), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, ": expected device ", ref.device(),
                    " (that of q), got ", t.device());
  TORCH_CHECK_VALUE(t.size(-1) <= 1 || t.stride(-1) == 1, name,
                    ": the last dimension must be contiguous (stride 1), got strides ",
                    t.strides());
}

// A paged cache: q's device and dtype, or an fp8 dtype (any q dtype).
void check_cache(const at::Tensor& cache, const at::Tensor& ref, const char* name,
                 const char* ref_name) {
  TORCH_CHECK_VALUE(cache.dim() == 4, name, ": expected shape [P, page_size, Hk, D], got ",
                    cache.sizes());
  TORCH_CHECK_TYPE(cache.scalar_type() == ref.scalar_type() || is_fp8(cache.scalar_type()),
                   name, ": expected dtype ", ref.scalar_type(), " (that of ", ref_name,
                   ") or float8_e4m3fn / float8_e5m2, got ", cache.scalar_type());
  TORCH_CHECK_VALUE(cache.device() == ref.device(), name, ": expected device ", ref.device(),
                    " (that of ", ref_name, "), got ", cache.device());
  TORCH_CHECK_VALUE(cache.size(-1) <= 1 || cache.stride(-1) == 1, name,
                    ": the last dimension must be contiguous (stride 1), got strides ",
                    cache.strides());
}

// k and v alike; head dim as q's; Hq a multiple of Hk >= 1.
void check_kv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* k_name,
              const char* v_name) {
  TORCH_CHECK_VALUE(v.sizes() == k.sizes(), v_name, ": expected the shape of ", k_name, " ",
                    k.sizes(), ", got ", v.sizes());
  TORCH_CHECK_VALUE(k.size(-1) == q.size(-1), k_name, ": head dim D = ", k.size(-1),
                    ", expected D = ", q.size(-1), " (that of q)");
  const int64_t hq = q.size(-2), hk = k.size(-2);
  TORCH_CHECK_VALUE(hk >= 1 && hq % hk == 0, k_name, ": Hk = ", hk,
                    " KV heads; expected Hk >= 1 dividing Hq = ", hq);
}

}  // namespace

void check_dense_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const std::optional<at::Tensor>& kv_lens) {
  check_operand(q, q, 4, "q", "[B, Sq, Hq, D]");
  check_operand(k, q, 4, "k", "[B, Sk, Hk, D]");
  check_operand(v, q, 4, "v", "[B, Sk, Hk, D]");
  check_kv(q, k, v, "k", "v");
  TORCH_CHECK_VALUE(k.size(0) == q.size(0), "k: expected batch B = ", q.size(0),
                    " (that of q), got ", k.sizes());
  if (kv_lens.has_value()) check_index(*kv_lens, at::kInt, q.size(0), q, "kv_lens", "[B]");
}

void check_varlen_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                         int64_t max_seqlen_q, int64_t max_seqlen_k) {
  check_operand(q, q, 3, "q", "[Tq, Hq, D]");
  check_operand(k, q, 3, "k", "[Tk, Hk, D]");
  check_operand(v, q, 3, "v", "[Tk, Hk, D]");
  check_kv(q, k, v, "k", "v");
  TORCH_CHECK_VALUE(cu_seqlens_q.dim() == 1 && cu_seqlens_q.numel() >= 1,
                    "cu_seqlens_q: expected shape [B + 1] with at least one entry, got ",
                    cu_seqlens_q.sizes());
  const int64_t batch = cu_seqlens_q.numel() - 1;
  check_index(cu_seqlens_q, at::kInt, batch + 1, q, "cu_seqlens_q", "[B + 1]");
  check_index(cu_seqlens_k, at::kInt, batch + 1, q, "cu_seqlens_k", "[B + 1]");
  check_packed(batch, q.size(0), max_seqlen_q, "cu_seqlens_q", "q", "max_seqlen_q");
  check_packed(batch, k.size(0), max_seqlen_k, "cu_seqlens_k", "k", "max_seqlen_k");
}

void check_paged_inputs(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& block_table, const at::Tensor& seq_lens,
                        const std::optional<at::Tensor>& cu_seqlens_q, int64_t max_seqlen_q) {
  check_operand(q, q, 3, "q", "[B, Hq, D] (decode) or [Tq, Hq, D] (with cu_seqlens_q)");
  TORCH_CHECK_TYPE(!is_fp8(q.scalar_type()), "q: fp8 queries are not supported, got ",
                   q.scalar_type(), "; fp8 is for the caches (k_cache, v_cache)");
  check_cache(k_cache, q, "k_cache", "q");
  check_cache(v_cache, q, "v_cache", "q");
  TORCH_CHECK_TYPE(v_cache.scalar_type() == k_cache.scalar_type(),
                   "v_cache: expected the dtype of k_cache ", k_cache.scalar_type(), ", got ",
                   v_cache.scalar_type());
  check_kv(q, k_cache, v_cache, "k_cache", "v_cache");
  TORCH_CHECK_TYPE(block_table.scalar_type() == at::kInt, "block_table: expected dtype int32");
  TORCH_CHECK_VALUE(block_table.dim() == 2 && (block_table.numel() == 0 || block_table.stride(1) == 1),
                    "block_table: expected shape [B, max_pages] with contiguous rows, got ",
                    block_table.sizes());
  TORCH_CHECK_VALUE(block_table.device() == q.device(), "block_table: expected device ",
                    q.device(), ", got ", block_table.device());
  const int64_t batch = block_table.size(0);
  check_index(seq_lens, at::kInt, batch, q, "seq_lens", "[B]");
  if (cu_seqlens_q.has_value()) {
    check_index(*cu_seqlens_q, at::kInt, batch + 1, q, "cu_seqlens_q", "[B + 1]");
    check_packed(batch, q.size(0), max_seqlen_q, "cu_seqlens_q", "q", "max_seqlen_q");
  } else {
    TORCH_CHECK_VALUE(q.size(0) == batch, "q: expected shape [B, Hq, D] with B = ", batch,
                      " (block_table.shape[0]) for decode, got ", q.sizes());
  }
}

void check_append_inputs(const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& slot_mapping) {
  check_operand(k, k, 3, "k", "[T, Hk, D]");
  check_operand(v, k, 3, "v", "[T, Hk, D]");
  TORCH_CHECK_TYPE(!is_fp8(k.scalar_type()), "k: expected a float32/float16/bfloat16 tensor to "
                   "write into the cache, got ", k.scalar_type());
  check_cache(k_cache, k, "k_cache", "k");
  check_cache(v_cache, k, "v_cache", "k");
  TORCH_CHECK_TYPE(v_cache.scalar_type() == k_cache.scalar_type(),
                   "v_cache: expected the dtype of k_cache ", k_cache.scalar_type(), ", got ",
                   v_cache.scalar_type());
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), "v_cache: expected the shape of k_cache ",
                    k_cache.sizes(), ", got ", v_cache.sizes());
  TORCH_CHECK_VALUE(v.sizes() == k.sizes(), "v: expected the shape of k ", k.sizes(), ", got ",
                    v.sizes());
  TORCH_CHECK_VALUE(k.size(1) == k_cache.size(2) && k.size(2) == k_cache.size(3),
                    "k: expected shape [T, Hk, D] = [T, ", k_cache.size(2), ", ", k_cache.size(3),
                    "] (Hk, D of k_cache), got ", k.sizes());
  check_index(slot_mapping, at::kLong, k.size(0), k_cache, "slot_mapping", "[T]");
}

bool is_fp8(at::ScalarType t) {
  return t == at::kFloat8_e4m3fn || t == at::kFloat8_e5m2;
}

KVScale kv_scale_param(const std::optional<at::Tensor>& tensor, double value,
                       const at::Tensor& cache, const char* name) {
  const bool fp8 = is_fp8(cache.scalar_type());
  TORCH_CHECK_VALUE(fp8 || (!tensor.has_value() && value == 1.0), name,
                    ": scales apply to fp8 caches only; the cache has dtype ",
                    cache.scalar_type());
  TORCH_CHECK_VALUE(value > 0 && value <= std::numeric_limits<float>::max(), name,
                    ": expected a positive finite float32 value, got ", value);
  KVScale s{nullptr, 0, float(value)};
  if (!tensor.has_value()) return s;
  const at::Tensor& t = *tensor;
  const int64_t hk = cache.size(2);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, ": expected dtype float32, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 0 || (t.dim() == 1 && t.size(0) == hk), name,
                    ": expected shape [] (per tensor) or [Hk] = [", hk, "] (per KV head), got ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.device() == cache.device(), name, ": expected device ", cache.device(),
                    " (that of the cache), got ", t.device());
  s.tensor = t.data_ptr<float>();
  s.stride = t.dim() == 0 ? 0 : int(t.stride(0));
  return s;
}

void check_kv_scale_host(const std::optional<at::Tensor>& tensor, const char* name) {
  if (!tensor.has_value()) return;
  // Contiguous: a per-head scale may be a strided view (the kernels read it by stride).
  const at::Tensor t = tensor->reshape({-1}).contiguous();
  const float* v = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    TORCH_CHECK_VALUE(v[i] > 0 && v[i] <= std::numeric_limits<float>::max(), name,
                      ": scales must be positive and finite, got ", name,
                      t.numel() > 1 || tensor->dim() > 0 ? "[" + std::to_string(i) + "]" : "",
                      " = ", v[i]);
}

void check_kv_lens_host(const at::Tensor& kv_lens, int64_t seqlen_k) {
  const int32_t* lens = kv_lens.data_ptr<int32_t>();
  for (int64_t b = 0; b < kv_lens.numel(); ++b)
    TORCH_CHECK_VALUE(lens[b] >= 0 && lens[b] <= seqlen_k, "kv_lens: kv_lens[", b, "] = ", lens[b],
                      " is outside [0, Sk = ", seqlen_k, "]");
}

void check_cu_seqlens_host(const at::Tensor& cu_seqlens, int64_t total, int64_t max_seqlen,
                           const char* name, const char* total_name, const char* max_name) {
  const int32_t* cu = cu_seqlens.data_ptr<int32_t>();
  const int64_t n = cu_seqlens.numel();
  TORCH_CHECK_VALUE(cu[0] == 0, name, ": must start at 0, got ", name, "[0] = ", cu[0]);
  int64_t longest = 0;
  for (int64_t b = 0; b + 1 < n; ++b) {
    TORCH_CHECK_VALUE(cu[b + 1] >= cu[b], name, ": must be non-decreasing, got ", name, "[", b,
                      "] = ", cu[b], " > ", name, "[", b + 1, "] = ", cu[b + 1]);
    longest = std::max<int64_t>(longest, cu[b + 1] - cu[b]);
  }
  TORCH_CHECK_VALUE(cu[n - 1] == total, name, ": last entry must equal ", total_name, " = ",
                    total, ", got ", name, "[", n - 1, "] = ", cu[n - 1]);
  TORCH_CHECK_VALUE(longest <= max_seqlen, max_name, ": ", max_seqlen,
                    " is smaller than the longest sequence in ", name, " (", longest, ")");
}

void check_paged_host(const at::Tensor& block_table, const at::Tensor& seq_lens,
                      const std::optional<at::Tensor>& cu_seqlens_q, int64_t num_pages,
                      int64_t page_size) {
  const int64_t batch = block_table.size(0);
  const int64_t max_pages = block_table.size(1);
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* cu = cu_seqlens_q.has_value() ? cu_seqlens_q->data_ptr<int32_t>() : nullptr;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t len = lens[b];
    TORCH_CHECK_VALUE(len >= 0 && len <= max_pages * page_size, "seq_lens: seq_lens[", b, "] = ",
                      len, " is outside [0, max_pages * page_size = ", max_pages * page_size,
                      "] (block_table [B, max_pages] = [", batch, ", ", max_pages,
                      "], page_size = ", page_size, ")");
    const int64_t q_len = cu ? cu[b + 1] - cu[b] : 1;
    // seq_len 0 marks a padding entry (fixed-size batches, CUDA graphs): its
    // queries see no key and get output 0, lse -inf.
    TORCH_CHECK_VALUE(len == 0 || q_len <= len, "seq_lens: seq_lens[", b, "] = ", len,
                      " is smaller than its ", q_len,
                      " query token(s); seq_lens counts the new tokens too (0 marks padding)");
    const int32_t* row = block_table.data_ptr<int32_t>() + b * block_table.stride(0);
    const int64_t used = (len + page_size - 1) / page_size;
    for (int64_t j = 0; j < used; ++j)
      TORCH_CHECK_VALUE(row[j] >= 0 && row[j] < num_pages, "block_table: block_table[", b, ", ", j,
                        "] = ", row[j], " is outside [0, num_pages = ", num_pages,
                        ") and is used by seq_lens[", b, "] = ", len);
  }
}

void check_slots_host(const at::Tensor& slot_mapping, int64_t num_slots) {
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  for (int64_t t = 0; t < slot_mapping.numel(); ++t)
    TORCH_CHECK_VALUE(slots[t] < num_slots, "slot_mapping: slot_mapping[", t, "] = ", slots[t],
                      " is beyond the cache (num_pages * page_size = ", num_slots, ")");
}

AppendKVParams make_append_params(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& slot_mapping) {
  AppendKVParams p;
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.slot_mapping = slot_mapping.data_ptr<int64_t>();
  p.kc_page_stride = k_cache.stride(0);
  p.kc_row_stride = k_cache.stride(1);
  p.kc_head_stride = k_cache.stride(2);
  p.vc_page_stride = v_cache.stride(0);
  p.vc_row_stride = v_cache.stride(1);
  p.vc_head_stride = v_cache.stride(2);
  p.k_token_stride = k.stride(0);
  p.k_head_stride = k.stride(1);
  p.v_token_stride = v.stride(0);
  p.v_head_stride = v.stride(1);
  p.num_tokens = k.size(0);
  p.num_heads_k = int(k.size(1));
  p.head_dim = int(k.size(2));
  p.page_size = int(k_cache.size(1));
  p.num_slots = k_cache.size(0) * k_cache.size(1);
  p.k_scale = p.v_scale = KVScale{nullptr, 0, 1.f};
  p.error_flag = nullptr;
  return p;
}


namespace {

// out_a, out_b [..., D] alike with a contiguous last dimension; lse_a, lse_b float32
// shaped out_a.shape[:-1]. Checked before the reshapes below.
const at::Tensor& checked_out_a(const at::Tensor& out_a, const at::Tensor& lse_a,
                                const at::Tensor& out_b, const at::Tensor& lse_b) {
  TORCH_CHECK_VALUE(out_a.dim() >= 1, "out_a: expected shape [..., D], got ", out_a.sizes());
  check_operand(out_a, out_a, out_a.dim(), "out_a", "[..., D]");
  check_operand(out_b, out_a, out_a.dim(), "out_b", "[..., D] like out_a");
  TORCH_CHECK_VALUE(out_b.sizes() == out_a.sizes(), "out_b: expected the shape of out_a ",
                    out_a.sizes(), ", got ", out_b.sizes());
  const auto rows = out_a.sizes().slice(0, out_a.dim() - 1);
  for (const auto* lse : {&lse_a, &lse_b}) {
    const char* name = lse == &lse_a ? "lse_a" : "lse_b";
    TORCH_CHECK_TYPE(lse->scalar_type() == at::kFloat, name, ": expected dtype float32, got ",
                     lse->scalar_type());
    TORCH_CHECK_VALUE(lse->sizes() == rows, name, ": expected shape out_a.shape[:-1] = ", rows,
                      ", got ", lse->sizes());
    TORCH_CHECK_VALUE(lse->device() == out_a.device(), name, ": expected device ",
                      out_a.device(), ", got ", lse->device());
  }
  return out_a;
}

}  // namespace

MergeInputs::MergeInputs(const at::Tensor& out_a, const at::Tensor& lse_a,
                         const at::Tensor& out_b, const at::Tensor& lse_b)
    // Views when the strides allow (the usual case), copies otherwise.
    : a(checked_out_a(out_a, lse_a, out_b, lse_b).reshape({-1, out_a.size(-1)})),
      b(out_b.reshape({-1, out_b.size(-1)})),
      la(lse_a.reshape({-1}).contiguous()),
      lb(lse_b.reshape({-1}).contiguous()) {}

MergeParams MergeInputs::params(const at::Tensor& out, const at::Tensor& lse) const {
  MergeParams p;
  p.out_a = a.data_ptr();
  p.out_b = b.data_ptr();
  p.lse_a = la.data_ptr<float>();
  p.lse_b = lb.data_ptr<float>();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.out_a_row_stride = a.stride(0);
  p.out_b_row_stride = b.stride(0);
  p.out_row_stride = a.size(1);
  p.num_rows = a.size(0);
  p.head_dim = int(a.size(1));
  return p;
}

}  // namespace fastattn::ops
