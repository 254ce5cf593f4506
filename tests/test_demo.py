"""The serving demo (`python -m fastattn.demo`) at small sizes: it must match its dense
reference, generate every requested token, and exercise chunked prefill, mixed
prefill/decode steps and page reuse."""

import pytest

from fastattn import demo


def small_config(**kwargs):
    model = demo.ModelConfig(vocab_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                             head_dim=16, intermediate_size=64)
    args = dict(seed=1, model=model, num_requests=6, prompt_len=(3, 40), max_new_tokens=(2, 8),
                arrival_spread=6, page_size=4, num_pages=24, token_budget=16, max_running=3)
    args.update(kwargs)
    return demo.DemoConfig(**args)


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


def test_demo_cli(capsys):
    argv = ["--layers", "1", "--heads", "2", "--kv-heads", "1", "--head-dim", "8",
            "--vocab", "64", "--requests", "3", "--max-prompt", "20", "--max-new-tokens", "4",
            "--page-size", "3", "--pages", "40", "--token-budget", "8", "--max-running", "2",
            "--threads", "1", "--verbose"]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "step   0" in out
    assert "max |logit diff|" in out and "PASS" in out
    assert "cpu (float32), 1 CPU thread" in out and "tokens/s" in out and "peak" in out


def test_demo_fails_on_wrong_attention(monkeypatch, capsys):
    """The reference check has teeth: a slightly wrong attention output fails the run."""
    real = demo.paged_attention

    def off_by_a_little(*args, **kwargs):
        return real(*args, **kwargs) * 1.001

    monkeypatch.setattr(demo, "paged_attention", off_by_a_little)
    argv = ["--layers", "1", "--heads", "2", "--kv-heads", "1", "--head-dim", "8",
            "--vocab", "64", "--requests", "2", "--max-prompt", "12", "--max-new-tokens", "3"]
    assert demo.main(argv) == 1
    assert "FAIL" in capsys.readouterr().out
