"""Plain PyTorch reference implementations of the fastattn ops.

These are written for clarity, not speed: they loop over sequences, build an explicit
boolean visibility matrix and run a textbook softmax. Tests use them as ground truth, and
the docs use them as the executable statement of the semantics in DESIGN.md section 1.

Every function takes an optional ``dtype``: the precision the reference computes in.
``None`` means ``torch.float64`` (the ground truth). Passing the input precision (for
example ``torch.float16``) gives PyTorch's own error at that precision, which the tests use
to size their tolerances.

Attention references return ``(out, lse)`` with both tensors in the compute dtype.
A query that sees no key gets ``out = 0`` and ``lse = -inf``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "visibility_mask",
    "ref_attention",
    "ref_attention_varlen",
    "ref_paged_attention",
    "ref_append_kv",
    "ref_merge_attention_states",
    "ref_fp8_quantize",
    "ref_fp8_dequantize",
]

# fp8 formats: (mantissa bits, smallest normal exponent, largest finite value).
_FP8 = {torch.float8_e4m3fn: (3, -6, 448.0), torch.float8_e5m2: (2, -14, 57344.0)}


def _scale_of(scale, num_kv_heads: int):
    """A k_scale / v_scale argument as float64 broadcastable over [..., Hk, D]."""
    if scale is None:
        return torch.ones((), dtype=torch.float64)
    if isinstance(scale, torch.Tensor):
        s = scale.detach().to("cpu", torch.float64)
        return s.reshape(num_kv_heads, 1) if s.dim() == 1 else s
    return torch.tensor(float(scale), dtype=torch.float64)


def ref_fp8_quantize(x, scale, fp8_dtype):
    """The codes ``append_kv`` stores in an fp8 cache: saturate(round_nearest_even(x / scale)).

    x [..., Hk, D]; scale as for ``append_kv`` (None, float, or float32 [] or [Hk]). The
    division is in float32, as the kernels do it; the rounding is exact (float64 on the
    format's grid), ties to even; values beyond the finite range (infinities included)
    saturate to +-max, NaN stays NaN. Returns a CPU tensor of ``fp8_dtype``.
    """
    mant_bits, min_exp, max_value = _FP8[fp8_dtype]
    scale32 = _scale_of(scale, x.shape[-2]).to(torch.float32)
    y = (x.detach().to("cpu", torch.float32) / scale32).to(torch.float64)
    _, exp = torch.frexp(y)  # |y| = m * 2^exp, m in [0.5, 1)
    quantum = torch.exp2((torch.clamp(exp - 1, min=min_exp) - mant_bits).to(torch.float64))
    q = torch.round(y.abs() / quantum) * quantum  # torch.round: half to even; exact here
    q = torch.where(torch.isnan(y), y, torch.copysign(torch.clamp(q, max=max_value), y))
    q = torch.where(torch.isinf(y), torch.copysign(torch.full_like(y, max_value), y), q)
    return q.to(fp8_dtype)  # every value is representable: the cast is exact


def ref_fp8_dequantize(cache, scale, dtype=None):
    """Values of an fp8 cache [..., Hk, D]: float(code) * scale, in ``dtype`` (float64)."""
    dtype = dtype or torch.float64
    value = cache.detach().to("cpu", torch.float64) * _scale_of(scale, cache.shape[-2])
    return value.to(device=cache.device, dtype=dtype)


def visibility_mask(q_len, k_len, causal=False, window_size=(-1, -1), device=None):
    """Boolean [q_len, k_len] matrix: entry (i, j) is True iff key j is visible to query i.

    Causal masking and the window are aligned bottom-right: query i sits at key position
    ``i + k_len - q_len``. ``window_size=(left, right)`` keeps keys in
    ``[pos - left, pos + right]``; -1 leaves that side unbounded. Causal and window combine
    as an intersection.
    """
    left, right = window_size
    i = torch.arange(q_len, device=device).unsqueeze(1)  # [q_len, 1]
    j = torch.arange(k_len, device=device).unsqueeze(0)  # [1, k_len]
    pos = i + k_len - q_len  # key position of each query
    visible = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        visible &= j <= pos
    if left >= 0:
        visible &= j >= pos - left
    if right >= 0:
        visible &= j <= pos + right
    return visible


def _attend(q, k, v, causal, softmax_scale, window_size, softcap, dtype):
    """Attention of one sequence. q [Sq, Hq, D]; k, v [Sk, Hk, D] (all keys valid).

    Returns out [Sq, Hq, D] and lse [Sq, Hq], both in ``dtype``.
    """
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    q_len, num_heads, head_dim = q.shape
    k_len, num_kv_heads = k.shape[0], k.shape[1]
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)

    # GQA / MQA: query head h reads kv head h // (Hq // Hk).
    group = num_heads // num_kv_heads
    k = k.repeat_interleave(group, dim=1)  # [Sk, Hq, D]
    v = v.repeat_interleave(group, dim=1)  # [Sk, Hq, D]

    scores = torch.einsum("qhd,khd->hqk", q, k) * softmax_scale  # [Hq, Sq, Sk]
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    visible = visibility_mask(q_len, k_len, causal, window_size, device=q.device)
    scores = scores.masked_fill(~visible, float("-inf"))

    lse = torch.logsumexp(scores, dim=-1)  # [Hq, Sq]; -inf where no key is visible
    probs = torch.softmax(scores, dim=-1)  # [Hq, Sq, Sk]
    # A row without a visible key is all -inf, which softmax turns into NaN: it attends to
    # nothing, so its probabilities (and output) are 0.
    no_key = ~visible.any(dim=-1)  # [Sq]
    probs = probs.masked_fill(no_key.view(1, q_len, 1), 0.0)
    out = torch.einsum("hqk,khd->qhd", probs, v)  # [Sq, Hq, D]
    return out, lse.transpose(0, 1)  # lse [Sq, Hq]


def ref_attention(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1),
                  softcap=0.0, kv_lens=None, dtype=None):
    """Reference for ``fastattn.attention``.

    q [B, Sq, Hq, D]; k, v [B, Sk, Hk, D]; kv_lens optional [B] (valid keys per row; keys at
    or beyond kv_lens[b] are never read). Returns out [B, Sq, Hq, D], lse [B, Sq, Hq].
    """
    dtype = dtype or torch.float64
    batch, q_len, num_heads, head_dim = q.shape
    outs, lses = [], []
    for b in range(batch):
        k_len = k.shape[1] if kv_lens is None else int(kv_lens[b])
        out, lse = _attend(q[b], k[b, :k_len], v[b, :k_len], causal, softmax_scale,
                           window_size, softcap, dtype)
        outs.append(out)
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def ref_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None,
                         max_seqlen_k=None, *, causal=False, softmax_scale=None,
                         window_size=(-1, -1), softcap=0.0, dtype=None):
    """Reference for ``fastattn.attention_varlen``: loops over the packed sequences.

    q [Tq, Hq, D]; k, v [Tk, Hk, D]; cu_seqlens_* [B+1]. Returns out [Tq, Hq, D], lse [Tq, Hq].
    ``max_seqlen_*`` are accepted for signature parity and ignored.
    """
    dtype = dtype or torch.float64
    out = torch.zeros(q.shape, dtype=dtype, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=dtype, device=q.device)
    cu_q = [int(x) for x in cu_seqlens_q]
    cu_k = [int(x) for x in cu_seqlens_k]
    for b in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        if q1 == q0:
            continue
        out[q0:q1], lse[q0:q1] = _attend(q[q0:q1], k[k0:k1], v[k0:k1], causal, softmax_scale,
                                         window_size, softcap, dtype)
    return out, lse


def _gather_pages(cache, block_table_row, seq_len):
    """Keys (or values) of one sequence, read page by page through its block table row.

    cache [P, page_size, Hk, D]; returns [seq_len, Hk, D].
    """
    page_size = cache.shape[1]
    chunks = []
    for start in range(0, seq_len, page_size):
        page = int(block_table_row[start // page_size])
        chunks.append(cache[page, : min(page_size, seq_len - start)])
    if not chunks:
        return cache.new_zeros((0,) + tuple(cache.shape[2:]))
    return torch.cat(chunks)


def ref_paged_attention(q, k_cache, v_cache, block_table, seq_lens, *, cu_seqlens_q=None,
                        max_seqlen_q=None, causal=True, softmax_scale=None,
                        window_size=(-1, -1), softcap=0.0, dtype=None, k_scale=None,
                        v_scale=None):
    """Reference for ``fastattn.paged_attention``.

    Decode (``cu_seqlens_q is None``): q [B, Hq, D], one query per sequence, at its last key
    position. Extend: q [Tq, Hq, D]; the queries of sequence b are its last
    ``cu_seqlens_q[b+1] - cu_seqlens_q[b]`` positions among its ``seq_lens[b]`` keys.
    k_cache, v_cache [P, page_size, Hk, D]; block_table [B, max_pages]; seq_lens [B].
    Returns out shaped like q and lse [B, Hq] or [Tq, Hq].
    fp8 caches are dequantized first (``ref_fp8_dequantize``, exact in float64, then in
    ``dtype``).
    """
    dtype = dtype or torch.float64
    if k_cache.dtype in _FP8:
        k_cache = ref_fp8_dequantize(k_cache, k_scale, dtype)
        v_cache = ref_fp8_dequantize(v_cache, v_scale, dtype)
    batch = block_table.shape[0]
    if cu_seqlens_q is None:
        cu_q = list(range(batch + 1))  # decode: one query per sequence
    else:
        cu_q = [int(x) for x in cu_seqlens_q]
    out = torch.zeros(q.shape, dtype=dtype, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=dtype, device=q.device)
    for b in range(batch):
        q0, q1 = cu_q[b], cu_q[b + 1]
        if q1 == q0:
            continue
        seq_len = int(seq_lens[b])
        k = _gather_pages(k_cache, block_table[b], seq_len)
        v = _gather_pages(v_cache, block_table[b], seq_len)
        out[q0:q1], lse[q0:q1] = _attend(q[q0:q1], k, v, causal, softmax_scale, window_size,
                                         softcap, dtype)
    return out, lse


def ref_append_kv(k_cache, v_cache, k, v, slot_mapping, dtype=None, k_scale=None,
                  v_scale=None):
    """Reference for ``fastattn.append_kv``, out of place.

    Returns new ``(k_cache, v_cache)`` where token t of k, v [T, Hk, D] is written at
    ``slot_mapping[t] = page * page_size + offset``; negative slots are skipped. The caches
    keep their dtype unless ``dtype`` is given. fp8 caches store ``ref_fp8_quantize``'s codes.
    """
    dtype = dtype or k_cache.dtype
    k_cache = k_cache.to(dtype, copy=True)
    v_cache = v_cache.to(dtype, copy=True)
    if dtype in _FP8:
        k = ref_fp8_quantize(k, k_scale, dtype).to(k_cache.device)
        v = ref_fp8_quantize(v, v_scale, dtype).to(v_cache.device)
    page_size = k_cache.shape[1]
    for t, slot in enumerate(int(s) for s in slot_mapping):
        if slot < 0:
            continue
        page, offset = divmod(slot, page_size)
        k_cache[page, offset] = k[t].to(dtype)
        v_cache[page, offset] = v[t].to(dtype)
    return k_cache, v_cache


def ref_merge_attention_states(out_a, lse_a, out_b, lse_b, dtype=None):
    """Reference for ``fastattn.merge_attention_states``.

    out_* [..., H, D] and lse_* [..., H] are attentions over two disjoint key sets; the result
    is the attention over their union. Where both lse are -inf the result is 0 / -inf.
    """
    dtype = dtype or torch.float64
    out_a, out_b = out_a.to(dtype), out_b.to(dtype)
    lse_a, lse_b = lse_a.to(dtype), lse_b.to(dtype)
    lse = torch.logaddexp(lse_a, lse_b)
    safe_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    weight_a = torch.exp(lse_a - safe_lse).unsqueeze(-1)  # 0 where lse_a is -inf
    weight_b = torch.exp(lse_b - safe_lse).unsqueeze(-1)
    return weight_a * out_a + weight_b * out_b, lse
