"""The CUDA attention forward kernels on the CPU emulation: the mma.sync kernel
(csrc/cuda/kernels/attention_fwd.cuh, what sm_80/sm_89 run) and the sm_90a kernel
(attention_fwd_sm90.cuh: TMA, mbarrier ring, wgmma, ping-pong warpgroups). Every test runs
on both (the ``sm80`` / ``sm90`` ids: the capability the emulated dispatch sees).

torch.ops.fastattn_emu.{attention, attention_varlen, paged_attention} (test-only module
``fastattn._emu_ops``) run the very kernel source nvcc compiles, on CPU fp16/bf16 tensors,
with the schemas of torch.ops.fastattn.*. Paged decode (no cu_seqlens_q) is another kernel;
here paged means extend / chunked prefill.

Every case runs under three emulation schedules (csrc/emu/README.md): seed 0 (threads in
forward order, cp.async copies land as late as allowed), seed 1 (reverse order, copies land
at issue) and a shuffled one (seed drawn per test, shown on failure). Each must match the
float64 reference within the FlashAttention tolerance (tests/conftest.py), and the three
results must be bitwise identical: the kernel is deterministic, so any difference between
schedules is a race.

Without the module the file is skipped, unless FASTATTN_REQUIRE_EMU=1 makes that an error.
"""

import math

import pytest
import torch

from fastattn.reference import ref_attention, ref_attention_varlen, ref_paged_attention

from conftest import (assert_matches_reference, cu_seqlens, default_emu_seed, dtype_id,
                      import_emu_ops, PagedKV, randn)

_emu_ops = import_emu_ops()

OPS = torch.ops.fastattn_emu
F16, BF16 = torch.float16, torch.bfloat16
LOWP = [F16, BF16]
# Compiled head dims and padded ones (run on the next compiled size: 8, 40 -> 64,
# 96 -> 128, 160 -> 256).
HEAD_DIMS = [8, 40, 64, 96, 128, 160, 256]


@pytest.fixture(autouse=True)
def _restore_schedule():
    yield
    _emu_ops.set_schedule(default_emu_seed())


@pytest.fixture(autouse=True, params=[80, 90], ids=["sm80", "sm90"])
def device_sm(request):
    """The compute capability the emulated dispatch sees: 90 runs the sm_90a kernels."""
    _emu_ops.set_sm(request.param)
    yield request.param
    _emu_ops.set_sm(80)


def schedules():
    """Seeds 0 and 1, and a shuffled schedule drawn from the per-test torch seed."""
    return [0, 1, 2 + int(torch.randint(0, 2**31 - 3, ()).item())]


def run_all_schedules(fn):
    """fn() -> (out, lse) under every schedule; they must agree bit for bit."""
    seeds = schedules()
    results = []
    for seed in seeds:
        _emu_ops.set_schedule(seed)
        results.append(fn())
    out0, lse0 = results[0]
    for seed, (out, lse) in zip(seeds[1:], results[1:]):
        assert torch.equal(out.view(torch.int16), out0.view(torch.int16)), (
            f"out differs between schedule seeds {seeds[0]} and {seed}: a race")
        assert torch.equal(lse.view(torch.int32), lse0.view(torch.int32)), (
            f"lse differs between schedule seeds {seeds[0]} and {seed}: a race")
    return out0, lse0


def window_args(window):
    return int(window[0]), int(window[1])


def scale_of(head_dim, softmax_scale):
    return 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale


# ---------------------------------------------------------------------------------------
# dense
# ---------------------------------------------------------------------------------------

def check_dense(batch, q_len, k_len, num_heads, num_kv_heads, head_dim, dtype, *, causal=False,
                window=(-1, -1), softcap=0.0, softmax_scale=None, kv_lens=None, qkv=None):
    if qkv is None:
        q = randn(batch, q_len, num_heads, head_dim, dtype=dtype)
        k = randn(batch, k_len, num_kv_heads, head_dim, dtype=dtype)
        v = randn(batch, k_len, num_kv_heads, head_dim, dtype=dtype)
    else:
        q, k, v = qkv
    lens = None if kv_lens is None else torch.tensor(kv_lens, dtype=torch.int32)
    scale = scale_of(head_dim, softmax_scale)
    result = run_all_schedules(lambda: OPS.attention(q, k, v, lens, scale, causal,
                                                     *window_args(window), softcap))
    return assert_matches_reference(result, ref_attention, q, k, v, return_lse=True,
                                    causal=causal, softmax_scale=scale, window_size=window,
                                    softcap=softcap, kv_lens=lens)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
def test_head_dims_and_dtypes(dtype, head_dim, causal):
    check_dense(2, 33, 97, 4, 2, head_dim, dtype, causal=causal)


# gqa3: a group that does not divide the sm_90a kernel's 128 rows (its Q takes cp.async, not TMA).
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (6, 2), (8, 2), (4, 1)],
                         ids=["mha", "gqa2", "gqa3", "gqa4", "mqa"])
@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
def test_gqa(dtype, num_heads, num_kv_heads):
    # Prefill-like (rows of several heads packed per block) and few-query (one block).
    check_dense(1, 97, 97, num_heads, num_kv_heads, 64, dtype, causal=True)
    check_dense(2, 7, 33, num_heads, num_kv_heads, 128, dtype)


MASK_CASES = {
    # name: (q_len, k_len, kwargs)
    "single": (1, 1, {}),
    "single_causal": (1, 1, {"causal": True}),
    "sq_gt_sk_causal": (97, 7, {"causal": True}),  # the first rows see no key
    "sq_gt_sk_full": (97, 33, {}),
    "sq_lt_sk_causal": (7, 97, {"causal": True}),
    "window_left_causal": (97, 97, {"causal": True, "window": (8, 0)}),
    "window_both": (33, 97, {"window": (4, 4)}),
    "window_zero": (33, 33, {"window": (0, 0)}),
    "window_right_only": (33, 97, {"window": (-1, 5)}),
    "window_sq_gt_sk": (97, 33, {"causal": True, "window": (20, -1)}),
    "window_past_end": (7, 97, {"window": (3, 200)}),
    "softcap": (33, 97, {"causal": True, "softcap": 5.0}),
    "softcap_window": (97, 97, {"softcap": 2.0, "window": (16, 16)}),
    "scale": (33, 33, {"softmax_scale": 0.3}),
    "large_scores": (33, 97, {"softmax_scale": 4.0}),  # exercises the running-max rescale
}


@pytest.mark.parametrize("head_dim", [64, 256])
@pytest.mark.parametrize("case", list(MASK_CASES))
@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
def test_masks(dtype, case, head_dim):
    q_len, k_len, kwargs = MASK_CASES[case]
    check_dense(2, q_len, k_len, 2, 1, head_dim, dtype, **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"causal": True}, {"window": (5, 2)}],
                         ids=["full", "causal", "window"])
@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
def test_kv_lens(dtype, kwargs):
    # 0 (no key: out 0, lse -inf), partial, full, and one shorter than the queries.
    check_dense(4, 33, 97, 4, 2, 96, dtype, kv_lens=[0, 40, 97, 5], **kwargs)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_long_keys(head_dim, causal):
    """1023 keys: several times more key tiles than the sm_90a kernel's ring has stages, so
    the barrier phases wrap and every stage is refilled after both consumers release it."""
    check_dense(1, 97, 1023, 4, 2, head_dim, BF16, causal=causal)


def test_kernel_family_env(monkeypatch, device_sm):
    """FASTATTN_CUDA_KERNELS=sm80 runs the mma.sync kernel even where the sm_90a one would
    (bit for bit its result); a value other than auto/sm80 is a ValueError naming it."""
    q, k, v = (randn(1, 33, 4, 64, dtype=BF16), randn(1, 97, 2, 64, dtype=BF16),
               randn(1, 97, 2, 64, dtype=BF16))
    args = (q, k, v, None, 0.125, True, -1, -1, 0.0)
    _emu_ops.set_sm(80)
    plain = OPS.attention(*args)
    _emu_ops.set_sm(device_sm)
    monkeypatch.setenv("FASTATTN_CUDA_KERNELS", "sm80")
    forced = OPS.attention(*args)
    assert torch.equal(forced[0], plain[0]) and torch.equal(forced[1], plain[1])
    monkeypatch.setenv("FASTATTN_CUDA_KERNELS", "bogus")
    with pytest.raises(ValueError, match="FASTATTN_CUDA_KERNELS=bogus"):
        OPS.attention(*args)


def test_kv_lens_all_zero():
    ref_out, ref_lse = check_dense(2, 7, 33, 2, 2, 64, F16, kv_lens=[0, 0])
    assert torch.isneginf(ref_lse).all()


@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
def test_strided_inputs(dtype):
    """q, k, v sliced out of a packed [B, S, 3, H, D] tensor: strides are honoured."""
    qkv = randn(2, 33, 3, 4, 64, dtype=dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    assert not q.is_contiguous()
    check_dense(2, 33, 33, 4, 4, 64, dtype, causal=True, qkv=(q, k, v))


@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
def test_misaligned_inputs(dtype):
    """Views whose rows do not start on 16 bytes (the kernel's cp.async unit) still work:
    the op copies them rather than fault."""
    wide = randn(2, 17, 4, 65, dtype=dtype)
    q = wide[..., 1:]  # every row starts 2 bytes past a 16-byte boundary
    k = randn(2, 17, 2, 65, dtype=dtype)[..., :64]  # row stride 65 elements
    v = randn(2, 17, 2, 64, dtype=dtype)
    check_dense(2, 17, 17, 4, 2, 64, dtype, causal=True, qkv=(q, k, v))


def test_misaligned_cache_rejected():
    """The paged cache is never copied: an unaligned one is a ValueError naming it."""
    cache = randn(4, 16, 2, 65, dtype=F16)[..., 1:]
    q = randn(3, 2, 64, dtype=F16)
    table = torch.zeros(1, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="^k_cache: the CUDA extend kernel needs 16-byte aligned"):
        OPS.paged_attention(q, cache, cache, table, torch.tensor([3], dtype=torch.int32),
                            cu_seqlens([3]), 3, 0.125, True, -1, -1, 0.0)


def test_grid_limits_rejected_before_launch():
    """Grid y/z are 16-bit: more query heads (or sequences) than a launch can take is a
    ValueError naming q, raised by the op glue before any launch."""
    q = torch.zeros(1, 1, 65536, 8, dtype=F16)
    kv = torch.zeros(1, 1, 1, 8, dtype=F16)
    with pytest.raises(ValueError, match=r"^q: Hq = 65536 query heads; the CUDA kernels take at most"):
        OPS.attention(q, kv, kv, None, 0.125, False, -1, -1, 0.0)
    q = torch.zeros(65536, 1, 1, 8, dtype=F16)
    kv = torch.zeros(65536, 1, 1, 8, dtype=F16)
    with pytest.raises(ValueError, match=r"^q: 65536 sequences in one call"):
        OPS.attention(q, kv, kv, None, 0.125, False, -1, -1, 0.0)


# ---------------------------------------------------------------------------------------
# varlen
# ---------------------------------------------------------------------------------------

def check_varlen(q_lens, k_lens, num_heads, num_kv_heads, head_dim, dtype, *, causal=False,
                 window=(-1, -1), softcap=0.0):
    q = randn(sum(q_lens), num_heads, head_dim, dtype=dtype)
    k = randn(sum(k_lens), num_kv_heads, head_dim, dtype=dtype)
    v = randn(sum(k_lens), num_kv_heads, head_dim, dtype=dtype)
    cu_q, cu_k = cu_seqlens(q_lens), cu_seqlens(k_lens)
    max_q, max_k = max(q_lens), max(k_lens)
    scale = scale_of(head_dim, None)
    result = run_all_schedules(lambda: OPS.attention_varlen(
        q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, *window_args(window), softcap))
    return assert_matches_reference(result, ref_attention_varlen, q, k, v, cu_q, cu_k, max_q,
                                    max_k, return_lse=True, causal=causal, softmax_scale=scale,
                                    window_size=window, softcap=softcap)


@pytest.mark.parametrize("kwargs", [{}, {"causal": True}, {"window": (6, 3), "softcap": 3.0}],
                         ids=["full", "causal", "window_softcap"])
@pytest.mark.parametrize("head_dim", [64, 96])
@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
def test_varlen(dtype, head_dim, kwargs):
    # An empty query sequence, queries without keys, and sequences spanning several tiles.
    check_varlen([7, 0, 97, 1, 33], [33, 5, 97, 0, 1], 4, 2, head_dim, dtype, **kwargs)


# ---------------------------------------------------------------------------------------
# paged extend (queries are the last q_len positions of each sequence)
# ---------------------------------------------------------------------------------------

def check_extend(q_lens, seq_lens, num_heads, num_kv_heads, head_dim, page_size, dtype, *,
                 causal=True, window=(-1, -1), softcap=0.0, cache=None):
    cache = cache or PagedKV.random(seq_lens, num_kv_heads, head_dim, page_size, dtype)
    q = randn(sum(q_lens), num_heads, head_dim, dtype=dtype)
    cu_q = cu_seqlens(q_lens)
    scale = scale_of(head_dim, None)
    args = (q, cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    result = run_all_schedules(lambda: OPS.paged_attention(
        *args, cu_q, max(q_lens), scale, causal, *window_args(window), softcap))
    return assert_matches_reference(result, ref_paged_attention, *args, cu_seqlens_q=cu_q,
                                    return_lse=True, causal=causal, softmax_scale=scale,
                                    window_size=window, softcap=softcap)


# q_len <= seq_len; an empty query chunk; seq_len 0 marks a padding row (its queries see
# nothing); lengths that end mid-page and span several pages and tiles.
EXTEND_Q_LENS = [7, 33, 1, 0, 3, 97]
EXTEND_SEQ_LENS = [40, 33, 97, 5, 0, 131]


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 2), (4, 1)], ids=["gqa2", "mqa"])
@pytest.mark.parametrize("page_size", [1, 5, 16])
@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
def test_paged_extend(dtype, page_size, num_heads, num_kv_heads):
    check_extend(EXTEND_Q_LENS, EXTEND_SEQ_LENS, num_heads, num_kv_heads, 64, page_size, dtype)


@pytest.mark.parametrize("kwargs", [{"causal": False}, {"window": (10, 0), "softcap": 4.0}],
                         ids=["full", "window_softcap"])
@pytest.mark.parametrize("head_dim", [40, 128, 256])
def test_paged_extend_variants(head_dim, kwargs):
    check_extend(EXTEND_Q_LENS, EXTEND_SEQ_LENS, 2, 2, head_dim, 5, BF16, **kwargs)


@pytest.mark.parametrize("page_size", [1, 16])
def test_paged_extend_long(page_size):
    """Hundreds of cached keys read through the block table: the ring wraps on the
    cp.async path too."""
    check_extend([33, 1], [700, 300], 4, 2, 128, page_size, F16)


def test_paged_unused_block_table_entries_are_not_read():
    """Columns beyond a sequence's pages may hold anything, out-of-range values included."""
    cache = PagedKV.random([7, 20], 2, 64, 16, F16)
    cache.block_table[0, 1:] = -1
    cache.block_table[1, 2:] = 10**9
    check_extend([7, 4], [7, 20], 4, 2, 64, 16, F16, cache=cache)


# ---------------------------------------------------------------------------------------
# index values checked by the kernel: ValueError naming the argument, never a bad read
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1, 10**6, "num_pages"])
def test_out_of_range_block_table(bad):
    cache = PagedKV.random([20, 9], 2, 64, 5, F16)
    num_pages = cache.k_cache.shape[0]
    cache.block_table[1, 1] = num_pages if bad == "num_pages" else bad
    q = randn(3, 4, 64, dtype=F16)
    cu_q = cu_seqlens([2, 1])
    for seed in schedules():
        _emu_ops.set_schedule(seed)
        with pytest.raises(ValueError, match="block_table"):
            OPS.paged_attention(q, cache.k_cache, cache.v_cache, cache.block_table,
                                cache.seq_lens, cu_q, 2, 0.125, True, -1, -1, 0.0)
    # The error is reported once, and the next valid call runs normally.
    cache.block_table[1, 1] = cache.block_table[1, 0]
    OPS.paged_attention(q, cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens,
                        cu_q, 2, 0.125, True, -1, -1, 0.0)


def test_out_of_range_seq_lens():
    cache = PagedKV.random([20, 9], 2, 64, 5, F16)
    capacity = cache.block_table.shape[1] * 5
    q = randn(3, 4, 64, dtype=F16)
    cu_q = cu_seqlens([2, 1])
    for bad in [capacity + 1, -3]:
        seq_lens = cache.seq_lens.clone()
        seq_lens[0] = bad
        with pytest.raises(ValueError, match="seq_lens"):
            OPS.paged_attention(q, cache.k_cache, cache.v_cache, cache.block_table, seq_lens,
                                cu_q, 2, 0.125, True, -1, -1, 0.0)


def test_out_of_range_kv_lens():
    q = randn(2, 7, 2, 64, dtype=F16)
    k = randn(2, 9, 2, 64, dtype=F16)
    for bad in [10, -1]:
        lens = torch.tensor([3, bad], dtype=torch.int32)
        with pytest.raises(ValueError, match="kv_lens"):
            OPS.attention(q, k, k, lens, 0.125, False, -1, -1, 0.0)


@pytest.mark.parametrize("which", ["q", "k"])
def test_bad_cu_seqlens(which):
    q = randn(10, 2, 64, dtype=F16)
    k = randn(12, 2, 64, dtype=F16)
    good_q, good_k = cu_seqlens([4, 6]), cu_seqlens([5, 7])
    bad = torch.tensor([0, 11, 10], dtype=torch.int32)  # decreasing, beyond the total
    cu_q, cu_k = (bad, good_k) if which == "q" else (good_q, bad)
    with pytest.raises(ValueError, match=f"cu_seqlens_{which}"):
        OPS.attention_varlen(q, k, k, cu_q, cu_k, 11, 11, 0.125, True, -1, -1, 0.0)
