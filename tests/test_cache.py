"""PagedKVCache: page bookkeeping, op inputs, and the cache driving the paged ops.

The bookkeeping tests need no kernel. The integration test writes K/V through
`append_kv` at the slots the cache hands out and checks `paged_attention` (extend and
decode forms) against a float64 dense computation of each sequence's whole history, on a
NaN-filled cache whose pages are shared out between interleaved, freed and re-added
sequences.
"""

import math

import pytest
import torch

import fastattn
from fastattn import PagedKVCache
from fastattn.cache import OutOfPagesError, PagedBatch

from conftest import dtype_id, skip_if_unsupported


def state(cache):
    """Everything observable about a cache's bookkeeping."""
    return (
        {s: (cache.seq_len(s), cache.pages(s)) for s in cache.seq_ids},
        cache.num_free_pages,
        cache.pages_used,
        cache.peak_pages_used,
    )


def small_cache(**kwargs):
    args = dict(num_pages=8, page_size=4, num_kv_heads=2, head_dim=8)
    args.update(kwargs)
    return PagedKVCache(**args)


# ---------------------------------------------------------------------------------------
# construction and storage
# ---------------------------------------------------------------------------------------

def test_storage_views():
    cache = small_cache(num_layers=3, dtype=torch.float16)
    assert (cache.num_pages, cache.page_size, cache.num_kv_heads, cache.head_dim,
            cache.num_layers, cache.max_pages_per_seq) == (8, 4, 2, 8, 3, 8)
    assert cache.dtype == torch.float16 and cache.device == torch.device("cpu")
    for layer in range(3):
        for t in (cache.k_cache(layer), cache.v_cache(layer)):
            assert t.shape == (8, 4, 2, 8) and t.dtype == torch.float16 and t.is_contiguous()
            assert (t == 0).all()
    # Layers are distinct storage; K and V too.
    cache.k_cache(1).fill_(1.0)
    assert (cache.k_cache(0) == 0).all() and (cache.k_cache(2) == 0).all()
    assert (cache.v_cache(1) == 0).all()
    with pytest.raises(ValueError, match="layer"):
        cache.k_cache(3)
    with pytest.raises(ValueError, match="layer"):
        cache.v_cache(-1)
    nan_cache = small_cache(fill_value=float("nan"))
    assert torch.isnan(nan_cache.k_cache()).all() and torch.isnan(nan_cache.v_cache()).all()


@pytest.mark.parametrize("name", ["num_pages", "page_size", "num_kv_heads", "head_dim",
                                  "num_layers", "max_pages_per_seq"])
@pytest.mark.parametrize("value", [0, -1, 2.0, True])
def test_constructor_rejects_bad_sizes(name, value):
    with pytest.raises(ValueError, match=name):
        small_cache(**{name: value})


def test_constructor_rejects_integer_dtype():
    with pytest.raises(TypeError, match="dtype"):
        small_cache(dtype=torch.int32)


# ---------------------------------------------------------------------------------------
# allocation, free, reuse
# ---------------------------------------------------------------------------------------

def test_extend_allocates_pages_and_slots():
    cache = small_cache()
    a = cache.add_sequence()
    b = cache.add_sequence()
    assert (a, b) == (0, 1) and cache.seq_ids == [0, 1] and len(cache) == 2 and a in cache
    assert cache.seq_len(a) == 0 and cache.pages(a) == [] and cache.pages_used == 0

    slots = cache.extend(a, 6)
    assert slots.dtype == torch.int64 and slots.tolist() == [0, 1, 2, 3, 4, 5]
    assert cache.pages(a) == [0, 1] and cache.seq_len(a) == 6

    assert cache.extend(b, 3).tolist() == [8, 9, 10]            # page 2
    # a's page 1 still has two free offsets, then a new page (3) starts.
    assert cache.extend(a, 3).tolist() == [6, 7, 12]
    assert cache.pages(a) == [0, 1, 3] and cache.seq_len(a) == 9
    assert cache.extend(a, 0).tolist() == []
    assert cache.num_free_pages == 4 and cache.pages_used == 4 and cache.peak_pages_used == 4
    assert cache.slot_mapping(a).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 12]
    assert cache.slot_mapping(a, 5, 8).tolist() == [5, 6, 7]
    with pytest.raises(ValueError, match="outside"):
        cache.slot_mapping(a, 0, 10)

    assert cache.pages_for(0) == 0 and cache.pages_for(4) == 1 and cache.pages_for(5) == 2
    assert cache.pages_needed(a, 3) == 0 and cache.pages_needed(a, 4) == 1
    assert cache.can_extend(a, 3 + 16) and not cache.can_extend(a, 3 + 17)


def test_free_returns_pages_and_they_are_reused():
    cache = small_cache()
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.extend(a, 4)
    cache.extend(b, 4)
    cache.extend(a, 8)                       # a: pages 0, 2, 3; b: page 1
    assert cache.pages(a) == [0, 2, 3] and cache.pages_used == 4

    cache.free(a)
    assert a not in cache and cache.seq_ids == [b]
    assert cache.num_free_pages == 7 and cache.pages_used == 1 and cache.peak_pages_used == 4
    with pytest.raises(ValueError, match="unknown sequence"):
        cache.seq_len(a)

    c = cache.add_sequence()
    assert c == 2                            # ids are not recycled by default
    cache.extend(c, 12)
    assert cache.pages(c) == [0, 2, 3]       # freed pages come back first, in order
    cache.extend(c, 1)
    assert cache.pages(c) == [0, 2, 3, 4]    # then untouched ones
    assert cache.peak_pages_used == 5

    # Fill the cache completely, free everything, and it is whole again.
    d = cache.add_sequence()
    cache.extend(d, 4 * cache.num_free_pages)
    assert cache.num_free_pages == 0
    for s in cache.seq_ids:
        cache.free(s)
    assert cache.num_free_pages == 8 and cache.pages_used == 0 and len(cache) == 0
    assert cache.peak_pages_used == 8


def test_add_sequence_with_explicit_id():
    cache = small_cache()
    assert cache.add_sequence(7) == 7
    assert cache.add_sequence() == 0
    with pytest.raises(ValueError, match="already live"):
        cache.add_sequence(7)
    with pytest.raises(ValueError, match="seq_id"):
        cache.add_sequence("x")
    cache.free(7)
    assert cache.add_sequence(7) == 7


def test_truncate_releases_whole_pages():
    cache = small_cache()
    a = cache.add_sequence()
    cache.extend(a, 10)                      # pages 0, 1, 2
    cache.truncate(a, 5)
    assert cache.seq_len(a) == 5 and cache.pages(a) == [0, 1] and cache.num_free_pages == 6
    assert cache.extend(a, 4).tolist() == [5, 6, 7, 8]      # page 2 comes back
    assert cache.pages(a) == [0, 1, 2]
    cache.truncate(a, 0)
    assert cache.pages(a) == [] and cache.num_free_pages == 8
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(a, 1)


def test_reset():
    cache = small_cache()
    for n in (5, 9):
        cache.extend(cache.add_sequence(), n)
    cache.reset()
    assert len(cache) == 0 and cache.num_free_pages == 8 and cache.peak_pages_used == 0
    a = cache.add_sequence()
    assert a == 0 and cache.extend(a, 1).tolist() == [0]


# ---------------------------------------------------------------------------------------
# errors leave the cache unchanged
# ---------------------------------------------------------------------------------------

def test_out_of_pages_leaves_state_unchanged():
    cache = small_cache()
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.extend(a, 13)                      # 4 pages
    cache.extend(b, 6)                       # 2 pages; 2 left
    before = state(cache)

    with pytest.raises(OutOfPagesError, match="out of pages: 3 more needed, 2 free"):
        cache.extend(b, 2 + 3 * 4)
    assert state(cache) == before
    assert issubclass(OutOfPagesError, RuntimeError)
    assert not cache.can_extend(b, 2 + 3 * 4) and cache.can_extend(b, 2 + 2 * 4)

    # A batch is all or nothing: a fits alone, b fits alone, together they do not.
    with pytest.raises(OutOfPagesError, match="out of pages"):
        cache.prepare_batch([(a, 3 + 4), (b, 2 + 4 + 1)])
    assert state(cache) == before

    # The same holds for the per-sequence limit.
    limited = small_cache(max_pages_per_seq=2)
    c = limited.add_sequence()
    limited.extend(c, 5)
    before = state(limited)
    with pytest.raises(OutOfPagesError, match="max_pages_per_seq=2"):
        limited.extend(c, 4)
    assert state(limited) == before
    assert not limited.can_extend(c, 4) and limited.can_extend(c, 3)


def test_bad_arguments_leave_state_unchanged():
    cache = small_cache()
    a = cache.add_sequence()
    cache.extend(a, 3)
    before = state(cache)
    for call in (
        lambda: cache.extend(99, 1),
        lambda: cache.extend(a, -1),
        lambda: cache.extend(a, 1.0),
        lambda: cache.free(99),
        lambda: cache.pages(99),
        lambda: cache.seq_lens([a, 99]),
        lambda: cache.block_table([99]),
        lambda: cache.prepare_batch([(a, 1), (99, 1)]),
        lambda: cache.prepare_batch([(a, 1), (a, 1)]),
        lambda: cache.prepare_batch([(a, 1), (a, -2)]),
    ):
        with pytest.raises(ValueError, match="unknown sequence|non-negative|twice"):
            call()
        assert state(cache) == before


# ---------------------------------------------------------------------------------------
# op inputs
# ---------------------------------------------------------------------------------------

def test_block_table_and_seq_lens():
    cache = small_cache()
    a, b, c = (cache.add_sequence() for _ in range(3))
    cache.extend(a, 5)                       # pages 0, 1
    cache.extend(b, 1)                       # page 2
    cache.extend(a, 4)                       # page 3

    table = cache.block_table([b, a, c])
    assert table.dtype == torch.int32 and table.tolist() == [[2, 0, 0], [0, 1, 3], [0, 0, 0]]
    assert cache.block_table([a], width=5, pad_value=-1).tolist() == [[0, 1, 3, -1, -1]]
    assert cache.block_table([c]).shape == (1, 1)
    assert cache.block_table([]).shape == (0, 1)
    with pytest.raises(ValueError, match="width"):
        cache.block_table([a, b], width=2)

    lens = cache.seq_lens([a, b, c])
    assert lens.dtype == torch.int32 and lens.tolist() == [9, 1, 0]


def test_prepare_batch():
    cache = small_cache(max_pages_per_seq=4)
    a, b, c = (cache.add_sequence() for _ in range(3))
    cache.extend(a, 6)                       # pages 0, 1
    batch = cache.prepare_batch([(b, 5), (a, 1), (c, 0)])
    assert isinstance(batch, PagedBatch)
    assert batch.seq_ids == (b, a, c) and batch.query_lens == (5, 1, 0)
    assert batch.num_seqs == 3 and batch.num_tokens == 6 and not batch.is_decode
    assert batch.seq_lens_host == (5, 7, 0) and batch.seq_lens.tolist() == [5, 7, 0]
    assert batch.seq_lens.dtype == torch.int32
    assert batch.cu_seqlens_q.dtype == torch.int32 and batch.cu_seqlens_q.tolist() == [0, 5, 6, 6]
    assert batch.max_seqlen_q == 5
    # b got pages 2, 3; a's token 6 lands in its page 1.
    assert batch.slot_mapping.dtype == torch.int64
    assert batch.slot_mapping.tolist() == [8, 9, 10, 11, 12, 6]
    assert batch.positions.dtype == torch.int64
    assert batch.positions.tolist() == [0, 1, 2, 3, 4, 6]
    assert batch.block_table.tolist() == [[2, 3], [0, 1], [0, 0]]

    decode = cache.prepare_batch([(a, 1), (b, 1)], block_table_width=cache.max_pages_per_seq,
                                 pad_value=-1)
    assert decode.is_decode and decode.max_seqlen_q == 1
    assert decode.block_table.tolist() == [[0, 1, -1, -1], [2, 3, -1, -1]]
    assert decode.slot_mapping.tolist() == [7, 13] and decode.positions.tolist() == [7, 5]

    empty = cache.prepare_batch([])
    assert empty.num_tokens == 0 and not empty.is_decode and empty.max_seqlen_q == 0
    assert empty.cu_seqlens_q.tolist() == [0] and empty.block_table.shape == (0, 1)


# ---------------------------------------------------------------------------------------
# the cache driving append_kv and paged_attention
# ---------------------------------------------------------------------------------------

def dense_causal(q, keys, values):
    """float64 causal attention of the last q.shape[0] positions of one sequence.
    q [n, Hq, D]; keys, values [L, Hk, D] -> [n, Hq, D]."""
    n, hq, d = q.shape
    group = hq // keys.shape[1]
    k = keys.double().repeat_interleave(group, dim=1)
    v = values.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) / math.sqrt(d)
    length = k.shape[0]
    i = torch.arange(n)[:, None]
    j = torch.arange(length)[None, :]
    scores = scores.masked_fill(j > i + length - n, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v)


TOLERANCES = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_cache_drives_paged_ops(device, dtype, page_size):
    """Several steps of chunked prefill and decode on interleaved sequences, one freed and
    replaced halfway, two layers with different contents, on a NaN-filled cache."""
    skip_if_unsupported(device, dtype, head_dim=16)
    hq, hk, d, layers = 4, 2, 16, 2
    cache = PagedKVCache(num_pages=64 // page_size + 8, page_size=page_size, num_kv_heads=hk,
                         head_dim=d, num_layers=layers, dtype=dtype, device=device,
                         fill_value=float("nan"))
    history = {}                             # seq id -> per layer [keys, values] (CPU)

    def add():
        s = cache.add_sequence()
        history[s] = [[torch.empty(0, hk, d, dtype=dtype)] * 2 for _ in range(layers)]
        return s

    a, b, c = add(), add(), add()
    # (seq, new tokens) per step: uneven chunks, interleaved so pages alternate between
    # sequences; c is freed after step 2 and d reuses its pages.
    steps = [[(a, 7), (b, 2), (c, 5)],
             [(b, 9), (a, 1), (c, 1)],
             [(a, 1), (b, 1), (c, 1)],         # decode
             "free c",
             [(b, 1), ("d", 11), (a, 4)],
             [("d", 1), (a, 1), (b, 1)]]       # decode
    pad = -1 if page_size == 3 else 0          # padding entries must never be read
    for step in steps:
        if step == "free c":
            cache.free(c)
            del history[c]
            continue
        d_id = next((s for s in history if s not in (a, b, c)), None)
        if any(s == "d" for s, _ in step) and d_id is None:
            d_id = add()
        step = [(d_id if s == "d" else s, n) for s, n in step]

        batch = cache.prepare_batch(step, pad_value=pad)
        t = batch.num_tokens
        for layer in range(layers):
            q = torch.randn(t, hq, d).to(dtype)
            k = (torch.randn(t, hk, d) + layer).to(dtype)
            v = (torch.randn(t, hk, d) - layer).to(dtype)
            cache.append(layer, k.to(device), v.to(device), batch.slot_mapping)
            k_cache, v_cache = cache.k_cache(layer), cache.v_cache(layer)
            if batch.is_decode:
                out = fastattn.paged_attention(q.to(device), k_cache, v_cache,
                                               batch.block_table, batch.seq_lens)
            else:
                out = fastattn.paged_attention(q.to(device), k_cache, v_cache,
                                               batch.block_table, batch.seq_lens,
                                               cu_seqlens_q=batch.cu_seqlens_q,
                                               max_seqlen_q=batch.max_seqlen_q)
            assert out.dtype == dtype and out.shape == (t, hq, d)
            out = out.cpu().double()
            assert not torch.isnan(out).any()

            start = 0
            for s, n in step:
                hist = history[s][layer]
                hist[0] = torch.cat([hist[0], k[start:start + n]])
                hist[1] = torch.cat([hist[1], v[start:start + n]])
                assert hist[0].shape[0] == cache.seq_len(s)
                ref = dense_causal(q[start:start + n], hist[0], hist[1])
                err = (out[start:start + n] - ref).abs().max().item()
                assert err <= TOLERANCES[dtype], (s, layer, err)
                start += n

    # Every written token is where the cache says it is.
    for s, per_layer in history.items():
        slots = cache.slot_mapping(s).cpu()
        for layer, (keys, values) in enumerate(per_layer):
            flat_k = cache.k_cache(layer).reshape(-1, hk, d).cpu()
            flat_v = cache.v_cache(layer).reshape(-1, hk, d).cpu()
            assert torch.equal(flat_k[slots], keys) and torch.equal(flat_v[slots], values)
