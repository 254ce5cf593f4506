"""The suites: each case's inputs, its fastattn call, its peers, and the work one call does.

  prefill  causal self-attention, fastattn.attention(causal=True)        TFLOP/s
  cross    non-causal, Sq != Sk, fastattn.cross_attention              TFLOP/s
  varlen   packed sequences of different lengths, attention_varlen     TFLOP/s
  decode   paged_attention decode, GQA, random permuted block table    GB/s
  extend   paged_attention with cu_seqlens_q (chunked prefill)         TFLOP/s
  append   append_kv into a paged cache                                GB/s
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

import fastattn

from .._dtypes import dtype_name
from . import peers
from .peers import Impl, PagedBatchInfo

SUITES = ("prefill", "cross", "varlen", "decode", "extend", "append")
# Compute-bound suites report FLOP/s, memory-bound ones bytes/s.
FLOP_SUITES = ("prefill", "cross", "varlen", "extend")

# Shape parameters each suite uses. kv_heads None means "= heads" (plain multi-head).
# The CPU defaults are the team's performance targets: change them only with the targets.
DEFAULT_SHAPES = {
    "cpu": {
        "prefill": dict(batch=1, heads=16, kv_heads=None, head_dim=128, seqlen=2048),
        "cross": dict(batch=1, heads=16, kv_heads=None, head_dim=128, seqlen=1024, seqlen_k=4096),
        "varlen": dict(batch=8, heads=16, kv_heads=None, head_dim=128, seqlen=1024),
        "decode": dict(batch=32, heads=32, kv_heads=8, head_dim=128, context=2048, page_size=16),
        "extend": dict(batch=4, heads=32, kv_heads=8, head_dim=128, context=1024, tokens=512,
                       page_size=16),
        "append": dict(tokens=4096, kv_heads=8, head_dim=128, page_size=16),
    },
    "cuda": {
        "prefill": dict(batch=4, heads=32, kv_heads=None, head_dim=128, seqlen=4096),
        "cross": dict(batch=4, heads=32, kv_heads=None, head_dim=128, seqlen=2048, seqlen_k=8192),
        "varlen": dict(batch=16, heads=32, kv_heads=None, head_dim=128, seqlen=4096),
        "decode": dict(batch=128, heads=32, kv_heads=8, head_dim=128, context=4096, page_size=16),
        "extend": dict(batch=16, heads=32, kv_heads=8, head_dim=128, context=4096, tokens=512,
                       page_size=16),
        "append": dict(tokens=32768, kv_heads=8, head_dim=128, page_size=16),
    },
    # --quick: small enough that all suites with all peers finish in well under a minute on
    # a 2-core CPU; the shapes keep GQA, paging and uneven lengths so every path still runs.
    "quick": {
        "prefill": dict(batch=1, heads=4, kv_heads=None, head_dim=64, seqlen=256),
        "cross": dict(batch=1, heads=4, kv_heads=None, head_dim=64, seqlen=128, seqlen_k=512),
        "varlen": dict(batch=4, heads=4, kv_heads=None, head_dim=64, seqlen=256),
        "decode": dict(batch=4, heads=8, kv_heads=2, head_dim=64, context=512, page_size=16),
        "extend": dict(batch=2, heads=8, kv_heads=2, head_dim=64, context=256, tokens=128,
                       page_size=16),
        "append": dict(tokens=512, kv_heads=2, head_dim=64, page_size=16),
    },
}


# The paged suites' cache dtypes (--kv-dtype): "same" is q's dtype.
KV_DTYPES = {"same": None, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
KV_SUITES = ("decode", "extend", "append")
# The scale of fp8 cases: a power of two, so that the baseline cache in q's dtype holds the
# fp8 values times the scale exactly.
FP8_SCALE = 0.5


@dataclass
class Case:
    """One benchmark case: a suite at one shape and dtype (and, for the paged suites, a
    cache dtype: None for q's own)."""
    suite: str
    dtype: torch.dtype
    shape: Dict[str, int]
    kv_dtype: Optional[torch.dtype] = None

    @property
    def dtype_name(self) -> str:
        if self.kv_dtype is None:
            return dtype_name(self.dtype)
        return f"{dtype_name(self.dtype)}/{dtype_name(self.kv_dtype).replace('float8_', '')}"

    @property
    def cache_dtype(self) -> torch.dtype:
        return self.kv_dtype or self.dtype

    def label(self) -> str:
        """A compact shape description for the table."""
        s = self.shape
        if self.suite == "append":
            return f"T{s['tokens']} Hk{s['kv_heads']} D{s['head_dim']} pg{s['page_size']}"
        heads = f"H{s['heads']}" + (f"/{s['kv_heads']}" if s["kv_heads"] != s["heads"] else "")
        d = f"D{s['head_dim']}"
        if self.suite == "prefill":
            return f"B{s['batch']} {heads} L{s['seqlen']} {d}"
        if self.suite == "cross":
            return f"B{s['batch']} {heads} Sq{s['seqlen']} Sk{s['seqlen_k']} {d}"
        if self.suite == "varlen":
            lens = spread(s["seqlen"], s["batch"])
            return f"{s['batch']}seq L{min(lens)}-{max(lens)} {heads} {d}"
        pg = f"pg{s['page_size']}"
        if self.suite == "decode":
            return f"B{s['batch']} {heads} ctx{s['context']} {d} {pg}"
        q_lens = spread(s["tokens"], s["batch"])
        return f"B{s['batch']} {heads} ctx{s['context']}+{min(q_lens)}-{max(q_lens)} {d} {pg}"


@dataclass
class Workload:
    """A case's inputs bound into fastattn's call and its peers' factories (set up later,
    by `peers.build`, for the families the run measures), and the amount of work one call
    does: FLOPs or bytes, per `unit`."""
    fastattn: Impl
    peers: List[Callable[[], List[Impl]]]
    work: float
    unit: str                       # "flop" or "byte"


def resolve_shape(suite: str, profile: str,
                  overrides: Mapping[str, Optional[int]]) -> Dict[str, int]:
    """The suite's default shape for the profile ("cpu", "cuda" or "quick") with the given
    overrides applied (those that are not None and that the suite uses)."""
    shape = dict(DEFAULT_SHAPES[profile][suite])
    for key in shape:
        if overrides.get(key) is not None:
            shape[key] = overrides[key]
    if "heads" in shape and shape["kv_heads"] is None:
        shape["kv_heads"] = shape["heads"]
    for key, value in shape.items():
        if value < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1 ({suite}), got {value}")
    if "heads" in shape and shape["heads"] % shape["kv_heads"]:
        raise SystemExit(f"{suite}: --heads ({shape['heads']}) must be a multiple of "
                         f"--kv-heads ({shape['kv_heads']})")
    return shape


# ---------------------------------------------------------------------------- work counts

def visible_pairs(sq: int, sk: int, causal: bool, window: Tuple[int, int] = (-1, -1)) -> int:
    """Exact number of (query, key) pairs attention computes, with fastattn's bottom-right
    alignment: key j is visible to query i iff lo(i) <= j <= hi(i), diag(i) = i + sk - sq."""
    if sq <= 0 or sk <= 0:
        return 0
    left, right = window
    diag = torch.arange(sq, dtype=torch.int64) + (sk - sq)
    hi = torch.full_like(diag, sk - 1)
    if causal:
        hi = torch.minimum(hi, diag)
    if right >= 0:
        hi = torch.minimum(hi, diag + right)
    lo = (diag - left).clamp(min=0) if left >= 0 else torch.zeros_like(diag)
    return int((hi - lo + 1).clamp(min=0).sum())


def attention_flops(pairs: int, heads: int, head_dim: int) -> float:
    """QK^T and PV: 2 FLOPs per multiply-add, 2 matmuls, per visible pair, head and dim."""
    return 4.0 * pairs * heads * head_dim


def spread(longest: int, n: int) -> List[int]:
    """n lengths evenly spread over [longest/4, longest], in a fixed shuffled order (a real
    batch is not sorted, and sorting could flatter a kernel that splits work in order)."""
    lo = max(1, longest // 4)
    lens = [longest] if n == 1 else [round(lo + (longest - lo) * i / (n - 1)) for i in range(n)]
    random.Random(0).shuffle(lens)
    return lens


# ---------------------------------------------------------------------------- builders

def _randn(shape, case: Case, device) -> torch.Tensor:
    return torch.randn(*shape, device=device).to(case.dtype)


def _dense_peers(q, k, v, causal: bool, fa_run) -> List[Callable[[], List[Impl]]]:
    """Peers of attention on q [B, Sq, Hq, D], k, v [B, Sk, Hk, D]; fa_run: fastattn's call."""
    B, Sq, Sk = q.shape[0], q.shape[1], k.shape[1]
    return [
        partial(peers.fastattn_sm80, fa_run, q.device.type),
        partial(peers.sdpa_dense, q, k, v, causal=causal),
        partial(peers.flex_dense, q, k, v, causal=causal),
        partial(peers.flash_attn_dense, q, k, v, causal=causal),
        partial(peers.flashinfer_ragged, q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1),
                [Sq] * B, [Sk] * B, causal=causal),
    ]


def build_prefill(case: Case, device) -> Workload:
    s = case.shape
    B, L, Hq, Hk, D = s["batch"], s["seqlen"], s["heads"], s["kv_heads"], s["head_dim"]
    q = _randn((B, L, Hq, D), case, device)
    k, v = _randn((B, L, Hk, D), case, device), _randn((B, L, Hk, D), case, device)
    flops = B * attention_flops(visible_pairs(L, L, causal=True), Hq, D)
    run = lambda: fastattn.attention(q, k, v, causal=True)  # noqa: E731
    return Workload(Impl("fastattn", run=run), _dense_peers(q, k, v, True, run), flops, "flop")


def build_cross(case: Case, device) -> Workload:
    s = case.shape
    B, Sq, Sk = s["batch"], s["seqlen"], s["seqlen_k"]
    Hq, Hk, D = s["heads"], s["kv_heads"], s["head_dim"]
    q = _randn((B, Sq, Hq, D), case, device)
    k, v = _randn((B, Sk, Hk, D), case, device), _randn((B, Sk, Hk, D), case, device)
    flops = B * attention_flops(Sq * Sk, Hq, D)
    run = lambda: fastattn.cross_attention(q, k, v)  # noqa: E731
    return Workload(Impl("fastattn", run=run), _dense_peers(q, k, v, False, run), flops, "flop")


def build_varlen(case: Case, device) -> Workload:
    """Causal self-attention over a packed batch of prompts of different lengths (the
    prefill of a continuous-batching step)."""
    s = case.shape
    Hq, Hk, D = s["heads"], s["kv_heads"], s["head_dim"]
    lens = spread(s["seqlen"], s["batch"])
    T = sum(lens)
    q, k, v = _randn((T, Hq, D), case, device), _randn((T, Hk, D), case, device), \
        _randn((T, Hk, D), case, device)
    cu = peers.cumsum(lens, device)
    fa = Impl("fastattn", run=lambda: fastattn.attention_varlen(
        q, k, v, cu, cu, max(lens), max(lens), causal=True))
    factories = [
        partial(peers.fastattn_sm80, fa.run, device),
        partial(peers.sdpa_varlen_loop, q, k, v, lens, causal=True),
        partial(peers.flex_varlen, q, k, v, lens, causal=True),
        partial(peers.flash_attn_varlen, q, k, v, lens, causal=True),
        partial(peers.flashinfer_ragged, q, k, v, lens, lens, causal=True),
    ]
    flops = sum(attention_flops(visible_pairs(n, n, causal=True), Hq, D) for n in lens)
    return Workload(fa, factories, flops, "flop")


def _paged_cache(seq_lens: Sequence[int], page_size: int, Hk: int, D: int, case: Case, device):
    """A cache holding exactly the pages the sequences need, handed out in a random order
    (as after a server has run a while), and the int32 block table [B, max_pages]."""
    pages = [math.ceil(n / page_size) for n in seq_lens]
    num_pages = sum(pages)
    order = torch.randperm(num_pages, generator=torch.Generator().manual_seed(0)).tolist()
    table = torch.zeros(len(seq_lens), max(pages), dtype=torch.int32)
    start = 0
    for b, n in enumerate(pages):
        table[b, :n] = torch.tensor(order[start:start + n], dtype=torch.int32)
        start += n
    k_cache = _randn((num_pages, page_size, Hk, D), case, device)
    v_cache = _randn((num_pages, page_size, Hk, D), case, device)
    if case.kv_dtype is not None:  # codes of the same random values
        k_cache = (k_cache.float() / FP8_SCALE).to(case.kv_dtype)
        v_cache = (v_cache.float() / FP8_SCALE).to(case.kv_dtype)
    return k_cache, v_cache, table.to(device)


def _baseline(case: Case, run, work: float, output=None) -> List[Callable[[], List[Impl]]]:
    """For an fp8 case: fastattn on a cache of q's dtype holding the same values, the "peer"
    that makes the "fastattn x" column read as the fp8 cache's speed-up. work: one call's
    FLOPs or bytes (its cache moves more bytes)."""
    @peers.family("fastattn")
    def factory():
        return [Impl(f"fastattn, {dtype_name(case.dtype)} cache", run=run, output=output,
                     work=work)]
    return [factory]


def _dequantized(case: Case, cache: torch.Tensor) -> torch.Tensor:
    """An fp8 case's cache values in q's dtype (exact: FP8_SCALE is a power of two)."""
    return (cache.float() * FP8_SCALE).to(case.dtype)


def _scales(case: Case) -> Dict[str, Any]:
    return {} if case.kv_dtype is None else dict(k_scale=FP8_SCALE, v_scale=FP8_SCALE)


def _paged_peers(q, k_cache, v_cache, table,
                 info: PagedBatchInfo) -> List[Callable[[], List[Impl]]]:
    return [partial(factory, q, k_cache, v_cache, table, info)
            for factory in (peers.gather_sdpa, peers.flash_attn_paged, peers.flashinfer_paged)]


def build_decode(case: Case, device) -> Workload:
    s = case.shape
    B, Hq, Hk, D, page = s["batch"], s["heads"], s["kv_heads"], s["head_dim"], s["page_size"]
    info = PagedBatchInfo(q_lens=[1] * B, seq_lens=[s["context"]] * B, page_size=page)
    k_cache, v_cache, table = _paged_cache(info.seq_lens, page, Hk, D, case, device)
    seq_lens = torch.tensor(info.seq_lens, dtype=torch.int32, device=device)
    q = _randn((B, Hq, D), case, device)

    def call(k_cache, v_cache, **scales):
        return fastattn.paged_attention(q, k_cache, v_cache, table, seq_lens, **scales)

    fa = Impl("fastattn", run=lambda: call(k_cache, v_cache, **_scales(case)))

    # Bytes that must move: q read, the K and V of every used token read once, out written.
    # (Block table and seq_lens are a few KB; we leave them out.)
    def nbytes_of(cache_elem):
        return (q.element_size() * 2 * B * Hq * D
                + cache_elem * 2 * sum(info.seq_lens) * Hk * D)

    if case.kv_dtype is not None:  # peers take caches in q's dtype only
        k_wide, v_wide = _dequantized(case, k_cache), _dequantized(case, v_cache)
        return Workload(fa, _baseline(case, lambda: call(k_wide, v_wide),
                                      nbytes_of(k_wide.element_size())),
                        nbytes_of(k_cache.element_size()), "byte")
    return Workload(fa, _paged_peers(q, k_cache, v_cache, table, info),
                    nbytes_of(k_cache.element_size()), "byte")


def build_extend(case: Case, device) -> Workload:
    """Chunked prefill: each sequence has `context` tokens in the cache plus new tokens
    (spread over [tokens/4, tokens]) that are already appended and now attend causally."""
    s = case.shape
    B, Hq, Hk, D, page = s["batch"], s["heads"], s["kv_heads"], s["head_dim"], s["page_size"]
    q_lens = spread(s["tokens"], B)
    info = PagedBatchInfo(q_lens=q_lens, seq_lens=[s["context"] + n for n in q_lens],
                          page_size=page)
    k_cache, v_cache, table = _paged_cache(info.seq_lens, page, Hk, D, case, device)
    seq_lens = torch.tensor(info.seq_lens, dtype=torch.int32, device=device)
    cu_q = peers.cumsum(q_lens, device)
    q = _randn((sum(q_lens), Hq, D), case, device)

    def call(k_cache, v_cache, **scales):
        return fastattn.paged_attention(q, k_cache, v_cache, table, seq_lens, cu_seqlens_q=cu_q,
                                        max_seqlen_q=max(q_lens), **scales)

    fa = Impl("fastattn", run=lambda: call(k_cache, v_cache, **_scales(case)))
    flops = sum(attention_flops(visible_pairs(nq, nk, causal=True), Hq, D)
                for nq, nk in zip(info.q_lens, info.seq_lens))
    if case.kv_dtype is not None:
        k_wide, v_wide = _dequantized(case, k_cache), _dequantized(case, v_cache)
        return Workload(fa, _baseline(case, lambda: call(k_wide, v_wide), flops), flops, "flop")
    return Workload(fa, [partial(peers.fastattn_sm80, fa.run, device)] +
                    _paged_peers(q, k_cache, v_cache, table, info), flops, "flop")


def build_append(case: Case, device) -> Workload:
    """T new tokens written to random pages of a cache 4x larger than they need (a server's
    cache is mostly other sequences' pages), whole pages per token run."""
    s = case.shape
    T, Hk, D, page = s["tokens"], s["kv_heads"], s["head_dim"], s["page_size"]
    pages_needed = math.ceil(T / page)
    num_pages = 4 * pages_needed
    chosen = torch.randperm(num_pages, generator=torch.Generator().manual_seed(0))[:pages_needed]
    offsets = torch.arange(T)
    slot_mapping = (chosen[offsets // page] * page + offsets % page).to(device)  # int64 [T]
    k, v = _randn((T, Hk, D), case, device), _randn((T, Hk, D), case, device)

    def empty_cache(dtype=case.cache_dtype):
        return torch.zeros(num_pages, page, Hk, D, dtype=dtype, device=device)

    # Separate caches per implementation, so the output check compares two independent writes.
    fa_k, fa_v = empty_cache(), empty_cache()

    def fa_run():
        fastattn.append_kv(fa_k, fa_v, k, v, slot_mapping, **_scales(case))

    def fa_output():
        fa_run()
        if case.kv_dtype is None:
            return fa_k, fa_v
        return _dequantized(case, fa_k).float(), _dequantized(case, fa_v).float()

    # k and v are each read once and written once (in the cache's dtype).
    def nbytes_of(cache_elem):
        return 2 * T * Hk * D * (k.element_size() + cache_elem)

    nbytes = nbytes_of(torch.empty(0, dtype=case.cache_dtype).element_size())
    if case.kv_dtype is not None:
        baseline_k, baseline_v = empty_cache(case.dtype), empty_cache(case.dtype)

        def run():
            fastattn.append_kv(baseline_k, baseline_v, k, v, slot_mapping)

        def output():  # quantized afterwards by torch's cast: the same codes in range
            run()
            return tuple(_dequantized(case, (c.float() / FP8_SCALE).to(case.kv_dtype)).float()
                         for c in (baseline_k, baseline_v))
        return Workload(Impl("fastattn", run=fa_run, output=fa_output),
                        _baseline(case, run, nbytes_of(k.element_size()), output), nbytes,
                        "byte")
    index_copy = partial(peers.index_copy_append, empty_cache(), empty_cache(), k, v,
                         slot_mapping)
    return Workload(Impl("fastattn", run=fa_run, output=fa_output), [index_copy], nbytes, "byte")


BUILDERS: Dict[str, Callable[[Case, Any], Workload]] = {
    "prefill": build_prefill, "cross": build_cross, "varlen": build_varlen,
    "decode": build_decode, "extend": build_extend, "append": build_append,
}
