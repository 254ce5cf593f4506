"""Continuous-batching inference on fastattn's paged KV cache: `python -m fastattn.demo`.

A small Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU MLP) with seeded
random weights serves a handful of random prompts the way an inference server would:

- requests arrive over time and are admitted while batch slots and cache pages allow;
- every step packs one batch of new tokens: one decode token for each running sequence,
  then prefill chunks of waiting prompts up to a token budget (a long prompt is prefilled
  over several steps), so prefill and decode share a step;
- attention is `PagedKVCache.append` + `fastattn.paged_attention` on a `PagedKVCache`
  (the decode form when every sequence has one new token, else `cu_seqlens_q`);
- a sequence that has generated its `max_new_tokens` (greedy) frees its pages at once.

After every step the logits of every new token are checked against a dense PyTorch
reference that recomputes each scheduled sequence's whole context from its token ids with
`torch.nn.functional.scaled_dot_product_attention` in float32. The exit status is non-zero
when the largest difference exceeds the tolerance (see TOLERANCES).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from fastattn import paged_attention
from fastattn._dtypes import DTYPES
from fastattn.cache import PagedBatch, PagedKVCache

# Max |logit difference| allowed against the float32 reference. The reference runs the same
# (dtype-rounded) weights in float32, so for fp16/bf16 the bound covers the rounding of the
# whole model (activations, norms, MLP), not only attention; logits are O(1) here.
TOLERANCES = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 2.5e-1}


# ---------------------------------------------------------------------------- model

@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 512
    num_layers: int = 3
    num_heads: int = 8
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim


# attend(layer, q [T, Hq, D], k [T, Hk, D], v [T, Hk, D]) -> out [T, Hq, D]
AttendFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf.to(x.dtype) * weight


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (rotate-half form) of x [T, H, D] at int64 positions [T]."""
    angles = positions.float()[:, None] * inv_freq[None, :]          # [T, D/2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class TinyLlama:
    """Decoder-only transformer. `forward` is written once; attention is a callback, so the
    same weights run through fastattn's paged cache and through the dense reference."""

    def __init__(self, cfg: ModelConfig, weights: dict, dtype: torch.dtype, device):
        self.cfg, self.dtype, self.device = cfg, dtype, torch.device(device)
        self._weights = weights  # float32 masters, kept to derive other precisions
        self.w = {name: t.to(dtype).to(self.device) for name, t in weights.items()}
        half = torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim
        self.inv_freq = (1.0 / cfg.rope_theta ** half).to(self.device)

    @classmethod
    def random(cls, cfg: ModelConfig, seed: int, dtype: torch.dtype, device) -> "TinyLlama":
        if cfg.head_dim % 2 or cfg.num_heads % cfg.num_kv_heads:
            raise ValueError("head_dim must be even and num_heads a multiple of num_kv_heads")
        g = torch.Generator().manual_seed(seed)

        def linear(out_features: int, in_features: int) -> torch.Tensor:
            return torch.randn(out_features, in_features, generator=g) / math.sqrt(in_features)

        def norm(size: int) -> torch.Tensor:
            return 1.0 + 0.1 * torch.randn(size, generator=g)

        h, d = cfg.hidden_size, cfg.head_dim
        qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * d
        weights = {"embed": torch.randn(cfg.vocab_size, h, generator=g)}
        for i in range(cfg.num_layers):
            weights[f"{i}.attn_norm"] = norm(h)
            weights[f"{i}.wqkv"] = linear(qkv, h)
            weights[f"{i}.wo"] = linear(h, cfg.num_heads * d)
            weights[f"{i}.mlp_norm"] = norm(h)
            weights[f"{i}.w_gate_up"] = linear(2 * cfg.intermediate_size, h)
            weights[f"{i}.w_down"] = linear(h, cfg.intermediate_size)
        weights["final_norm"] = norm(h)
        weights["lm_head"] = linear(cfg.vocab_size, h)
        return cls(cfg, weights, dtype, device)

    def reference_copy(self) -> "TinyLlama":
        """The same weights, rounded to this model's dtype, computed in float32."""
        rounded = {name: t.to(self.dtype).float() for name, t in self._weights.items()}
        return TinyLlama(self.cfg, rounded, torch.float32, self.device)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor,
                attend: AttendFn) -> torch.Tensor:
        """tokens, positions int64 [T] -> float32 logits [T, vocab]."""
        cfg, w = self.cfg, self.w
        t, hq, hk, d = tokens.shape[0], cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        x = w["embed"][tokens]
        for i in range(cfg.num_layers):
            h = rms_norm(x, w[f"{i}.attn_norm"], cfg.norm_eps)
            q, k, v = F.linear(h, w[f"{i}.wqkv"]).split([hq * d, hk * d, hk * d], dim=-1)
            q = apply_rope(q.view(t, hq, d), positions, self.inv_freq)
            k = apply_rope(k.view(t, hk, d), positions, self.inv_freq)
            v = v.view(t, hk, d)                      # a strided view: last dim contiguous
            o = attend(i, q, k, v)
            x = x + F.linear(o.reshape(t, hq * d), w[f"{i}.wo"])
            h = rms_norm(x, w[f"{i}.mlp_norm"], cfg.norm_eps)
            gate, up = F.linear(h, w[f"{i}.w_gate_up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w[f"{i}.w_down"])
        return F.linear(rms_norm(x, w["final_norm"], cfg.norm_eps), w["lm_head"]).float()


def dense_attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of one whole sequence [S, H, D] with PyTorch SDPA (the reference)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                       is_causal=True)
    return o.transpose(0, 1)


# ---------------------------------------------------------------------------- serving

@dataclass
class Request:
    rid: int
    prompt: List[int]
    max_new_tokens: int
    arrival_step: int
    seq_id: Optional[int] = None
    fed: List[int] = field(default_factory=list)        # tokens already in the KV cache
    generated: List[int] = field(default_factory=list)
    prefill_steps: int = 0

    @property
    def prefilling(self) -> bool:
        return len(self.fed) < len(self.prompt)

    @property
    def done(self) -> bool:
        return len(self.generated) >= self.max_new_tokens

    @property
    def max_tokens_in_cache(self) -> int:
        # The last generated token is returned, never fed back.
        return len(self.prompt) + self.max_new_tokens - 1


@dataclass
class StepResult:
    scheduled: list          # [(Request, n_new_tokens)] in batch order
    decode: List[bool]       # per scheduled entry: a decode token (else a prefill chunk)
    batch: PagedBatch
    logits: torch.Tensor     # float32 [T, vocab], rows in batch order

    @property
    def mixed(self) -> bool:
        return len(set(self.decode)) == 2


class Engine:
    """A minimal continuous-batching scheduler on a PagedKVCache.

    Admission is first come, first served, when a batch slot is free and the cache has pages
    for the request's worst case (prompt + max_new_tokens), so a running sequence never has
    to be preempted. Each step takes one decode token per decoding sequence, then fills the
    remaining token budget with prefill chunks.
    """

    def __init__(self, model: TinyLlama, cache: PagedKVCache, requests: List[Request], *,
                 token_budget: int, max_running: int):
        if token_budget < max_running:
            raise ValueError("token_budget must be at least max_running (one decode token each)")
        for r in requests:
            limit = min(cache.num_pages, cache.max_pages_per_seq)
            if cache.pages_for(r.max_tokens_in_cache) > limit:
                raise ValueError(f"request {r.rid} can never fit in the cache")
        self.model, self.cache = model, cache
        self.token_budget, self.max_running = token_budget, max_running
        self.waiting = deque(sorted(requests, key=lambda r: (r.arrival_step, r.rid)))
        self.running: List[Request] = []
        self.finished: List[Request] = []
        self.committed_pages = 0     # worst-case pages of the running requests
        self.clock = 0               # step counter, drives arrivals
        self.busy_seconds = 0.0      # time spent in step() on batches (the fastattn path)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_running:
            r = self.waiting[0]
            need = self.cache.pages_for(r.max_tokens_in_cache)
            if r.arrival_step > self.clock or self.committed_pages + need > self.cache.num_pages:
                return
            self.waiting.popleft()
            r.seq_id = self.cache.add_sequence()
            self.committed_pages += need
            self.running.append(r)

    def _schedule(self) -> list:
        budget = self.token_budget
        plan = [(r, 1) for r in self.running if not r.prefilling]
        budget -= len(plan)
        for r in self.running:
            if r.prefilling and budget > 0:
                n = min(budget, len(r.prompt) - len(r.fed))
                plan.append((r, n))
                budget -= n
        return plan

    def _attend(self, batch: PagedBatch) -> AttendFn:
        cache = self.cache

        def attend(layer, q, k, v):
            cache.append(layer, k, v, batch.slot_mapping)
            k_cache, v_cache = cache.k_cache(layer), cache.v_cache(layer)
            if batch.is_decode:  # one new token per sequence: q is [B, Hq, D]
                return paged_attention(q, k_cache, v_cache, batch.block_table, batch.seq_lens)
            return paged_attention(q, k_cache, v_cache, batch.block_table, batch.seq_lens,
                                   cu_seqlens_q=batch.cu_seqlens_q,
                                   max_seqlen_q=batch.max_seqlen_q)
        return attend

    def step(self) -> Optional[StepResult]:
        """Run one batch; None when nothing could run this step (no request has arrived)."""
        self._admit()
        plan = self._schedule()
        self.clock += 1
        if not plan:
            return None

        start = time.perf_counter()
        decode = [not r.prefilling for r, _ in plan]
        inputs = [[r.generated[-1]] if dec else r.prompt[len(r.fed):len(r.fed) + n]
                  for (r, n), dec in zip(plan, decode)]
        batch = self.cache.prepare_batch([(r.seq_id, n) for r, n in plan])
        tokens = torch.tensor([t for chunk in inputs for t in chunk], device=self.model.device)
        logits = self.model.forward(tokens, batch.positions, self._attend(batch))

        # Greedy sampling from each sequence's last row, for sequences past their prompt.
        sample, last_rows, offset = [], [], 0
        for (r, n), chunk, dec in zip(plan, inputs, decode):
            offset += n
            r.prefill_steps += not dec
            r.fed.extend(chunk)
            if not r.prefilling:
                sample.append(r)
                last_rows.append(offset - 1)
        next_tokens = logits[last_rows].argmax(dim=-1).tolist() if sample else []
        for r, tok in zip(sample, next_tokens):
            r.generated.append(tok)
            if r.done:
                self.cache.free(r.seq_id)
                self.committed_pages -= self.cache.pages_for(r.max_tokens_in_cache)
                self.running.remove(r)
                self.finished.append(r)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()  # time the kernels, not their launches
        self.busy_seconds += time.perf_counter() - start
        return StepResult(plan, decode, batch, logits)


# ---------------------------------------------------------------------------- demo

@dataclass
class DemoConfig:
    device: str = "cpu"
    dtype: Optional[str] = None         # default: float32 on CPU, float16 on CUDA
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    num_requests: int = 8
    prompt_len: tuple = (8, 128)        # inclusive range of prompt lengths
    max_new_tokens: tuple = (4, 24)     # inclusive range of generated tokens per request
    arrival_spread: int = 12            # late requests arrive within this many steps
    page_size: int = 16
    num_pages: int = 32
    token_budget: int = 64              # new tokens per step (decode + prefill chunks)
    max_running: int = 5
    tolerance: Optional[float] = None   # default: TOLERANCES[dtype]
    # torch CPU threads for the run (0: torch's default). The model is tiny, so one thread
    # loses little, and it avoids OpenMP's spin-waits stalling when the CPUs are shared.
    threads: int = 1
    verbose: bool = False


@dataclass
class DemoReport:
    device: str
    dtype: str
    threads: int                 # torch CPU threads during the run
    model: ModelConfig
    sequences: int
    steps: int
    mixed_steps: int             # steps holding both prefill chunks and decode tokens
    chunked_prompts: int         # prompts prefilled over more than one step
    prompt_tokens: int
    generated_tokens: int
    seconds: float               # fastattn path only: scheduling, model, sampling
    peak_pages: int
    total_pages: int
    page_size: int
    max_abs_diff: float
    tolerance: float

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else float("inf")

    @property
    def processed_per_s(self) -> float:
        total = self.prompt_tokens + self.generated_tokens
        return total / self.seconds if self.seconds > 0 else float("inf")

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance  # False for NaN as well

    def format(self) -> str:
        m = self.model
        return "\n".join([
            "fastattn demo: continuous batching on a PagedKVCache",
            f"  device            {self.device} ({self.dtype}), {self.threads} CPU "
            f"thread{'s' if self.threads != 1 else ''}",
            f"  model             {m.num_layers} layers, hidden {m.hidden_size}, "
            f"{m.num_heads} q / {m.num_kv_heads} kv heads, head dim {m.head_dim}, "
            f"vocab {m.vocab_size}",
            f"  sequences         {self.sequences} ({self.chunked_prompts} prompts prefilled "
            f"in chunks)",
            f"  steps             {self.steps} ({self.mixed_steps} mixing prefill and decode)",
            f"  tokens            {self.prompt_tokens} prompt, {self.generated_tokens} generated",
            f"  throughput        {self.tokens_per_s:.1f} generated tokens/s, "
            f"{self.processed_per_s:.1f} tokens/s processed ({self.seconds:.2f} s, "
            f"reference excluded)",
            f"  pages             peak {self.peak_pages} / {self.total_pages} used "
            f"(page size {self.page_size})",
            f"  max |logit diff|  {self.max_abs_diff:.3e} vs dense SDPA reference "
            f"(tolerance {self.tolerance:g}): {'PASS' if self.passed else 'FAIL'}",
        ])


def make_requests(cfg: DemoConfig) -> List[Request]:
    """Seeded random prompts; half arrive at step 0, the rest over `arrival_spread` steps."""
    if min(cfg.prompt_len + cfg.max_new_tokens) < 1:
        raise ValueError("prompts and max_new_tokens need at least one token")
    rng = random.Random(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    requests = []
    for rid in range(cfg.num_requests):
        n = rng.randint(*cfg.prompt_len)
        prompt = torch.randint(cfg.model.vocab_size, (n,), generator=g).tolist()
        arrival = 0 if rid < (cfg.num_requests + 1) // 2 else rng.randint(1, cfg.arrival_spread)
        requests.append(Request(rid, prompt, rng.randint(*cfg.max_new_tokens), arrival))
    return requests


def _nan_max(a: float, b: float) -> float:
    """max() that keeps a NaN, so a NaN logit can never pass the check."""
    return a if a != a or b <= a else b


def run(cfg: DemoConfig) -> DemoReport:
    saved_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(saved_threads)


def _run(cfg: DemoConfig) -> DemoReport:
    if cfg.dtype is None:  # the CUDA kernels take fp16/bf16 only
        dtype = torch.float16 if torch.device(cfg.device).type == "cuda" else torch.float32
    else:
        dtype = DTYPES[cfg.dtype]
    tolerance = TOLERANCES[dtype] if cfg.tolerance is None else cfg.tolerance
    mc = cfg.model
    model = TinyLlama.random(mc, cfg.seed, dtype, cfg.device)
    reference = model.reference_copy()
    cache = PagedKVCache(cfg.num_pages, cfg.page_size, mc.num_kv_heads, mc.head_dim,
                         num_layers=mc.num_layers, dtype=dtype, device=cfg.device)
    requests = make_requests(cfg)
    engine = Engine(model, cache, requests, token_budget=cfg.token_budget,
                    max_running=cfg.max_running)

    max_diff, steps, mixed = 0.0, 0, 0
    while engine.has_work:
        result = engine.step()
        if result is None:
            continue
        steps += 1
        mixed += result.mixed

        # Reference: each scheduled sequence's whole context, dense, from its token ids.
        offset, step_diff = 0, 0.0
        for r, n in result.scheduled:
            context = torch.tensor(r.fed, device=model.device)
            positions = torch.arange(len(r.fed), device=model.device)
            ref = reference.forward(context, positions, dense_attend)[-n:]
            diff = (result.logits[offset:offset + n] - ref).abs().max().item()
            step_diff = _nan_max(step_diff, diff)
            offset += n
        max_diff = _nan_max(max_diff, step_diff)
        if cfg.verbose:
            desc = " ".join(f"{r.rid}:{'d' if dec else 'p'}{n}"
                            for (r, n), dec in zip(result.scheduled, result.decode))
            print(f"step {engine.clock - 1:3d}  tokens {result.batch.num_tokens:3d}  "
                  f"pages {cache.pages_used:3d}/{cache.num_pages}  diff {step_diff:.1e}  {desc}")

    if cache.pages_used != 0 or len(cache) != 0:
        raise RuntimeError("demo bug: pages still held after every request finished")
    for r in requests:
        if len(r.generated) != r.max_new_tokens:
            raise RuntimeError(f"demo bug: request {r.rid} generated {len(r.generated)} tokens")

    return DemoReport(
        device=str(torch.device(cfg.device)), dtype=str(dtype).replace("torch.", ""),
        threads=torch.get_num_threads(), model=mc,
        sequences=len(requests), steps=steps, mixed_steps=mixed,
        chunked_prompts=sum(r.prefill_steps > 1 for r in requests),
        prompt_tokens=sum(len(r.prompt) for r in requests),
        generated_tokens=sum(len(r.generated) for r in requests),
        seconds=engine.busy_seconds, peak_pages=cache.peak_pages_used,
        total_pages=cache.num_pages, page_size=cache.page_size,
        max_abs_diff=max_diff, tolerance=tolerance)


def parse_args(argv=None) -> DemoConfig:
    d, m = DemoConfig(), ModelConfig()
    p = argparse.ArgumentParser(prog="python -m fastattn.demo", description=__doc__.split("\n")[0])
    p.add_argument("--device", default=d.device, help="cpu (default) or cuda")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="default: float32 on cpu, float16 on cuda")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--layers", type=int, default=m.num_layers)
    p.add_argument("--heads", type=int, default=m.num_heads, help="query heads")
    p.add_argument("--kv-heads", type=int, default=m.num_kv_heads)
    p.add_argument("--head-dim", type=int, default=m.head_dim)
    p.add_argument("--vocab", type=int, default=m.vocab_size)
    p.add_argument("--requests", type=int, default=d.num_requests)
    p.add_argument("--max-prompt", type=int, default=d.prompt_len[1])
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens[1])
    p.add_argument("--page-size", type=int, default=d.page_size)
    p.add_argument("--pages", type=int, default=d.num_pages, help="pages in the cache")
    p.add_argument("--token-budget", type=int, default=d.token_budget,
                   help="new tokens per step; longer prompts are prefilled in chunks")
    p.add_argument("--max-running", type=int, default=d.max_running,
                   help="sequences in flight at once")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max |logit diff| allowed (default: 1e-4 fp32, 5e-2 fp16, 2.5e-1 bf16)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch CPU threads (default 1; 0: torch's default)")
    p.add_argument("--verbose", action="store_true", help="print one line per step")
    a = p.parse_args(argv)
    model = ModelConfig(vocab_size=a.vocab, num_layers=a.layers, num_heads=a.heads,
                        num_kv_heads=a.kv_heads, head_dim=a.head_dim,
                        intermediate_size=2 * a.heads * a.head_dim)
    return DemoConfig(device=a.device, dtype=a.dtype, seed=a.seed, model=model,
                      num_requests=a.requests,
                      prompt_len=(min(d.prompt_len[0], a.max_prompt), a.max_prompt),
                      max_new_tokens=(min(d.max_new_tokens[0], a.max_new_tokens),
                                      a.max_new_tokens),
                      page_size=a.page_size, num_pages=a.pages, token_budget=a.token_budget,
                      max_running=a.max_running, tolerance=a.tolerance, threads=a.threads,
                      verbose=a.verbose)


def main(argv=None) -> int:
    report = run(parse_args(argv))
    print(report.format())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
