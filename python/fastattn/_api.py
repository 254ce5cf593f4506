"""Public functions: argument checks, defaults, then torch.ops.fastattn.*.

Layouts follow FlashAttention: dense [B, S, H, D], packed [T, H, D], paged cache
[P, page_size, Hk, D]; the last dimension is contiguous. Every attention function
returns `out`, or `(out, lse)` with `return_lse=True` (lse: float32, natural log,
shape out.shape[:-1]; -inf for a query that sees no key, whose output is 0).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from . import _checks as C

Out = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]

_ops = torch.ops.fastattn


def _result(out: torch.Tensor, lse: torch.Tensor, return_lse: bool) -> Out:
    return (out, lse) if return_lse else out


def _check_qkv(q, k, v, q_expected: str, kv_expected: str, ndim: int):
    C.tensor("q", q, ndim, q_expected)
    C.tensor("k", k, ndim, kv_expected)
    C.tensor("v", v, ndim, kv_expected)
    C.float_dtype("q", q)
    for name, t in (("k", k), ("v", v)):
        C.same_device(name, t, q, "q")
        C.same_dtype(name, t, q, "q")
        C.last_dim_contiguous(name, t)
    C.last_dim_contiguous("q", q)
    C.head_dim("q", q)


def _check_options(causal, softmax_scale, window_size, softcap, return_lse, d):
    C.boolean("causal", causal)
    C.boolean("return_lse", return_lse)
    return C.softmax_scale(softmax_scale, d), C.window(window_size), C.softcap(softcap)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              softmax_scale: Optional[float] = None, window_size=(-1, -1), softcap: float = 0.0,
              kv_lens: Optional[torch.Tensor] = None, return_lse: bool = False) -> Out:
    """Dense attention, self or cross.

    q [B, Sq, Hq, D]; k, v [B, Sk, Hk, D] with Hq % Hk == 0 (GQA/MQA).
    kv_lens: optional int32 [B], the number of valid keys of each batch row
    (keys at positions >= kv_lens[b] are ignored; cross-attention key padding).
    Causal masking is aligned bottom-right: key j is visible to query i iff
    j <= i + Sk_b - Sq, with Sk_b = kv_lens[b] (or Sk).
    """
    _check_qkv(q, k, v, "[B, Sq, Hq, D]", "[B, Sk, Hk, D]", 4)
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    C.shape("k", k, (B, Sk, Hk, D), "[B, Sk, Hk, D]")
    C.shape("v", v, (B, Sk, Hk, D), "[B, Sk, Hk, D] (the shape of k)")
    C.gqa("q", Hq, "k", Hk)
    if kv_lens is not None:
        C.index_tensor("kv_lens", kv_lens, torch.int32, (B,), "[B]", q)
    scale, (wl, wr), cap = _check_options(causal, softmax_scale, window_size, softcap, return_lse, D)
    out, lse = _ops.attention(q, k, v, kv_lens, scale, causal, wl, wr, cap)
    return _result(out, lse, return_lse)


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                   softmax_scale: Optional[float] = None, window_size=(-1, -1),
                   softcap: float = 0.0, kv_lens: Optional[torch.Tensor] = None,
                   return_lse: bool = False) -> Out:
    """`attention` with causal=True by default (decoder prefill)."""
    return attention(q, k, v, causal=causal, softmax_scale=softmax_scale, window_size=window_size,
                     softcap=softcap, kv_lens=kv_lens, return_lse=return_lse)


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    kv_lens: Optional[torch.Tensor] = None, softmax_scale: Optional[float] = None,
                    window_size=(-1, -1), softcap: float = 0.0, return_lse: bool = False) -> Out:
    """`attention` with causal=False: queries of one sequence over keys of another.

    kv_lens int32 [B] gives each row's number of valid (unpadded) keys.
    """
    return attention(q, k, v, causal=False, softmax_scale=softmax_scale, window_size=window_size,
                     softcap=softcap, kv_lens=kv_lens, return_lse=return_lse)


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                     max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = False,
                     softmax_scale: Optional[float] = None, window_size=(-1, -1),
                     softcap: float = 0.0, return_lse: bool = False) -> Out:
    """Attention over packed variable-length sequences.

    q [Tq, Hq, D]; k, v [Tk, Hk, D]; cu_seqlens_q, cu_seqlens_k int32 [B + 1],
    non-decreasing from 0 to Tq (resp. Tk): sequence b owns rows
    cu_seqlens[b]:cu_seqlens[b+1]. max_seqlen_* bound the per-sequence lengths.
    """
    _check_qkv(q, k, v, "[Tq, Hq, D]", "[Tk, Hk, D]", 3)
    Tq, Hq, D = q.shape
    Tk, Hk = k.shape[0], k.shape[1]
    C.shape("k", k, (Tk, Hk, D), "[Tk, Hk, D]")
    C.shape("v", v, (Tk, Hk, D), "[Tk, Hk, D] (the shape of k)")
    C.gqa("q", Hq, "k", Hk)
    C.tensor("cu_seqlens_q", cu_seqlens_q, 1, "[B + 1]")
    if cu_seqlens_q.shape[0] < 1:
        raise ValueError("cu_seqlens_q: expected shape [B + 1] with at least one entry, got [0]")
    B = cu_seqlens_q.shape[0] - 1
    C.index_tensor("cu_seqlens_q", cu_seqlens_q, torch.int32, (B + 1,), "[B + 1]", q)
    C.index_tensor("cu_seqlens_k", cu_seqlens_k, torch.int32, (B + 1,),
                   "[B + 1] (the shape of cu_seqlens_q)", q)
    C.non_negative_int("max_seqlen_q", max_seqlen_q)
    C.non_negative_int("max_seqlen_k", max_seqlen_k)
    C.packed_lengths("cu_seqlens_q", B, "q", Tq, "max_seqlen_q", max_seqlen_q)
    C.packed_lengths("cu_seqlens_k", B, "k", Tk, "max_seqlen_k", max_seqlen_k)
    scale, (wl, wr), cap = _check_options(causal, softmax_scale, window_size, softcap, return_lse, D)
    out, lse = _ops.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                     max_seqlen_k, scale, causal, wl, wr, cap)
    return _result(out, lse, return_lse)


Scale = Union[None, float, torch.Tensor]


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_table: torch.Tensor, seq_lens: torch.Tensor, *,
                    cu_seqlens_q: Optional[torch.Tensor] = None,
                    max_seqlen_q: Optional[int] = None, causal: bool = True,
                    softmax_scale: Optional[float] = None, window_size=(-1, -1),
                    softcap: float = 0.0, return_lse: bool = False, k_scale: Scale = None,
                    v_scale: Scale = None) -> Out:
    """Attention over a paged KV cache, read in place through the block table.

    Decode: q [B, Hq, D], one new token per sequence (its last position).
    Extend / chunked prefill: q [Tq, Hq, D] with cu_seqlens_q int32 [B + 1]; the
    query tokens of sequence b are its last cu_seqlens_q[b+1] - cu_seqlens_q[b]
    positions. max_seqlen_q bounds those counts (default Tq, always safe).
    k_cache, v_cache [P, page_size, Hk, D]; block_table int32 [B, max_pages];
    seq_lens int32 [B]: keys per sequence, the new tokens included (append them
    with append_kv first); 0 marks a padding entry whose queries get output 0
    and lse -inf. Token t of sequence b lives in page
    block_table[b, t // page_size] at offset t % page_size.

    fp8 caches: k_cache, v_cache of dtype float8_e4m3fn or float8_e5m2 (q keeps its dtype),
    read as float(code) * scale. k_scale, v_scale: None (1.0), a float, or a float32 tensor
    of shape [] or [Hk] on the cache's device; scales are for fp8 caches only. On CUDA the
    extend path (cu_seqlens_q) needs D % 16 == 0 for an fp8 cache.
    """
    C.tensor("q", q, 3, "[B, Hq, D] (decode) or [Tq, Hq, D] (with cu_seqlens_q)")
    C.tensor("k_cache", k_cache, 4, "[P, page_size, Hk, D]")
    C.tensor("v_cache", v_cache, 4, "[P, page_size, Hk, D]")
    C.float_dtype("q", q)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        C.same_device(name, t, q, "q")
        C.cache_dtype(name, t, q, "q")
        C.last_dim_contiguous(name, t)
    C.same_dtype("v_cache", v_cache, k_cache, "k_cache")
    C.last_dim_contiguous("q", q)
    C.head_dim("q", q)
    _, Hq, D = q.shape
    P, page_size, Hk = k_cache.shape[0], k_cache.shape[1], k_cache.shape[2]
    C.shape("k_cache", k_cache, (P, page_size, Hk, D), "[P, page_size, Hk, D]")
    C.shape("v_cache", v_cache, (P, page_size, Hk, D), "[P, page_size, Hk, D] (the shape of k_cache)")
    if page_size < 1:
        raise ValueError(f"k_cache: page_size (dim 1) must be >= 1, got shape {C.shape_str(k_cache)}")
    C.gqa("q", Hq, "k_cache", Hk)
    C.tensor("block_table", block_table, 2, "[B, max_pages]")
    if page_size * block_table.shape[1] > C.INT32_MAX:
        raise ValueError(f"block_table: max_pages * page_size = {block_table.shape[1]} * {page_size} "
                         f"exceeds 2**31 - 1 keys per sequence")
    B = block_table.shape[0]
    C.index_tensor("block_table", block_table, torch.int32, (B, block_table.shape[1]),
                   "[B, max_pages]", q)
    C.index_tensor("seq_lens", seq_lens, torch.int32, (B,), "[B] (B = block_table.shape[0])", q)
    if cu_seqlens_q is None:
        if q.shape[0] != B:
            raise ValueError(f"q: expected shape [B, Hq, D] = [{B}, {Hq}, {D}] for decode "
                             f"(B = block_table.shape[0]), got {C.shape_str(q)}; "
                             "pass cu_seqlens_q for several query tokens per sequence")
        if max_seqlen_q is not None and max_seqlen_q != 1:
            raise ValueError(f"max_seqlen_q: decode (no cu_seqlens_q) has one query per sequence, got {max_seqlen_q}")
        max_q = 1
    else:
        C.index_tensor("cu_seqlens_q", cu_seqlens_q, torch.int32, (B + 1,),
                       "[B + 1] (B = block_table.shape[0])", q)
        max_q = q.shape[0] if max_seqlen_q is None else C.non_negative_int("max_seqlen_q", max_seqlen_q)
        C.packed_lengths("cu_seqlens_q", B, "q", q.shape[0], "max_seqlen_q", max_q)
    scale, (wl, wr), cap = _check_options(causal, softmax_scale, window_size, softcap, return_lse, D)
    ks, ks_value = C.kv_scale("k_scale", k_scale, k_cache)
    vs, vs_value = C.kv_scale("v_scale", v_scale, v_cache)
    out, lse = _ops.paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q,
                                    max_q, scale, causal, wl, wr, cap, ks, vs, ks_value, vs_value)
    return _result(out, lse, return_lse)


def append_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              slot_mapping: torch.Tensor, *, k_scale: Scale = None, v_scale: Scale = None) -> None:
    """Write new keys/values into the paged cache, in place.

    k_cache, v_cache [P, page_size, Hk, D]; k, v [T, Hk, D]; slot_mapping int64
    [T] with slot = page * page_size + offset; tokens with slot < 0 are skipped
    (padding). Slots must be < P * page_size.

    An fp8 cache (float8_e4m3fn, float8_e5m2) stores
    saturate(round_nearest_even(x / scale)): the division in float32, values beyond the
    format's finite range (e4m3fn +-448, e5m2 +-57344; infinities too) saturate, NaN stays
    NaN. k_scale, v_scale as for paged_attention.
    """
    C.tensor("k_cache", k_cache, 4, "[P, page_size, Hk, D]")
    C.tensor("v_cache", v_cache, 4, "[P, page_size, Hk, D]")
    C.tensor("k", k, 3, "[T, Hk, D]")
    C.tensor("v", v, 3, "[T, Hk, D]")
    fp8 = k_cache.dtype in C.FP8_DTYPES
    C.float_dtype("k" if fp8 else "k_cache", k if fp8 else k_cache)
    C.head_dim("k_cache", k_cache)
    P, page_size, Hk, D = k_cache.shape
    C.shape("v_cache", v_cache, (P, page_size, Hk, D), "[P, page_size, Hk, D] (the shape of k_cache)")
    T = k.shape[0]
    C.shape("k", k, (T, Hk, D), "[T, Hk, D] (Hk, D of k_cache)")
    C.shape("v", v, (T, Hk, D), "[T, Hk, D] (the shape of k)")
    for name, t in (("v_cache", v_cache), ("k", k), ("v", v)):
        C.same_device(name, t, k_cache, "k_cache")
    C.same_dtype("v_cache", v_cache, k_cache, "k_cache")
    # An fp8 cache takes k, v of any float dtype (quantized); other caches their own.
    ref, ref_name = (k, "k") if fp8 else (k_cache, "k_cache")
    if not fp8:
        C.same_dtype("k", k, ref, ref_name)
    C.same_dtype("v", v, ref, ref_name)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v)):
        C.last_dim_contiguous(name, t)
    C.index_tensor("slot_mapping", slot_mapping, torch.int64, (T,), "[T] (T = k.shape[0])", k_cache,
                   "k_cache")
    ks, ks_value = C.kv_scale("k_scale", k_scale, k_cache)
    vs, vs_value = C.kv_scale("v_scale", v_scale, v_cache)
    _ops.append_kv(k_cache, v_cache, k, v, slot_mapping, ks, vs, ks_value, vs_value)


def merge_attention_states(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                           lse_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial attentions over disjoint key sets into one.

    out_a, out_b [..., H, D] (the same shape and dtype); lse_a, lse_b float32
    with shape out.shape[:-1]. Returns (out, lse) equal to attention over the
    union of the keys. A side with lse -inf (no keys) contributes nothing. lse values
    must be finite or -inf, as fastattn produces them (they are not checked: that would
    need a device sync); +inf or NaN give NaN.
    """
    C.tensor_min_dims("out_a", out_a, 2, "[..., H, D]")
    C.float_dtype("out_a", out_a)
    C.last_dim_contiguous("out_a", out_a)
    C.tensor("out_b", out_b, out_a.dim(), "[..., H, D] (the shape of out_a)")
    C.shape("out_b", out_b, tuple(out_a.shape), "[..., H, D] (the shape of out_a)")
    C.same_device("out_b", out_b, out_a, "out_a")
    C.same_dtype("out_b", out_b, out_a, "out_a")
    C.last_dim_contiguous("out_b", out_b)
    C.head_dim("out_a", out_a)
    lse_shape = tuple(out_a.shape[:-1])
    for name, t in (("lse_a", lse_a), ("lse_b", lse_b)):
        C.tensor(name, t, len(lse_shape), "out_a.shape[:-1]")
        if t.dtype != torch.float32:
            raise TypeError(f"{name}: expected dtype float32, got {str(t.dtype).replace('torch.', '')}")
        C.shape(name, t, lse_shape, "out_a.shape[:-1]")
        C.same_device(name, t, out_a, "out_a")
    return tuple(_ops.merge_attention_states(out_a, lse_a, out_b, lse_b))
