// CUDA registration of the fastattn ops.
//
// The CUDA kernels are not written yet (see the CUDA-kernels issue). Until they
// land, every op on CUDA tensors raises NotImplementedError naming the op rather
// than silently copying to the CPU. This file is compiled for every shipped
// architecture so that the nvcc + torch toolchain is proven in CI from day one.
#include <torch/library.h>

#include <tuple>

namespace fastattn::cuda {
namespace {

[[noreturn]] void not_implemented(const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "fastattn::", op,
                              ": CUDA kernels are not implemented yet; pass CPU tensors");
}

std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor&, const at::Tensor&,
                                             const at::Tensor&, const std::optional<at::Tensor>&,
                                             double, bool, int64_t, int64_t, double) {
  not_implemented("attention");
}

std::tuple<at::Tensor, at::Tensor> attention_varlen(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, int64_t, int64_t, double,
                                                    bool, int64_t, int64_t, double) {
  not_implemented("attention_varlen");
}

std::tuple<at::Tensor, at::Tensor> paged_attention(const at::Tensor&, const at::Tensor&,
                                                   const at::Tensor&, const at::Tensor&,
                                                   const at::Tensor&,
                                                   const std::optional<at::Tensor>&, int64_t,
                                                   double, bool, int64_t, int64_t, double) {
  not_implemented("paged_attention");
}

void append_kv(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
               const at::Tensor&) {
  not_implemented("append_kv");
}

std::tuple<at::Tensor, at::Tensor> merge_attention_states(const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, const at::Tensor&) {
  not_implemented("merge_attention_states");
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CUDA, m) {
  m.impl("attention", &attention);
  m.impl("attention_varlen", &attention_varlen);
  m.impl("paged_attention", &paged_attention);
  m.impl("append_kv", &append_kv);
  m.impl("merge_attention_states", &merge_attention_states);
}

}  // namespace fastattn::cuda
