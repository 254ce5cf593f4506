"""Parity tests for paged_attention (decode and extend) and append_kv.

Every cache is NaN-poisoned: unused slots of a sequence's last page, unused pages, and the
pages that spare block-table columns point at all hold NaN, and block tables are random
permutations. A kernel that reads anything beyond seq_lens shows NaN in its output.
"""

import pytest
import torch

import fastattn
from fastattn.reference import (ref_append_kv, ref_attention_varlen, ref_paged_attention)

from conftest import (DTYPES, PagedKV, assert_matches_reference, cu_seqlens, dtype_id,
                      is_nan_bitwise_equal, nan_tensor, randn, skip_if_unsupported)

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32

PAGE_SIZES = [1, 5, 16, 64]
# Lengths shorter than, equal to and longer than a page, and several pages with a partly
# filled last page.
SEQ_LENS = [1, 5, 16, 67, 200, 33]


def run_decode(seq_lens, num_heads, num_kv_heads, head_dim, page_size, dtype, device,
               return_lse=True, **kwargs):
    cache = PagedKV.random(seq_lens, num_kv_heads, head_dim, page_size, dtype, device)
    q = randn(len(seq_lens), num_heads, head_dim, dtype=dtype, device=device)
    args = (q, cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    result = fastattn.paged_attention(*args, return_lse=return_lse, **kwargs)
    return assert_matches_reference(result, ref_paged_attention, *args, return_lse=return_lse,
                                    **kwargs)


def run_extend(q_lens, seq_lens, num_heads, num_kv_heads, head_dim, page_size, dtype, device,
               return_lse=True, **kwargs):
    cache = PagedKV.random(seq_lens, num_kv_heads, head_dim, page_size, dtype, device)
    q = randn(sum(q_lens), num_heads, head_dim, dtype=dtype, device=device)
    cu_q = cu_seqlens(q_lens, device)
    args = (q, cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    result = fastattn.paged_attention(*args, cu_seqlens_q=cu_q, max_seqlen_q=max(q_lens),
                                      return_lse=return_lse, **kwargs)
    return assert_matches_reference(result, ref_paged_attention, *args, cu_seqlens_q=cu_q,
                                    return_lse=return_lse, **kwargs)


# ---------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2), (16, 2), (8, 1), (20, 2)],
                         ids=["mha", "gqa4", "gqa8", "mqa", "gqa10"])
def test_decode(device, num_heads, num_kv_heads, page_size):
    skip_if_unsupported(device, F16, 64)
    run_decode(SEQ_LENS, num_heads, num_kv_heads, 64, page_size, F16, device)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("head_dim", [7, 32, 33, 40, 80, 96, 128, 160, 256, 512])
def test_decode_head_dims_and_dtypes(device, head_dim, dtype):
    skip_if_unsupported(device, dtype, head_dim)
    run_decode([3, 40, 17], 4, 2, head_dim, 16, dtype, device)


@pytest.mark.parametrize("kwargs", [
    dict(window_size=(31, -1)),
    dict(window_size=(0, 0)),
    dict(causal=False),
    dict(causal=False, window_size=(8, -1)),
    dict(softcap=2.0),
    dict(softcap=30.0, softmax_scale=0.5, window_size=(50, -1)),
], ids=["w31", "w0_0", "noncausal", "noncausal-w8", "softcap2", "softcap30-scale-w50"])
@pytest.mark.parametrize("dtype", [F16, BF16], ids=dtype_id)
def test_decode_options(device, dtype, kwargs):
    skip_if_unsupported(device, dtype, 64)
    run_decode(SEQ_LENS, 8, 2, 64, 16, dtype, device, **kwargs)


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_decode_return_lse(device, dtype, return_lse):
    skip_if_unsupported(device, dtype, 64)
    run_decode(SEQ_LENS, 4, 2, 64, 5, dtype, device, return_lse=return_lse)


def test_decode_long_sequence(device):
    """One long sequence next to short ones (the split-KV path of a GPU decode kernel)."""
    skip_if_unsupported(device, BF16, 128)
    run_decode([1023, 2, 511], 8, 1, 128, 16, BF16, device)


# ---------------------------------------------------------------------------------------
# extend / chunked prefill
# ---------------------------------------------------------------------------------------

# (query tokens per sequence, keys per sequence). q_len == seq_len is a plain prefill read
# through the pages; q_len 0 is a sequence with no new tokens in this step.
EXTEND_BATCHES = {
    "chunks": ([3, 1, 17, 64, 0, 33], [5, 16, 67, 200, 9, 33]),
    "prefill": ([1, 7, 97], [1, 7, 97]),
    "long": ([256, 1], [1023, 300]),
}


@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("batch", ["chunks", "prefill"])
def test_extend(device, batch, page_size):
    skip_if_unsupported(device, F16, 64)
    q_lens, seq_lens = EXTEND_BATCHES[batch]
    run_extend(q_lens, seq_lens, 8, 2, 64, page_size, F16, device)


def test_extend_long(device):
    skip_if_unsupported(device, BF16, 128)
    q_lens, seq_lens = EXTEND_BATCHES["long"]
    run_extend(q_lens, seq_lens, 4, 1, 128, 64, BF16, device)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("head_dim", [40, 128, 256, 512])
def test_extend_head_dims_and_dtypes(device, head_dim, dtype):
    skip_if_unsupported(device, dtype, head_dim)
    run_extend([4, 0, 19], [10, 3, 19], 4, 2, head_dim, 16, dtype, device)


@pytest.mark.parametrize("kwargs", [
    dict(causal=False),
    dict(window_size=(7, -1)),
    dict(causal=False, window_size=(4, 4)),
    dict(window_size=(0, 0)),
    dict(softcap=3.0, softmax_scale=0.3),
], ids=["noncausal", "w7", "noncausal-w4_4", "w0_0", "softcap-scale"])
def test_extend_options(device, kwargs):
    skip_if_unsupported(device, BF16, 64)
    q_lens, seq_lens = EXTEND_BATCHES["chunks"]
    run_extend(q_lens, seq_lens, 8, 2, 64, 5, BF16, device, **kwargs)


@pytest.mark.parametrize("return_lse", [False, True])
def test_extend_return_lse(device, return_lse):
    skip_if_unsupported(device, F16, 64)
    q_lens, seq_lens = EXTEND_BATCHES["chunks"]
    run_extend(q_lens, seq_lens, 4, 4, 64, 16, F16, device, return_lse=return_lse)


def test_extend_noncontiguous_q(device):
    """q sliced out of a packed [T, 3, H, D] qkv tensor (last dim contiguous)."""
    skip_if_unsupported(device, F16, 64)
    q_lens, seq_lens = [3, 9], [20, 9]
    cache = PagedKV.random(seq_lens, 4, 64, 16, F16, device)
    q = randn(sum(q_lens), 3, 4, 64, dtype=F16, device=device)[:, 0]
    assert not q.is_contiguous()
    cu_q = cu_seqlens(q_lens, device)
    args = (q, cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    result = fastattn.paged_attention(*args, cu_seqlens_q=cu_q, max_seqlen_q=max(q_lens),
                                      return_lse=True)
    assert_matches_reference(result, ref_paged_attention, *args, cu_seqlens_q=cu_q,
                             return_lse=True)


# ---------------------------------------------------------------------------------------
# append_kv
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_append_kv_round_trip(device, page_size, dtype):
    """Tokens land at their slots bit for bit; negative slots and every other slot are left
    untouched (they keep their NaN)."""
    skip_if_unsupported(device, dtype, 64)
    kv_heads, head_dim, tokens = 2, 64, 20
    num_pages = (tokens + 10 + page_size - 1) // page_size  # room for 10 untouched slots
    k_cache = nan_tensor(num_pages, page_size, kv_heads, head_dim, dtype=dtype, device=device)
    v_cache = nan_tensor(num_pages, page_size, kv_heads, head_dim, dtype=dtype, device=device)
    slots = torch.randperm(num_pages * page_size)[:tokens]
    slots[torch.tensor([0, 5, 6, tokens - 1]) % tokens] = -1  # skipped tokens
    slot_mapping = slots.to(torch.int64).to(device)
    k = randn(tokens, kv_heads, head_dim, dtype=dtype, device=device)
    v = randn(tokens, kv_heads, head_dim, dtype=dtype, device=device)

    expected_k, expected_v = ref_append_kv(k_cache.cpu(), v_cache.cpu(), k.cpu(), v.cpu(),
                                           slot_mapping.cpu())
    assert fastattn.append_kv(k_cache, v_cache, k, v, slot_mapping) is None
    assert is_nan_bitwise_equal(k_cache.cpu(), expected_k)
    assert is_nan_bitwise_equal(v_cache.cpu(), expected_v)
    for t, slot in enumerate(slots.tolist()):  # read back through the page layout
        if slot >= 0:
            page, offset = divmod(slot, page_size)
            assert torch.equal(k_cache[page, offset], k[t])
            assert torch.equal(v_cache[page, offset], v[t])


def test_append_kv_noncontiguous(device):
    """k and v sliced out of a packed [T, 3, Hk, D] qkv tensor."""
    skip_if_unsupported(device, F16, 64)
    k_cache = nan_tensor(4, 16, 2, 64, dtype=F16, device=device)
    v_cache = k_cache.clone()
    qkv = randn(10, 3, 2, 64, dtype=F16, device=device)
    k, v = qkv[:, 1], qkv[:, 2]
    slot_mapping = torch.tensor([3, 17, -1, 40, 41, 42, 0, 63, -5, 20], dtype=torch.int64,
                                device=device)
    expected = ref_append_kv(k_cache.cpu(), v_cache.cpu(), k.cpu(), v.cpu(), slot_mapping.cpu())
    fastattn.append_kv(k_cache, v_cache, k, v, slot_mapping)
    assert is_nan_bitwise_equal(k_cache.cpu(), expected[0])
    assert is_nan_bitwise_equal(v_cache.cpu(), expected[1])


@pytest.mark.parametrize("dtype", [F32, BF16], ids=dtype_id)
@pytest.mark.parametrize("page_size", [1, 5, 16, 64])
def test_append_then_attend(device, page_size, dtype):
    """Write the new tokens of each sequence with append_kv (into NaN slots), then attend:
    decode and extend through the pages equal dense / varlen attention over the same keys."""
    skip_if_unsupported(device, dtype, 64)
    heads, kv_heads, head_dim = 8, 2, 64
    seq_lens = [5, 70, 16, 1, 130]
    new_lens = [2, 7, 16, 1, 1]  # new tokens per sequence; 16 of 16 is a full prefill
    cache = PagedKV.random(seq_lens, kv_heads, head_dim, page_size, dtype, device)

    # Blank the new tokens' slots, then write them back through append_kv; two padding
    # tokens with slot -1 must be skipped.
    new_k, new_v, slots = [], [], []
    for b, (n, new) in enumerate(zip(seq_lens, new_lens)):
        for t in range(n - new, n):
            slot = cache.slot(b, t)
            page, offset = divmod(slot, page_size)
            cache.k_cache[page, offset] = float("nan")
            cache.v_cache[page, offset] = float("nan")
            new_k.append(cache.keys[b][t])
            new_v.append(cache.values[b][t])
            slots.append(slot)
        if b == 1:
            new_k.append(torch.full_like(new_k[-1], float("nan")))
            new_v.append(torch.full_like(new_v[-1], float("nan")))
            slots.append(-1)
    new_k, new_v = torch.stack(new_k).to(device), torch.stack(new_v).to(device)
    fastattn.append_kv(cache.k_cache, cache.v_cache, new_k, new_v,
                       torch.tensor(slots, dtype=torch.int64, device=device))

    # Dense truth, packed as varlen.
    keys = torch.cat(cache.keys).to(device)
    values = torch.cat(cache.values).to(device)
    cu_k = cu_seqlens(seq_lens, device)
    paged = (cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)

    # Extend: queries are the new tokens of every sequence.
    q = randn(sum(new_lens), heads, head_dim, dtype=dtype, device=device)
    cu_q = cu_seqlens(new_lens, device)
    out, lse = fastattn.paged_attention(q, *paged, cu_seqlens_q=cu_q,
                                        max_seqlen_q=max(new_lens), return_lse=True)
    dense_out, dense_lse = fastattn.attention_varlen(q, keys, values, cu_q, cu_k,
                                                     max(new_lens), max(seq_lens), causal=True,
                                                     return_lse=True)
    torch.testing.assert_close(out, dense_out)
    torch.testing.assert_close(lse, dense_lse)
    assert_matches_reference((out, lse), ref_attention_varlen, q, keys, values, cu_q, cu_k,
                             causal=True, return_lse=True)

    # Decode: one query per sequence, at its last key; the dense op sees the same keys
    # right-padded (with NaN) to the longest sequence and masked by kv_lens.
    q = randn(len(seq_lens), heads, head_dim, dtype=dtype, device=device)
    out = fastattn.paged_attention(q, *paged)
    k_pad = nan_tensor(len(seq_lens), max(seq_lens), kv_heads, head_dim, dtype=dtype,
                       device=device)
    v_pad = k_pad.clone()
    for b, n in enumerate(seq_lens):
        k_pad[b, :n] = cache.keys[b].to(device)
        v_pad[b, :n] = cache.values[b].to(device)
    dense_out = fastattn.attention(q.unsqueeze(1), k_pad, v_pad, causal=True,
                                   kv_lens=cache.seq_lens)
    torch.testing.assert_close(out, dense_out.squeeze(1))
    assert_matches_reference(out, ref_attention_varlen, q, keys, values,
                             cu_seqlens([1] * len(seq_lens)), cu_k, causal=True,
                             return_lse=False)
