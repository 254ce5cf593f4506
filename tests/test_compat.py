"""fastattn.compat: FlashAttention-2's signatures and return conventions on our ops.

Each function is checked against the fastattn op it maps onto and against the float64
references. lse comes back in FlashAttention-2's layout (heads before tokens) and is turned
back into ours before the reference comparison, so a transposition mistake fails it.
"""

import inspect

import pytest
import torch

import fastattn
from fastattn import compat
from fastattn.reference import ref_attention, ref_attention_varlen, ref_paged_attention

from conftest import (PagedKV, assert_matches_reference, cu_seqlens, dtype_id,
                      is_nan_bitwise_equal, nan_tensor, randn, skip_if_unsupported)

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
HEADS, KV_HEADS, HEAD_DIM = 6, 2, 64  # GQA throughout


def ours_lse(fa2_lse):
    """FlashAttention-2's [..., H, S] lse back to our [..., S, H]."""
    return fa2_lse.transpose(-1, -2)


def check_probs_result(result, q, ours):
    """(out, softmax_lse, S_dmask): out and lse equal our op's, lse heads first and contiguous,
    S_dmask the empty tensor FlashAttention-2 returns without dropout."""
    assert isinstance(result, tuple) and len(result) == 3
    out, lse, s_dmask = result
    assert torch.equal(out, ours[0])
    assert lse.is_contiguous() and lse.shape == ours[1].transpose(-1, -2).shape
    assert torch.equal(ours_lse(lse), ours[1])
    assert s_dmask.shape == (0,) and s_dmask.dtype == q.dtype and s_dmask.device == q.device
    return out, ours_lse(lse)


def test_signatures_match_flash_attn_2():
    expected = {
        compat.flash_attn_func: dict(
            q=None, k=None, v=None, dropout_p=0.0, softmax_scale=None, causal=False,
            window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
            return_attn_probs=False),
        compat.flash_attn_varlen_func: dict(
            q=None, k=None, v=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
            max_seqlen_k=None, dropout_p=0.0, softmax_scale=None, causal=False,
            window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
            return_attn_probs=False, block_table=None),
        compat.flash_attn_with_kvcache: dict(
            q=None, k_cache=None, v_cache=None, k=None, v=None, rotary_cos=None,
            rotary_sin=None, cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None,
            block_table=None, softmax_scale=None, causal=False, window_size=(-1, -1),
            softcap=0.0, rotary_interleaved=True, alibi_slopes=None, num_splits=0,
            return_softmax_lse=False),
    }
    for fn, params in expected.items():
        signature = inspect.signature(fn).parameters
        assert list(signature) == list(params), fn.__name__
        for name, default in params.items():
            if signature[name].default is not inspect.Parameter.empty:
                assert signature[name].default == default, (fn.__name__, name)
            else:
                assert default is None and name in ("q", "k", "v", "k_cache", "v_cache",
                                                    "cu_seqlens_q", "cu_seqlens_k",
                                                    "max_seqlen_q", "max_seqlen_k")


# ---------------------------------------------------------------------------------------
# flash_attn_func
# ---------------------------------------------------------------------------------------

OPTIONS = {
    "noncausal": dict(),
    "causal": dict(causal=True),
    "window": dict(window_size=(5, 3)),
    "causal-window": dict(causal=True, window_size=(16, -1)),
    "softcap-scale": dict(softcap=5.0, softmax_scale=0.3),
}


@pytest.mark.parametrize("q_len,k_len", [(1, 97), (7, 1), (97, 7), (97, 97)])
@pytest.mark.parametrize("options", OPTIONS)
def test_flash_attn_func(device, options, q_len, k_len):
    skip_if_unsupported(device, BF16, HEAD_DIM)
    kwargs = OPTIONS[options]
    q = randn(2, q_len, HEADS, HEAD_DIM, dtype=BF16, device=device)
    k = randn(2, k_len, KV_HEADS, HEAD_DIM, dtype=BF16, device=device)
    v = randn(2, k_len, KV_HEADS, HEAD_DIM, dtype=BF16, device=device)
    ours = fastattn.attention(q, k, v, return_lse=True, **kwargs)
    result = compat.flash_attn_func(q, k, v, return_attn_probs=True, **kwargs)
    out, lse = check_probs_result(result, q, ours)
    assert_matches_reference((out, lse), ref_attention, q, k, v, return_lse=True, **kwargs)
    assert torch.equal(compat.flash_attn_func(q, k, v, **kwargs), out)


@pytest.mark.parametrize("dtype", [F32, F16], ids=dtype_id)
def test_flash_attn_func_lse_layout(device, dtype):
    """softmax_lse[b, h, i] is our lse[b, i, h]: (batch_size, nheads, seqlen_q)."""
    skip_if_unsupported(device, dtype, 32)
    q = randn(3, 5, 4, 32, dtype=dtype, device=device)
    k = randn(3, 9, 4, 32, dtype=dtype, device=device)
    _, lse, _ = compat.flash_attn_func(q, k, k, causal=True, return_attn_probs=True)
    _, ours = fastattn.attention(q, k, k, causal=True, return_lse=True)
    assert lse.shape == (3, 4, 5) and lse.dtype == torch.float32
    for b, h, i in [(0, 0, 0), (2, 3, 4), (1, 2, 0)]:
        assert lse[b, h, i] == ours[b, i, h]


# ---------------------------------------------------------------------------------------
# flash_attn_varlen_func
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", ["noncausal", "causal", "causal-window"])
def test_flash_attn_varlen_func(device, options):
    """Empty sequences on either side: no queries, or queries without keys (output 0)."""
    skip_if_unsupported(device, F16, HEAD_DIM)
    kwargs = OPTIONS[options]
    q_lens, k_lens = [0, 7, 1, 97, 3], [5, 0, 1, 97, 40]
    q = randn(sum(q_lens), HEADS, HEAD_DIM, dtype=F16, device=device)
    k = randn(sum(k_lens), KV_HEADS, HEAD_DIM, dtype=F16, device=device)
    v = randn(sum(k_lens), KV_HEADS, HEAD_DIM, dtype=F16, device=device)
    args = (q, k, v, cu_seqlens(q_lens, device), cu_seqlens(k_lens, device), max(q_lens),
            max(k_lens))
    ours = fastattn.attention_varlen(*args, return_lse=True, **kwargs)
    out, lse = check_probs_result(
        compat.flash_attn_varlen_func(*args, return_attn_probs=True, **kwargs), q, ours)
    assert lse.shape == (sum(q_lens), HEADS)  # (nheads, total_q) before ours_lse
    assert_matches_reference((out, lse), ref_attention_varlen, *args[:5], return_lse=True,
                             **kwargs)
    assert torch.equal(compat.flash_attn_varlen_func(*args, **kwargs), out)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("page_size", [1, 16])
def test_flash_attn_varlen_func_paged(device, page_size, causal):
    """block_table: k, v are a NaN-poisoned paged cache; cu_seqlens_k gives the key counts."""
    skip_if_unsupported(device, F16, HEAD_DIM)
    q_lens, seq_lens = [3, 0, 7, 1, 0], [5, 9, 7, 40, 0]
    cache = PagedKV.random(seq_lens, KV_HEADS, HEAD_DIM, page_size, F16, device)
    q = randn(sum(q_lens), HEADS, HEAD_DIM, dtype=F16, device=device)
    cu_q = cu_seqlens(q_lens, device)
    result = compat.flash_attn_varlen_func(
        q, cache.k_cache, cache.v_cache, cu_q, cu_seqlens(seq_lens, device), max(q_lens),
        max(seq_lens), causal=causal, return_attn_probs=True, block_table=cache.block_table)
    paged = (q, cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    ours = fastattn.paged_attention(*paged, cu_seqlens_q=cu_q, max_seqlen_q=max(q_lens),
                                    causal=causal, return_lse=True)
    out, lse = check_probs_result(result, q, ours)
    assert_matches_reference((out, lse), ref_paged_attention, *paged, cu_seqlens_q=cu_q,
                             causal=causal, return_lse=True)


# ---------------------------------------------------------------------------------------
# flash_attn_with_kvcache
# ---------------------------------------------------------------------------------------

def assert_kvcache_matches(result, q, keys, values, **kwargs):
    """Sequence b attends over keys[b] (all of its keys, appended ones included) with its
    queries at the last positions: the varlen reference over the packed keys."""
    assert isinstance(result, tuple) and len(result) == 2
    out, lse = result
    batch, q_len, heads, head_dim = q.shape
    assert out.shape == q.shape
    assert lse.shape == (batch, heads, q_len) and lse.is_contiguous()
    flat = (out.reshape(-1, heads, head_dim), ours_lse(lse).reshape(-1, heads))
    assert_matches_reference(flat, ref_attention_varlen, q.reshape(-1, heads, head_dim),
                             torch.cat(keys), torch.cat(values), cu_seqlens([q_len] * batch),
                             cu_seqlens([len(k) for k in keys]), return_lse=True, **kwargs)


class DenseCache:
    """A dense cache [batch_size_cache, seqlen_cache, Hk, D] holding cached[b] random keys in
    row b and NaN everywhere else; one spare row beyond the batch."""

    def __init__(self, cached, seqlen_cache, dtype, device):
        shape = (len(cached) + 1, seqlen_cache, KV_HEADS, HEAD_DIM)
        self.k_cache = nan_tensor(*shape, dtype=dtype, device=device)
        self.v_cache = nan_tensor(*shape, dtype=dtype, device=device)
        for b, n in enumerate(cached):
            self.k_cache[b, :n] = randn(n, KV_HEADS, HEAD_DIM, dtype=dtype, device=device)
            self.v_cache[b, :n] = randn(n, KV_HEADS, HEAD_DIM, dtype=dtype, device=device)

    def rows(self, lengths):
        """Each row's first lengths[b] keys and values (the dense truth)."""
        return ([self.k_cache[b, :n].clone() for b, n in enumerate(lengths)],
                [self.v_cache[b, :n].clone() for b, n in enumerate(lengths)])


@pytest.mark.parametrize("cache_seqlens_as", ["tensor", "int"])
@pytest.mark.parametrize("append", [False, True], ids=["no-append", "append"])
@pytest.mark.parametrize("q_len", [1, 5])
def test_with_kvcache_dense(device, q_len, append, cache_seqlens_as):
    """A dense cache, appended to in place at cache_seqlens; slots past
    cache_seqlens + seqlen_new (NaN) and the spare row stay untouched. A row with fewer keys
    than queries (0 cached, no append) leaves its leading queries without keys."""
    skip_if_unsupported(device, BF16, HEAD_DIM)
    cached = [10, 0, 33] if cache_seqlens_as == "tensor" else [17, 17, 17]
    cache = DenseCache(cached, 40, BF16, device)
    q = randn(len(cached), q_len, HEADS, HEAD_DIM, dtype=BF16, device=device)
    cache_seqlens = (torch.tensor(cached, dtype=torch.int32, device=device)
                     if cache_seqlens_as == "tensor" else cached[0])
    expected_k, expected_v = cache.k_cache.clone(), cache.v_cache.clone()
    new = {}
    if append:
        new = dict(k=randn(len(cached), q_len, KV_HEADS, HEAD_DIM, dtype=BF16, device=device),
                   v=randn(len(cached), q_len, KV_HEADS, HEAD_DIM, dtype=BF16, device=device))
        for b, n in enumerate(cached):
            expected_k[b, n:n + q_len] = new["k"][b]
            expected_v[b, n:n + q_len] = new["v"][b]
    lengths = [n + q_len * append for n in cached]

    result = compat.flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, **new,
                                            cache_seqlens=cache_seqlens, causal=True,
                                            return_softmax_lse=True)
    assert is_nan_bitwise_equal(cache.k_cache.cpu(), expected_k.cpu())
    assert is_nan_bitwise_equal(cache.v_cache.cpu(), expected_v.cpu())
    assert_kvcache_matches(result, q, *cache.rows(lengths), causal=True)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    ours = fastattn.attention(q, cache.k_cache[:len(cached)], cache.v_cache[:len(cached)],
                              causal=True, kv_lens=seq_lens, return_lse=True)
    torch.testing.assert_close(result[0], ours[0])
    torch.testing.assert_close(ours_lse(result[1]), ours[1])


@pytest.mark.parametrize("append", [False, True], ids=["no-append", "append"])
@pytest.mark.parametrize("q_len", [1, 4])
@pytest.mark.parametrize("page_size", [1, 16])
def test_with_kvcache_paged(device, page_size, q_len, append):
    """A NaN-poisoned paged cache with a random block table. With append, the new tokens'
    slots start as NaN and must hold k, v afterwards, every other slot unchanged."""
    skip_if_unsupported(device, F16, HEAD_DIM)
    seq_lens = [5, 37, 16, 4]
    cache = PagedKV.random(seq_lens, KV_HEADS, HEAD_DIM, page_size, F16, device)
    q = randn(len(seq_lens), q_len, HEADS, HEAD_DIM, dtype=F16, device=device)
    expected_k, expected_v = cache.k_cache.clone(), cache.v_cache.clone()
    new, cached = {}, cache.seq_lens
    if append:
        new = dict(k=torch.stack([k[-q_len:] for k in cache.keys]).to(device),
                   v=torch.stack([v[-q_len:] for v in cache.values]).to(device))
        for b, n in enumerate(seq_lens):
            for t in range(n - q_len, n):
                page, offset = divmod(cache.slot(b, t), page_size)
                cache.k_cache[page, offset] = float("nan")
                cache.v_cache[page, offset] = float("nan")
        cached = cache.seq_lens - q_len

    result = compat.flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, **new,
                                            cache_seqlens=cached, block_table=cache.block_table,
                                            causal=True, return_softmax_lse=True)
    assert is_nan_bitwise_equal(cache.k_cache.cpu(), expected_k.cpu())
    assert is_nan_bitwise_equal(cache.v_cache.cpu(), expected_v.cpu())
    assert_kvcache_matches(result, q, cache.keys, cache.values, causal=True)
    paged = (cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    if q_len == 1:
        ours = fastattn.paged_attention(q[:, 0], *paged, return_lse=True)
    else:
        ours = fastattn.paged_attention(q.reshape(-1, HEADS, HEAD_DIM), *paged,
                                        cu_seqlens_q=cu_seqlens([q_len] * len(seq_lens), device),
                                        max_seqlen_q=q_len,
                                        return_lse=True)
    assert torch.equal(result[0].reshape(ours[0].shape), ours[0])
    assert torch.equal(ours_lse(result[1]).reshape(ours[1].shape), ours[1])


@pytest.mark.parametrize("q_len", [1, 4])
@pytest.mark.parametrize("layout", ["dense", "paged"])
@pytest.mark.parametrize("options", ["noncausal", "window", "softcap-scale"])
def test_with_kvcache_options(device, options, layout, q_len):
    skip_if_unsupported(device, F16, HEAD_DIM)
    kwargs = OPTIONS[options]
    seq_lens = [9, 30, 4]
    q = randn(len(seq_lens), q_len, HEADS, HEAD_DIM, dtype=F16, device=device)
    if layout == "dense":
        cache = DenseCache(seq_lens, 32, F16, device)
        keys, values = cache.rows(seq_lens)
        extra = {}
    else:
        cache = PagedKV.random(seq_lens, KV_HEADS, HEAD_DIM, 16, F16, device)
        keys, values = cache.keys, cache.values
        extra = dict(block_table=cache.block_table)
    result = compat.flash_attn_with_kvcache(
        q, cache.k_cache, cache.v_cache, cache_seqlens=torch.tensor(seq_lens, dtype=torch.int32,
                                                                     device=device),
        return_softmax_lse=True, **extra, **kwargs)
    assert_kvcache_matches(result, q, keys, values, **kwargs)


def test_with_kvcache_whole_cache(device):
    """cache_seqlens=None: every row attends over the whole cache (dense: seqlen_cache keys;
    paged: max_num_blocks_per_seq * page_block_size)."""
    skip_if_unsupported(device, F16, HEAD_DIM)
    cache = DenseCache([12, 12], 12, F16, device)
    q = randn(2, 3, HEADS, HEAD_DIM, dtype=F16, device=device)
    out = compat.flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, causal=True)
    assert isinstance(out, torch.Tensor)
    expected = fastattn.attention(q, cache.k_cache[:2], cache.v_cache[:2], causal=True)
    assert torch.equal(out, expected)

    paged = PagedKV.random([8, 8], KV_HEADS, HEAD_DIM, 4, F16, device, spare_columns=0)
    out = compat.flash_attn_with_kvcache(q[:, :1], paged.k_cache, paged.v_cache,
                                         block_table=paged.block_table)
    assert torch.equal(out[:, 0], fastattn.paged_attention(q[:, 0], paged.k_cache, paged.v_cache,
                                                           paged.block_table, paged.seq_lens))


def test_with_kvcache_accepted_no_ops(device):
    """num_splits and rotary_interleaved are accepted and change nothing."""
    skip_if_unsupported(device, F16, HEAD_DIM)
    cache = DenseCache([7, 20], 24, F16, device)
    q = randn(2, 1, HEADS, HEAD_DIM, dtype=F16, device=device)
    lens = torch.tensor([7, 20], dtype=torch.int32, device=device)
    base = compat.flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, cache_seqlens=lens)
    for kwargs in (dict(num_splits=1), dict(num_splits=8), dict(rotary_interleaved=False)):
        out = compat.flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, cache_seqlens=lens,
                                             **kwargs)
        assert torch.equal(out, base), kwargs


def test_deterministic_accepted(device):
    skip_if_unsupported(device, F16, HEAD_DIM)
    q = randn(1, 4, HEADS, HEAD_DIM, dtype=F16, device=device)
    k = randn(1, 6, KV_HEADS, HEAD_DIM, dtype=F16, device=device)
    assert torch.equal(compat.flash_attn_func(q, k, k, deterministic=True),
                       compat.flash_attn_func(q, k, k))


# ---------------------------------------------------------------------------------------
# unsupported arguments and error names
# ---------------------------------------------------------------------------------------

def small_inputs(device):
    """q [2, 3, H, D], a dense cache of 8 keys per row, new k, v [2, 3, Hk, D]."""
    q = randn(2, 3, HEADS, HEAD_DIM, dtype=F16, device=device)
    cache = DenseCache([2, 4], 8, F16, device)
    k = randn(2, 3, KV_HEADS, HEAD_DIM, dtype=F16, device=device)
    return q, cache, k


@pytest.mark.parametrize("fn,name,value", [
    ("func", "dropout_p", 0.1),
    ("func", "alibi_slopes", "tensor"),
    ("varlen", "dropout_p", 0.5),
    ("varlen", "alibi_slopes", "tensor"),
    ("kvcache", "rotary_cos", "tensor"),
    ("kvcache", "rotary_sin", "tensor"),
    ("kvcache", "cache_batch_idx", "tensor"),
    ("kvcache", "cache_leftpad", "tensor"),
    ("kvcache", "alibi_slopes", "tensor"),
])
def test_unsupported_arguments(device, fn, name, value):
    """NotImplementedError naming the argument, raised before the cache is touched."""
    skip_if_unsupported(device, F16, HEAD_DIM)
    q, cache, k = small_inputs(device)
    if value == "tensor":
        value = torch.zeros(2, dtype=torch.int32 if "cache" in name else torch.float32,
                            device=device)
    before = cache.k_cache.clone()
    with pytest.raises(NotImplementedError, match=f"^{name}:"):
        if fn == "func":
            compat.flash_attn_func(q, k, k, **{name: value})
        elif fn == "varlen":
            cu = cu_seqlens([3, 3], device)
            compat.flash_attn_varlen_func(q.flatten(0, 1), k.flatten(0, 1), k.flatten(0, 1), cu,
                                          cu, 3, 3, **{name: value})
        else:
            compat.flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, k=k, v=k,
                                           cache_seqlens=2, **{name: value})
    assert is_nan_bitwise_equal(cache.k_cache.cpu(), before.cpu())


@pytest.mark.parametrize("case", ["k-without-v", "k-without-cache_seqlens", "k_cache-dtype",
                                  "v_cache-shape", "int-cache_seqlens-overflow", "k-shape",
                                  "cache-rows"])
def test_with_kvcache_errors_leave_cache_untouched(device, case):
    """Errors found from shapes, dtypes or a Python-int cache_seqlens are raised before the
    append, naming FlashAttention-2's argument."""
    skip_if_unsupported(device, F16, HEAD_DIM)
    q, cache, k = small_inputs(device)
    k_cache, v_cache = cache.k_cache, cache.v_cache
    kwargs = dict(k=k, v=k, cache_seqlens=2)
    error, name = ValueError, case.split("-")[0]
    if case == "k-without-v":
        kwargs["v"], name = None, "v"
    elif case == "k-without-cache_seqlens":
        kwargs["cache_seqlens"], name = None, "cache_seqlens"
    elif case == "k_cache-dtype":
        k_cache, error = k_cache.to(BF16 if device == "cuda" else F32), TypeError
    elif case == "v_cache-shape":
        v_cache = v_cache[:, :7]
    elif case == "int-cache_seqlens-overflow":
        kwargs["cache_seqlens"], name = 6, "cache_seqlens"  # 6 + 3 new > 8
    elif case == "k-shape":
        kwargs["k"] = k[:, :, :1]
    elif case == "cache-rows":
        q, name = torch.cat([q] * 2), "k_cache"  # batch 4 > batch_size_cache 3
        kwargs.update(k=torch.cat([k] * 2), v=torch.cat([k] * 2))
    before = (cache.k_cache.clone(), cache.v_cache.clone())
    with pytest.raises(error, match=f"^{name}:"):
        compat.flash_attn_with_kvcache(q, k_cache, v_cache, **kwargs)
    assert is_nan_bitwise_equal(cache.k_cache.cpu(), before[0].cpu())
    assert is_nan_bitwise_equal(cache.v_cache.cpu(), before[1].cpu())


def raises_value_error(device, name):
    """Value checks run in the op: on the CPU at the call, on CUDA at the next check."""
    if device == "cpu":
        return pytest.raises(ValueError, match=f"^{name}:")
    return pytest.raises(ValueError)


@pytest.mark.parametrize("layout", ["dense", "paged"])
def test_with_kvcache_cache_seqlens_out_of_range(device, layout):
    """cache_seqlens + seqlen_new beyond a row's capacity: the error names cache_seqlens, and
    the append never writes into another row (or page) of the cache."""
    skip_if_unsupported(device, F16, HEAD_DIM)
    q, cache, k = small_inputs(device)
    extra = {}
    if layout == "paged":
        # Rows 0 and 1 each own two pages of 4 slots: the same capacity as the dense rows.
        cache.k_cache = cache.k_cache.reshape(6, 4, KV_HEADS, HEAD_DIM)
        cache.v_cache = cache.v_cache.reshape(6, 4, KV_HEADS, HEAD_DIM)
        extra = dict(block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32,
                                              device=device))
    before = cache.k_cache.clone()
    lens = torch.tensor([6, 1], dtype=torch.int32, device=device)  # row 0: 6 + 3 > 8
    with raises_value_error(device, "cache_seqlens"):
        compat.flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, k=k, v=k,
                                       cache_seqlens=lens, **extra)
        fastattn.check_errors()
    expected = before.reshape(3, 8, KV_HEADS, HEAD_DIM).cpu()
    expected[0, 6:8] = k[0, :2].cpu()  # what fits is written, the rest skipped
    expected[1, 1:4] = k[1].cpu()
    assert is_nan_bitwise_equal(cache.k_cache.reshape(3, 8, KV_HEADS, HEAD_DIM).cpu(), expected)


def test_varlen_paged_error_names(device):
    """Names in errors are FlashAttention-2's: cu_seqlens_k (not seq_lens), k (not k_cache)."""
    skip_if_unsupported(device, F16, HEAD_DIM)
    cache = PagedKV.random([5, 9], KV_HEADS, HEAD_DIM, 4, F16, device)
    q = randn(4, HEADS, HEAD_DIM, dtype=F16, device=device)
    cu_q = cu_seqlens([2, 2], device)
    args = (q, cache.k_cache, cache.v_cache, cu_q)
    with pytest.raises(ValueError, match="^k:"):
        compat.flash_attn_varlen_func(q, cache.k_cache[..., :8], cache.v_cache, cu_q,
                                      cu_seqlens([5, 9], device), 2, 9,
                                      block_table=cache.block_table)
    with pytest.raises(TypeError, match="^cu_seqlens_k:"):
        compat.flash_attn_varlen_func(*args, cu_seqlens([5, 9], device).long(), 2, 9,
                                      block_table=cache.block_table)
    decreasing = torch.tensor([0, 5, 3], dtype=torch.int32, device=device)
    with raises_value_error(device, "cu_seqlens_k"):
        compat.flash_attn_varlen_func(*args, decreasing, 2, 9, block_table=cache.block_table)
        fastattn.check_errors()


@pytest.mark.parametrize("page_size", [1, 16])
def test_with_kvcache_padding_entries(device, page_size):
    """Padding entries of a decode batch (transformers' continuous batching pads its block-table
    step this way): cache_seqlens -1 with one new token and a block-table row of -1. Nothing is
    written for them, their output is 0 and their lse -inf; the real rows are unaffected."""
    skip_if_unsupported(device, F16, HEAD_DIM)
    seq_lens = [9, 1, 30]
    cache = PagedKV.random(seq_lens, KV_HEADS, HEAD_DIM, page_size, F16, device)
    table = torch.cat([cache.block_table,
                       torch.full((2, cache.block_table.shape[1]), -1, dtype=torch.int32,
                                  device=device)])
    q = randn(len(seq_lens) + 2, 1, HEADS, HEAD_DIM, dtype=F16, device=device)
    new_k = torch.stack([k[-1:] for k in cache.keys] + [randn(1, KV_HEADS, HEAD_DIM, dtype=F16)] * 2)
    new_v = torch.stack([v[-1:] for v in cache.values] + [randn(1, KV_HEADS, HEAD_DIM, dtype=F16)] * 2)
    for b, n in enumerate(seq_lens):
        page, offset = divmod(cache.slot(b, n - 1), page_size)
        cache.k_cache[page, offset] = float("nan")
        cache.v_cache[page, offset] = float("nan")
    expected_k, expected_v = cache.k_cache.clone(), cache.v_cache.clone()
    for b, n in enumerate(seq_lens):
        page, offset = divmod(cache.slot(b, n - 1), page_size)
        expected_k[page, offset] = new_k[b, 0].to(device)
        expected_v[page, offset] = new_v[b, 0].to(device)
    cached = torch.tensor([n - 1 for n in seq_lens] + [-1, -1], dtype=torch.int32, device=device)

    out, lse = compat.flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, new_k.to(device),
                                              new_v.to(device), cache_seqlens=cached,
                                              block_table=table, return_softmax_lse=True)
    fastattn.check_errors()
    assert is_nan_bitwise_equal(cache.k_cache.cpu(), expected_k.cpu())
    assert is_nan_bitwise_equal(cache.v_cache.cpu(), expected_v.cpu())
    assert torch.equal(out[3:].cpu(), torch.zeros_like(out[3:]).cpu())
    assert bool(torch.isneginf(lse[3:]).all())
    alone = compat.flash_attn_with_kvcache(q[:3], cache.k_cache, cache.v_cache,
                                           cache_seqlens=cache.seq_lens,
                                           block_table=cache.block_table)
    assert torch.equal(out[:3], alone)
