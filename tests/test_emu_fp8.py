"""The CUDA kernels over fp8 KV caches (float8_e4m3fn, float8_e5m2) on the CPU emulation:
paged decode (csrc/cuda/kernels/paged_decode.cuh, 16 codes per 16-byte load), paged extend
(attention_fwd.cuh, fp8 tiles staged and widened in shared memory) and append_kv's
quantization (append_kv.cuh).

torch.ops.fastattn_emu.* (test-only module ``fastattn._emu_ops``) run the very kernel
sources nvcc compiles, on CPU tensors, with the schemas of torch.ops.fastattn.*. Decode and
append run under the three schedules of the ``schedule`` fixture; extend runs all three in
one test and requires bit-identical results (a difference is a race), as
test_emu_attention.py does.

References: attention against ``reference.ref_paged_attention`` on the same fp8 codes
dequantized exactly (float64), with the FlashAttention tolerance rule (conftest.py);
append_kv bit for bit against ``reference.ref_fp8_quantize`` and the CPU op. Caches are
NaN-poisoned (conftest.PagedKV): reading an unused slot shows up as NaN.

Scale tensors are checked by the kernels (a host check would need a device sync on CUDA):
a value that is not positive and finite raises ValueError naming the scale.
"""

import math

import pytest
import torch

from fastattn import _checks
from fastattn.reference import ref_append_kv, ref_fp8_quantize, ref_paged_attention

from conftest import (PagedKV, assert_matches_reference, cu_seqlens, dtype_id, i64,
                      import_emu_ops, randn)
from test_fp8 import assert_same_codes, fmt_id, probe_append_case

_emu_ops = import_emu_ops()

EMU = torch.ops.fastattn_emu
CPU = torch.ops.fastattn
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
FORMATS = [E4M3, E5M2]
F16, BF16 = torch.float16, torch.bfloat16
DEFAULT_NUM_SMS = 4
SPLIT_SMS, NO_SPLIT_SMS = 64, 1

# (k_scale, v_scale) for two KV heads.
SCALES = {"unscaled": (None, None), "floats": (0.05, 0.02),
          "tensors": (torch.tensor(0.04), torch.tensor(0.03)),
          "per-head": (torch.tensor([0.02, 0.06]), torch.tensor([0.03, 0.01]))}


@pytest.fixture(autouse=True)
def _default_num_sms():
    yield
    _emu_ops.set_num_sms(DEFAULT_NUM_SMS)


def scale_args(k_scale, v_scale, cache):
    """The schema's (k_scale, v_scale, k_scale_value, v_scale_value) of the Python API."""
    ks, ks_value = _checks.kv_scale("k_scale", k_scale, cache)
    vs, vs_value = _checks.kv_scale("v_scale", v_scale, cache)
    return ks, vs, ks_value, vs_value


def fp8_cache(seq_lens, heads, head_dim, page_size, fmt, k_scale, v_scale, **kwargs):
    """A NaN-poisoned fp8 PagedKV holding the quantized codes of random keys and values."""
    keys = [ref_fp8_quantize(randn(n, heads, head_dim, dtype=torch.float32, scale=3.0),
                             k_scale, fmt) for n in seq_lens]
    values = [ref_fp8_quantize(randn(n, heads, head_dim, dtype=torch.float32), v_scale, fmt)
              for n in seq_lens]
    return PagedKV(keys, values, page_size, "cpu", **kwargs)


def expected_splits(batch, num_heads, num_kv_heads, capacity, num_sms):
    """decode_num_splits_for with an fp8 cache's at most 4 packed heads per block."""
    base = batch * num_kv_heads * math.ceil(num_heads // num_kv_heads / 4)
    return max(1, min(math.ceil(2 * num_sms / base), math.ceil(capacity / 256), 64))


def emu_paged(q, cache, k_scale, v_scale, *, cu_seqlens_q=None, max_seqlen_q=1, causal=True,
              window_size=(-1, -1), softcap=0.0, softmax_scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    return EMU.paged_attention(q, cache.k_cache, cache.v_cache, cache.block_table,
                               cache.seq_lens, cu_seqlens_q, max_seqlen_q, scale, causal,
                               window_size[0], window_size[1], softcap,
                               *scale_args(k_scale, v_scale, cache.k_cache))


def check_decode(cache, q, k_scale, v_scale, **kwargs):
    result = emu_paged(q, cache, k_scale, v_scale, **kwargs)
    assert_matches_reference(result, ref_paged_attention, q, cache.k_cache, cache.v_cache,
                             cache.block_table, cache.seq_lens, return_lse=True,
                             k_scale=k_scale, v_scale=v_scale, **kwargs)
    return result


# ---------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------

# 64/128/256 load 16 codes per lane; 40 and 96 (D % 16 == 8) take the scalar loads and
# zero padding; 8 is a single half-lane.
@pytest.mark.parametrize("head_dim", [64, 128, 256, 40, 96, 8])
@pytest.mark.parametrize("q_dtype", [F16, BF16], ids=dtype_id)
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_decode_head_dims(schedule, fmt, q_dtype, head_dim):
    k_scale, v_scale = SCALES["per-head"]
    cache = fp8_cache([37, 1, 0, 70], 2, head_dim, 16, fmt, k_scale, v_scale)
    check_decode(cache, randn(4, 8, head_dim, dtype=q_dtype), k_scale, v_scale)


# GQA ratios 1..8 and MQA: fp8 blocks pack at most 4 query heads, so G = 8, 12 and 16 run
# as several head chunks of one KV head.
@pytest.mark.parametrize("num_heads,num_kv_heads", [(2, 2), (4, 2), (8, 2), (8, 1), (12, 1),
                                                    (16, 2)],
                         ids=["mha", "gqa2", "gqa4", "gqa8", "mqa12", "gqa8x2-16"])
@pytest.mark.parametrize("page_size", [1, 5, 16])
@pytest.mark.parametrize("scales", list(SCALES))
def test_decode_gqa_pages_scales(schedule, scales, page_size, num_heads, num_kv_heads):
    fmt = E4M3 if page_size != 5 else E5M2
    k_scale, v_scale = SCALES[scales]
    if num_kv_heads == 1 and isinstance(k_scale, torch.Tensor) and k_scale.numel() == 2:
        k_scale, v_scale = k_scale[1:], v_scale[:1]
    cache = fp8_cache([45, 1, 19], num_kv_heads, 64, page_size, fmt, k_scale, v_scale)
    check_decode(cache, randn(3, num_heads, 64, dtype=BF16), k_scale, v_scale)


@pytest.mark.parametrize("kwargs", [
    dict(softcap=2.0),
    dict(window_size=(31, -1)),
    dict(causal=False, window_size=(8, 3)),
], ids=["softcap2", "w31", "noncausal-w8_3"])
@pytest.mark.parametrize("split", [False, True], ids=["nosplit", "split"])
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_decode_split_kv(schedule, fmt, split, kwargs):
    """Long and short sequences and a padding entry, with and without split-KV: the
    partials are normalised with the V scale applied, then merged."""
    k_scale, v_scale = SCALES["per-head"]
    cache = fp8_cache([290, 1, 0], 2, 128, 16, fmt, k_scale, v_scale, spare_columns=48)
    capacity = cache.block_table.shape[1] * 16
    splits = expected_splits(3, 8, 2, capacity, SPLIT_SMS if split else NO_SPLIT_SMS)
    assert (splits >= 4) if split else splits == 1, splits
    _emu_ops.set_num_sms(SPLIT_SMS if split else NO_SPLIT_SMS)
    check_decode(cache, randn(3, 8, 128, dtype=F16), k_scale, v_scale, **kwargs)


def test_decode_unaligned_cache(schedule):
    """A cache view whose head stride (68 codes) is not a multiple of 16 bytes takes the
    element-by-element loads of the same kernel."""
    k_scale, v_scale = SCALES["tensors"]
    cache = fp8_cache([50, 7], 2, 64, 5, E4M3, k_scale, v_scale)
    pad = lambda t: torch.cat([t, torch.full(t.shape[:-1] + (4,), float("nan")).to(t.dtype)],
                              dim=-1)[..., :64]
    cache.k_cache, cache.v_cache = pad(cache.k_cache), pad(cache.v_cache)
    assert cache.k_cache.stride(-2) == 68
    _emu_ops.set_num_sms(SPLIT_SMS)
    check_decode(cache, randn(2, 8, 64, dtype=BF16), k_scale, v_scale)


# ---------------------------------------------------------------------------------------
# extend
# ---------------------------------------------------------------------------------------

def check_extend(cache, q_lens, num_heads, q_dtype, k_scale, v_scale, **kwargs):
    from test_emu_attention import run_all_schedules

    q = randn(sum(q_lens), num_heads, cache.k_cache.shape[-1], dtype=q_dtype)
    options = dict(cu_seqlens_q=cu_seqlens(q_lens), max_seqlen_q=max(q_lens), **kwargs)
    result = run_all_schedules(lambda: emu_paged(q, cache, k_scale, v_scale, **options))
    assert_matches_reference(result, ref_paged_attention, q, cache.k_cache, cache.v_cache,
                             cache.block_table, cache.seq_lens, return_lse=True,
                             k_scale=k_scale, v_scale=v_scale, **options)


@pytest.mark.parametrize("head_dim", [64, 128, 256, 48])
@pytest.mark.parametrize("q_dtype", [F16, BF16], ids=dtype_id)
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_extend_head_dims(fmt, q_dtype, head_dim):
    k_scale, v_scale = SCALES["per-head"]
    # Chunked prefill after a prefix, a whole prompt, one new token, a padding row.
    cache = fp8_cache([97, 7, 1, 40], 2, head_dim, 16, fmt, k_scale, v_scale)
    check_extend(cache, [30, 7, 1, 0], 4, q_dtype, k_scale, v_scale, causal=True)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("scales", ["unscaled", "floats", "per-head"])
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_extend_pages_scales_masks(fmt, scales, page_size):
    k_scale, v_scale = SCALES[scales]
    cache = fp8_cache([70, 33], 2, 64, page_size, fmt, k_scale, v_scale)
    check_extend(cache, [20, 33], 8, BF16, k_scale, v_scale, causal=True,
                 window_size=(40, -1), softcap=20.0)


def test_extend_needs_head_dim_multiple_of_16():
    """fp8 tiles are copied in 16-byte chunks: D = 40 is refused with a ValueError naming
    k_cache (decode reads it with scalar loads)."""
    cache = fp8_cache([9], 2, 40, 4, E4M3, None, None)
    q = randn(3, 2, 40, dtype=F16)
    with pytest.raises(ValueError, match=r"k_cache: .*fp8 cache's head_dim a multiple of 16"):
        emu_paged(q, cache, None, None, cu_seqlens_q=cu_seqlens([3]), max_seqlen_q=3)


# ---------------------------------------------------------------------------------------
# append_kv
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("scales", ["unscaled", "floats", "per-head"])
@pytest.mark.parametrize("head_dim", [8, 6], ids=["vec", "scalar"])
@pytest.mark.parametrize("in_dtype", [F16, BF16], ids=dtype_id)
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_append_quantizes_bit_exactly(schedule, fmt, in_dtype, head_dim, scales):
    """Every probe value of the format (all codes, midpoints and their neighbours, values
    past the range, infinities, NaN, signed zeros) through the emulated append_kv into a
    NaN-poisoned cache at shuffled slots: the codes are ref_fp8_quantize's and the CPU
    op's; slots not written stay NaN. head_dim 8 takes the 16-byte path, 6 the scalar one."""
    k_cache, v_cache, k, v, slots = probe_append_case(fmt, in_dtype, 2, head_dim)
    k_scale, v_scale = SCALES[scales]
    want_k, want_v = ref_append_kv(k_cache, v_cache, k, v, slots, k_scale=k_scale,
                                   v_scale=v_scale)
    cpu_k, cpu_v = k_cache.clone(), v_cache.clone()
    args = scale_args(k_scale, v_scale, k_cache)
    CPU.append_kv(cpu_k, cpu_v, k, v, slots.to(torch.int64), *args)
    EMU.append_kv(k_cache, v_cache, k, v, slots.to(torch.int64), *args)
    for got, want, cpu in ((k_cache, want_k, cpu_k), (v_cache, want_v, cpu_v)):
        assert_same_codes(got, want)
        assert_same_codes(got, cpu)


def test_append_then_decode(schedule):
    """append_kv into an fp8 cache, then decode over it: both emulated kernels, compared
    with the reference on the codes the CPU op stores."""
    heads, head_dim, page_size = 2, 64, 16
    k_scale, v_scale = torch.tensor([0.02, 0.05]), 0.03
    cache = fp8_cache([40, 9], heads, head_dim, page_size, E5M2, k_scale, v_scale)
    k, v = randn(2, heads, head_dim, dtype=BF16), randn(2, heads, head_dim, dtype=BF16)
    slots = i64([cache.slot(0, 40), cache.slot(1, 9)])
    args = scale_args(k_scale, v_scale, cache.k_cache)
    want_k, want_v = cache.k_cache.clone(), cache.v_cache.clone()
    CPU.append_kv(want_k, want_v, k, v, slots, *args)
    EMU.append_kv(cache.k_cache, cache.v_cache, k, v, slots, *args)
    assert_same_codes(cache.k_cache, want_k)
    assert_same_codes(cache.v_cache, want_v)
    cache.seq_lens += 1
    check_decode(cache, randn(2, 4, head_dim, dtype=BF16), k_scale, v_scale)


# ---------------------------------------------------------------------------------------
# scale values checked on the device
# ---------------------------------------------------------------------------------------

# Per head [Hk = 2], and the bad value alone as a per-tensor scale.
NAN, INF = float("nan"), float("inf")
BAD_SCALES = {"zero": ([1.0, 0.0], 0.0), "negative": ([-2.0, 1.0], -2.0),
              "nan": ([1.0, NAN], NAN), "inf": ([INF, 1.0], INF)}


@pytest.mark.parametrize("which", ["k_scale", "v_scale"])
@pytest.mark.parametrize("bad", list(BAD_SCALES))
@pytest.mark.parametrize("op", ["decode", "extend", "append"])
def test_bad_scale_values_flagged(op, bad, which):
    """The emulated op (no host check of the values: on CUDA it would need a sync) raises
    the kernel's report, naming the scale, for a per-head and a per-tensor scale."""
    cache = fp8_cache([20, 5], 2, 64, 16, E4M3, None, None)
    per_head, per_tensor = BAD_SCALES[bad]
    for bad_scale in (torch.tensor(per_head), torch.tensor(per_tensor)):
        scales = {"k_scale": None, "v_scale": None, which: bad_scale}
        with pytest.raises(ValueError, match=rf"{which}: scales must be positive and finite"):
            if op == "append":
                EMU.append_kv(cache.k_cache, cache.v_cache, randn(1, 2, 64, dtype=F16),
                              randn(1, 2, 64, dtype=F16), i64([cache.slot(1, 5)]),
                              *scale_args(scales["k_scale"], scales["v_scale"], cache.k_cache))
            elif op == "decode":
                emu_paged(randn(2, 4, 64, dtype=F16), cache, **scales)
            else:
                emu_paged(randn(3, 4, 64, dtype=F16), cache, **scales,
                          cu_seqlens_q=cu_seqlens([2, 1]), max_seqlen_q=2)
