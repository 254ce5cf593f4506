"""Parity tests for attention_varlen (packed sequences) against ref_attention_varlen."""

import pytest
import torch

import fastattn
from fastattn.reference import ref_attention_varlen

from conftest import (DTYPES, assert_matches_reference, cu_seqlens, dtype_id, randn,
                      skip_if_unsupported)

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32

# (query lengths, key lengths) per batch. Includes empty query and/or key sequences, odd
# lengths, Sq > Sk and Sq < Sk within one batch, and a single-sequence batch.
BATCHES = {
    "mixed": ([7, 0, 97, 1, 33, 5], [7, 5, 97, 0, 256, 5]),
    "prefill": ([1, 2, 3, 64, 97], [1, 2, 3, 64, 97]),
    "q_longer": ([97, 13, 9], [31, 1, 0]),
    "single": ([256], [1023]),
    "empty_q_ends": ([0, 41, 0], [19, 41, 3]),
}


def run_varlen(q_lens, k_lens, num_heads, num_kv_heads, head_dim, dtype, device,
               return_lse=True, **kwargs):
    q = randn(sum(q_lens), num_heads, head_dim, dtype=dtype, device=device)
    k = randn(sum(k_lens), num_kv_heads, head_dim, dtype=dtype, device=device)
    v = randn(sum(k_lens), num_kv_heads, head_dim, dtype=dtype, device=device)
    cu_q, cu_k = cu_seqlens(q_lens, device), cu_seqlens(k_lens, device)
    result = fastattn.attention_varlen(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens),
                                       return_lse=return_lse, **kwargs)
    return assert_matches_reference(result, ref_attention_varlen, q, k, v, cu_q, cu_k,
                                    return_lse=return_lse, **kwargs)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_batches(device, batch, causal):
    skip_if_unsupported(device, F16, 64)
    q_lens, k_lens = BATCHES[batch]
    run_varlen(q_lens, k_lens, 4, 2, 64, F16, device, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("head_dim", [32, 40, 80, 128, 160, 256, 512])
def test_head_dims_and_dtypes(device, head_dim, dtype):
    skip_if_unsupported(device, dtype, head_dim)
    q_lens, k_lens = [5, 0, 37, 12], [5, 9, 60, 12]
    run_varlen(q_lens, k_lens, 2, 1, head_dim, dtype, device, causal=True)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (8, 2), (16, 2), (6, 1)],
                         ids=["mha", "gqa2", "gqa4", "gqa8", "mqa"])
def test_gqa(device, num_heads, num_kv_heads):
    skip_if_unsupported(device, BF16, 64)
    q_lens, k_lens = BATCHES["mixed"]
    run_varlen(q_lens, k_lens, num_heads, num_kv_heads, 64, BF16, device, causal=True)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("window", [(16, -1), (-1, 8), (4, 4), (0, 0)],
                         ids=["w16_-1", "w-1_8", "w4_4", "w0_0"])
def test_window(device, window, causal):
    skip_if_unsupported(device, F16, 64)
    q_lens, k_lens = BATCHES["mixed"]
    run_varlen(q_lens, k_lens, 4, 2, 64, F16, device, causal=causal, window_size=window)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_softcap_and_scale(device, dtype):
    skip_if_unsupported(device, dtype, 64)
    q_lens, k_lens = BATCHES["mixed"]
    run_varlen(q_lens, k_lens, 4, 2, 64, dtype, device, causal=True, softcap=5.0,
               softmax_scale=0.4)


@pytest.mark.parametrize("return_lse", [False, True])
def test_return_lse(device, return_lse):
    skip_if_unsupported(device, F16, 64)
    q_lens, k_lens = BATCHES["empty_q_ends"]
    run_varlen(q_lens, k_lens, 4, 2, 64, F16, device, return_lse=return_lse, causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_matches_dense(device, dtype):
    """Packing equal-length sequences gives the same numbers as the dense op."""
    skip_if_unsupported(device, dtype, 64)
    batch, seqlen, heads, kv_heads, head_dim = 3, 45, 4, 2, 64
    q = randn(batch, seqlen, heads, head_dim, dtype=dtype, device=device)
    k = randn(batch, seqlen, kv_heads, head_dim, dtype=dtype, device=device)
    v = randn(batch, seqlen, kv_heads, head_dim, dtype=dtype, device=device)
    cu = cu_seqlens([seqlen] * batch, device)
    out, lse = fastattn.attention_varlen(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu,
                                         cu, seqlen, seqlen, causal=True, return_lse=True)
    dense_out, dense_lse = fastattn.attention(q, k, v, causal=True, return_lse=True)
    # Same math on the same data; allow for a different accumulation order only.
    torch.testing.assert_close(out, dense_out.flatten(0, 1))
    torch.testing.assert_close(lse, dense_lse.flatten(0, 1))
    assert_matches_reference((out, lse), ref_attention_varlen, q.flatten(0, 1),
                             k.flatten(0, 1), v.flatten(0, 1), cu, cu, causal=True,
                             return_lse=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_noncontiguous_inputs(device, dtype):
    """q, k, v sliced out of a packed [T, 3, H, D] qkv tensor (last dim contiguous)."""
    skip_if_unsupported(device, dtype, 64)
    lens = [7, 0, 50, 1]
    qkv = randn(sum(lens), 3, 4, 64, dtype=dtype, device=device)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    assert not q.is_contiguous() and q.stride(-1) == 1
    cu = cu_seqlens(lens, device)
    result = fastattn.attention_varlen(q, k, v, cu, cu, max(lens), max(lens), causal=True,
                                       return_lse=True)
    assert_matches_reference(result, ref_attention_varlen, q, k, v, cu, cu, causal=True,
                             return_lse=True)
