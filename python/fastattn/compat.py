"""FlashAttention-2's function names and signatures, on fastattn's ops.

Code written against ``flash_attn`` (2.x) can switch its import::

    from fastattn.compat import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

The argument names, defaults, masking (causal and windows aligned bottom-right), GQA/MQA
and return conventions are FlashAttention-2's. What differs:

- Devices and dtypes are fastattn's: CPU (float32, float16, bfloat16; any head dim up to
  512) and CUDA (float16, bfloat16; head dims that are multiples of 8 up to 256, where
  FlashAttention-2 also pads other head dims).
- Forward only: these functions are not differentiable (a backward through them raises
  NotImplementedError, as every fastattn op does). ``deterministic`` is accepted, and our
  forward is deterministic anyway.
- ``softmax_lse`` is returned in FlashAttention-2's layout, heads before tokens:
  ``(batch_size, nheads, seqlen_q)``, or ``(nheads, total_q)`` for varlen. fastattn's own
  lse is ``out.shape[:-1]`` (tokens before heads): compat returns a contiguous transposed
  copy. A query that sees no key gets output 0 and lse ``-inf`` (FlashAttention-2's
  non-split kernels write ``+inf`` there).
- ``return_attn_probs=True`` returns ``(out, softmax_lse, S_dmask)`` with ``S_dmask`` an empty
  tensor of shape ``(0,)``: FlashAttention-2 only fills ``S_dmask`` when ``dropout_p > 0``, and
  compat has no dropout, so this is what FlashAttention-2 itself returns for every call
  compat accepts. fastattn never materializes the probability matrix.
- Arguments fastattn does not implement raise ``NotImplementedError`` naming the argument:
  ``dropout_p != 0``, ``alibi_slopes``, ``rotary_cos`` / ``rotary_sin``, ``cache_batch_idx``,
  ``cache_leftpad``. ``num_splits`` is accepted and ignored (our decode kernels choose their
  own key splits; the result does not depend on it).
- Paged caches take any ``page_block_size >= 1`` (FlashAttention-2: multiples of 256). A
  paged call with several queries per sequence needs ``seqlen_q <=`` that sequence's number
  of keys, unless it has none (fastattn's extend form: the queries are the sequence's last
  positions); FlashAttention-2 would leave the leading queries without keys instead.
- Invalid arguments raise ``ValueError`` / ``TypeError`` whose message starts with the
  argument's name. Checks on tensor *values* (``cache_seqlens`` in range, block-table
  entries, ``cu_seqlens``) run inside the ops, without a host sync: on CUDA they surface at
  the next fastattn call or at ``fastattn.check_errors()``.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple, Union

import torch

from . import _api
from . import _checks as C

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache"]

Result = Union[torch.Tensor, Tuple[torch.Tensor, ...]]

_UNSUPPORTED = {
    "alibi_slopes": "ALiBi biases are not supported by fastattn",
    "rotary_cos": "rotary embeddings are not applied by fastattn; rotate q and k before the call",
    "rotary_sin": "rotary embeddings are not applied by fastattn; rotate q and k before the call",
    "cache_batch_idx": "cache_batch_idx is not supported; pass a paged cache with a block_table",
    "cache_leftpad": "left-padded KV caches are not supported",
}


def _reject_unsupported(**arguments) -> None:
    for name, value in arguments.items():
        if value is not None:
            raise NotImplementedError(f"{name}: {_UNSUPPORTED[name]}; expected None, "
                                      f"got {type(value).__name__}")


def _check_training_options(dropout_p, alibi_slopes, deterministic, return_attn_probs) -> None:
    """The arguments flash_attn_func and flash_attn_varlen_func share beyond our ops' own."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p: expected a float, got {type(dropout_p).__name__}")
    if dropout_p != 0:
        raise NotImplementedError(f"dropout_p: fastattn has no dropout (it is an inference "
                                  f"library); expected 0.0, got {dropout_p}")
    _reject_unsupported(alibi_slopes=alibi_slopes)
    C.boolean("deterministic", deterministic)
    C.boolean("return_attn_probs", return_attn_probs)


def _heads_first(lse: torch.Tensor) -> torch.Tensor:
    # FlashAttention-2 stores lse heads-major; callers index it that way, so hand back
    # a contiguous tensor rather than a transposed view.
    return lse.transpose(-1, -2).contiguous()


def _fa2_result(result, q: torch.Tensor, return_attn_probs: bool) -> Result:
    if not return_attn_probs:
        return result
    out, lse = result
    return out, _heads_first(lse), torch.empty((0,), dtype=q.dtype, device=q.device)


@contextlib.contextmanager
def _named_as_fa2(renames):
    """Where compat derives one of our op's arguments from a FlashAttention-2 argument, an
    error the op raises about it would name an argument the caller never passed: put the
    caller's name first and say how ours was made. renames: {ours: (FA2 name, derivation)}."""
    try:
        yield
    except (ValueError, TypeError) as error:
        ours = str(error).partition(":")[0]
        if ours not in renames:
            raise
        theirs, derivation = renames[ours]
        kind = TypeError if isinstance(error, TypeError) else ValueError
        raise kind(f"{theirs}: {error} (fastattn's {ours} here is {derivation})") from error


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False) -> Result:
    """FlashAttention-2's ``flash_attn_func`` on ``fastattn.attention``.

    q: (batch_size, seqlen_q, nheads, headdim); k, v: (batch_size, seqlen_k, nheads_k,
    headdim) with nheads % nheads_k == 0 (GQA/MQA). Causal masking and ``window_size``
    are aligned bottom-right, as in FlashAttention-2.

    Returns out (batch_size, seqlen_q, nheads, headdim), or with ``return_attn_probs=True``
    ``(out, softmax_lse, S_dmask)``: softmax_lse float32 (batch_size, nheads, seqlen_q),
    S_dmask an empty tensor (see the module docstring). ``dropout_p`` must be 0 and
    ``alibi_slopes`` None (NotImplementedError otherwise).
    """
    _check_training_options(dropout_p, alibi_slopes, deterministic, return_attn_probs)
    result = _api.attention(q, k, v, causal=causal, softmax_scale=softmax_scale,
                            window_size=window_size, softcap=softcap,
                            return_lse=return_attn_probs)
    return _fa2_result(result, q, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False,
                           return_attn_probs=False, block_table=None) -> Result:
    """FlashAttention-2's ``flash_attn_varlen_func`` on ``fastattn.attention_varlen``, or
    with ``block_table`` on ``fastattn.paged_attention`` (extend form).

    q: (total_q, nheads, headdim); cu_seqlens_q, cu_seqlens_k: int32 (batch_size + 1,);
    max_seqlen_q, max_seqlen_k: ints. Sequence b owns query rows
    cu_seqlens_q[b]:cu_seqlens_q[b+1] and cu_seqlens_k[b+1] - cu_seqlens_k[b] keys.
    Without block_table, k, v: (total_k, nheads_k, headdim), packed like q.
    With block_table: int32 (batch_size, max_num_blocks_per_seq), and k, v are a paged
    cache (num_blocks, page_block_size, nheads_k, headdim): key t of sequence b is at
    k[block_table[b, t // page_block_size], t % page_block_size]. Any page_block_size
    works; each sequence needs as many keys as queries unless it has none.

    Returns out (total_q, nheads, headdim), or with ``return_attn_probs=True``
    ``(out, softmax_lse, S_dmask)``: softmax_lse float32 (nheads, total_q), S_dmask an
    empty tensor. ``dropout_p`` must be 0 and ``alibi_slopes`` None.
    """
    _check_training_options(dropout_p, alibi_slopes, deterministic, return_attn_probs)
    options = dict(causal=causal, softmax_scale=softmax_scale, window_size=window_size,
                   softcap=softcap, return_lse=return_attn_probs)
    if block_table is None:
        result = _api.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                       max_seqlen_k, **options)
        return _fa2_result(result, q, return_attn_probs)

    C.tensor("q", q, 3, "[total_q, nheads, headdim]")
    C.tensor("block_table", block_table, 2, "[batch_size, max_num_blocks_per_seq]")
    batch = block_table.shape[0]
    C.index_tensor("cu_seqlens_k", cu_seqlens_k, torch.int32, (batch + 1,),
                   "[batch_size + 1] (batch_size = block_table.shape[0])", q)
    C.non_negative_int("max_seqlen_k", max_seqlen_k)
    seq_lens = cu_seqlens_k[1:] - cu_seqlens_k[:-1]
    renames = {"k_cache": ("k", "k, read as a paged cache through block_table"),
               "v_cache": ("v", "v, read as a paged cache through block_table"),
               "seq_lens": ("cu_seqlens_k", "cu_seqlens_k[1:] - cu_seqlens_k[:-1]")}
    with _named_as_fa2(renames):
        result = _api.paged_attention(q, k, v, block_table, seq_lens, cu_seqlens_q=cu_seqlens_q,
                                      max_seqlen_q=max_seqlen_q, **options)
    return _fa2_result(result, q, return_attn_probs)


def _check_kvcache_operands(q, k_cache, v_cache, k, v, block_table) -> None:
    """Shapes, dtypes and devices, all before the in-place append, so that a call rejected
    for any of them leaves the cache untouched."""
    C.tensor("q", q, 4, "[batch_size, seqlen_q, nheads, headdim]")
    C.float_dtype("q", q)
    C.last_dim_contiguous("q", q)
    C.head_dim("q", q)
    batch, _, num_heads, head_dim = q.shape
    paged = block_table is not None
    cache_expected = ("[num_blocks, page_block_size, nheads_k, headdim]" if paged
                      else "[batch_size_cache, seqlen_cache, nheads_k, headdim]")
    operands = [("k_cache", k_cache, cache_expected), ("v_cache", v_cache, cache_expected)]
    if k is not None or v is not None:
        if k is None or v is None:
            missing = "k" if k is None else "v"
            raise ValueError(f"{missing}: k and v are given together (the new keys and values "
                             f"to append), got {missing} = None")
        operands += [("k", k, "[batch_size, seqlen_new, nheads_k, headdim]"),
                     ("v", v, "[batch_size, seqlen_new, nheads_k, headdim]")]
    for name, t, expected in operands:
        C.tensor(name, t, 4, expected)
        C.same_device(name, t, q, "q")
        C.same_dtype(name, t, q, "q")
        C.last_dim_contiguous(name, t)
    rows, row_len, num_kv_heads = k_cache.shape[:3]
    C.shape("k_cache", k_cache, (rows, row_len, num_kv_heads, head_dim), cache_expected)
    C.shape("v_cache", v_cache, tuple(k_cache.shape), f"{cache_expected} (the shape of k_cache)")
    C.gqa("q", num_heads, "k_cache", num_kv_heads)
    if k is not None:
        new_shape = (batch, k.shape[1], num_kv_heads, head_dim)
        C.shape("k", k, new_shape, "[batch_size, seqlen_new, nheads_k, headdim]")
        C.shape("v", v, new_shape, "[batch_size, seqlen_new, nheads_k, headdim] (the shape of k)")
    if paged:
        C.tensor("block_table", block_table, 2, "[batch_size, max_num_blocks_per_seq]")
        C.index_tensor("block_table", block_table, torch.int32, (batch, block_table.shape[1]),
                       "[batch_size, max_num_blocks_per_seq]", q)
        if row_len < 1:
            raise ValueError(f"k_cache: page_block_size (dim 1) must be >= 1, "
                             f"got shape {C.shape_str(k_cache)}")
    elif rows < batch:
        raise ValueError(f"k_cache: expected batch_size_cache >= batch_size = {batch} "
                         f"(that of q), got shape {C.shape_str(k_cache)}")


def _cache_lengths(cache_seqlens, batch: int, appending: bool, seqlen_new: int, capacity: int,
                   q: torch.Tensor) -> torch.Tensor:
    """int32 [batch]: each row's cached keys before the append."""
    if cache_seqlens is None:
        if appending:
            raise ValueError("cache_seqlens: required when k and v are given (where to append "
                             "them), got None")
        return torch.full((batch,), capacity, dtype=torch.int32, device=q.device)
    if isinstance(cache_seqlens, torch.Tensor):
        C.index_tensor("cache_seqlens", cache_seqlens, torch.int32, (batch,), "[batch_size]", q)
        return cache_seqlens
    # A Python int is checked here, where it costs nothing; tensor values are checked by the op.
    C.non_negative_int("cache_seqlens", cache_seqlens)
    if cache_seqlens + seqlen_new > capacity:
        raise ValueError(f"cache_seqlens: {cache_seqlens} cached + {seqlen_new} new keys exceed "
                         f"the cache's {capacity} keys per sequence")
    return torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)


def _append(k_cache, v_cache, k, v, cache_lens, block_table) -> None:
    """Writes k, v [B, S_new, Hk, D] at positions cache_lens[b] + t of sequence b, in place.

    A position outside the sequence's pages, or on a page outside the cache, is skipped (slot
    -1) rather than written: it can only come from invalid cache_seqlens or block_table
    values, which the attention op then reports, and a skipped write never lands in another
    sequence's keys.
    """
    batch, seqlen_new = k.shape[:2]
    num_pages, page_size = k_cache.shape[:2]
    max_pages = block_table.shape[1]
    if batch * seqlen_new == 0 or max_pages == 0:
        return
    pos = cache_lens.to(torch.int64)[:, None] + torch.arange(seqlen_new, device=k.device)
    page_index = pos.div(page_size, rounding_mode="floor")
    page = block_table.to(torch.int64).gather(1, page_index.clamp(0, max_pages - 1))
    valid = (pos >= 0) & (page_index < max_pages) & (page >= 0) & (page < num_pages)
    slots = torch.where(valid, page * page_size + pos % page_size, -1)
    tokens = batch * seqlen_new
    _api.append_kv(k_cache, v_cache, k.reshape(tokens, *k.shape[2:]),
                   v.reshape(tokens, *v.shape[2:]), slots.reshape(tokens))


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens: Optional[Union[int, torch.Tensor]] = None,
                            cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                            return_softmax_lse=False) -> Result:
    """FlashAttention-2's ``flash_attn_with_kvcache`` on fastattn's paged and dense ops.

    q: (batch_size, seqlen_q, nheads, headdim).
    k_cache, v_cache: a dense cache (batch_size_cache, seqlen_cache, nheads_k, headdim) with
    batch_size_cache >= batch_size (row b serves sequence b), or with ``block_table`` int32
    (batch_size, max_num_blocks_per_seq) a paged cache (num_blocks, page_block_size,
    nheads_k, headdim), any page_block_size >= 1.
    cache_seqlens: int32 (batch_size,), or an int for every row: the keys already cached;
    None means the whole cache (seqlen_cache, or max_num_blocks_per_seq * page_block_size).
    k, v: optional (batch_size, seqlen_new, nheads_k, headdim), written into the caches in
    place at positions cache_seqlens[b] .. cache_seqlens[b] + seqlen_new - 1 (needs
    cache_seqlens); attention then covers cache_seqlens[b] + seqlen_new keys.
    Causal masking and windows are aligned bottom-right (the queries are the last positions).

    Returns out (batch_size, seqlen_q, nheads, headdim), or with ``return_softmax_lse=True``
    ``(out, softmax_lse)`` with softmax_lse float32 (batch_size, nheads, seqlen_q).

    How it maps: one query per sequence (seqlen_q == 1) uses the decode form of
    ``fastattn.paged_attention``; a dense cache is read in place as one page of seqlen_cache
    keys per row. Several queries use its extend form for a paged cache, and
    ``fastattn.attention`` with ``kv_lens`` for a dense one. The append is
    ``fastattn.append_kv`` with slots computed on the device (no host sync). Nothing copies
    the cache. A paged cache with seqlen_q > 1 needs seqlen_q <= cache_seqlens[b] +
    seqlen_new for every row with keys.

    Not supported (NotImplementedError): rotary_cos / rotary_sin, cache_batch_idx,
    cache_leftpad, alibi_slopes. rotary_interleaved only matters with rotary; num_splits is
    ignored.
    """
    _reject_unsupported(rotary_cos=rotary_cos, rotary_sin=rotary_sin,
                        cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad,
                        alibi_slopes=alibi_slopes)
    C.boolean("rotary_interleaved", rotary_interleaved)
    if isinstance(num_splits, bool) or not isinstance(num_splits, int):
        raise TypeError(f"num_splits: expected an int, got {type(num_splits).__name__}")
    C.boolean("return_softmax_lse", return_softmax_lse)
    C.boolean("causal", causal)
    _check_kvcache_operands(q, k_cache, v_cache, k, v, block_table)
    batch, seqlen_q, num_heads, head_dim = q.shape
    # Also checked by the op, but that runs after the append.
    C.softmax_scale(softmax_scale, head_dim)
    C.window(window_size)
    C.softcap(softcap)

    dense = block_table is None
    if dense:
        # Row b of a dense cache is page b of a paged cache with one page per sequence.
        block_table = torch.arange(batch, dtype=torch.int32, device=q.device)[:, None]
    seqlen_new = 0 if k is None else k.shape[1]
    capacity = block_table.shape[1] * k_cache.shape[1]
    cache_lens = _cache_lengths(cache_seqlens, batch, k is not None, seqlen_new, capacity, q)
    if k is not None:
        _append(k_cache, v_cache, k, v, cache_lens, block_table)
    seq_lens = cache_lens + seqlen_new if seqlen_new else cache_lens

    options = dict(causal=causal, softmax_scale=softmax_scale, window_size=window_size,
                   softcap=softcap, return_lse=True)
    derivation = "cache_seqlens + seqlen_new"
    if dense:
        derivation += ", read from a dense cache as one page of seqlen_cache keys per row"
    renames = {"seq_lens": ("cache_seqlens", derivation), "kv_lens": ("cache_seqlens", derivation)}
    with _named_as_fa2(renames):
        if seqlen_q == 1:
            out, lse = _api.paged_attention(q[:, 0], k_cache, v_cache, block_table, seq_lens,
                                            **options)
        elif dense:
            out, lse = _api.attention(q, k_cache[:batch], v_cache[:batch], kv_lens=seq_lens,
                                      **options)
        else:
            cu_seqlens_q = torch.arange(0, (batch + 1) * seqlen_q, seqlen_q, dtype=torch.int32,
                                        device=q.device)
            out, lse = _api.paged_attention(q.reshape(batch * seqlen_q, num_heads, head_dim),
                                            k_cache, v_cache, block_table, seq_lens,
                                            cu_seqlens_q=cu_seqlens_q, max_seqlen_q=seqlen_q,
                                            **options)
    out = out.reshape(batch, seqlen_q, num_heads, head_dim)
    if not return_softmax_lse:
        return out
    return out, _heads_first(lse.reshape(batch, seqlen_q, num_heads))
