"""The CUDA append_kv and merge_attention_states kernels (csrc/cuda/kernels/append_kv.cuh,
merge.cuh) on the CPU emulation.

torch.ops.fastattn_emu.{append_kv, merge_attention_states} (test-only module
``fastattn._emu_ops``) run the very kernel sources nvcc compiles, on CPU fp16/bf16 tensors,
with the schemas of torch.ops.fastattn.*. Each test runs under three emulation schedules
(csrc/emu/README.md): seed 0 (threads in forward order), seed 1 (reverse order) and a
shuffled one (its seed comes from the per-test torch seed and is shown on failure).

The references: fastattn.reference (float64 / out-of-place) and the CPU ops
torch.ops.fastattn.* on the same inputs. Both kernels are exact copies or use the CPU op's
merge arithmetic (softmax.h merge_weights), so they must match the CPU op bit for bit up to
fp32 rounding.

Without the module the file is skipped, unless FASTATTN_REQUIRE_EMU=1 makes that an error.
"""


import pytest
import torch

import fastattn
from fastattn.reference import ref_append_kv, ref_attention, ref_merge_attention_states

from conftest import (assert_close_to_ref, dtype_id, import_emu_ops, is_nan_bitwise_equal,
                      nan_tensor, randn)

_emu_ops = import_emu_ops()

EMU = torch.ops.fastattn_emu
CPU = torch.ops.fastattn
F16, BF16 = torch.float16, torch.bfloat16
LOWP = [F16, BF16]


# ---------------------------------------------------------------------------------------
# append_kv
# ---------------------------------------------------------------------------------------

def make_append_case(num_tokens, kv_heads, head_dim, page_size, dtype, spare_slots=10):
    """NaN caches with room for spare_slots untouched slots, random distinct slots with a
    few -1 (padding) tokens, and k, v [T, Hk, D]."""
    num_pages = (num_tokens + spare_slots + page_size - 1) // page_size
    k_cache = nan_tensor(num_pages, page_size, kv_heads, head_dim, dtype=dtype, device="cpu")
    v_cache = nan_tensor(num_pages, page_size, kv_heads, head_dim, dtype=dtype, device="cpu")
    slots = torch.randperm(num_pages * page_size)[:num_tokens]
    slots[torch.tensor([0, 3, num_tokens - 1]) % num_tokens] = -1
    k = randn(num_tokens, kv_heads, head_dim, dtype=dtype)
    v = randn(num_tokens, kv_heads, head_dim, dtype=dtype)
    return k_cache, v_cache, k, v, slots.to(torch.int64)


def check_append(k_cache, v_cache, k, v, slots, seed):
    """append_kv under emulation equals the reference and the CPU op, bit for bit (NaN of
    the untouched slots included)."""
    want_k, want_v = ref_append_kv(k_cache, v_cache, k, v, slots)
    cpu_k, cpu_v = k_cache.clone(), v_cache.clone()
    CPU.append_kv(cpu_k, cpu_v, k, v, slots)
    EMU.append_kv(k_cache, v_cache, k, v, slots)
    for name, got, want, cpu in (("k_cache", k_cache, want_k, cpu_k),
                                 ("v_cache", v_cache, want_v, cpu_v)):
        assert is_nan_bitwise_equal(got, want), f"{name} differs from the reference (schedule {seed})"
        assert is_nan_bitwise_equal(got, cpu), f"{name} differs from the CPU op (schedule {seed})"


@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
@pytest.mark.parametrize("head_dim", [64, 128, 40])
@pytest.mark.parametrize("page_size", [1, 16, 5])
def test_append_kv_round_trip(schedule, page_size, head_dim, dtype):
    """Tokens land at their slots (16-byte path: contiguous, aligned); padding tokens and
    every other slot are left alone; each written slot reads back as its token."""
    k_cache, v_cache, k, v, slots = make_append_case(37, 2, head_dim, page_size, dtype)
    check_append(k_cache, v_cache, k, v, slots, schedule)
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            page, offset = divmod(slot, page_size)
            assert torch.equal(k_cache[page, offset], k[t]) and torch.equal(v_cache[page, offset], v[t])


@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
@pytest.mark.parametrize("layout", ["odd-head-stride", "odd-token-stride", "misaligned-pointer"])
def test_append_kv_scalar_path(schedule, layout, dtype):
    """k, v views that rule out 16-byte chunks (a head or token stride that is not a
    multiple of 8 elements, or a base pointer off 16 bytes) take the one-element path."""
    T, Hk, D, page_size = 29, 3, 64, 16
    k_cache, v_cache, _, _, slots = make_append_case(T, Hk, D, page_size, dtype)
    if layout == "odd-head-stride":
        k = randn(T, Hk, D + 3, dtype=dtype)[..., :D]
        v = randn(T, Hk, D + 3, dtype=dtype)[..., 3:]
    elif layout == "odd-token-stride":
        k = randn(T, Hk * D + 1, dtype=dtype)[:, :Hk * D].view(T, Hk, D)
        v = randn(T, Hk * D + 1, dtype=dtype)[:, 1:].view(T, Hk, D)
    else:
        k = randn(T * Hk * D + 1, dtype=dtype)[1:].view(T, Hk, D)
        v = randn(T * Hk * D + 1, dtype=dtype)[1:].view(T, Hk, D)
    assert any(s % 8 != 0 for s in k.stride()[:2]) or k.data_ptr() % 16 != 0
    check_append(k_cache, v_cache, k, v, slots, schedule)


@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
def test_append_kv_packed_qkv(schedule, dtype):
    """k and v sliced out of a packed [T, 3, Hk, D] qkv tensor (D = 40): strided, but every
    stride and pointer allows 16-byte chunks."""
    T, Hk, D = 23, 3, 40
    k_cache, v_cache, _, _, slots = make_append_case(T, Hk, D, 5, dtype)
    qkv = randn(T, 3, Hk, D, dtype=dtype)
    k, v = qkv[:, 1], qkv[:, 2]
    assert k.data_ptr() % 16 == 0 and all(s % 8 == 0 for s in k.stride()[:2])
    check_append(k_cache, v_cache, k, v, slots, schedule)


@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
def test_append_kv_all_padding(schedule, dtype):
    k_cache, v_cache, k, v, _ = make_append_case(9, 2, 64, 16, dtype)
    before = k_cache.clone(), v_cache.clone()
    EMU.append_kv(k_cache, v_cache, k, v, torch.full((9,), -1, dtype=torch.int64))
    assert is_nan_bitwise_equal(k_cache, before[0]) and is_nan_bitwise_equal(v_cache, before[1])


@pytest.mark.parametrize("bad", ["num_slots", "huge"])
def test_append_kv_out_of_range_slot(schedule, bad):
    """A slot >= num_pages * page_size raises ValueError naming slot_mapping, and is never
    written: alone (with padding), the cache stays untouched bit for bit."""
    k_cache, v_cache, k, v, _ = make_append_case(4, 2, 64, 16, F16)
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    bad_slot = num_slots if bad == "num_slots" else 1 << 40
    slots = torch.tensor([-1, bad_slot, -1, -7], dtype=torch.int64)
    before = k_cache.clone(), v_cache.clone()
    with pytest.raises(ValueError, match="slot_mapping"):
        EMU.append_kv(k_cache, v_cache, k, v, slots)
    assert is_nan_bitwise_equal(k_cache, before[0]) and is_nan_bitwise_equal(v_cache, before[1])


def test_append_kv_out_of_range_slot_among_valid(schedule):
    """With valid tokens beside the bad one the op still raises; the bad token writes
    nowhere: every slot but the valid tokens' keeps its NaN."""
    k_cache, v_cache, k, v, _ = make_append_case(6, 2, 64, 5, BF16)
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    slots = torch.tensor([2, num_slots + 3, 7, -1, num_slots, 0], dtype=torch.int64)
    with pytest.raises(ValueError, match="slot_mapping"):
        EMU.append_kv(k_cache, v_cache, k, v, slots)
    valid = {int(s) for s in slots if 0 <= s < num_slots}
    for cache in (k_cache, v_cache):
        flat = cache.view(num_slots, -1)
        for slot in range(num_slots):
            if slot not in valid:
                assert torch.isnan(flat[slot]).all(), f"slot {slot} written (schedule {schedule})"


# ---------------------------------------------------------------------------------------
# merge_attention_states
# ---------------------------------------------------------------------------------------

def eps(dtype):
    return torch.finfo(dtype).eps


def check_merge_vs_cpu(out_a, lse_a, out_b, lse_b, seed):
    """The emulated merge against the CPU op (the same merge_weights arithmetic): lse equal,
    out within one rounding of the output dtype, no NaN."""
    out, lse = EMU.merge_attention_states(out_a, lse_a, out_b, lse_b)
    cpu_out, cpu_lse = CPU.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert out.dtype == out_a.dtype and lse.dtype == torch.float32
    assert out.shape == out_a.shape and lse.shape == lse_a.shape
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), f"NaN (schedule {seed})"
    torch.testing.assert_close(lse, cpu_lse, rtol=0, atol=0, msg=lambda m: f"schedule {seed}: {m}")
    torch.testing.assert_close(out.float(), cpu_out.float(), rtol=eps(out.dtype), atol=1e-6,
                               msg=lambda m: f"schedule {seed}: {m}")
    return out, lse


def random_states(shape, head_dim, dtype, empty_a=slice(0, 0), empty_b=slice(0, 0)):
    """Random partial states [*shape, D] / [*shape]; rows empty_* of a side get lse -inf and
    a non-finite out (NaN, inf), which the merge must ignore."""
    out_a = randn(*shape, head_dim, dtype=dtype)
    out_b = randn(*shape, head_dim, dtype=dtype)
    lse_a = randn(*shape, dtype=torch.float32, scale=4.0)
    lse_b = randn(*shape, dtype=torch.float32, scale=4.0)
    lse_a[empty_a] = float("-inf")
    out_a[empty_a] = float("nan")
    lse_b[empty_b] = float("-inf")
    out_b[empty_b] = float("inf")
    return out_a, lse_a, out_b, lse_b


@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
@pytest.mark.parametrize("head_dim", [64, 128, 40, 36, 3])
def test_merge_random_states(schedule, head_dim, dtype):
    """Random states with -inf rows on either side and on both (16-byte path for head dims
    that are multiples of 8, one-element path for 36 and 3), against the CPU op and the
    float64 reference."""
    out_a, lse_a, out_b, lse_b = random_states((37, 8), head_dim, dtype, empty_a=slice(0, 3),
                                               empty_b=slice(2, 6))
    out, lse = check_merge_vs_cpu(out_a, lse_a, out_b, lse_b, schedule)
    assert (out[2] == 0).all() and torch.isneginf(lse[2]).all()  # both sides empty
    assert not torch.isinf(out).any()
    # The reference multiplies the ignored non-finite outs by 0: give it zeros there.
    args = [out_a.clone(), lse_a, out_b.clone(), lse_b]
    args[0][0:3] = 0
    args[2][2:6] = 0
    assert_close_to_ref(out, lse, ref_merge_attention_states(*args),
                        ref_merge_attention_states(*args, dtype=dtype), out_dtype=dtype)


@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
@pytest.mark.parametrize("layout", ["row-stride", "misaligned-pointer"])
def test_merge_scalar_path(schedule, layout, dtype):
    """Strided views (row stride not a multiple of 8 elements, or a base pointer off 16
    bytes) take the one-element path; the op flattens them to rows without copying."""
    T, H, D = 21, 4, 64
    if layout == "row-stride":
        out_a = randn(T, H, D + 2, dtype=dtype)[..., :D]
        out_b = randn(T, H, D + 2, dtype=dtype)[..., 2:]
    else:
        out_a = randn(T * H * D + 1, dtype=dtype)[1:].view(T, H, D)
        out_b = randn(T * H * D + 1, dtype=dtype)[1:].view(T, H, D)
    lse_a = randn(T, H, dtype=torch.float32, scale=3.0)
    lse_b = randn(T, H, dtype=torch.float32, scale=3.0)
    lse_a[5] = float("-inf")
    check_merge_vs_cpu(out_a, lse_a, out_b, lse_b, schedule)


@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
@pytest.mark.parametrize("split", [1, 40, 96])
def test_merge_equals_attention_over_concatenated_keys(schedule, dtype, split):
    """Attention (the CPU op) over keys [0, split) and [split, Sk), merged by the emulated
    kernel, equals attention over all keys."""
    q = randn(2, 17, 4, 64, dtype=dtype)
    k = randn(2, 97, 2, 64, dtype=dtype)
    v = randn(2, 97, 2, 64, dtype=dtype)
    out_a, lse_a = fastattn.attention(q, k[:, :split], v[:, :split], return_lse=True)
    out_b, lse_b = fastattn.attention(q, k[:, split:], v[:, split:], return_lse=True)
    out, lse = check_merge_vs_cpu(out_a, lse_a, out_b, lse_b, schedule)
    lowp_a = ref_attention(q, k[:, :split], v[:, :split], dtype=dtype)
    lowp_b = ref_attention(q, k[:, split:], v[:, split:], dtype=dtype)
    lowp = ref_merge_attention_states(*lowp_a, *lowp_b, dtype=dtype)
    assert_close_to_ref(out, lse, ref_attention(q, k, v), lowp, out_dtype=dtype)


@pytest.mark.parametrize("dtype", LOWP, ids=dtype_id)
def test_merge_with_empty_side(schedule, dtype):
    """A side that saw no key (out 0, lse -inf) leaves the other unchanged, bit for bit;
    two empty sides give out 0 and lse -inf."""
    q = randn(3, 9, 4, 64, dtype=dtype)
    k = randn(3, 50, 2, 64, dtype=dtype)
    v = randn(3, 50, 2, 64, dtype=dtype)
    out_a, lse_a = fastattn.attention(q, k, v, causal=True, return_lse=True)
    out_e, lse_e = fastattn.attention(q, k, v, kv_lens=torch.zeros(3, dtype=torch.int32),
                                      return_lse=True)
    assert torch.isneginf(lse_e).all() and (out_e == 0).all()
    for first, second in (((out_a, lse_a), (out_e, lse_e)), ((out_e, lse_e), (out_a, lse_a))):
        out, lse = EMU.merge_attention_states(*first, *second)
        assert torch.equal(out, out_a) and torch.equal(lse, lse_a), f"schedule {schedule}"
    out, lse = EMU.merge_attention_states(out_e, lse_e, out_e, lse_e)
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_merge_no_rows(schedule):
    out_a = torch.empty(0, 4, 64, dtype=F16)
    lse_a = torch.empty(0, 4)
    out, lse = EMU.merge_attention_states(out_a, lse_a, out_a, lse_a)
    assert out.shape == (0, 4, 64) and lse.shape == (0, 4)
