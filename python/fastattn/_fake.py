"""Fake (meta) kernels so that torch.compile traces the ops without running them."""
import torch


def _out_lse(q: torch.Tensor):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.register_fake("fastattn::attention")
def _attention_fake(q, k, v, kv_lens, softmax_scale, causal, window_left, window_right, softcap):
    return _out_lse(q)


@torch.library.register_fake("fastattn::attention_varlen")
def _attention_varlen_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           softmax_scale, causal, window_left, window_right, softcap):
    return _out_lse(q)


@torch.library.register_fake("fastattn::paged_attention")
def _paged_attention_fake(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q,
                          softmax_scale, causal, window_left, window_right, softcap,
                          k_scale=None, v_scale=None, k_scale_value=1.0, v_scale_value=1.0):
    return _out_lse(q)


@torch.library.register_fake("fastattn::append_kv")
def _append_kv_fake(k_cache, v_cache, k, v, slot_mapping, k_scale=None, v_scale=None,
                    k_scale_value=1.0, v_scale_value=1.0):
    return None


@torch.library.register_fake("fastattn::merge_attention_states")
def _merge_fake(out_a, lse_a, out_b, lse_b):
    return out_a.new_empty(out_a.shape), lse_a.new_empty(lse_a.shape)


# fastattn is forward-only (inference). Without an autograd formula, outputs of
# inputs that require grad would silently get no gradient; raise instead.
def _no_backward(op_name: str):
    def backward(ctx, *grads):
        raise NotImplementedError(
            f"fastattn::{op_name} has no backward: fastattn is an inference library. Run it under "
            "torch.no_grad() or torch.inference_mode(), or detach the inputs.")
    return backward


for _name in ("attention", "attention_varlen", "paged_attention", "merge_attention_states"):
    torch.library.register_autograd(f"fastattn::{_name}", _no_backward(_name),
                                    setup_context=lambda ctx, inputs, output: None)
