"""Benchmarks fastattn against its peers in one run: `python -m fastattn.bench [suite ...]`.

Suites (default: all of them):
  prefill  causal self-attention, fastattn.attention(causal=True)        TFLOP/s
  cross    non-causal, Sq != Sk, fastattn.cross_attention              TFLOP/s
  varlen   packed sequences of different lengths, attention_varlen     TFLOP/s
  decode   paged_attention decode, GQA, random permuted block table    GB/s
  extend   paged_attention with cu_seqlens_q (chunked prefill)         TFLOP/s
  append   append_kv into a paged cache                                GB/s

Every case checks each peer's output against fastattn's before timing it, times every
implementation (median of repeated runs after warm-up), and reports the ratio of speeds
(> 1: fastattn is faster) and the fraction of this machine's peak, measured in the same run
with a large matmul (FLOP/s) and a large copy (bytes/s). See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

import fastattn

from . import _bench_peers as peers
from ._bench_peers import Impl, PagedBatchInfo

SUITES = ("prefill", "cross", "varlen", "decode", "extend", "append")
# Compute-bound suites report FLOP/s, memory-bound ones bytes/s.
FLOP_SUITES = ("prefill", "cross", "varlen", "extend")

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}

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

# (warmup, repeats, min_time_s): runs continue past `repeats` until min_time_s has passed,
# so a 50 us op gets enough samples for a stable median while a 2 s op gets `repeats`.
TIMING_DEFAULTS = {"cpu": (1, 5, 0.5), "cuda": (10, 50, 0.2), "quick": (1, 3, 0.05)}
MAX_RUNS_PER_REPEAT = 50

# Peak probes. The matmul doubles from 256 up to the cap while the next product is expected
# (8x the last) to stay under the time limit: CPU fp16 matmul can be 1000x slower than fp32,
# so a fixed 2048 would take minutes. The copy buffer is large enough to defeat caches.
PEAK_MATMUL_MAX_N = {"cpu": 2048, "cuda": 8192, "quick": 1024}
PEAK_MATMUL_TIME_LIMIT_S = 0.25
PEAK_COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 2**30, "quick": 64 * 2**20}

# allclose tolerances (atol = rtol) for "does the peer compute the same thing": loose on
# purpose, since kernels differ in accumulation order; a real disagreement is far larger.
CHECK_TOLERANCE = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}


# ---------------------------------------------------------------------------- data

@dataclass
class Case:
    """One benchmark case: a suite at one shape and dtype."""
    suite: str
    dtype: torch.dtype
    shape: Dict[str, int]

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

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
class Settings:
    """How to time: untimed warm-up calls, then at least `repeats` timed calls, more until
    `min_time_s` has passed."""
    device: str
    warmup: int
    repeats: int
    min_time_s: float


@dataclass
class Workload:
    """A case's inputs turned into runnable implementations (fastattn first) and the
    amount of work one call does: FLOPs or bytes, per `unit`."""
    impls: List[Impl]
    work: float
    unit: str                       # "flop" or "byte"
    skipped: List[str] = field(default_factory=list)


@dataclass
class Result:
    """One implementation's figures on one case."""
    suite: str
    shape: str
    dtype: str
    impl: str
    time_ms: float                  # median
    times_ms: List[float]           # every timed run
    throughput: float               # TFLOP/s or GB/s, per `throughput_unit`
    throughput_unit: str
    pct_of_peak: Optional[float]    # throughput / peak, in %
    ratio: Optional[float]          # fastattn speed / this impl's speed; None for fastattn
    max_abs_diff: Optional[float]   # against fastattn's output; None for fastattn
    agrees: Optional[bool]
    gather_ms: Optional[float] = None
    peak: Optional[float] = None    # what pct_of_peak divides by: this run's matmul peak, or
                                    # for GB/s the copy peak measured around this case
    note: str = ""


@dataclass
class CaseReport:
    """Everything measured for one case."""
    case: Case
    work: float = 0.0               # FLOPs or bytes of one call, per `unit`
    unit: str = ""
    results: List[Result] = field(default_factory=list)   # fastattn first
    skipped: List[str] = field(default_factory=list)      # peers that could not run, and why


@dataclass
class Peaks:
    matmul_tflops: Dict[str, float]     # per dtype name
    matmul_n: Dict[str, int]
    copy_gbps: float
    copy_bytes: int


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


# ---------------------------------------------------------------------------- suites

def _randn(shape, case: Case, device) -> torch.Tensor:
    return torch.randn(*shape, device=device).to(case.dtype)


def _try_peers(factories: Sequence[Callable[[], List[Impl]]], skipped: List[str]) -> List[Impl]:
    """Builds each peer family; one that fails to set up (a flashinfer plan that rejects the
    shapes, ...) becomes a skip note instead of ending the run."""
    impls = []
    for factory in factories:
        try:
            impls.extend(factory())
        except Exception as error:  # noqa: BLE001
            skipped.append(f"{_factory_name(factory)}: setup failed: {_first_line(error)}")
    return impls


def _factory_name(factory) -> str:
    fn = getattr(factory, "func", factory)
    return getattr(fn, "__name__", "peer")


def build_prefill(case: Case, device) -> Workload:
    s = case.shape
    B, L, Hq, Hk, D = s["batch"], s["seqlen"], s["heads"], s["kv_heads"], s["head_dim"]
    q = _randn((B, L, Hq, D), case, device)
    k, v = _randn((B, L, Hk, D), case, device), _randn((B, L, Hk, D), case, device)
    skipped: List[str] = []
    impls = [Impl("fastattn", run=lambda: fastattn.attention(q, k, v, causal=True))]
    impls += _try_peers([
        lambda: peers.sdpa_dense(q, k, v, causal=True),
        lambda: peers.flex_dense(q, k, v, causal=True),
        lambda: peers.flash_attn_dense(q, k, v, causal=True),
        lambda: peers.flashinfer_ragged(q.view(B * L, Hq, D), k.view(B * L, Hk, D),
                                        v.view(B * L, Hk, D), [L] * B, [L] * B, causal=True),
    ], skipped)
    flops = B * attention_flops(visible_pairs(L, L, causal=True), Hq, D)
    return Workload(impls, flops, "flop", skipped)


def build_cross(case: Case, device) -> Workload:
    s = case.shape
    B, Sq, Sk = s["batch"], s["seqlen"], s["seqlen_k"]
    Hq, Hk, D = s["heads"], s["kv_heads"], s["head_dim"]
    q = _randn((B, Sq, Hq, D), case, device)
    k, v = _randn((B, Sk, Hk, D), case, device), _randn((B, Sk, Hk, D), case, device)
    skipped: List[str] = []
    impls = [Impl("fastattn", run=lambda: fastattn.cross_attention(q, k, v))]
    impls += _try_peers([
        lambda: peers.sdpa_dense(q, k, v, causal=False),
        lambda: peers.flex_dense(q, k, v, causal=False),
        lambda: peers.flash_attn_dense(q, k, v, causal=False),
        lambda: peers.flashinfer_ragged(q.view(B * Sq, Hq, D), k.view(B * Sk, Hk, D),
                                        v.view(B * Sk, Hk, D), [Sq] * B, [Sk] * B, causal=False),
    ], skipped)
    flops = B * attention_flops(Sq * Sk, Hq, D)
    return Workload(impls, flops, "flop", skipped)


def build_varlen(case: Case, device) -> Workload:
    """Causal self-attention over a packed batch of prompts of different lengths (the
    prefill of a continuous-batching step)."""
    s = case.shape
    Hq, Hk, D = s["heads"], s["kv_heads"], s["head_dim"]
    lens = spread(s["seqlen"], s["batch"])
    T = sum(lens)
    q, k, v = _randn((T, Hq, D), case, device), _randn((T, Hk, D), case, device), \
        _randn((T, Hk, D), case, device)
    cu = peers._cumsum(lens, device)
    skipped: List[str] = []
    impls = [Impl("fastattn", run=lambda: fastattn.attention_varlen(
        q, k, v, cu, cu, max(lens), max(lens), causal=True))]
    impls += _try_peers([
        lambda: peers.sdpa_varlen_loop(q, k, v, lens, causal=True),
        lambda: peers.flex_varlen(q, k, v, lens, causal=True),
        lambda: peers.flash_attn_varlen(q, k, v, lens, causal=True),
        lambda: peers.flashinfer_ragged(q, k, v, lens, lens, causal=True),
    ], skipped)
    flops = sum(attention_flops(visible_pairs(n, n, causal=True), Hq, D) for n in lens)
    return Workload(impls, flops, "flop", skipped)


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
    return k_cache, v_cache, table.to(device)


def _paged_peers(q, k_cache, v_cache, table, info: PagedBatchInfo, skipped) -> List[Impl]:
    return _try_peers([
        lambda: peers.gather_sdpa(q, k_cache, v_cache, table, info),
        lambda: peers.flash_attn_paged(q, k_cache, v_cache, table, info),
        lambda: peers.flashinfer_paged(q, k_cache, v_cache, table, info),
    ], skipped)


def build_decode(case: Case, device) -> Workload:
    s = case.shape
    B, Hq, Hk, D, page = s["batch"], s["heads"], s["kv_heads"], s["head_dim"], s["page_size"]
    info = PagedBatchInfo(q_lens=[1] * B, seq_lens=[s["context"]] * B, page_size=page)
    k_cache, v_cache, table = _paged_cache(info.seq_lens, page, Hk, D, case, device)
    seq_lens = torch.tensor(info.seq_lens, dtype=torch.int32, device=device)
    q = _randn((B, Hq, D), case, device)
    skipped: List[str] = []
    impls = [Impl("fastattn", run=lambda: fastattn.paged_attention(q, k_cache, v_cache, table,
                                                                   seq_lens))]
    impls += _paged_peers(q, k_cache, v_cache, table, info, skipped)
    # Bytes that must move: q read, the K and V of every used token read once, out written.
    # (Block table and seq_lens are a few KB; we leave them out.)
    elem = q.element_size()
    nbytes = elem * (2 * B * Hq * D + 2 * sum(info.seq_lens) * Hk * D)
    return Workload(impls, nbytes, "byte", skipped)


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
    cu_q = peers._cumsum(q_lens, device)
    q = _randn((sum(q_lens), Hq, D), case, device)
    skipped: List[str] = []
    impls = [Impl("fastattn", run=lambda: fastattn.paged_attention(
        q, k_cache, v_cache, table, seq_lens, cu_seqlens_q=cu_q, max_seqlen_q=max(q_lens)))]
    impls += _paged_peers(q, k_cache, v_cache, table, info, skipped)
    flops = sum(attention_flops(visible_pairs(nq, nk, causal=True), Hq, D)
                for nq, nk in zip(info.q_lens, info.seq_lens))
    return Workload(impls, flops, "flop", skipped)


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

    def empty_cache():
        return torch.zeros(num_pages, page, Hk, D, dtype=case.dtype, device=device)

    # Separate caches per implementation, so the output check compares two independent writes.
    fa_k, fa_v = empty_cache(), empty_cache()

    def fa_run():
        fastattn.append_kv(fa_k, fa_v, k, v, slot_mapping)

    def fa_output():
        fa_run()
        return fa_k, fa_v

    skipped: List[str] = []
    impls = [Impl("fastattn", run=fa_run, output=fa_output)]
    impls += _try_peers([lambda: peers.index_copy_append(empty_cache(), empty_cache(), k, v,
                                                         slot_mapping)], skipped)
    # k and v are each read once and written once.
    nbytes = 2 * 2 * T * Hk * D * k.element_size()
    return Workload(impls, nbytes, "byte", skipped)


BUILDERS: Dict[str, Callable[[Case, Any], Workload]] = {
    "prefill": build_prefill, "cross": build_cross, "varlen": build_varlen,
    "decode": build_decode, "extend": build_extend, "append": build_append,
}


# ---------------------------------------------------------------------------- measuring

def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device, warmup: int, repeats: int,
            min_time_s: float = 0.0) -> List[float]:
    """Milliseconds of each timed call, after `warmup` untimed calls.

    At least `repeats` calls, more until `min_time_s` has passed (at most
    MAX_RUNS_PER_REPEAT * repeats). On CUDA each call is bracketed by events (device
    time, without host sync overhead); on CPU by perf_counter.
    """
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    _sync(device)
    times: List[float] = []
    start = time.perf_counter()
    max_runs = max(repeats, MAX_RUNS_PER_REPEAT * repeats)
    while len(times) < repeats or (time.perf_counter() - start < min_time_s
                                   and len(times) < max_runs):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure_peaks(device, dtypes: Sequence[torch.dtype], profile: str) -> Peaks:
    """This machine's achievable peaks, measured now (under the same load as the cases):
    the best of a few runs of torch.matmul per dtype, and of a large tensor copy."""
    tflops, sizes = {}, {}
    for dtype in dtypes:
        name = str(dtype).replace("torch.", "")
        n, tflops[name] = 256, 0.0
        while True:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            seconds = min(time_fn(lambda: torch.matmul(a, b), device, warmup=1, repeats=3)) * 1e-3
            del a, b
            if 2.0 * n**3 / seconds / 1e12 > tflops[name]:
                tflops[name], sizes[name] = 2.0 * n**3 / seconds / 1e12, n
            if n >= PEAK_MATMUL_MAX_N[profile] or 8 * seconds > PEAK_MATMUL_TIME_LIMIT_S:
                break
            n *= 2
    nbytes = PEAK_COPY_BYTES[profile]
    return Peaks(tflops, sizes, measure_copy_gbps(device, nbytes), nbytes)


def measure_copy_gbps(device, nbytes: int) -> float:
    """Best read + write rate of a large tensor copy, in GB/s."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = min(time_fn(lambda: dst.copy_(src), device, warmup=1, repeats=5))
    return 2.0 * nbytes / (ms * 1e-3) / 1e9


def _flatten(x) -> List[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in x for t in _flatten(item)]


def compare(reference, output, dtype) -> Tuple[float, bool]:
    """(max |difference|, agrees) of two outputs (tensors or nested tuples of tensors)."""
    ref, out = _flatten(reference), _flatten(output)
    if len(ref) != len(out) or any(a.shape != b.shape for a, b in zip(ref, out)):
        return math.inf, False
    tol = CHECK_TOLERANCE[dtype]
    worst, agrees = 0.0, True
    for a, b in zip(ref, out):
        a, b = a.float(), b.float()
        if a.numel():
            diff = (a - b).abs().max().item()
            worst = max(worst, diff if math.isfinite(diff) else math.inf)
        agrees = agrees and bool(torch.allclose(a, b, atol=tol, rtol=tol))
    return worst, agrees


def _first_line(error: BaseException) -> str:
    """The error's first sentence: enough to tell why, short enough for a note."""
    text = str(error).strip().splitlines()
    first = text[0].split(". ")[0] if text else ""
    return f"{type(error).__name__}: {first}"[:160]


def run_case(case: Case, settings: Settings, peaks: Peaks,
             warn: Callable[[str], None]) -> CaseReport:
    """Checks, then times, every implementation of one case."""
    device = settings.device
    report = CaseReport(case)
    torch.manual_seed(0)
    try:
        workload = BUILDERS[case.suite](case, device)
        reference = workload.impls[0].outputs()
    except Exception as error:  # noqa: BLE001 (e.g. a dtype fastattn has no kernel for)
        report.skipped.append(f"{case.suite} {case.label()} {case.dtype_name}: fastattn "
                              f"failed, case skipped: {_first_line(error)}")
        return report
    report.work, report.unit = workload.work, workload.unit
    skipped = report.skipped
    skipped.extend(workload.skipped)
    where = f"{case.suite} {case.label()} {case.dtype_name}"
    if not all(bool(t.isfinite().all()) for t in _flatten(reference)):
        warn(f"WARNING: {where}: fastattn's output has NaN or inf")

    # Check first: a peer that cannot run is skipped; one that disagrees is still timed
    # but flagged, because a speed ratio between different computations means nothing.
    checked: List[Tuple[Impl, Optional[float], Optional[bool]]] = [(workload.impls[0], None, None)]
    for impl in workload.impls[1:]:
        try:
            output = impl.outputs()
        except Exception as error:  # noqa: BLE001
            skipped.append(f"{impl.name}: cannot run here: {_first_line(error)}")
            continue
        diff, agrees = compare(reference, output, case.dtype)
        del output
        if not agrees:
            warn(f"WARNING: {where}: {impl.name} disagrees with fastattn "
                 f"(max abs diff {diff:.3g}, tol {CHECK_TOLERANCE[case.dtype]:g})")
        checked.append((impl, diff, agrees))
    del reference

    if workload.unit == "flop":
        unit, scale = "TFLOP/s", 1e12
        peak = peaks.matmul_tflops.get(case.dtype_name)
    else:
        # A machine's memory bandwidth can drift within a run (other tenants of the host):
        # compare with the best of the run's copy peak and copies just before and after
        # this case, never with a slower moment than the one the case ran in.
        unit, scale = "GB/s", 1e9
        peak = max(peaks.copy_gbps, measure_copy_gbps(device, peaks.copy_bytes))
    results = report.results

    def timed(fn) -> List[float]:
        return time_fn(fn, device, settings.warmup, settings.repeats, settings.min_time_s)

    for impl, diff, agrees in checked:
        try:
            times = timed(impl.run)
            gather_ms = statistics.median(timed(impl.gather)) if impl.gather else None
        except Exception as error:  # noqa: BLE001 (a peer running out of memory, ...)
            if not results:
                skipped.append(f"{where}: fastattn failed while timing, case skipped: "
                               f"{_first_line(error)}")
                break
            skipped.append(f"{impl.name}: failed while timing: {_first_line(error)}")
            continue
        ms = statistics.median(times)
        throughput = workload.work / (ms * 1e-3) / scale
        results.append(Result(
            suite=case.suite, shape=case.label(), dtype=case.dtype_name, impl=impl.name,
            time_ms=ms, times_ms=times, throughput=throughput, throughput_unit=unit,
            pct_of_peak=None, ratio=None, max_abs_diff=diff, agrees=agrees,
            gather_ms=gather_ms, note=impl.note))
    if workload.unit != "flop" and results:
        peak = max(peak, measure_copy_gbps(device, peaks.copy_bytes))
    for result in results:
        result.peak = peak
        result.pct_of_peak = 100.0 * result.throughput / peak if peak else None
    for result in results[1:]:
        result.ratio = result.time_ms / results[0].time_ms
    del workload
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return report


# ---------------------------------------------------------------------------- reporting

# (name, width); the shape column's width comes from the case labels.
COLUMNS = (("suite", 7), ("shape", None), ("dtype", 8), ("impl", 24), ("ms", 10),
           ("throughput", 16), ("% peak", 7), ("fastattn x", 10), ("check", 18), ("note", 0))
RIGHT_ALIGNED = ("ms", "throughput", "% peak", "fastattn x")


class Table:
    """Prints rows as they are measured (a full CPU run takes minutes), so the column
    widths are fixed up front."""

    def __init__(self, cases: Sequence[Case], out=sys.stdout):
        self.out = out
        shape_width = max(len(c.label()) for c in cases)
        self.widths = {name: max(len(name), shape_width if width is None else width)
                       for name, width in COLUMNS}

    def _line(self, cells: Dict[str, str]) -> str:
        parts = []
        for name, _ in COLUMNS:
            cell, width = cells.get(name, ""), self.widths[name]
            parts.append(cell.rjust(width) if name in RIGHT_ALIGNED else cell.ljust(width))
        return "  ".join(parts).rstrip()

    def header(self) -> None:
        print(self._line({name: name for name, _ in COLUMNS}), file=self.out)
        print("-" * len(self._line({n: "x" * self.widths[n] for n, _ in COLUMNS})), file=self.out)

    def row(self, r: Result) -> None:
        if r.agrees is None:
            check = "reference"
        else:
            check = ("ok" if r.agrees else "MISMATCH") + f" {r.max_abs_diff:.1e}"
        note = r.note
        if r.gather_ms is not None:
            note = "; ".join(x for x in (f"gather {r.gather_ms:.3g} ms", note) if x)
        print(self._line({
            "suite": r.suite, "shape": r.shape, "dtype": r.dtype, "impl": r.impl,
            "ms": f"{r.time_ms:.3f}",
            "throughput": f"{r.throughput:.3g} {r.throughput_unit}",
            "% peak": "" if r.pct_of_peak is None else f"{r.pct_of_peak:.1f}",
            "fastattn x": "" if r.ratio is None else f"{r.ratio:.2f}" + ("" if r.agrees else "!"),
            "check": check, "note": note,
        }), file=self.out, flush=True)


def group_skips(reports: Sequence[CaseReport]) -> List[str]:
    """The skip notes of all cases, one line per reason: the same skip (a backend missing on
    this device) recurs in every case and would otherwise bury the rest."""
    by_reason: Dict[str, List[str]] = {}
    for report in reports:
        for note in report.skipped:
            name, _, reason = note.partition(": ")
            names = by_reason.setdefault(reason, [])
            if name not in names:
                names.append(name)
    return [f"{', '.join(names)}: {reason}" for reason, names in by_reason.items()]


def machine_info(argv: Sequence[str]) -> Dict[str, Any]:
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([_python_path(), "-m", "fastattn.bench", *argv]),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "fastattn_build_info": fastattn.build_info(),
    }
    info.update(_git_info())
    return info


def _python_path() -> str:
    """The interpreter as one would type it here (.venv/bin/python), so the recorded
    command can be re-run as is."""
    relative = os.path.relpath(sys.executable)
    return sys.executable if relative.startswith("..") else relative


def _git_info() -> Dict[str, Any]:
    """Commit of the source tree fastattn was imported from, if it is a git checkout."""
    cwd = Path(fastattn.__file__).resolve().parent

    def git(*args) -> Optional[str]:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if dirty is None else bool(dirty)}


def write_json(path: str, info, settings: Settings, dtypes, peaks: Peaks,
               reports: Sequence[CaseReport], notes: List[str]) -> None:
    doc = {
        "machine": info,
        "settings": {**asdict(settings), "dtypes": [str(d).replace("torch.", "") for d in dtypes]},
        "peaks": asdict(peaks),
        "notes": notes,
        "cases": [],
    }
    for report in reports:
        case, rows = report.case, report.results
        doc["cases"].append({
            "suite": case.suite, "shape": case.label(), "params": case.shape,
            "dtype": case.dtype_name,
            "work": report.work, "work_unit": report.unit,   # of one call: FLOPs or bytes
            "results": [asdict(r) for r in rows],
            # fastattn speed / peer speed, per peer (> 1: fastattn faster).
            "ratios": {r.impl: r.ratio for r in rows if r.ratio is not None},
            "skipped": report.skipped,
        })
    Path(path).write_text(json.dumps(_strict_json(doc), indent=2, allow_nan=False) + "\n")


def _strict_json(value):
    """JSON has no inf/nan: write them as strings ("inf") rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("--plot needs matplotlib, an optional extra: "
                         "pip install 'fastattn[bench]' (or pip install matplotlib)")


def plot(path: str, results: Sequence[Result]) -> bool:
    """Horizontal bars of fastattn's speed ratio against each peer, per case (log scale,
    1 = parity). Returns False when there is nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.ratio is not None]
    if not rows:
        return False
    labels = [f"{r.suite} {r.shape} {r.dtype} vs {r.impl}" for r in rows]
    ratios = [r.ratio for r in rows]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(rows) + 1.5))
    colors = ["tab:green" if x >= 1 else "tab:red" for x in ratios]
    ax.barh(range(len(rows)), ratios, color=colors)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("fastattn speed / peer speed (> 1: fastattn faster)")
    ax.set_title("fastattn vs peers")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- CLI

def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fastattn.bench",
        description="Time fastattn against PyTorch SDPA, FlexAttention, flash_attn and "
                    "flashinfer (whichever are available) on the same inputs.",
        epilog="Shape options apply to every selected suite that uses them; unset ones take "
               "the suite's default for the device (see benchmarks/README.md).")
    p.add_argument("suites", nargs="*", metavar="suite",
                   help=f"suites to run, from {', '.join(SUITES)} (default: all)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="default: cuda if available, else cpu")
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), metavar="DTYPE",
                   help="one or more of float32, float16, bfloat16 (default: bfloat16 on "
                        "cuda, float32 on cpu)")
    shape = p.add_argument_group("shapes")
    shape.add_argument("--batch", type=int, help="batch size; number of sequences for varlen")
    shape.add_argument("--heads", type=int, help="query heads")
    shape.add_argument("--kv-heads", type=int, help="key/value heads (GQA when < heads)")
    shape.add_argument("--head-dim", type=int)
    shape.add_argument("--seqlen", type=int,
                       help="sequence length (prefill), query length (cross), longest "
                            "sequence (varlen; lengths spread over [L/4, L])")
    shape.add_argument("--seqlen-k", type=int, help="key length (cross)")
    shape.add_argument("--context", type=int, help="tokens already in the cache per sequence "
                       "(decode, extend)")
    shape.add_argument("--page-size", type=int)
    shape.add_argument("--tokens", type=int, help="new tokens: the most per sequence for "
                       "extend (spread over [N/4, N]); the total for append")
    timing = p.add_argument_group("timing")
    timing.add_argument("--quick", action="store_true",
                        help="small shapes and few repeats (a smoke run, well under a minute)")
    timing.add_argument("--warmup", type=int, help="untimed calls before timing")
    timing.add_argument("--repeats", type=int, help="least number of timed calls")
    timing.add_argument("--min-time", type=float,
                        help="keep timing a case until this many seconds have passed")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write every figure and machine info")
    out.add_argument("--plot", metavar="PATH", help="PNG bar chart of the ratios (matplotlib)")
    args = p.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        p.error(f"unknown suite {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    return args


def resolve_shape(suite: str, profile: str, args: argparse.Namespace) -> Dict[str, int]:
    shape = dict(DEFAULT_SHAPES[profile][suite])
    for key in shape:
        if getattr(args, key, None) is not None:
            shape[key] = getattr(args, key)
    if "heads" in shape and shape["kv_heads"] is None:
        shape["kv_heads"] = shape["heads"]
    for key, value in shape.items():
        if value < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1 ({suite}), got {value}")
    if "heads" in shape and shape["heads"] % shape["kv_heads"]:
        raise SystemExit(f"{suite}: --heads ({shape['heads']}) must be a multiple of "
                         f"--kv-heads ({shape['kv_heads']})")
    return shape


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.plot:
        _require_matplotlib()  # fail now, not after minutes of timing
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    default_dtype = "bfloat16" if device == "cuda" else "float32"
    dtypes = list(dict.fromkeys(DTYPES[name] for name in (args.dtype or [default_dtype])))
    profile = "quick" if args.quick else device
    warmup, repeats, min_time = TIMING_DEFAULTS[profile]
    settings = Settings(
        device=device,
        warmup=warmup if args.warmup is None else args.warmup,
        repeats=max(1, repeats if args.repeats is None else args.repeats),
        min_time_s=min_time if args.min_time is None else args.min_time)
    suites = list(dict.fromkeys(args.suites)) or list(SUITES)
    cases = [Case(suite, dtype, resolve_shape(suite, profile, args))
             for suite in suites for dtype in dtypes]

    started = time.perf_counter()
    info = machine_info(argv)
    commit = (info["git_commit"] or "unknown")[:12] + (" (dirty)" if info["git_dirty"] else "")
    print(f"fastattn {fastattn.__version__} | torch {info['torch_version']} | {device}: "
          f"{info['cuda_device'] or info['cpu_model']} ({info['torch_threads']} threads) | "
          f"commit {commit}")
    load, cpus = info["load_average_1min"], info["cpu_count"] or 1
    if load is not None and load > 0.5 * cpus:
        # torch's CPU threads wait for each other, so one descheduled thread stalls a whole
        # op: on a busy machine timings jump by whole scheduler time slices.
        print(f"WARNING: load average {load:.1f} on {cpus} CPUs: other processes are running, "
              "timings will be noisy")
    with torch.inference_mode():
        peaks = measure_peaks(device, dtypes, profile)
        print("peaks: " + ", ".join(f"{name} matmul {tf:.3g} TFLOP/s (n={peaks.matmul_n[name]})"
                                    for name, tf in peaks.matmul_tflops.items())
              + f", copy {peaks.copy_gbps:.3g} GB/s (read+write)\n")

        warnings: List[str] = []

        def warn(message: str) -> None:
            warnings.append(message)
            print(message, file=sys.stderr, flush=True)

        table = Table(cases)
        table.header()
        reports = []
        for case in cases:
            reports.append(run_case(case, settings, peaks, warn))
            for result in reports[-1].results:
                table.row(result)

    notes = peers.unavailable_notes(device) + group_skips(reports)
    print("\nfastattn x = fastattn speed / that implementation's speed (> 1: fastattn "
          "faster); '!' = outputs disagree.")
    print("% peak = throughput / this run's matmul peak (TFLOP/s), or for GB/s the best copy rate "
          "of the run's start and of copies just before and after that case.")
    for note in notes:
        print(f"note: {note}")
    for message in warnings:
        print(message)
    print(f"total {time.perf_counter() - started:.1f} s")

    if args.json:
        write_json(args.json, info, settings, dtypes, peaks, reports, notes)
        print(f"wrote {args.json}")
    if args.plot:
        if plot(args.plot, [r for report in reports for r in report.results]):
            print(f"wrote {args.plot}")
        else:
            print("--plot: no peer ratios to plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
