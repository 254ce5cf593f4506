"""Peers for `python -m fastattn.bench`: other implementations of the computations we time.

Every factory returns a list of `Impl`s and never runs anything on the device. Each belongs
to a family (`FAMILIES`); `select` decides once per run which families are measured (the
library imports, the device suits it, --quick allows it) and `build` calls only their
factories, so a factory may assume its library is there. Whether a peer can handle its
inputs (an SDPA backend that does not exist on this device, a flash_attn build without
paged KV, a head dim FlexAttention rejects, ...) is found out by trying: an Impl that cannot
run raises on its first call, and the benchmark turns that into a skip note.

Layouts: fastattn's tensors are FlashAttention's ([B, S, H, D], packed [T, H, D], paged
[P, page_size, Hk, D]), because that is what inference servers hold. SDPA and FlexAttention
want [B, H, S, D]; we hand them transposed views, so a backend that needs another memory
layout pays for its own copy inside the timed call, as it would in a server.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Collection, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

# SDPA backends in the order we report them; each is tried, none is assumed to exist.
SDPA_BACKENDS = (("MATH", "math"), ("FLASH_ATTENTION", "flash"),
                 ("EFFICIENT_ATTENTION", "efficient"), ("CUDNN_ATTENTION", "cudnn"))

# flashinfer plans need a scratch buffer; 128 MiB is what its examples allocate.
_FLASHINFER_WORKSPACE_BYTES = 128 * 2**20


@dataclass
class Impl:
    """One implementation of a case's computation.

    run: the timed call. output: runs the computation once and returns the tensors to
    compare against fastattn's (default: `run` itself; append_kv returns the caches).
    gather: for the paged peers, the page gather alone, timed separately so the table shows
    how much of the peer's time is the gather.
    """
    name: str
    run: Callable[[], Any]
    output: Optional[Callable[[], Any]] = None
    gather: Optional[Callable[[], Any]] = None
    note: str = ""
    work: Optional[float] = None    # FLOPs or bytes of one call, when not the case's (a
                                    # baseline reading a cache of another dtype)

    def outputs(self) -> Any:
        return self.output() if self.output is not None else self.run()


def _with_fallbacks(name: str, variants: Sequence[Tuple[str, Callable[[], Any]]], **kw) -> Impl:
    """An Impl that, on its first call, keeps the first variant that runs.

    Used for GQA: SDPA's enable_gqa is the cheap way, but not every backend accepts it, and
    a user whose backend refuses it would expand K/V with repeat_interleave instead.
    """
    impl = Impl(name, run=lambda: None, **kw)
    chosen: List[Callable[[], Any]] = []

    def run():
        if chosen:
            return chosen[0]()
        first_error = None
        for label, fn in variants:
            try:
                out = fn()
            except Exception as error:  # noqa: BLE001 (any failure means "try the next")
                first_error = first_error or error
                continue
            chosen.append(fn)
            impl.note = label
            return out
        raise first_error

    impl.run = run
    return impl


# ---------------------------------------------------------------------------- families

@functools.lru_cache(maxsize=None)
def _import(module: str):
    """The module, or None. Broad except: a CUDA-only wheel can fail with OSError or a
    RuntimeError about missing libraries on a CPU machine, not just ImportError."""
    try:
        return __import__(module, fromlist=["_"])
    except Exception:  # noqa: BLE001
        return None


@dataclass(frozen=True)
class Family:
    """What the peers of one family need before they are worth building."""
    module: Optional[str] = None    # a library that must import
    cuda_only: bool = False
    compiled: bool = False          # runs through torch.compile


FAMILIES = {
    "fastattn": Family(),           # fastattn itself on another cache dtype (fp8 cases)
    "torch": Family(),              # SDPA backends, index_copy_
    # FlexAttention on CPU is not a kernel servers use.
    "flex": Family(module="torch.nn.attention.flex_attention", cuda_only=True, compiled=True),
    "flash_attn": Family(module="flash_attn"),
    "flashinfer": Family(module="flashinfer", cuda_only=True),
}


def select(device: str, quick: bool, no_compile: bool = False) -> Tuple[List[str], List[str]]:
    """The peer families this run measures, and one note per family it leaves out.

    --quick (and --no-compile) leave out the compiled families: a cold torch.compile of
    FlexAttention can take minutes, far beyond the time budget of a smoke run or of the GPU
    check (which runs --quick, then the default shapes with --no-compile).
    """
    chosen, notes = [], []
    for name, family in FAMILIES.items():
        if family.cuda_only and device != "cuda":
            notes.append(f"{name}: measured on CUDA only, skipped")
        elif family.module is not None and _import(family.module) is None:
            notes.append(f"{name}: cannot import {family.module}, skipped")
        elif family.compiled and (quick or no_compile):
            flag = "--quick" if quick else "--no-compile"
            notes.append(f"{name}: needs torch.compile (a cold compile can take minutes), "
                         f"skipped with {flag}; run without it to measure it")
        else:
            chosen.append(name)
    return chosen, notes


def family(name: str):
    def tag(factory):
        factory.family = name
        return factory
    return tag


def build(factories: Sequence[Callable[[], List[Impl]]], families: Collection[str],
          skipped: List[str]) -> List[Impl]:
    """Sets up the peers whose family this run measures (`functools.partial`s of the
    factories below). One that fails to set up (a flashinfer plan that rejects the shapes,
    ...) becomes a skip note instead of ending the run."""
    impls = []
    for factory in factories:
        fn = getattr(factory, "func", factory)
        if fn.family not in families:
            continue
        try:
            impls.extend(factory())
        except Exception as error:  # noqa: BLE001
            skipped.append(f"{fn.__name__}: setup failed: {error_note(error)}")
    return impls


def error_note(error: BaseException) -> str:
    """The error's first sentence: enough to tell why, short enough for a note."""
    text = str(error).strip().splitlines()
    first = text[0].split(". ")[0] if text else ""
    return f"{type(error).__name__}: {first}"[:160]


# ---------------------------------------------------------------------------- SDPA

def _sdpa(backend, q, k, v, gqa: str, **kwargs):
    """SDPA on [B, H, S, D] tensors with one backend; gqa is "native", "repeat" or "none"."""
    from torch.nn.attention import sdpa_kernel

    if gqa == "repeat":
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    elif gqa == "native":
        kwargs["enable_gqa"] = True
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def _sdpa_impls(prefix: str, num_heads: int, num_kv_heads: int,
                call: Callable[..., torch.Tensor], **kw) -> List[Impl]:
    """One Impl per SDPA backend. call(backend, gqa) computes the peer's output."""
    from torch.nn.attention import SDPBackend

    impls = []
    for attr, short in SDPA_BACKENDS:
        backend = getattr(SDPBackend, attr, None)
        if backend is None:
            continue
        name = f"{prefix}sdpa-{short}"
        if num_heads == num_kv_heads:
            impls.append(Impl(name, run=functools.partial(call, backend, "none"), **kw))
        else:
            impls.append(_with_fallbacks(name, [
                ("GQA via enable_gqa", functools.partial(call, backend, "native")),
                ("GQA via repeat_interleave", functools.partial(call, backend, "repeat")),
            ], **kw))
    return impls


@family("torch")
def sdpa_dense(q, k, v, causal: bool) -> List[Impl]:
    """SDPA on q [B, Sq, Hq, D], k, v [B, Sk, Hk, D]. Causal only for Sq == Sk, where SDPA's
    top-left is_causal equals fastattn's bottom-right alignment."""
    assert not causal or q.shape[1] == k.shape[1]
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

    def call(backend, gqa):
        return _sdpa(backend, qt, kt, vt, gqa, is_causal=causal).transpose(1, 2)

    return _sdpa_impls("", q.shape[2], k.shape[2], call)


@family("torch")
def sdpa_varlen_loop(q, k, v, lengths: Sequence[int], causal: bool) -> List[Impl]:
    """One SDPA call per sequence of packed q, k, v [T, H, D] (self-attention, Sq == Sk).

    We use the loop rather than padding to a [B, max_len] batch with a mask: it does the
    same useful work as a varlen kernel and keeps each backend's mask-free fast path, while
    padding wastes work on pad tokens and a mask rules out flash backends. The loop's cost
    is its per-sequence launches, which is exactly what a varlen kernel saves.
    """
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    spans = [(s, s + n) for s, n in zip(starts, lengths)]

    def call(backend, gqa):
        outs = []
        for a, b in spans:
            qs, ks, vs = (x[a:b].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
            outs.append(_sdpa(backend, qs, ks, vs, gqa, is_causal=causal)[0].transpose(0, 1))
        return torch.cat(outs)

    return _sdpa_impls("loop-", q.shape[1], k.shape[1], call)


# ------------------------------------------------------------------ paged: gather then SDPA

@dataclass
class PagedBatchInfo:
    """Host-side description of a paged batch (what a server's scheduler already knows)."""
    q_lens: List[int]      # new query tokens per sequence (1 for decode)
    seq_lens: List[int]    # keys per sequence, the new tokens included
    page_size: int


@family("torch")
def gather_sdpa(q, k_cache, v_cache, block_table, info: PagedBatchInfo) -> List[Impl]:
    """The realistic peer for paged attention: copy each sequence's pages into a dense
    [B, S, Hk, D] tensor with the block table, then batched SDPA with a mask for the valid
    keys (and bottom-right causality for several queries per sequence).

    q is [B, Hq, D] (decode) or packed [Tq, Hq, D] (extend); extend pads the queries to
    [B, max_q, Hq, D] and unpads the output, both inside the timed call. The mask is built
    once outside it: a server builds it once per step and shares it across layers.
    """
    device = q.device
    B, max_pages = block_table.shape
    Hq, D = q.shape[1], q.shape[2]
    max_q, max_s = max(info.q_lens), max_pages * info.page_size
    decode = max_q == 1 and q.shape[0] == B

    seq_lens = torch.tensor(info.seq_lens, device=device)[:, None, None]      # [B, 1, 1]
    q_lens = torch.tensor(info.q_lens, device=device)[:, None, None]
    row = torch.arange(max_q, device=device)[None, :, None]                   # [1, Qmax, 1]
    key = torch.arange(max_s, device=device)[None, None, :]                   # [1, 1, S]
    # Key j is visible to query row r of sequence b iff j < seq_len and
    # j <= r + seq_len - q_len (bottom-right causal); padded rows see nothing.
    mask = (key < seq_lens) & (key <= row + seq_lens - q_lens) & (row < q_lens)
    mask = mask.unsqueeze(1)                                                  # [B, 1, Qmax, S]
    pad_index = torch.cat([b * max_q + torch.arange(n, device=device)
                           for b, n in enumerate(info.q_lens)])               # int64 [Tq]

    def gather():
        # k_cache[block_table]: [B, max_pages, page_size, Hk, D] -> [B, S, Hk, D]
        return k_cache[block_table].flatten(1, 2), v_cache[block_table].flatten(1, 2)

    def call(backend, gqa):
        k, v = gather()
        if decode:
            q_pad = q.unsqueeze(1)                                            # [B, 1, Hq, D]
        else:
            q_pad = q.new_zeros(B * max_q, Hq, D).index_copy_(0, pad_index, q)
            q_pad = q_pad.view(B, max_q, Hq, D)
        out = _sdpa(backend, q_pad.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                    gqa, attn_mask=mask)                                      # [B, Hq, Qmax, D]
        if decode:
            return out[:, :, 0]
        return out.transpose(1, 2).reshape(B * max_q, Hq, D).index_select(0, pad_index)

    return _sdpa_impls("gather+", Hq, k_cache.shape[2], call, gather=gather)


# ---------------------------------------------------------------------------- append

@family("torch")
def index_copy_append(k_cache, v_cache, k, v, slot_mapping) -> List[Impl]:
    """What PyTorch code does without a fused kernel: index_copy_ into the flattened cache.
    (It has no notion of slot < 0 = skip; the benchmark uses no padding slots.)"""
    Hk, D = k_cache.shape[2], k_cache.shape[3]
    k_flat, v_flat = k_cache.view(-1, Hk, D), v_cache.view(-1, Hk, D)

    def run():
        k_flat.index_copy_(0, slot_mapping, k)
        v_flat.index_copy_(0, slot_mapping, v)

    def output():
        run()
        return k_cache, v_cache

    return [Impl("index_copy_", run=run, output=output)]


# ---------------------------------------------------------------------------- FlexAttention

@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    # Every case compiles its own shapes; past dynamo's default limit of 8 recompiles it
    # would silently fall back to eager FlexAttention and we would time the wrong thing.
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))
    return torch.compile(flex_attention, dynamic=False)


@family("flex")
def flex_dense(q, k, v, causal: bool) -> List[Impl]:
    """Compiled FlexAttention."""
    from torch.nn.attention.flex_attention import create_block_mask
    Sq, Sk = q.shape[1], k.shape[1]
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    block_mask = None
    if causal:
        shift = Sk - Sq  # bottom-right alignment, as fastattn

        def causal_mask(b, h, qi, ki):
            return ki <= qi + shift

        block_mask = create_block_mask(causal_mask, None, None, Sq, Sk, device=q.device)
    gqa = q.shape[2] != k.shape[2]

    def run():
        return _compiled_flex()(qt, kt, vt, block_mask=block_mask, enable_gqa=gqa).transpose(1, 2)

    return [Impl("flex", run=run)]


@family("flex")
def flex_varlen(q, k, v, lengths: Sequence[int], causal: bool) -> List[Impl]:
    """FlexAttention over the packed batch as one sequence with a document mask, the way
    FlexAttention users run varlen."""
    from torch.nn.attention.flex_attention import create_block_mask
    T = q.shape[0]
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=q.device),
                                  torch.tensor(lengths, device=q.device))

    def doc_mask(b, h, qi, ki):
        same = doc[qi] == doc[ki]
        return (same & (ki <= qi)) if causal else same

    block_mask = create_block_mask(doc_mask, None, None, T, T, device=q.device)
    qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))          # [1, H, T, D]
    gqa = q.shape[1] != k.shape[1]

    def run():
        out = _compiled_flex()(qt, kt, vt, block_mask=block_mask, enable_gqa=gqa)
        return out[0].transpose(0, 1)

    return [Impl("flex-docmask", run=run)]


# ---------------------------------------------------------------------------- fastattn A/B

KERNELS_ENV = "FASTATTN_CUDA_KERNELS"


@family("fastattn")
def fastattn_sm80(run: Callable[[], Any], device) -> List[Impl]:
    """On an sm_90 GPU (H100/H200), fastattn's mma.sync kernels, forced through
    $FASTATTN_CUDA_KERNELS=sm80 (read at every call): the A/B of the sm_90a kernels. Elsewhere
    both are the same kernel, so there is nothing to compare."""
    if torch.device(device).type != "cuda" or torch.cuda.get_device_capability() != (9, 0):
        return []

    def forced():
        saved = os.environ.get(KERNELS_ENV)
        os.environ[KERNELS_ENV] = "sm80"
        try:
            return run()
        finally:
            if saved is None:
                del os.environ[KERNELS_ENV]
            else:
                os.environ[KERNELS_ENV] = saved
    return [Impl("fastattn_sm80", run=forced)]


# ---------------------------------------------------------------------------- flash_attn

@family("flash_attn")
def flash_attn_dense(q, k, v, causal: bool) -> List[Impl]:
    fa = _import("flash_attn")
    return [Impl("flash_attn", run=lambda: fa.flash_attn_func(q, k, v, causal=causal))]


@family("flash_attn")
def flash_attn_varlen(q, k, v, lengths: Sequence[int], causal: bool) -> List[Impl]:
    fa = _import("flash_attn")
    cu = cumsum(lengths, q.device)
    n = max(lengths)
    return [Impl("flash_attn_varlen",
                 run=lambda: fa.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=causal))]


@family("flash_attn")
def flash_attn_paged(q, k_cache, v_cache, block_table, info: PagedBatchInfo) -> List[Impl]:
    """flash_attn_with_kvcache for decode, flash_attn_varlen_func with block_table for
    extend. (FlashAttention-2 wants page_size % 256 == 0; other sizes raise and are skipped.)"""
    fa = _import("flash_attn")
    seq_lens = torch.tensor(info.seq_lens, dtype=torch.int32, device=q.device)
    if max(info.q_lens) == 1 and q.shape[0] == len(info.q_lens):
        def run():
            return fa.flash_attn_with_kvcache(q.unsqueeze(1), k_cache, v_cache,
                                              cache_seqlens=seq_lens, block_table=block_table,
                                              causal=True).squeeze(1)
        return [Impl("flash_attn_kvcache", run=run)]
    cu_q, cu_k = cumsum(info.q_lens, q.device), cumsum(info.seq_lens, q.device)

    def run_varlen():
        return fa.flash_attn_varlen_func(q, k_cache, v_cache, cu_q, cu_k, max(info.q_lens),
                                         max(info.seq_lens), causal=True, block_table=block_table)

    return [Impl("flash_attn_varlen_paged", run=run_varlen)]


# ---------------------------------------------------------------------------- flashinfer

def _flashinfer_workspace(device):
    return torch.empty(_FLASHINFER_WORKSPACE_BYTES, dtype=torch.uint8, device=device)


@family("flashinfer")
def flashinfer_ragged(q, k, v, q_lens: Sequence[int], k_lens: Sequence[int],
                      causal: bool) -> List[Impl]:
    """flashinfer's ragged prefill on packed q [Tq, Hq, D], k, v [Tk, Hk, D] (dense batches
    are passed as a reshape view of [B, S, H, D])."""
    fi = _import("flashinfer")
    wrapper = fi.BatchPrefillWithRaggedKVCacheWrapper(_flashinfer_workspace(q.device), "NHD")
    wrapper.plan(cumsum(q_lens, q.device), cumsum(k_lens, q.device), q.shape[1], k.shape[1],
                 q.shape[2], causal=causal, q_data_type=q.dtype)
    return [Impl("flashinfer_ragged", run=lambda: wrapper.run(q, k, v))]


@family("flashinfer")
def flashinfer_paged(q, k_cache, v_cache, block_table, info: PagedBatchInfo) -> List[Impl]:
    """BatchDecodeWithPagedKVCacheWrapper (decode) or BatchPrefillWithPagedKVCacheWrapper
    (extend), planned once outside the timed call as a server does per step."""
    fi = _import("flashinfer")
    device, page = q.device, info.page_size
    pages = [math.ceil(n / page) for n in info.seq_lens]
    indptr = cumsum(pages, device)
    indices = torch.cat([block_table[b, :n] for b, n in enumerate(pages)]).to(torch.int32)
    last_len = torch.tensor([n - (p - 1) * page for n, p in zip(info.seq_lens, pages)],
                            dtype=torch.int32, device=device)
    Hq, Hk, D = q.shape[1], k_cache.shape[2], q.shape[2]
    workspace = _flashinfer_workspace(device)
    if max(info.q_lens) == 1 and q.shape[0] == len(info.q_lens):
        wrapper = fi.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
        wrapper.plan(indptr, indices, last_len, Hq, Hk, D, page, pos_encoding_mode="NONE",
                     q_data_type=q.dtype, kv_data_type=k_cache.dtype)
        name = "flashinfer_decode"
    else:
        wrapper = fi.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD")
        wrapper.plan(cumsum(info.q_lens, device), indptr, indices, last_len, Hq, Hk, D, page,
                     causal=True, q_data_type=q.dtype, kv_data_type=k_cache.dtype)
        name = "flashinfer_paged_prefill"
    return [Impl(name, run=lambda: wrapper.run(q, (k_cache, v_cache)))]


def cumsum(lengths: Sequence[int], device) -> torch.Tensor:
    """int32 [B + 1] prefix sums starting at 0."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)
