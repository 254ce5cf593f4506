"""fastattn as a Hugging Face transformers `attn_implementation`.

    from fastattn.integrations import transformers as fastattn_hf

    name, flash_name = fastattn_hf.register()        # "fastattn", "fastattn_flash2"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=name)
    model.generate(**tokenizer(prompts, padding=True, return_tensors="pt"))
    model.set_attn_implementation(flash_name)         # also for continuous batching:
    model.generate_batch([ids_a, ids_b], generation_config=config)

Both names run the same function; they differ in what transformers does around it.
`"fastattn"` is a plain AttentionInterface entry: `model(...)` and `model.generate(...)` on
single prompts and padded batches, decoders, encoders and encoder-decoders. `"fastattn_flash2"`
does the same, and is the one `generate_batch` accepts: transformers' continuous batching takes
only "sdpa", "paged|eager" and names containing "flash" (it raises ValueError for "fastattn").

Each call takes one of four paths:
- no padding mask: `fastattn.attention` on the dense `[B, S, H, D]` tensors, causal aligned
  bottom-right, so a decode step or a chunk after a cached prefix sees its whole prefix;
- a padding mask (left or right padding, encoders, cross-attention): the valid tokens are
  gathered into packed sequences for `fastattn.attention_varlen`; no score mask is built. The
  per-row lengths are read on the host, as transformers' FlashAttention path does, so this
  path breaks torch.compile graphs;
- packed sequences (`cu_seq_lens_q/k`, `max_length_q/k`: continuous batching's varlen steps,
  or a padding-free collator): `fastattn.attention_varlen` directly, with no host sync;
- continuous batching's decode fast path (`block_table`, `k_cache`, `v_cache`; transformers
  takes it on CUDA only): `fastattn.compat.flash_attn_with_kvcache`, as transformers would call
  FlashAttention's: the new K/V are written with `fastattn.append_kv` and attended with
  `fastattn.paged_attention`; no host sync.

Honoured: `scaling`, causal or not (the `is_causal` kwarg, else `module.is_causal`), GQA,
`sliding_window` (in FlashAttention's convention, as transformers passes it: window
`(sliding_window - 1, sliding_window - 1)`), `softcap`, a value head dim smaller than the query's
(zero-padded, then cropped), static caches. Attention weights are never returned (None).
Refused: dropout while training and attention sinks (`s_aux`) raise NotImplementedError (and
fastattn is forward-only: backward raises too); a ready-made 4D mask raises ValueError.
Ignored: mask patterns a model adds to the base mask through `or_mask_function` /
`and_mask_function` (e.g. bidirectional image tokens), as by transformers' own FlashAttention
path; and sequences packed into one row that only `position_ids` tell apart (that path finds
them with a host sync per layer; pass `cu_seq_lens_q/k` and `max_length_q/k` instead, as
`DataCollatorWithFlattening(return_flash_attn_kwargs=True)` does). Models that bypass the
AttentionInterface (falcon, gpt_neo, bark) are not supported (with FLASH_NAME they reach
transformers' FlashAttention wrapper, which then runs fastattn.compat; untested).
dtypes: CPU float32, float16, bfloat16; CUDA float16 and bfloat16 (float32 on CUDA is cast to
the autocast dtype inside `torch.autocast`, and raises TypeError otherwise: load the model with
dtype=torch.bfloat16 or torch.float16).

Versions: tested with transformers 5.24 (`pip install fastattn[transformers]` pins it). 5.17
runs everything but `generate_batch`: its continuous batching calls "paged|<name>" functions
that update transformers' own cache, a protocol not implemented here (transformers then
raises that "paged|fastattn_flash2" is not supported).

Transformers behaviours worked around (tested with transformers 5.24):
- A name containing "flash" makes `from_pretrained` / `set_attn_implementation` preload
  FlashAttention for it (`modeling_flash_attention_utils.lazy_import_flash_attention`); for a
  name that is neither `flash_attention_2/3/4` nor a hub kernel ("org/repo"), that raises
  "Could not find the currently requested flash attention implementation". `register` wraps
  that module's private `_lazy_imports` so that FLASH_NAME loads `fastattn.compat`'s
  `flash_attn_func`, `flash_attn_varlen_func` and `flash_attn_with_kvcache` (our attention
  function calls fastattn itself; transformers only checks that they exist). Nothing is
  imported from flash-attn or downloaded from the hub.
- Continuous batching takes its block-table decode path only for names matching `.*flash.*2`
  or `.*flash.*3`, on CUDA, and when that preload yields a `flash_attn_with_kvcache`: hence
  the "2" in "fastattn_flash2".
- Masks are built per implementation name (`AttentionMaskInterface`); a name without an entry
  gets no mask at all, padding included. Both names get `key_padding_mask`, which hands over
  the 2D key-padding mask (as for FlashAttention) instead of a 4D score mask.
- A static cache hands every slot to the attention, written or not, and for a name without
  "flash" generate drops an all-ones mask: `key_padding_mask` then describes the written slots
  (it tells them from cross-attention by the `allow_is_bidirectional_skip` argument, which only
  transformers' bidirectional mask builders pass).
- With CUDA graphs or compile, continuous batching pads q and k with tokens past the last
  sequence of `cu_seq_lens_q/k` (and raises `max_length_q` to the padded size); fastattn wants
  `cu_seqlens[-1]` equal to the token count, so those tokens become one more sequence, whose
  output is never read. On the decode fast path, padded entries have `cu_seq_lens_k` plateaus
  (no key) and block-table rows of -1: nothing is written for them, and their output is 0.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._api import attention, attention_varlen
from ..compat import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

NAME = "fastattn"
FLASH_NAME = "fastattn_flash2"

__all__ = ["NAME", "FLASH_NAME", "register", "attention_forward", "key_padding_mask"]


def register() -> Tuple[str, str]:
    """Register fastattn with transformers' AttentionInterface and AttentionMaskInterface under
    `NAME` ("fastattn") and `FLASH_NAME` ("fastattn_flash2"), and return those names.
    Idempotent. Use either name as `attn_implementation` (FLASH_NAME for `generate_batch`)."""
    from transformers import AttentionInterface, AttentionMaskInterface

    for name in (NAME, FLASH_NAME):
        AttentionInterface.register(name, attention_forward)
        AttentionMaskInterface.register(name, key_padding_mask)
    _register_flash_loader()
    return NAME, FLASH_NAME


def _register_flash_loader() -> None:
    """Make transformers' FlashAttention preload resolve FLASH_NAME (see the module docstring)."""
    from transformers import modeling_flash_attention_utils as fa_utils

    original = getattr(fa_utils, "_lazy_imports", None)
    if original is None or getattr(original, "_fastattn", False):
        return

    def _lazy_imports(implementation, *args, **kwargs):
        if implementation == FLASH_NAME:
            return (flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache,
                    fa_utils._pad_input, fa_utils._unpad_input)
        return original(implementation, *args, **kwargs)

    _lazy_imports._fastattn = True
    fa_utils._lazy_imports = _lazy_imports


def key_padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
                     attention_mask: Optional[torch.Tensor] = None, device=None, **kwargs):
    """AttentionMaskInterface entry: bool [B, <= kv_length] (True = a key to attend), or None
    when every key is valid. Only padding is described; causality and windows are options of
    the attention call."""
    if attention_mask is not None:
        attention_mask = attention_mask[:, -kv_length:]
        if attention_mask.shape[1] == kv_length and attention_mask.all():
            return None
        return attention_mask
    if "allow_is_bidirectional_skip" in kwargs:
        return None  # encoders and cross-attention: only transformers' bidirectional masks pass it
    # A static cache hands over all its slots, written or not; the mask's length tells how many
    # are (its offset may be a tensor: reading it syncs, as the unpadding that follows does).
    written = int(q_offset) + q_length
    if kv_length <= written:
        return None
    return torch.ones(batch_size, written, dtype=torch.bool, device=device)


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                      dropout: float = 0.0, scaling: Optional[float] = None,
                      sliding_window: Optional[int] = None, softcap: Optional[float] = None,
                      is_causal: Optional[bool] = None, s_aux: Optional[torch.Tensor] = None, *,
                      cu_seq_lens_q: Optional[torch.Tensor] = None,
                      cu_seq_lens_k: Optional[torch.Tensor] = None, max_length_q=None,
                      block_table: Optional[torch.Tensor] = None,
                      k_cache: Optional[torch.Tensor] = None,
                      v_cache: Optional[torch.Tensor] = None, **kwargs):
    """AttentionInterface entry. query [B, Hq, Sq, D]; key, value [B, Hk, Sk, D] (transformers'
    layout); attention_mask: None or bool [B, Sk] from `key_padding_mask`. Returns
    (out [B, Sq, Hq, D] in query's dtype, None)."""
    if dropout and getattr(module, "training", False):
        raise NotImplementedError(
            f"fastattn: attention dropout ({dropout}) while training is not supported; fastattn is "
            "forward-only (call model.eval(), or use attn_implementation='sdpa' to train)")
    if s_aux is not None:
        raise NotImplementedError("fastattn: attention sinks (s_aux) are not supported")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            f"fastattn: expected a 2D key-padding attention_mask [B, Sk], got shape "
            f"{list(attention_mask.shape)}; fastattn takes padding, not score masks")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    out_dtype = query.dtype
    dtype = _compute_dtype(query)
    q, k, v = (x.transpose(1, 2).to(dtype) for x in (query, key, value))  # [B, S, H, D]
    head_dim, v_head_dim = q.shape[-1], v.shape[-1]
    if v_head_dim < head_dim:
        v = F.pad(v, (0, head_dim - v_head_dim))
    options = dict(causal=bool(is_causal), softmax_scale=scaling,
                   window_size=(-1, -1) if sliding_window is None
                   else (sliding_window - 1, sliding_window - 1),
                   softcap=0.0 if softcap is None else float(softcap))

    if block_table is not None and k_cache is not None and v_cache is not None:
        out = _decode_fast_path(q, k, v, k_cache, v_cache, block_table, cu_seq_lens_k, options)
    elif cu_seq_lens_q is not None and cu_seq_lens_k is not None:
        out = _packed(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, options)
    elif attention_mask is not None:
        out = _unpadded(q, k, v, attention_mask.bool(), options)
    else:
        out = attention(q, k, v, **options)
    return out[..., :v_head_dim].to(out_dtype), None


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    if query.device.type != "cuda" or query.dtype in (torch.float16, torch.bfloat16):
        return query.dtype
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    raise TypeError(
        f"fastattn: the CUDA kernels take float16 or bfloat16, got {query.dtype}; load the model "
        "with dtype=torch.bfloat16 (or torch.float16), or run it under torch.autocast")


def _unpadded(q, k, v, mask, options):
    """Padded batch -> packed varlen sequences of the valid tokens -> padded output.
    q [B, Sq, Hq, D]; k, v [B, Sk, Hk, D]; mask bool [B, Sk'] marks valid keys."""
    batch, q_len, heads, head_dim = q.shape
    # A static cache hands over all its slots; the mask covers the written ones.
    k, v = k[:, :mask.shape[1]], v[:, :mask.shape[1]]
    k_lens = mask.sum(-1, dtype=torch.int32)
    cu_k = F.pad(k_lens.cumsum(0, dtype=torch.int32), (1, 0))
    max_k = int(k_lens.max())
    windowed = options["window_size"] != (-1, -1)
    if q_len == 1 or not (options["causal"] or windowed):
        # Every query is kept: a decode token is its row's last position, and without causality or
        # a window a query's position does not matter (cross-attention included).
        cu_q = torch.arange(0, (batch + 1) * q_len, q_len, dtype=torch.int32, device=q.device)
        out = attention_varlen(q.reshape(batch * q_len, heads, head_dim), k[mask], v[mask],
                               cu_q, cu_k, q_len, max_k, **options)
        return out.view(batch, q_len, heads, head_dim)
    # The queries are the last q_len positions of each row; pad queries are dropped (output 0)
    # so that the valid ones line up with their keys.
    q_mask = mask[:, -q_len:]
    q_lens = q_mask.sum(-1, dtype=torch.int32)
    cu_q = F.pad(q_lens.cumsum(0, dtype=torch.int32), (1, 0))
    packed = attention_varlen(q[q_mask], k[mask], v[mask], cu_q, cu_k, int(q_lens.max()), max_k,
                              **options)
    out = q.new_zeros(batch, q_len, heads, head_dim)
    out[q_mask] = packed
    return out


def _packed(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, options):
    """Sequences already packed along the sequence axis. q [1, Tq, Hq, D]; k, v [1, Tk, Hk, D]."""
    q, k, v = (x.reshape(-1, *x.shape[2:]) for x in (q, k, v))
    # Tokens past the last sequence (static-shape padding) become one more sequence; appending
    # the totals costs no host sync, so this stays CUDA-graph safe. Transformers raises
    # max_length_q to the padded size, which bounds that sequence too; max_length_k it may not,
    # and the key bound only guards (the kernels size their grids by queries), so Tk serves.
    cu_q = F.pad(cu_seq_lens_q.to(torch.int32), (0, 1), value=q.shape[0])
    cu_k = F.pad(cu_seq_lens_k.to(torch.int32), (0, 1), value=k.shape[0])
    max_q = q.shape[0] if max_length_q is None else int(max_length_q)
    out = attention_varlen(q, k, v, cu_q, cu_k, max_q, k.shape[0], **options)
    return out.unsqueeze(0)


def _decode_fast_path(q, k, v, k_cache, v_cache, block_table, cu_seq_lens_k, options):
    """Continuous batching's block-table step: one new token per sequence, appended to the
    paged cache and attended with it. q [1, N, Hq, D]; k, v [1, N, Hk, D]; k_cache, v_cache
    [P, page_size, Hk, D]; block_table int32 [N, max_pages]; cu_seq_lens_k [>= N + 1] counts
    the new tokens. A padding entry (no keys) has cache_seqlens -1: nothing is written for it
    and its output is 0."""
    n = q.shape[1]
    cache_seqlens = (cu_seq_lens_k[1:n + 1] - cu_seq_lens_k[:n] - 1).to(torch.int32)
    q, k, v = (x.reshape(n, 1, *x.shape[2:]) for x in (q, k, v))
    out = flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=cache_seqlens,
                                  block_table=block_table, **options)
    return out.view(1, n, *out.shape[2:])
