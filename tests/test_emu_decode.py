"""The CUDA paged-decode kernel (csrc/cuda/kernels/paged_decode.cuh) on the CPU emulation.

torch.ops.fastattn_emu.paged_attention without cu_seqlens_q (test-only module
``fastattn._emu_ops``) runs the very kernel source nvcc compiles, on CPU fp16/bf16 tensors.
Each test runs under three emulation schedules (csrc/emu/README.md): seed 0 (threads in
forward order), seed 1 (reverse order) and a shuffled one (its seed comes from the per-test
torch seed and is shown on failure).

Reference: fastattn.reference.ref_paged_attention (float64, walks the block table) with the
FlashAttention tolerance rule of conftest.py. Caches are conftest.PagedKV: random page
order, spare block-table columns, NaN in every unused slot and page, so reading past
seq_lens shows up as NaN.

Split-KV: decode_num_splits depends on shapes and the multiprocessor count only;
``_emu_ops.set_num_sms`` sets the count the emulated op sees. ``expected_splits`` below
restates that rule (paged_decode.cuh, decode_num_splits_for) so each test knows which path
it runs, and test_split_kv_changes_the_reduction checks that the path did change.

Without the module the file is skipped, unless FASTATTN_REQUIRE_EMU=1 makes that an error.
"""

import math

import pytest
import torch

from fastattn.reference import ref_paged_attention

from conftest import (assert_matches_reference, dtype_id, import_emu_ops, PagedKV, randn)

_emu_ops = import_emu_ops()

EMU = torch.ops.fastattn_emu
F16, BF16 = torch.float16, torch.bfloat16
DEFAULT_NUM_SMS = 4  # the emulated op's default (csrc/ops/kernel_ops.h)
SPLIT_SMS = 64       # enough multiprocessors that every shape below wants split-KV
NO_SPLIT_SMS = 1


def expected_splits(batch, num_heads, num_kv_heads, capacity, num_sms):
    """decode_num_splits_for (paged_decode.cuh): 2 blocks per SM over the B * Hk * chunks
    blocks of one split, at least 256 keys of capacity (max_pages * page_size) per split,
    at most 64 splits."""
    head_chunks = math.ceil(num_heads // num_kv_heads / 8)
    base = batch * num_kv_heads * head_chunks
    splits = math.ceil(2 * num_sms / base)
    return max(1, min(splits, math.ceil(capacity / 256), 64))


@pytest.fixture(autouse=True)
def _default_num_sms():
    yield
    _emu_ops.set_num_sms(DEFAULT_NUM_SMS)


def emu_decode(q, cache, *, causal=True, softmax_scale=None, window_size=(-1, -1), softcap=0.0,
               block_table=None, seq_lens=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    return EMU.paged_attention(
        q, cache.k_cache, cache.v_cache,
        cache.block_table if block_table is None else block_table,
        cache.seq_lens if seq_lens is None else seq_lens,
        None, 1, scale, causal, window_size[0], window_size[1], softcap)


def run_decode(seq_lens, num_heads, num_kv_heads, head_dim, page_size, dtype, *, num_sms,
               want_split=None, spare_columns=2, q=None, **kwargs):
    """Runs the emulated decode with num_sms multiprocessors, checks it against the float64
    reference and, when want_split is given, that the shapes select split-KV or not."""
    cache = PagedKV.random(seq_lens, num_kv_heads, head_dim, page_size, dtype,
                           spare_columns=spare_columns)
    capacity = cache.block_table.shape[1] * page_size
    splits = expected_splits(len(seq_lens), num_heads, num_kv_heads, capacity, num_sms)
    if want_split is not None:
        assert (splits > 1) == want_split, f"shape gives {splits} splits"
    if q is None:
        q = randn(len(seq_lens), num_heads, head_dim, dtype=dtype)
    _emu_ops.set_num_sms(num_sms)
    result = emu_decode(q, cache, **kwargs)
    assert_matches_reference(result, ref_paged_attention, q, cache.k_cache, cache.v_cache,
                             cache.block_table, cache.seq_lens, return_lse=True, **kwargs)
    return result, splits


# ---------------------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------------------

# D <= 64, 128, 256 run on kHeadDim 64, 128, 256; 40 and 96 are zero-padded.
@pytest.mark.parametrize("head_dim", [64, 128, 256, 40, 96, 8])
@pytest.mark.parametrize("dtype", [F16, BF16], ids=dtype_id)
def test_head_dims_and_dtypes(schedule, dtype, head_dim):
    # Lengths 1, shorter than a page and several pages (partly filled last page), and a
    # padding entry (seq_len 0: out 0, lse -inf).
    run_decode([37, 1, 0, 70], 8, 2, head_dim, 16, dtype, num_sms=DEFAULT_NUM_SMS)


# (Hq, Hk): GQA ratios 1, 2, 4, 8, MQA, and groups above the 8 packed heads of one block
# (12 -> two chunks of 6, 16 -> two chunks of 8).
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (8, 2), (8, 1), (6, 1),
                                                    (12, 1), (16, 2)],
                         ids=["mha", "gqa2", "gqa4", "gqa8", "mqa6", "mqa12", "gqa8x2-16"])
@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_gqa_and_page_sizes(schedule, page_size, num_heads, num_kv_heads):
    dtype = F16 if page_size != 5 else BF16
    run_decode([45, 1, 19], num_heads, num_kv_heads, 64, page_size, dtype,
               num_sms=DEFAULT_NUM_SMS)


@pytest.mark.parametrize("kwargs", [
    dict(softcap=2.0),
    dict(window_size=(31, -1)),
    dict(window_size=(0, 0)),
    dict(causal=False, window_size=(8, 3)),
    dict(softcap=30.0, softmax_scale=0.5, window_size=(50, -1)),
], ids=["softcap2", "w31", "w0_0", "noncausal-w8_3", "softcap30-scale-w50"])
@pytest.mark.parametrize("split", [False, True], ids=["nosplit", "split"])
def test_softcap_and_window(schedule, split, kwargs):
    run_decode([260, 1, 90], 8, 2, 128, 16, BF16, spare_columns=16,
               num_sms=SPLIT_SMS if split else NO_SPLIT_SMS, want_split=split, **kwargs)


# Long sequences next to short ones: the long one spans several splits, splits past the
# short ones' ends are empty, and the padding entry's are all empty.
@pytest.mark.parametrize("head_dim,page_size,num_heads,num_kv_heads",
                         [(64, 1, 8, 1), (128, 16, 8, 2), (256, 5, 4, 4), (96, 16, 12, 1)],
                         ids=["d64-ps1-mqa8", "d128-ps16-gqa4", "d256-ps5-mha", "d96-ps16-mqa12"])
@pytest.mark.parametrize("split", [False, True], ids=["nosplit", "split"])
@pytest.mark.parametrize("dtype", [F16, BF16], ids=dtype_id)
def test_split_kv(schedule, dtype, split, head_dim, page_size, num_heads, num_kv_heads):
    seq_lens = [290, 1, 0] if page_size != 1 else [300, 2, 0]
    # Spare columns raise the capacity (max_pages * page_size, a shape) to about 1024 keys:
    # four or more splits, of which the long sequence fills four and the others one or none.
    spare = math.ceil(1024 / page_size) - math.ceil(max(seq_lens) / page_size)
    _, splits = run_decode(seq_lens, num_heads, num_kv_heads, head_dim, page_size, dtype,
                           spare_columns=spare, num_sms=SPLIT_SMS if split else NO_SPLIT_SMS,
                           want_split=split)
    assert splits >= 4 if split else splits == 1, splits


def test_split_kv_changes_the_reduction(schedule):
    """The same inputs with and without split-KV agree with the reference but not bit for
    bit: the partials merged by lse really ran (the count alone is only the shape rule)."""
    cache = PagedKV.random([300, 120], 2, 64, 16, F16, spare_columns=20)
    q = randn(2, 8, 64, dtype=F16)
    capacity = cache.block_table.shape[1] * 16
    assert expected_splits(2, 8, 2, capacity, SPLIT_SMS) > 1
    assert expected_splits(2, 8, 2, capacity, NO_SPLIT_SMS) == 1
    results = []
    for num_sms in (NO_SPLIT_SMS, SPLIT_SMS):
        _emu_ops.set_num_sms(num_sms)
        results.append(emu_decode(q, cache))
        assert_matches_reference(results[-1], ref_paged_attention, q, cache.k_cache,
                                 cache.v_cache, cache.block_table, cache.seq_lens,
                                 return_lse=True)
    (_, lse_one), (_, lse_split) = results
    assert not torch.equal(lse_one, lse_split)


def test_unaligned_strides(schedule):
    """Strides that are not multiples of 8 elements and a q that is not 16-byte aligned take
    the scalar-load path of the same kernel."""
    seq_lens, hk, d, ps = [50, 7], 2, 64, 5
    cache = PagedKV.random(seq_lens, hk, d, ps, F16)
    pad = lambda t: torch.cat([t, torch.full(t.shape[:-1] + (4,), float("nan"), dtype=t.dtype)],
                              dim=-1)[..., :d]
    cache.k_cache, cache.v_cache = pad(cache.k_cache), pad(cache.v_cache)  # head stride 68
    q = randn(2, 8, d + 4, dtype=F16)[..., 4:]                             # 8-byte offset
    assert cache.k_cache.stride(-2) == d + 4 and q.storage_offset() == 4
    _emu_ops.set_num_sms(SPLIT_SMS)
    result = emu_decode(q, cache)
    assert_matches_reference(result, ref_paged_attention, q, cache.k_cache, cache.v_cache,
                             cache.block_table, cache.seq_lens, return_lse=True)


# ---------------------------------------------------------------------------------------
# invalid index values: reported by the kernel, raised by the op as ValueError
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1, 2**31 - 1], ids=["neg", "huge"])
@pytest.mark.parametrize("split", [False, True], ids=["nosplit", "split"])
def test_block_table_out_of_range(schedule, split, bad):
    cache = PagedKV.random([40, 33], 2, 64, 16, F16, spare_columns=20)
    q = randn(2, 4, 64, dtype=F16)
    _emu_ops.set_num_sms(SPLIT_SMS if split else NO_SPLIT_SMS)
    table = cache.block_table.clone()
    table[1, 2] = bad  # the last page of sequence 1 (33 keys = 3 pages of 16)
    with pytest.raises(ValueError, match="block_table"):
        emu_decode(q, cache, block_table=table)
    # A page below the window is never read, but its entry is still invalid (as on the CPU).
    table = cache.block_table.clone()
    table[0, 0] = bad
    with pytest.raises(ValueError, match="block_table"):
        emu_decode(q, cache, block_table=table, window_size=(4, -1))
    # Columns past a sequence's pages are not used: any value is accepted.
    table = cache.block_table.clone()
    table[0, 3:] = bad
    table[1, 3:] = -bad
    result = emu_decode(q, cache, block_table=table)
    assert_matches_reference(result, ref_paged_attention, q, cache.k_cache, cache.v_cache,
                             table, cache.seq_lens, return_lse=True)


@pytest.mark.parametrize("bad", ["over", "neg"])
def test_seq_lens_out_of_range(schedule, bad):
    cache = PagedKV.random([40, 33], 2, 64, 16, F16)
    q = randn(2, 4, 64, dtype=F16)
    capacity = cache.block_table.shape[1] * 16
    seq_lens = cache.seq_lens.clone()
    seq_lens[1] = capacity + 1 if bad == "over" else -3
    with pytest.raises(ValueError, match="seq_lens"):
        emu_decode(q, cache, seq_lens=seq_lens)
    # Exactly the capacity is valid.
    cache = PagedKV.random([40, 48], 2, 64, 16, F16, spare_columns=0)
    assert cache.block_table.shape[1] * 16 == 48
    result = emu_decode(q, cache)
    assert_matches_reference(result, ref_paged_attention, q, cache.k_cache, cache.v_cache,
                             cache.block_table, cache.seq_lens, return_lse=True)
