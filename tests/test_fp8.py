"""fp8 KV caches (float8_e4m3fn, float8_e5m2): append_kv's quantization, paged attention
over fp8 pages with per-tensor and per-head scales, PagedKVCache, validation.

Quantization is compared bit for bit with ``reference.ref_fp8_quantize`` (float64 rounding
on the format's grid), itself checked against torch's own float8 cast: both round to nearest even; beyond the
finite range append_kv saturates to +-max, as torch 2.14's e4m3fn cast does, while its e5m2
cast overflows to inf. Attention is compared
with the float64 reference run on the same fp8 codes dequantized exactly, under the
FlashAttention tolerance rule.

The parity tests run on every device (``device`` fixture); the CUDA kernels' fp8 paths also
run in CI under the CPU emulation (tests/test_emu_fp8.py).
"""

import pytest
import torch

import fastattn
from fastattn.reference import (ref_append_kv, ref_fp8_dequantize, ref_fp8_quantize,
                                ref_paged_attention)

from conftest import (HAS_CUDA, PagedKV, assert_matches_reference, cu_seqlens, dtype_id,
                      i64, nan_tensor, randn, skip_if_unsupported)

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
FORMATS = [E4M3, E5M2]
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
FP8_MAX = {E4M3: 448.0, E5M2: 57344.0}


def fmt_id(fmt):
    return {E4M3: "e4m3", E5M2: "e5m2"}[fmt]


def codes(t):
    return t.view(torch.uint8).cpu()


def assert_same_codes(got, want):
    """Codes equal bit for bit, NaN excepted: NaN must map to NaN (its bits are not part of
    the rule)."""
    got_nan, want_nan = torch.isnan(got.float().cpu()), torch.isnan(want.float().cpu())
    assert torch.equal(got_nan, want_nan), "NaN positions differ"
    mismatch = (codes(got) != codes(want)) & ~want_nan
    assert not mismatch.any(), (
        f"{int(mismatch.sum())} codes differ, e.g. got {codes(got)[mismatch][:4].tolist()} "
        f"want {codes(want)[mismatch][:4].tolist()}")


def all_values(fmt):
    """float32 values of every non-NaN code."""
    values = torch.arange(256, dtype=torch.uint8).view(fmt).float()
    return values[~torch.isnan(values)]


def probe_values(fmt):
    """float32 inputs that exercise every rounding case: every code's value, every midpoint
    between neighbouring values (ties to even), the float32 neighbours of each midpoint,
    values beyond the finite range, infinities, NaN, signed zeros and sub-subnormals."""
    values = torch.unique(all_values(fmt))
    finite = values[torch.isfinite(values)]
    mids = (finite[1:].double() + finite[:-1].double()) / 2
    mids = mids.float()
    assert torch.equal(mids.double(), (finite[1:].double() + finite[:-1].double()) / 2)
    up = torch.nextafter(mids, torch.full_like(mids, float("inf")))
    down = torch.nextafter(mids, torch.full_like(mids, float("-inf")))
    top = FP8_MAX[fmt]
    extra = torch.tensor([top * 1.01, top * 1.2, top * 4, 1e30, float("inf"), float("nan"),
                          -0.0, 0.0, 2.0 ** -30, -(2.0 ** -30)])
    return torch.cat([finite, mids, up, down, extra, -extra]).float()


# ---------------------------------------------------------------------------------------
# The quantization rule
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_reference_quantizer_agrees_with_torch_in_range(fmt):
    """ref_fp8_quantize is torch's cast wherever the value is in range; beyond it,
    ref_fp8_quantize saturates to +-max, and torch's cast either does too (e4m3fn in torch
    2.14) or overflows to inf (e5m2): the only differences allowed."""
    x = probe_values(fmt).reshape(-1, 1, 1)
    ours = ref_fp8_quantize(x, None, fmt)
    torch_cast = x.to(fmt)
    in_range = (x.abs() <= FP8_MAX[fmt]) | torch.isnan(x)
    assert_same_codes(ours[in_range], torch_cast[in_range])
    beyond = ~in_range
    assert (ours[beyond].float().abs() == FP8_MAX[fmt]).all()
    assert torch.equal(torch.sign(ours[beyond].float()), torch.sign(x[beyond]))
    differ = codes(ours) != codes(torch_cast)
    assert not (differ & in_range).any()
    assert torch.isinf(torch_cast[differ].float()).all()
    # Every finite code's value round-trips; a tie goes to the even code.
    values = all_values(fmt)
    values = values[torch.isfinite(values)].reshape(-1, 1, 1)
    assert torch.equal(ref_fp8_quantize(values, None, fmt).float(), values)
    one_and_half_ulp = torch.tensor([1.0 + 1.5 * 2.0 ** -(3 if fmt == E4M3 else 2)])
    assert ref_fp8_quantize(one_and_half_ulp.reshape(1, 1, 1), None, fmt).float().item() == (
        1.0 + 2 * 2.0 ** -(3 if fmt == E4M3 else 2))


def probe_append_case(fmt, in_dtype, heads, head_dim, page_size=5):
    """append_kv arguments holding every probe value: k [T, heads, head_dim] in in_dtype (the
    values shuffled, zero-padded), v = -k reversed; NaN-poisoned fp8 caches with two spare
    pages; shuffled slots with every 7th token padding (-1). Returns (k_cache, v_cache, k,
    v, slots)."""
    x = probe_values(fmt)
    x = x[torch.randperm(x.numel())]
    tokens = -(-x.numel() // (heads * head_dim))
    x = torch.cat([x, torch.zeros(tokens * heads * head_dim - x.numel())])
    k = x.reshape(tokens, heads, head_dim).to(in_dtype)
    num_pages = -(-tokens // page_size) + 2
    slots = torch.randperm(num_pages * page_size)[:tokens]
    slots[::7] = -1
    k_cache = nan_tensor(num_pages, page_size, heads, head_dim, dtype=fmt, device="cpu")
    return k_cache, k_cache.clone(), k, -k.flip(0), slots


def scale_arg(kind, heads):
    if kind == "none":
        return None
    if kind == "float":
        return 0.37
    if kind == "tensor":
        return torch.tensor(2.5)
    return torch.linspace(0.05, 3.0, heads)  # per head


@pytest.mark.parametrize("scale_kind", ["none", "float", "tensor", "per-head"])
@pytest.mark.parametrize("in_dtype", [F32, F16, BF16], ids=dtype_id)
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_append_kv_quantizes_bit_exactly(device, fmt, in_dtype, scale_kind):
    """Every probe value through append_kv into a NaN-poisoned cache at shuffled slots:
    the stored codes are ref_fp8_quantize's, slots not written stay NaN."""
    skip_if_unsupported(device, in_dtype)
    heads = 3
    k_cache, v_cache, k, v, slots = probe_append_case(fmt, in_dtype, heads, 8)
    k_scale, v_scale = scale_arg(scale_kind, heads), scale_arg(scale_kind, heads)
    want_k, want_v = ref_append_kv(k_cache, v_cache, k, v, slots, k_scale=k_scale,
                                   v_scale=v_scale)
    on = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x
    k_cache, v_cache = k_cache.to(device), v_cache.to(device)
    fastattn.append_kv(k_cache, v_cache, on(k), on(v), on(slots), k_scale=on(k_scale),
                       v_scale=on(v_scale))
    assert_same_codes(k_cache, want_k)
    assert_same_codes(v_cache, want_v)


# ---------------------------------------------------------------------------------------
# Attention over fp8 pages
# ---------------------------------------------------------------------------------------

def on_device(scale, device):
    return scale.to(device) if isinstance(scale, torch.Tensor) else scale


def fp8_paged(seq_lens, heads, head_dim, page_size, fmt, k_scale, v_scale, device):
    """A NaN-poisoned fp8 PagedKV holding the quantized codes of random keys and values."""
    keys = [ref_fp8_quantize(randn(n, heads, head_dim, dtype=F32, scale=3.0), k_scale, fmt)
            for n in seq_lens]
    values = [ref_fp8_quantize(randn(n, heads, head_dim, dtype=F32), v_scale, fmt)
              for n in seq_lens]
    return PagedKV(keys, values, page_size, device)


SCALES = {"unscaled": (None, None), "floats": (0.05, 0.02),
          "tensors": (torch.tensor(0.04), torch.tensor(0.03)),
          "per-head": (torch.tensor([0.02, 0.06]), torch.tensor([0.03, 0.01]))}


@pytest.mark.parametrize("scales", list(SCALES))
@pytest.mark.parametrize("page_size", [1, 7, 16])
@pytest.mark.parametrize("q_dtype", [F32, F16, BF16], ids=dtype_id)
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_paged_decode(device, fmt, q_dtype, page_size, scales):
    skip_if_unsupported(device, q_dtype)
    k_scale, v_scale = SCALES[scales]
    seq_lens = [1, 97, 7, 33, 0]  # 0: a padding entry
    cache = fp8_paged(seq_lens, 2, 64, page_size, fmt, k_scale, v_scale, device)
    q = randn(len(seq_lens), 6, 64, dtype=q_dtype, device=device)
    paged = (cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    result = fastattn.paged_attention(q, *paged, k_scale=on_device(k_scale, device),
                                      v_scale=on_device(v_scale, device), return_lse=True)
    assert_matches_reference(result, ref_paged_attention, q, *paged, return_lse=True,
                             k_scale=k_scale, v_scale=v_scale)


@pytest.mark.parametrize("head_dim", [7, 40, 100, 256])
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_paged_decode_head_dims(device, fmt, head_dim):
    """bf16 queries over fp8 pages (on AVX512-BF16 CPUs: codes widened to bf16 by table
    lookup into the BF16 dot product, the K scale on the sums), at head dims with a masked
    tail (7, 40, 100) and several full 32-element steps (256); GQA 4, per-head scales."""
    skip_if_unsupported(device, BF16, head_dim)
    k_scale, v_scale = SCALES["per-head"]
    seq_lens = [97, 1, 33]
    cache = fp8_paged(seq_lens, 2, head_dim, 16, fmt, k_scale, v_scale, device)
    q = randn(len(seq_lens), 8, head_dim, dtype=BF16, device=device)
    paged = (cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    result = fastattn.paged_attention(q, *paged, k_scale=on_device(k_scale, device),
                                      v_scale=on_device(v_scale, device), return_lse=True)
    assert_matches_reference(result, ref_paged_attention, q, *paged, return_lse=True,
                             k_scale=k_scale, v_scale=v_scale)


@pytest.mark.parametrize("head_dim", [40, 48])
@pytest.mark.parametrize("scales", ["unscaled", "per-head"])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("q_dtype", [F32, BF16], ids=dtype_id)
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_paged_extend(device, fmt, q_dtype, page_size, scales, head_dim):
    skip_if_unsupported(device, q_dtype)
    if device == "cuda" and head_dim % 16:
        pytest.skip("the CUDA extend kernel needs D % 16 == 0 for fp8 (test_cuda_fp8_extend_d40)")
    k_scale, v_scale = SCALES[scales]
    seq_lens, q_lens = [97, 7, 1, 40], [30, 7, 1, 0]
    cache = fp8_paged(seq_lens, 2, head_dim, page_size, fmt, k_scale, v_scale, device)
    q = randn(sum(q_lens), 6, head_dim, dtype=q_dtype, device=device)
    paged = (cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    options = dict(cu_seqlens_q=cu_seqlens(q_lens, device), max_seqlen_q=max(q_lens),
                   causal=True, window_size=(50, -1))
    result = fastattn.paged_attention(q, *paged, k_scale=on_device(k_scale, device),
                                      v_scale=on_device(v_scale, device), return_lse=True,
                                      **options)
    assert_matches_reference(result, ref_paged_attention, q, *paged, return_lse=True,
                             k_scale=k_scale, v_scale=v_scale, **options)


@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_scales_are_applied(fmt):
    """Doubling the K scale doubles the scores (as doubling softmax_scale does); the V scale
    multiplies the output; a per-head scale applies to its own KV head only."""
    cache = fp8_paged([20, 9], 2, 16, 4, fmt, None, None, "cpu")
    q = randn(2, 4, 16, dtype=F32)
    paged = (cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    base = fastattn.paged_attention(q, *paged)
    torch.testing.assert_close(fastattn.paged_attention(q, *paged, k_scale=2.0),
                               fastattn.paged_attention(q, *paged, softmax_scale=2 / 4))
    torch.testing.assert_close(fastattn.paged_attention(q, *paged, v_scale=3.0), 3 * base)
    per_head = fastattn.paged_attention(q, *paged, v_scale=torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(per_head[:, :2], base[:, :2])  # heads 0, 1 read KV head 0
    torch.testing.assert_close(per_head[:, 2:], 5 * base[:, 2:])


@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_paged_kv_cache_fp8(fmt):
    """PagedKVCache with an fp8 dtype: append quantizes with the cache's scales,
    `**cache.scales` reads with them; the result matches the reference on the stored codes
    and is close to attention over the unquantized keys."""
    heads, head_dim = 2, 32
    k_scale = torch.tensor([0.01, 0.02])
    cache = fastattn.PagedKVCache(16, 4, heads, head_dim, dtype=fmt, fill_value=float("nan"),
                                  k_scale=k_scale, v_scale=0.01)
    assert cache.dtype == fmt and cache.scales == {"k_scale": k_scale, "v_scale": 0.01}
    lens = [13, 6]
    batch = cache.prepare_batch([(cache.add_sequence(), n) for n in lens])
    k = randn(sum(lens), heads, head_dim, dtype=BF16)
    v = randn(sum(lens), heads, head_dim, dtype=BF16)
    cache.append(0, k, v, batch.slot_mapping)
    q = randn(sum(lens), 4, head_dim, dtype=BF16)
    paged = (cache.k_cache(0), cache.v_cache(0), batch.block_table, batch.seq_lens)
    options = dict(cu_seqlens_q=batch.cu_seqlens_q, max_seqlen_q=batch.max_seqlen_q)
    out = fastattn.paged_attention(q, *paged, **options, **cache.scales, return_lse=True)
    assert_matches_reference(out, ref_paged_attention, q, *paged, return_lse=True,
                             **options, **cache.scales)
    dense = fastattn.attention_varlen(q, k, v, batch.cu_seqlens_q, batch.cu_seqlens_q,
                                      max(lens), max(lens), causal=True)
    # fp8's own rounding (no value saturates at these scales): within one ulp of the largest
    # value (2^-3 relative for e4m3, 2^-2 for e5m2).
    tol = 2.0 ** -(3 if fmt == E4M3 else 2) * float(v.abs().max())
    assert (out[0].float() - dense.float()).abs().max() < tol


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------

def small_fp8(fmt=E4M3):
    cache = fp8_paged([5, 3], 2, 8, 4, fmt, None, None, "cpu")
    q = randn(2, 4, 8, dtype=F16)
    return q, (cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)


@pytest.mark.parametrize("scale,error,match", [
    (torch.tensor(1.0, dtype=F16), TypeError, r"k_scale: expected a float32 tensor"),
    (torch.ones(3), ValueError, r"k_scale: expected shape \[\] \(per tensor\) or \[Hk\] = \[2\]"),
    (torch.ones(1, 2), ValueError, r"k_scale: expected shape"),
    (0.0, ValueError, r"k_scale: expected a positive finite"),
    (-1.0, ValueError, r"k_scale: expected a positive finite"),
    (float("inf"), ValueError, r"k_scale: expected a positive finite"),
    (float("nan"), ValueError, r"k_scale: expected a positive finite"),
    (True, TypeError, r"k_scale: expected None, a float or a float32 tensor"),
    ("1.0", TypeError, r"k_scale: expected None, a float or a float32 tensor"),
    (torch.tensor([1.0, 0.0]), ValueError, r"k_scale: scales must be positive and finite, "
                                           r"got k_scale\[1\] = 0"),
    (torch.tensor(float("nan")), ValueError, r"k_scale: scales must be positive and finite"),
    (torch.tensor([-2.0, 1.0]), ValueError, r"k_scale\[0\] = -2"),
])
def test_bad_scales(scale, error, match):
    q, paged = small_fp8()
    with pytest.raises(error, match=match):
        fastattn.paged_attention(q, *paged, k_scale=scale)
    k_cache, v_cache = paged[:2]
    before = codes(k_cache).clone()
    with pytest.raises(error, match=match):
        fastattn.append_kv(k_cache, v_cache, randn(1, 2, 8), randn(1, 2, 8), i64([0]),
                           k_scale=scale)
    assert torch.equal(codes(k_cache), before)


def test_scales_need_an_fp8_cache():
    cache = PagedKV.random([5], 2, 8, 4, BF16)
    q = randn(1, 4, 8, dtype=BF16)
    paged = (cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    with pytest.raises(ValueError, match=r"v_scale: scales apply to fp8 caches .* bfloat16"):
        fastattn.paged_attention(q, *paged, v_scale=0.5)
    with pytest.raises(ValueError, match=r"k_scale: scales apply to fp8 caches"):
        fastattn.append_kv(cache.k_cache, cache.v_cache, randn(1, 2, 8, dtype=BF16),
                           randn(1, 2, 8, dtype=BF16), i64([0]), k_scale=torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"k_scale: scales apply to fp8 caches"):
        fastattn.PagedKVCache(4, 4, 2, 8, dtype=BF16, k_scale=2.0)
    with pytest.raises(ValueError, match=r"k_scale: scales apply to fp8 caches only"):
        torch.ops.fastattn.paged_attention(q, *paged, None, 1, 0.3, True, -1, -1, 0.0, None,
                                           None, 2.0, 1.0)


def test_dtype_errors():
    q, (k_cache, v_cache, table, lens) = small_fp8()
    with pytest.raises(TypeError, match=r"q: expected dtype in .* got float8_e4m3fn"):
        fastattn.paged_attention(q.to(E4M3), k_cache, v_cache, table, lens)
    with pytest.raises(TypeError, match=r"v_cache: expected dtype float8_e4m3fn \(the dtype of "
                                        r"k_cache\), got float8_e5m2"):
        fastattn.paged_attention(q, k_cache, v_cache.view(torch.uint8).view(E5M2), table, lens)
    with pytest.raises(TypeError, match=r"k_cache: expected dtype float16 \(the dtype of q\) or "
                                        r"an fp8 dtype"):
        fastattn.paged_attention(q, k_cache.float(), v_cache.float(), table, lens)
    with pytest.raises(TypeError, match=r"k: expected dtype in .* got float8_e4m3fn"):
        fastattn.append_kv(k_cache, v_cache, k_cache[0, :1], v_cache[0, :1], i64([0]))
    # The op itself, called directly, checks too.
    with pytest.raises(TypeError, match=r"q: fp8 queries are not supported"):
        torch.ops.fastattn.paged_attention(q.to(E4M3), k_cache, v_cache, table, lens, None, 1,
                                           0.3, True, -1, -1, 0.0)
    with pytest.raises(ValueError, match=r"k_scale: expected shape \[\] \(per tensor\) or "
                                         r"\[Hk\] = \[2\]"):
        torch.ops.fastattn.paged_attention(q, k_cache, v_cache, table, lens, None, 1, 0.3, True,
                                           -1, -1, 0.0, torch.ones(5), None, 1.0, 1.0)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")
def test_cuda_fp8_extend_d40():
    """The CUDA extend kernel copies fp8 tiles in 16-byte chunks: D = 40 is a ValueError
    naming k_cache; decode reads the same cache."""
    cache = fp8_paged([9], 2, 40, 4, E4M3, None, None, "cuda")
    paged = (cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    with pytest.raises(ValueError, match=r"k_cache: .*fp8 cache's head_dim a multiple of 16"):
        fastattn.paged_attention(randn(3, 2, 40, dtype=F16, device="cuda"), *paged,
                                 cu_seqlens_q=cu_seqlens([3], "cuda"), max_seqlen_q=3)
    out = fastattn.paged_attention(randn(1, 2, 40, dtype=F16, device="cuda"), *paged)
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")
@pytest.mark.parametrize("which", ["k_scale", "v_scale"])
def test_cuda_bad_scale_values(which):
    """On CUDA a scale tensor's values are checked by the kernels (no host sync): the error
    surfaces at check_errors() (or the next fastattn call), naming the scale."""
    q, paged = small_fp8()
    q, paged = q.cuda(), tuple(t.cuda() for t in paged)
    bad = {which: torch.tensor([1.0, 0.0], device="cuda")}
    fastattn.paged_attention(q, *paged, **bad)
    with pytest.raises(ValueError, match=rf"{which}: scales must be positive and finite"):
        fastattn.check_errors()
    fastattn.append_kv(paged[0], paged[1], randn(1, 2, 8, dtype=F16, device="cuda"),
                       randn(1, 2, 8, dtype=F16, device="cuda"), i64([0], device="cuda"), **bad)
    with pytest.raises(ValueError, match=rf"{which}: scales must be positive and finite"):
        fastattn.check_errors()


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")
def test_cuda_opcheck_and_compile():
    """The CUDA ops with an fp8 cache and tensor scales: fake-tensor and AOT checks, and
    torch.compile(fullgraph=True) equal to eager (the CPU cases are in test_compile.py)."""
    q, paged = small_fp8()
    q, paged = q.cuda(), tuple(t.cuda() for t in paged)
    k_scale = torch.tensor([0.5, 2.0], device="cuda")
    torch.library.opcheck(torch.ops.fastattn.paged_attention.default,
                          (q, *paged, None, 1, 0.3, True, -1, -1, 0.0, k_scale, None, 1.0, 0.75),
                          test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))
    run = lambda *a: fastattn.paged_attention(*a, k_scale=k_scale, v_scale=0.75)
    assert torch.equal(torch.compile(run, fullgraph=True, backend="aot_eager")(q, *paged),
                       run(q, *paged))


def test_dequantize_reference():
    """ref_fp8_dequantize is float(code) * scale, per head."""
    x = torch.arange(256, dtype=torch.uint8).view(E4M3).reshape(4, 2, 32)
    scale = torch.tensor([0.5, 3.0])
    got = ref_fp8_dequantize(x, scale)
    want = x.double() * scale.double().reshape(2, 1)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_strided_per_head_scales():
    """A per-head scale may be a strided view: the kernels and the value check read it by
    its stride (a check reading it as contiguous would see the wrong values)."""
    q, paged = small_fp8()
    strided = torch.tensor([0.5, 9.0, 2.0, 9.0])[::2]
    assert strided.stride() == (2,)
    out = fastattn.paged_attention(q, *paged, k_scale=strided, v_scale=strided)
    torch.testing.assert_close(out, fastattn.paged_attention(
        q, *paged, k_scale=torch.tensor([0.5, 2.0]), v_scale=torch.tensor([0.5, 2.0])))
    with pytest.raises(ValueError, match=r"k_scale: scales must be positive and finite, got "
                                         r"k_scale\[1\] = 0"):
        fastattn.paged_attention(q, *paged, k_scale=torch.tensor([1.0, 1.0, 0.0, 1.0])[::2])
