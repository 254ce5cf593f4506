"""A minimal continuous-batching engine on fastattn's PagedKVCache.

- requests arrive over time and are admitted while batch slots and cache pages allow;
- every step packs one batch of new tokens: one decode token for each running sequence,
  then prefill chunks of waiting prompts up to a token budget (a long prompt is prefilled
  over several steps), so prefill and decode share a step;
- attention is `PagedKVCache.append` + `fastattn.paged_attention` (the decode form when
  every sequence has one new token, else `cu_seqlens_q`);
- a sequence that has generated its `max_new_tokens` or a stop token (greedy) frees its
  pages at once.

The model is anything with the `DecoderModel` interface (demo/models.py): the engine never
looks inside it, and hands it an `attend` callback for its attention layers.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, FrozenSet, List, Optional

import torch

from fastattn import paged_attention
from fastattn.cache import PagedBatch, PagedKVCache

# attend(layer, q [T, Hq, D], k [T, Hk, D], v [T, Hk, D]) -> out [T, Hq, D]
AttendFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Request:
    rid: int
    prompt: List[int]
    max_new_tokens: int
    arrival_step: int
    stop_ids: FrozenSet[int] = frozenset()
    seq_id: Optional[int] = None
    fed: List[int] = field(default_factory=list)        # tokens already in the KV cache
    generated: List[int] = field(default_factory=list)
    prefill_steps: int = 0

    @property
    def prefilling(self) -> bool:
        return len(self.fed) < len(self.prompt)

    @property
    def done(self) -> bool:
        return (len(self.generated) >= self.max_new_tokens
                or bool(self.generated and self.generated[-1] in self.stop_ids))

    @property
    def max_tokens_in_cache(self) -> int:
        # The last generated token is returned, never fed back.
        return len(self.prompt) + self.max_new_tokens - 1


@dataclass
class StepResult:
    scheduled: list          # [(Request, n_new_tokens)] in batch order
    decode: List[bool]       # per scheduled entry: a decode token (else a prefill chunk)
    batch: PagedBatch
    sampled: List[Request]   # requests that produced a token this step, in row order
    logits: torch.Tensor     # float32 [len(sampled), vocab]: each one's last row

    @property
    def mixed(self) -> bool:
        return len(set(self.decode)) == 2


class Engine:
    """Admission is first come, first served, when a batch slot is free and the cache has
    pages for the request's worst case (prompt + max_new_tokens), so a running sequence never
    has to be preempted. Each step takes one decode token per decoding sequence, then fills
    the remaining token budget with prefill chunks."""

    def __init__(self, model, cache: PagedKVCache, requests: List[Request], *,
                 token_budget: int, max_running: int):
        if token_budget < max_running:
            raise ValueError("token_budget must be at least max_running (one decode token each)")
        for r in requests:
            limit = min(cache.num_pages, cache.max_pages_per_seq)
            if cache.pages_for(r.max_tokens_in_cache) > limit:
                raise ValueError(f"request {r.rid} ({len(r.prompt)} prompt tokens + "
                                 f"{r.max_new_tokens} new) can never fit in the cache")
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
        cache, scale = self.cache, self.model.softmax_scale

        def attend(layer, q, k, v):
            cache.append(layer, k, v, batch.slot_mapping)
            k_cache, v_cache = cache.k_cache(layer), cache.v_cache(layer)
            if batch.is_decode:  # one new token per sequence: q is [B, Hq, D]
                return paged_attention(q, k_cache, v_cache, batch.block_table, batch.seq_lens,
                                       softmax_scale=scale)
            return paged_attention(q, k_cache, v_cache, batch.block_table, batch.seq_lens,
                                   cu_seqlens_q=batch.cu_seqlens_q,
                                   max_seqlen_q=batch.max_seqlen_q, softmax_scale=scale)
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
        # A sequence samples when this step feeds its last prompt token or a decode token:
        # only those rows go through the LM head.
        sampled, rows, offset = [], [], 0
        for (r, n), dec in zip(plan, decode):
            offset += n
            if dec or len(r.fed) + n == len(r.prompt):
                sampled.append(r)
                rows.append(offset - 1)
        batch = self.cache.prepare_batch([(r.seq_id, n) for r, n in plan])
        tokens = torch.tensor([t for chunk in inputs for t in chunk], device=self.model.device)
        logits = self.model.forward(tokens, batch.positions, self._attend(batch), rows=rows)

        for (r, _), chunk, dec in zip(plan, inputs, decode):
            r.prefill_steps += not dec
            r.fed.extend(chunk)
        next_tokens = logits.argmax(dim=-1).tolist() if sampled else []
        for r, tok in zip(sampled, next_tokens):
            r.generated.append(tok)
            if r.done:
                self.cache.free(r.seq_id)
                self.committed_pages -= self.cache.pages_for(r.max_tokens_in_cache)
                self.running.remove(r)
                self.finished.append(r)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()  # time the kernels, not their launches
        self.busy_seconds += time.perf_counter() - start
        return StepResult(plan, decode, batch, sampled, logits)
