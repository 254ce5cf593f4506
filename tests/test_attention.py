"""Parity tests for dense attention: attention, self_attention, cross_attention and
merge_attention_states, against the float64 references in fastattn.reference."""

import pytest
import torch

import fastattn
from fastattn.reference import ref_attention, ref_merge_attention_states

from conftest import (DTYPES, assert_close_to_ref, assert_matches_reference, dtype_id,
                      make_qkv, randn, skip_if_unsupported)

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


def run_attention(q, k, v, return_lse=True, **kwargs):
    """fastattn.attention checked against ref_attention; returns the float64 reference."""
    result = fastattn.attention(q, k, v, return_lse=return_lse, **kwargs)
    return assert_matches_reference(result, ref_attention, q, k, v, return_lse=return_lse,
                                    **kwargs)


# Query / key lengths from {1, 7, 97, 256, 1023}, with Sq > Sk (causal leaves the first
# Sq - Sk queries without keys) and Sq < Sk (decode-like) both present.
SEQLENS = [(1, 1), (1, 7), (7, 1), (7, 97), (97, 7), (97, 256), (256, 97), (256, 256),
           (1, 1023), (1023, 97), (97, 1023), (1023, 1023)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("q_len,k_len", SEQLENS, ids=[f"sq{a}-sk{b}" for a, b in SEQLENS])
def test_seqlens(device, q_len, k_len, causal):
    dtype = F16
    skip_if_unsupported(device, dtype, 64)
    batch = 1 if max(q_len, k_len) > 500 else 2
    q, k, v = make_qkv(batch, q_len, k_len, 2, 1, 64, dtype, device)
    run_attention(q, k, v, causal=causal)


@pytest.mark.parametrize("kernels", ["auto", "sm80"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_cuda_kernel_families(device, kernels, causal, monkeypatch):
    """$FASTATTN_CUDA_KERNELS (read at every call): on an H100/H200 "auto" runs the sm_90a
    kernels and "sm80" the mma.sync ones; both must match the reference there (elsewhere both
    are the mma.sync kernel, and the CPU ignores the variable)."""
    monkeypatch.setenv("FASTATTN_CUDA_KERNELS", kernels)
    for head_dim in (64, 128, 256):
        skip_if_unsupported(device, BF16, head_dim)
        q, k, v = make_qkv(2, 97, 1023, 8, 2, head_dim, BF16, device)
        run_attention(q, k, v, causal=causal)


def test_cuda_kernel_family_env_checked(device, monkeypatch):
    monkeypatch.setenv("FASTATTN_CUDA_KERNELS", "sm100")
    q, k, v = make_qkv(1, 7, 7, 2, 1, 64, F16, device)
    if device == "cpu":
        fastattn.attention(q, k, v)  # the CPU kernels do not read it
        return
    with pytest.raises(ValueError, match="FASTATTN_CUDA_KERNELS=sm100"):
        fastattn.attention(q, k, v)


HEAD_DIMS = [7, 32, 33, 40, 64, 80, 96, 128, 160, 256, 512]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_head_dims_and_dtypes(device, head_dim, dtype):
    skip_if_unsupported(device, dtype, head_dim)
    q, k, v = make_qkv(2, 37, 70, 2, 1, head_dim, dtype, device)
    run_attention(q, k, v, causal=True)


# (Hq, Hk): GQA ratios 1, 2, 4, 8 and MQA (Hk = 1).
HEADS = [(4, 4), (4, 2), (8, 2), (16, 2), (8, 1), (3, 1)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("num_heads,num_kv_heads", HEADS,
                         ids=[f"hq{a}-hk{b}" for a, b in HEADS])
def test_gqa(device, num_heads, num_kv_heads, causal):
    dtype = BF16
    skip_if_unsupported(device, dtype, 64)
    q, k, v = make_qkv(2, 50, 97, num_heads, num_kv_heads, 64, dtype, device)
    run_attention(q, k, v, causal=causal)


# Left only, right only, both, degenerate (only the diagonal key), and windows so narrow
# that some queries of a Sq > Sk problem see no key at all.
WINDOWS = [(16, -1), (-1, 16), (8, 8), (0, 0), (3, 40)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("window", WINDOWS, ids=[f"w{a}_{b}" for a, b in WINDOWS])
@pytest.mark.parametrize("q_len,k_len", [(97, 256), (256, 97)], ids=["sq97-sk256",
                                                                    "sq256-sk97"])
def test_window(device, q_len, k_len, window, causal):
    dtype = F16
    skip_if_unsupported(device, dtype, 64)
    q, k, v = make_qkv(2, q_len, k_len, 2, 1, 64, dtype, device)
    run_attention(q, k, v, causal=causal, window_size=window)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("softcap", [1.0, 10.0, 50.0])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_softcap(device, softcap, causal, dtype):
    skip_if_unsupported(device, dtype, 64)
    q, k, v = make_qkv(2, 64, 97, 4, 2, 64, dtype, device)
    q = q * 3  # large scores, so the cap actually bends them
    run_attention(q, k, v, causal=causal, softcap=softcap)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_softmax_scale(device, dtype):
    skip_if_unsupported(device, dtype, 64)
    q, k, v = make_qkv(2, 33, 65, 4, 4, 64, dtype, device)
    run_attention(q, k, v, causal=True, softmax_scale=0.37)
    run_attention(q, k, v, softmax_scale=0.37, softcap=2.0, window_size=(10, 3))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (True, (5, -1)),
                                           (False, (4, 4))],
                         ids=["full", "causal", "causal-w5", "w4_4"])
@pytest.mark.parametrize("q_len", [1, 7, 97])
def test_kv_lens(device, q_len, causal, window, dtype):
    """Key padding: keys at or beyond kv_lens[b] hold NaN and must never be read. Rows with
    kv_lens 0 see no key (out 0, lse -inf)."""
    skip_if_unsupported(device, dtype, 64)
    k_len = 97
    kv_lens = torch.tensor([0, 1, 50, k_len, 0, 96], dtype=torch.int32)
    q, k, v = make_qkv(len(kv_lens), q_len, k_len, 4, 2, 64, dtype, "cpu")
    for b, n in enumerate(kv_lens.tolist()):
        k[b, n:] = float("nan")
        v[b, n:] = float("nan")
    q, k, v, kv_lens = q.to(device), k.to(device), v.to(device), kv_lens.to(device)
    ref_out, ref_lse = run_attention(q, k, v, causal=causal, window_size=window,
                                     kv_lens=kv_lens)
    assert torch.isneginf(ref_lse[0]).all() and torch.isneginf(ref_lse[4]).all()


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_return_lse(device, dtype, return_lse):
    """return_lse=False returns one tensor, equal to the out of return_lse=True."""
    skip_if_unsupported(device, dtype, 64)
    q, k, v = make_qkv(2, 40, 40, 4, 2, 64, dtype, device)
    kwargs = dict(causal=True, window_size=(20, -1))
    run_attention(q, k, v, return_lse=return_lse, **kwargs)
    out_only = fastattn.attention(q, k, v, **kwargs)
    out, lse = fastattn.attention(q, k, v, return_lse=True, **kwargs)
    assert isinstance(out_only, torch.Tensor)
    torch.testing.assert_close(out_only, out, rtol=0, atol=0)


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_self_attention(device, dtype, return_lse):
    """self_attention defaults to causal=True and forwards every other argument."""
    skip_if_unsupported(device, dtype, 64)
    q, k, v = make_qkv(2, 97, 97, 4, 2, 64, dtype, device)
    result = fastattn.self_attention(q, k, v, return_lse=return_lse)
    assert_matches_reference(result, ref_attention, q, k, v, causal=True,
                             return_lse=return_lse)
    result = fastattn.self_attention(q, k, v, causal=False, window_size=(7, 7), softcap=5.0,
                                     softmax_scale=0.2, return_lse=return_lse)
    assert_matches_reference(result, ref_attention, q, k, v, causal=False, window_size=(7, 7),
                             softcap=5.0, softmax_scale=0.2, return_lse=return_lse)


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_cross_attention(device, dtype, return_lse):
    """cross_attention is non-causal and takes key padding through kv_lens."""
    skip_if_unsupported(device, dtype, 64)
    q, k, v = make_qkv(3, 7, 97, 4, 1, 64, dtype, device)
    kv_lens = torch.tensor([97, 0, 31], dtype=torch.int32, device=device)
    result = fastattn.cross_attention(q, k, v, kv_lens=kv_lens, return_lse=return_lse)
    assert_matches_reference(result, ref_attention, q, k, v, causal=False, kv_lens=kv_lens,
                             return_lse=return_lse)
    result = fastattn.cross_attention(q, k, v, softmax_scale=0.3, softcap=3.0,
                                      window_size=(30, 30), return_lse=return_lse)
    assert_matches_reference(result, ref_attention, q, k, v, softmax_scale=0.3, softcap=3.0,
                             window_size=(30, 30), return_lse=return_lse)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_noncontiguous_inputs(device, dtype):
    """Strided inputs whose last dim is contiguous are valid: q, k, v sliced out of a packed
    qkv tensor, and tensors stored as [B, H, S, D] then transposed to [B, S, H, D]."""
    skip_if_unsupported(device, dtype, 64)
    batch, seqlen, heads, head_dim = 2, 61, 4, 64
    qkv = randn(batch, seqlen, 3, heads, head_dim, dtype=dtype, device=device)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    assert not q.is_contiguous() and q.stride(-1) == 1
    run_attention(q, k, v, causal=True)

    q_bhsd = randn(batch, heads, seqlen, head_dim, dtype=dtype, device=device)
    kv_bhsd = randn(2, batch, 2, 80, head_dim, dtype=dtype, device=device)
    q = q_bhsd.transpose(1, 2)
    k, v = kv_bhsd[0].transpose(1, 2), kv_bhsd[1].transpose(1, 2)
    run_attention(q, k, v, causal=True, window_size=(16, 0))


# ---------------------------------------------------------------------------------------
# merge_attention_states
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("split", [1, 40, 96])
def test_merge_equals_attention_over_union(device, dtype, split):
    """Attention over keys [0, split) merged with attention over [split, Sk) equals
    attention over all keys."""
    skip_if_unsupported(device, dtype, 64)
    q, k, v = make_qkv(2, 17, 97, 4, 2, 64, dtype, device)
    out_a, lse_a = fastattn.attention(q, k[:, :split], v[:, :split], return_lse=True)
    out_b, lse_b = fastattn.attention(q, k[:, split:], v[:, split:], return_lse=True)
    out, lse = fastattn.merge_attention_states(out_a, lse_a, out_b, lse_b)

    # Baseline for the tolerance: PyTorch doing the same split and merge at the input
    # precision.
    qc, kc, vc = q.cpu(), k.cpu(), v.cpu()
    lowp_a = ref_attention(qc, kc[:, :split], vc[:, :split], dtype=dtype)
    lowp_b = ref_attention(qc, kc[:, split:], vc[:, split:], dtype=dtype)
    lowp = ref_merge_attention_states(*lowp_a, *lowp_b, dtype=dtype)
    assert_close_to_ref(out, lse, ref_attention(qc, kc, vc), lowp, out_dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_merge_with_empty_part(device, dtype):
    """A part that saw no keys (out 0, lse -inf) leaves the other part unchanged; two empty
    parts give out 0 and lse -inf, without NaN."""
    skip_if_unsupported(device, dtype, 64)
    batch = 3
    q, k, v = make_qkv(batch, 9, 50, 4, 2, 64, dtype, device)
    no_keys = torch.zeros(batch, dtype=torch.int32, device=device)
    out_a, lse_a = fastattn.attention(q, k, v, causal=True, return_lse=True)
    out_e, lse_e = fastattn.attention(q, k, v, kv_lens=no_keys, return_lse=True)
    assert torch.isneginf(lse_e).all() and (out_e == 0).all()

    for first, second in [((out_a, lse_a), (out_e, lse_e)), ((out_e, lse_e), (out_a, lse_a))]:
        out, lse = fastattn.merge_attention_states(*first, *second)
        assert out.dtype == dtype and lse.dtype == torch.float32
        assert not torch.isnan(out).any() and not torch.isnan(lse).any()
        torch.testing.assert_close(out, out_a, rtol=0, atol=0)
        torch.testing.assert_close(lse, lse_a, rtol=0, atol=0)

    out, lse = fastattn.merge_attention_states(out_e, lse_e, out_e, lse_e)
    assert (out == 0).all() and torch.isneginf(lse).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_merge_random_states(device, dtype):
    """Random states (with some -inf entries on either side) against the reference merge."""
    skip_if_unsupported(device, dtype)
    shape = (37, 8)  # [T, H]
    out_a = randn(*shape, 128, dtype=dtype, device=device)
    out_b = randn(*shape, 128, dtype=dtype, device=device)
    lse_a = randn(*shape, dtype=torch.float32, device=device, scale=4.0)
    lse_b = randn(*shape, dtype=torch.float32, device=device, scale=4.0)
    lse_a[0:3] = float("-inf")
    lse_b[2:6] = float("-inf")
    out_a[0:3] = 0
    out_b[2:6] = 0
    out, lse = fastattn.merge_attention_states(out_a, lse_a, out_b, lse_b)
    args = [t.cpu() for t in (out_a, lse_a, out_b, lse_b)]
    assert_close_to_ref(out, lse, ref_merge_attention_states(*args),
                        ref_merge_attention_states(*args, dtype=dtype), out_dtype=dtype)
