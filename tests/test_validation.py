"""Argument validation of every public function.

Each case starts from a small valid call, changes one argument, and checks the exception type
and that the message starts with the argument's name (and, where the message has it, the
expected and received shapes). Shape, dtype, device and stride checks run in Python before the
op; checks on tensor *values* run inside the C++ op and still surface as ValueError. After every
rejected call a valid call must still work: a bad argument may never crash the process.

Self-contained on purpose: no fixtures or helpers from conftest.py.
"""

import math

import pytest
import torch

import fastattn

from conftest import i32, i64, randn

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
I32, I64 = torch.int32, torch.int64
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")


def r(*shape, dtype=F32, device="cpu"):
    return randn(*shape, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------
# Valid argument sets, one per call form. Shapes are distinct where they can be, so that a
# mix-up between two dimensions shows in the message.
# ---------------------------------------------------------------------------------------

def dense_args(dtype=F32, device="cpu", D=8):
    # q [B=2, Sq=3, Hq=4, D]; k, v [B=2, Sk=5, Hk=2, D]
    return dict(q=r(2, 3, 4, D, dtype=dtype, device=device),
                k=r(2, 5, 2, D, dtype=dtype, device=device),
                v=r(2, 5, 2, D, dtype=dtype, device=device))


def dense_kv_lens_args(dtype=F32, device="cpu", D=8):
    return dict(dense_args(dtype, device, D), kv_lens=i32([5, 2], device))


def varlen_args(dtype=F32, device="cpu", D=8):
    # q [Tq=5, Hq=4, D] as lengths (2, 3); k, v [Tk=7, Hk=2, D] as lengths (3, 4)
    return dict(q=r(5, 4, D, dtype=dtype, device=device),
                k=r(7, 2, D, dtype=dtype, device=device),
                v=r(7, 2, D, dtype=dtype, device=device),
                cu_seqlens_q=i32([0, 2, 5], device), cu_seqlens_k=i32([0, 3, 7], device),
                max_seqlen_q=3, max_seqlen_k=4)


def decode_args(dtype=F32, device="cpu", D=8):
    # q [B=2, Hq=4, D]; caches [P=4, page_size=3, Hk=2, D]; block_table [B=2, max_pages=2]
    return dict(q=r(2, 4, D, dtype=dtype, device=device),
                k_cache=r(4, 3, 2, D, dtype=dtype, device=device),
                v_cache=r(4, 3, 2, D, dtype=dtype, device=device),
                block_table=i32([[0, 1], [2, 3]], device), seq_lens=i32([5, 4], device))


def extend_args(dtype=F32, device="cpu", D=8):
    # decode_args with q [Tq=5, Hq=4, D]: query tokens (2, 3) of sequences of 5 and 4 keys
    a = decode_args(dtype, device, D)
    a.update(q=r(5, 4, D, dtype=dtype, device=device), cu_seqlens_q=i32([0, 2, 5], device),
             max_seqlen_q=3)
    return a


def append_args(dtype=F32, device="cpu", D=8):
    # caches [P=4, page_size=3, Hk=2, D]; k, v [T=3, Hk=2, D]; slot_mapping [T=3]
    return dict(k_cache=torch.zeros(4, 3, 2, D, dtype=dtype, device=device),
                v_cache=torch.zeros(4, 3, 2, D, dtype=dtype, device=device),
                k=r(3, 2, D, dtype=dtype, device=device), v=r(3, 2, D, dtype=dtype, device=device),
                slot_mapping=i64([0, 4, 11], device))


def merge_args(dtype=F32, device="cpu", D=8):
    # out_a, out_b [2, 3, 4, D]; lse_a, lse_b [2, 3, 4]
    return dict(out_a=r(2, 3, 4, D, dtype=dtype, device=device),
                lse_a=r(2, 3, 4, device=device),
                out_b=r(2, 3, 4, D, dtype=dtype, device=device),
                lse_b=r(2, 3, 4, device=device))


# name -> (function, valid arguments)
FORMS = {
    "attention": (fastattn.attention, dense_args),
    "attention-kv_lens": (fastattn.attention, dense_kv_lens_args),
    "self_attention": (fastattn.self_attention, dense_args),
    "cross_attention": (fastattn.cross_attention, dense_kv_lens_args),
    "attention_varlen": (fastattn.attention_varlen, varlen_args),
    "paged-decode": (fastattn.paged_attention, decode_args),
    "paged-extend": (fastattn.paged_attention, extend_args),
    "append_kv": (fastattn.append_kv, append_args),
    "merge": (fastattn.merge_attention_states, merge_args),
}


def call(form, **changes):
    """Call `form` with its valid arguments, some replaced. A change may be a function of the
    valid argument dict (to derive the bad value from the good one)."""
    fn, make = FORMS[form]
    torch.manual_seed(0)  # the same valid arguments on every call, so results compare
    args = make()
    for name, value in changes.items():
        args[name] = value(args) if callable(value) and not isinstance(value, torch.Tensor) \
            else value
    return fn(**args)


def assert_still_works(form):
    """A valid call after a rejected one: the rejection left the process and library sane."""
    fn, make = FORMS[form]
    args = make()
    result = fn(**args)
    if form == "append_kv":
        assert result is None
        assert torch.equal(args["k_cache"][0, 0], args["k"][0])
        return
    out = result[0] if isinstance(result, tuple) else result
    assert torch.isfinite(out).all()


def expect(exc, match, form, **changes):
    with pytest.raises(exc, match=match):
        call(form, **changes)
    assert_still_works(form)


def case(form, exc, match, id=None, **changes):
    return pytest.param(form, exc, match, changes, id=id or f"{form}-{'-'.join(changes)}")


def run_case(form, exc, match, changes):
    expect(exc, match, form, **changes)


# ---------------------------------------------------------------------------------------
# Rank and non-tensor arguments
# ---------------------------------------------------------------------------------------

TENSOR_ARGS = {
    "attention-kv_lens": ["q", "k", "v", "kv_lens"],
    "self_attention": ["q", "k", "v"],
    "cross_attention": ["q", "k", "v", "kv_lens"],
    "attention_varlen": ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k"],
    "paged-decode": ["q", "k_cache", "v_cache", "block_table", "seq_lens"],
    "paged-extend": ["q", "k_cache", "v_cache", "block_table", "seq_lens", "cu_seqlens_q"],
    "append_kv": ["k_cache", "v_cache", "k", "v", "slot_mapping"],
    "merge": ["lse_a", "out_b", "lse_b"],  # out_a: see test_rank_merge_out_a
}
TENSOR_ARG_CASES = [(form, name) for form, names in TENSOR_ARGS.items() for name in names]
TENSOR_ARG_IDS = [f"{form}-{name}" for form, name in TENSOR_ARG_CASES]


@pytest.mark.parametrize("form,name", TENSOR_ARG_CASES, ids=TENSOR_ARG_IDS)
@pytest.mark.parametrize("change", ["extra_dim", "missing_dim"])
def test_rank(form, name, change):
    if change == "extra_dim":
        bad = lambda a: a[name].unsqueeze(0)  # noqa: E731
    else:
        bad = lambda a: a[name][0]  # noqa: E731
    expect(ValueError, rf"^{name}: expected shape .*\(\d+ dims\), got \[", form, **{name: bad})


@pytest.mark.parametrize("form,name", TENSOR_ARG_CASES + [("merge", "out_a")],
                         ids=TENSOR_ARG_IDS + ["merge-out_a"])
def test_not_a_tensor(form, name):
    expect(TypeError, rf"^{name}: expected a torch.Tensor", form,
           **{name: lambda a: a[name].tolist()})


@pytest.mark.parametrize("shape", [(), (8,)])
def test_rank_merge_out_a(shape):
    got = "[" + ", ".join(map(str, shape)) + "]"
    expect(ValueError, rf"^out_a: expected shape \[\.\.\., H, D\] \(at least 2 dims\), got \{got[:-1]}\]$",
           "merge", out_a=r(shape))


def test_rank_error_message_has_received_shape():
    with pytest.raises(ValueError) as info:
        fastattn.attention(r(2, 3, 4), r(2, 5, 2, 8), r(2, 5, 2, 8))
    assert str(info.value) == "q: expected shape [B, Sq, Hq, D] (4 dims), got [2, 3, 4]"
    with pytest.raises(ValueError, match=r"^q: .*got \[5, 4, 8, 1\]$"):
        call("attention_varlen", q=r(5, 4, 8, 1))
    with pytest.raises(ValueError, match=r"^block_table: expected shape \[B, max_pages\] "
                                         r"\(2 dims\), got \[2\]$"):
        call("paged-decode", block_table=i32([0, 1]))


# ---------------------------------------------------------------------------------------
# Shapes against each other
# ---------------------------------------------------------------------------------------

SHAPE_CASES = [
    # dense
    case("attention", ValueError,
         r"^k: expected shape \[B, Sk, Hk, D\] = \[2, 5, 2, 8\], got \[3, 5, 2, 8\]$",
         id="attention-batch", k=r(3, 5, 2, 8), v=r(3, 5, 2, 8)),
    case("attention", ValueError, r"^k: expected shape \[B, Sk, Hk, D\] = \[2, 5, 2, 8\], "
         r"got \[2, 5, 2, 16\]$", id="attention-head_dim", k=r(2, 5, 2, 16), v=r(2, 5, 2, 16)),
    case("attention", ValueError, r"^v: expected shape \[B, Sk, Hk, D\] \(the shape of k\) = "
         r"\[2, 5, 2, 8\], got \[2, 6, 2, 8\]$", id="attention-v_seqlen", v=r(2, 6, 2, 8)),
    case("attention", ValueError, r"^v: .*= \[2, 5, 2, 8\], got \[2, 5, 1, 8\]$",
         id="attention-v_heads", v=r(2, 5, 1, 8)),
    case("attention", ValueError, r"^v: .*= \[2, 5, 2, 8\], got \[2, 5, 2, 4\]$",
         id="attention-v_head_dim", v=r(2, 5, 2, 4)),
    case("attention", ValueError, r"^k: number of KV heads Hk = 3 must divide .* Hq = 4",
         id="attention-gqa", k=r(2, 5, 3, 8), v=r(2, 5, 3, 8)),
    case("attention", ValueError, r"^k: number of KV heads Hk = 0",
         id="attention-zero_kv_heads", k=r(2, 5, 0, 8), v=r(2, 5, 0, 8)),
    case("attention-kv_lens", ValueError, r"^kv_lens: expected shape \[B\] = \[2\], got \[3\]$",
         id="attention-kv_lens_length", kv_lens=i32([1, 2, 3])),
    case("cross_attention", ValueError, r"^kv_lens: expected shape \[B\] = \[2\], got \[1\]$",
         id="cross_attention-kv_lens_length", kv_lens=i32([1])),
    case("self_attention", ValueError, r"^k: .*got \[1, 5, 2, 8\]$",
         id="self_attention-batch", k=r(1, 5, 2, 8), v=r(1, 5, 2, 8)),
    # varlen
    case("attention_varlen", ValueError, r"^k: expected shape \[Tk, Hk, D\] = \[7, 2, 8\], "
         r"got \[7, 2, 4\]$", id="varlen-head_dim", k=r(7, 2, 4), v=r(7, 2, 4)),
    case("attention_varlen", ValueError, r"^v: expected shape \[Tk, Hk, D\] \(the shape of k\) = "
         r"\[7, 2, 8\], got \[6, 2, 8\]$", id="varlen-v_tokens", v=r(6, 2, 8)),
    case("attention_varlen", ValueError, r"^k: number of KV heads Hk = 3",
         id="varlen-gqa", k=r(7, 3, 8), v=r(7, 3, 8)),
    case("attention_varlen", ValueError, r"^cu_seqlens_k: expected shape \[B \+ 1\] \(the shape "
         r"of cu_seqlens_q\) = \[3\], got \[4\]$", id="varlen-cu_seqlens_k_length",
         cu_seqlens_k=i32([0, 3, 5, 7])),
    case("attention_varlen", ValueError, r"^cu_seqlens_q: expected shape \[B \+ 1\] with at least "
         r"one entry, got \[0\]$", id="varlen-cu_seqlens_q_empty", cu_seqlens_q=i32([])),
    # paged
    case("paged-decode", ValueError, r"^seq_lens: expected shape \[B\] \(B = block_table.shape\[0\]"
         r"\) = \[3\], got \[2\]$", id="paged-block_table_batch",
         block_table=i32([[0, 1], [2, 3], [0, 0]])),
    case("paged-decode", ValueError, r"^seq_lens: .* = \[2\], got \[1\]$",
         id="paged-seq_lens_length", seq_lens=i32([5])),
    case("paged-decode", ValueError, r"^q: expected shape \[B, Hq, D\] = \[2, 4, 8\] for decode "
         r"\(B = block_table.shape\[0\]\), got \[3, 4, 8\]", id="paged-decode_q_batch",
         q=r(3, 4, 8)),
    case("paged-decode", ValueError, r"^v_cache: expected shape \[P, page_size, Hk, D\] \(the "
         r"shape of k_cache\) = \[4, 3, 2, 8\], got \[4, 2, 2, 8\]$",
         id="paged-v_cache_page_size", v_cache=r(4, 2, 2, 8)),
    case("paged-decode", ValueError, r"^v_cache: .* = \[4, 3, 2, 8\], got \[5, 3, 2, 8\]$",
         id="paged-v_cache_pages", v_cache=r(5, 3, 2, 8)),
    case("paged-decode", ValueError, r"^k_cache: expected shape \[P, page_size, Hk, D\] = "
         r"\[4, 3, 2, 8\], got \[4, 3, 2, 16\]$", id="paged-head_dim",
         k_cache=r(4, 3, 2, 16), v_cache=r(4, 3, 2, 16)),
    case("paged-decode", ValueError, r"^k_cache: number of KV heads Hk = 3",
         id="paged-gqa", k_cache=r(4, 3, 3, 8), v_cache=r(4, 3, 3, 8)),
    case("paged-decode", ValueError, r"^k_cache: page_size \(dim 1\) must be >= 1, "
         r"got shape \[4, 0, 2, 8\]$", id="paged-page_size_0",
         k_cache=r(4, 0, 2, 8), v_cache=r(4, 0, 2, 8)),
    case("paged-extend", ValueError, r"^cu_seqlens_q: expected shape \[B \+ 1\] \(B = "
         r"block_table.shape\[0\]\) = \[3\], got \[2\]$", id="paged-extend_cu_seqlens_q_length",
         cu_seqlens_q=i32([0, 5])),
    # append_kv
    case("append_kv", ValueError, r"^k: expected shape \[T, Hk, D\] \(Hk, D of k_cache\) = "
         r"\[3, 2, 8\], got \[3, 3, 8\]$", id="append-k_heads", k=r(3, 3, 8), v=r(3, 3, 8)),
    case("append_kv", ValueError, r"^k: .* = \[3, 2, 8\], got \[3, 2, 4\]$",
         id="append-k_head_dim", k=r(3, 2, 4), v=r(3, 2, 4)),
    case("append_kv", ValueError, r"^v: expected shape \[T, Hk, D\] \(the shape of k\) = "
         r"\[3, 2, 8\], got \[2, 2, 8\]$", id="append-v_tokens", v=r(2, 2, 8)),
    case("append_kv", ValueError, r"^v_cache: .* = \[4, 3, 2, 8\], got \[4, 3, 2, 4\]$",
         id="append-v_cache", v_cache=torch.zeros(4, 3, 2, 4)),
    case("append_kv", ValueError, r"^slot_mapping: expected shape \[T\] \(T = k.shape\[0\]\) = "
         r"\[3\], got \[2\]$", id="append-slot_mapping_length", slot_mapping=i64([0, 1])),
    # merge
    case("merge", ValueError, r"^out_b: expected shape \[\.\.\., H, D\] \(the shape of out_a\) = "
         r"\[2, 3, 4, 8\], got \[2, 3, 4, 4\]$", id="merge-out_b", out_b=r(2, 3, 4, 4)),
    case("merge", ValueError, r"^out_b: .*\(4 dims\), got \[6, 4, 8\]$",
         id="merge-out_b_rank", out_b=r(6, 4, 8)),
    case("merge", ValueError, r"^lse_a: expected shape out_a.shape\[:-1\] = \[2, 3, 4\], "
         r"got \[2, 3, 5\]$", id="merge-lse_a", lse_a=r(2, 3, 5)),
    case("merge", ValueError, r"^lse_b: .* = \[2, 3, 4\], got \[2, 4, 3\]$",
         id="merge-lse_b", lse_b=r(2, 4, 3)),
    case("merge", ValueError, r"^out_a: head dim D = 0 unsupported on CPU; expected 1\.\.512 \(shape \[2, 3, 4, 0\]\)$",
         id="merge-head_dim_0", out_a=r(2, 3, 4, 0), out_b=r(2, 3, 4, 0)),
]


@pytest.mark.parametrize("form,exc,match,changes", SHAPE_CASES)
def test_shape(form, exc, match, changes):
    run_case(form, exc, match, changes)


# ---------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------

DTYPE_CASES = [
    case("attention", TypeError, r"^q: expected dtype in \(float32, float16, bfloat16\) on cpu, "
         r"got float64$", id="attention-q_float64", **dense_args(F64)),
    case("attention", TypeError, r"^q: expected dtype in .* got int32$", id="attention-q_int32",
         q=torch.zeros(2, 3, 4, 8, dtype=I32), k=torch.zeros(2, 5, 2, 8, dtype=I32),
         v=torch.zeros(2, 5, 2, 8, dtype=I32)),
    case("attention", TypeError, r"^q: expected dtype in .* got float64$",
         id="attention-q_float64_only", q=r(2, 3, 4, 8, dtype=F64)),
    case("attention", TypeError, r"^k: expected dtype float32 \(the dtype of q\), got float16$",
         id="attention-k_dtype", k=r(2, 5, 2, 8, dtype=F16)),
    case("attention", TypeError, r"^v: expected dtype float32 \(the dtype of q\), got bfloat16$",
         id="attention-v_dtype", v=r(2, 5, 2, 8, dtype=BF16)),
    case("attention-kv_lens", TypeError, r"^kv_lens: expected dtype int32 with shape \[B\], "
         r"got int64$", id="attention-kv_lens_int64", kv_lens=i64([5, 2])),
    case("cross_attention", TypeError, r"^kv_lens: expected dtype int32 .* got float32$",
         id="cross_attention-kv_lens_float", kv_lens=torch.tensor([5.0, 2.0])),
    case("attention_varlen", TypeError, r"^q: expected dtype in .* got float64$",
         id="varlen-q_float64", **varlen_args(F64)),
    case("attention_varlen", TypeError, r"^k: expected dtype bfloat16 \(the dtype of q\), "
         r"got float32$", id="varlen-k_dtype", q=r(5, 4, 8, dtype=BF16), v=r(7, 2, 8, dtype=BF16)),
    case("attention_varlen", TypeError, r"^v: expected dtype float32 .* got float16$",
         id="varlen-v_dtype", v=r(7, 2, 8, dtype=F16)),
    case("attention_varlen", TypeError, r"^cu_seqlens_q: expected dtype int32 with shape "
         r"\[B \+ 1\], got int64$", id="varlen-cu_seqlens_q_int64", cu_seqlens_q=i64([0, 2, 5])),
    case("attention_varlen", TypeError, r"^cu_seqlens_k: expected dtype int32 .* got int64$",
         id="varlen-cu_seqlens_k_int64", cu_seqlens_k=i64([0, 3, 7])),
    case("paged-decode", TypeError, r"^q: expected dtype in .* got float64$",
         id="paged-q_float64", **decode_args(F64)),
    case("paged-decode", TypeError, r"^k_cache: expected dtype float32 \(the dtype of q\) or "
         r"an fp8 dtype \(float8_e4m3fn, float8_e5m2\), got float16$", id="paged-k_cache_dtype",
         k_cache=r(4, 3, 2, 8, dtype=F16)),
    case("paged-decode", TypeError, r"^v_cache: expected dtype float32 .* got bfloat16$",
         id="paged-v_cache_dtype", v_cache=r(4, 3, 2, 8, dtype=BF16)),
    case("paged-decode", TypeError, r"^block_table: expected dtype int32 with shape "
         r"\[B, max_pages\], got int64$", id="paged-block_table_int64",
         block_table=i64([[0, 1], [2, 3]])),
    case("paged-decode", TypeError, r"^seq_lens: expected dtype int32 .* got int64$",
         id="paged-seq_lens_int64", seq_lens=i64([5, 4])),
    case("paged-extend", TypeError, r"^cu_seqlens_q: expected dtype int32 .* got int64$",
         id="paged-cu_seqlens_q_int64", cu_seqlens_q=i64([0, 2, 5])),
    case("append_kv", TypeError, r"^k_cache: expected dtype in \(float32, float16, bfloat16\) "
         r"on cpu, got float64$", id="append-cache_float64", **append_args(F64)),
    case("append_kv", TypeError, r"^k: expected dtype float32 \(the dtype of k_cache\), "
         r"got float16$", id="append-k_dtype", k=r(3, 2, 8, dtype=F16)),
    case("append_kv", TypeError, r"^v: expected dtype float32 \(the dtype of k_cache\), "
         r"got bfloat16$", id="append-v_dtype", v=r(3, 2, 8, dtype=BF16)),
    case("append_kv", TypeError, r"^v_cache: expected dtype float32 .* got float16$",
         id="append-v_cache_dtype", v_cache=torch.zeros(4, 3, 2, 8, dtype=F16)),
    case("append_kv", TypeError, r"^slot_mapping: expected dtype int64 with shape \[T\] "
         r"\(T = k.shape\[0\]\), got int32$", id="append-slot_mapping_int32",
         slot_mapping=i32([0, 4, 11])),
    case("merge", TypeError, r"^out_a: expected dtype in .* got float64$",
         id="merge-out_float64", **merge_args(F64)),
    case("merge", TypeError, r"^out_b: expected dtype float32 \(the dtype of out_a\), "
         r"got float16$", id="merge-out_b_dtype", out_b=r(2, 3, 4, 8, dtype=F16)),
    case("merge", TypeError, r"^lse_a: expected dtype float32, got float16$",
         id="merge-lse_a_fp16", lse_a=r(2, 3, 4, dtype=F16)),
    case("merge", TypeError, r"^lse_b: expected dtype float32, got bfloat16$",
         id="merge-lse_b_bf16", lse_b=r(2, 3, 4, dtype=BF16)),
    case("merge", TypeError, r"^lse_a: expected dtype float32, got float16$",
         id="merge-lse_fp16_with_fp16_out", out_a=r(2, 3, 4, 8, dtype=F16),
         out_b=r(2, 3, 4, 8, dtype=F16), lse_a=r(2, 3, 4, dtype=F16)),
]


@pytest.mark.parametrize("form,exc,match,changes", DTYPE_CASES)
def test_dtype(form, exc, match, changes):
    run_case(form, exc, match, changes)


# ---------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------

FIRST_ARG = {"append_kv": "k_cache", "merge": "out_a"}
META_CASES = [(form, name) for form, names in TENSOR_ARGS.items() for name in names
              if name != FIRST_ARG.get(form, "q")]


@pytest.mark.parametrize("form,name", META_CASES, ids=[f"{f}-{n}" for f, n in META_CASES])
def test_meta_tensor_mixed_with_cpu(form, name):
    ref = FIRST_ARG.get(form, "q")
    expect(ValueError, rf"^{name}: expected device cpu \(the device of {ref}\), got meta$", form,
           **{name: lambda a: a[name].to("meta")})


@pytest.mark.parametrize("form", list(FORMS))
def test_all_meta(form):
    """Only cpu and cuda tensors are accepted; the first tensor argument is named."""
    name = FIRST_ARG.get(form, "q")
    _, make = FORMS[form]
    meta = {n: (a.to("meta") if isinstance(a, torch.Tensor) else a) for n, a in make().items()}
    expect(ValueError, rf"^{name}: expected a cpu or cuda tensor, got device meta$", form, **meta)


CUDA_FORMS = {
    "attention": (dense_args, "q"),
    "attention_varlen": (varlen_args, "q"),
    "paged-decode": (decode_args, "q"),
    "paged-extend": (extend_args, "q"),
    "append_kv": (append_args, "k_cache"),
    "merge": (merge_args, "out_a"),
}


@needs_cuda
@pytest.mark.parametrize("form", list(CUDA_FORMS))
def test_cuda_rejects_float32(form):
    make, name = CUDA_FORMS[form]
    expect(TypeError, rf"^{name}: expected dtype in \(float16, bfloat16\) on cuda, got float32$",
           form, **make(F32, "cuda"))


@needs_cuda
@pytest.mark.parametrize("D", [12, 0, 264])
@pytest.mark.parametrize("form", ["attention", "attention_varlen", "paged-decode", "paged-extend"])
def test_cuda_head_dim(form, D):
    make, _ = CUDA_FORMS[form]
    expect(ValueError, rf"^q: head dim D = {D} unsupported on CUDA; expected a multiple of 8", form,
           **make(F16, "cuda", D))


@needs_cuda
@pytest.mark.parametrize("form,name", [("attention", "k"), ("attention", "v"),
                                       ("attention-kv_lens", "kv_lens"),
                                       ("attention_varlen", "cu_seqlens_k"),
                                       ("paged-decode", "block_table"),
                                       ("append_kv", "slot_mapping"), ("merge", "lse_b")])
def test_cuda_mixed_with_cpu(form, name):
    ref = FIRST_ARG.get(form, "q")
    _, make = FORMS[form]
    args = make(F16, "cuda")
    args[name] = args[name].cpu()
    expect(ValueError, rf"^{name}: expected device cuda:0 \(the device of {ref}\), got cpu$",
           form, **args)


# ---------------------------------------------------------------------------------------
# Strides
# ---------------------------------------------------------------------------------------

def last_dim_strided(t):
    """The same values with a non-unit stride in the last dimension (a transposed buffer)."""
    buf = torch.empty(*t.shape[:-2], t.shape[-1], t.shape[-2], dtype=t.dtype, device=t.device)
    out = buf.transpose(-1, -2)
    out.copy_(t)
    assert out.stride(-1) != 1
    return out


def every_other(t):
    """The same values at every other element along the last dimension (stride 2)."""
    buf = torch.stack([t, torch.full_like(t, 10**6)], dim=-1).flatten(-2)
    out = buf[..., ::2]
    assert torch.equal(out, t) and out.stride(-1) == 2
    return out


STRIDE_CASES = [
    ("attention", "q"), ("attention", "k"), ("attention", "v"),
    ("attention_varlen", "q"), ("attention_varlen", "k"), ("attention_varlen", "v"),
    ("paged-decode", "q"), ("paged-decode", "k_cache"), ("paged-decode", "v_cache"),
    ("paged-extend", "q"),
    ("append_kv", "k_cache"), ("append_kv", "v_cache"), ("append_kv", "k"), ("append_kv", "v"),
    ("merge", "out_a"), ("merge", "out_b"),
]


@pytest.mark.parametrize("form,name", STRIDE_CASES, ids=[f"{f}-{n}" for f, n in STRIDE_CASES])
def test_last_dim_not_contiguous(form, name):
    expect(ValueError, rf"^{name}: the last dimension must be contiguous \(stride 1\), got strides",
           form, **{name: lambda a: last_dim_strided(a[name])})


INDEX_STRIDE_CASES = [
    ("attention-kv_lens", "kv_lens"), ("attention_varlen", "cu_seqlens_q"),
    ("attention_varlen", "cu_seqlens_k"), ("paged-decode", "block_table"),
    ("paged-decode", "seq_lens"), ("paged-extend", "cu_seqlens_q"),
    ("append_kv", "slot_mapping"),
]


@pytest.mark.parametrize("form,name", INDEX_STRIDE_CASES,
                         ids=[f"{f}-{n}" for f, n in INDEX_STRIDE_CASES])
def test_index_not_contiguous(form, name):
    expect(ValueError, rf"^{name}: the last dimension must be contiguous \(stride 1\), got strides",
           form, **{name: lambda a: every_other(a[name])})


def test_strided_block_table_rows_accepted():
    """Only the last dimension must be contiguous: a row-strided block table is read through
    its row stride."""
    a = decode_args()
    wide = torch.full((4, 2), 10**6, dtype=I32)
    wide[::2] = a["block_table"]
    strided = wide[::2]
    assert strided.stride() == (4, 1)
    out = fastattn.paged_attention(**dict(a, block_table=strided))
    assert torch.equal(out, fastattn.paged_attention(**a))


def test_strided_heads_accepted():
    """Non-unit strides outside the last dimension are read through the strides."""
    a = dense_args()
    q_bhsd = a["q"].transpose(1, 2).contiguous().transpose(1, 2)  # [B, Sq, Hq, D] over BHSD
    assert not q_bhsd.is_contiguous()
    out = fastattn.attention(q_bhsd, a["k"], a["v"])
    assert torch.equal(out, fastattn.attention(**a))


# ---------------------------------------------------------------------------------------
# Head-dim limits (CPU: 1..512)
# ---------------------------------------------------------------------------------------

HEAD_DIM_FORMS = {"attention": dense_args, "self_attention": dense_args,
                  "attention_varlen": varlen_args, "paged-decode": decode_args,
                  "paged-extend": extend_args}


@pytest.mark.parametrize("D", [513, 0])
@pytest.mark.parametrize("form", list(HEAD_DIM_FORMS))
def test_cpu_head_dim_rejected(form, D):
    expect(ValueError, rf"^q: head dim D = {D} unsupported on CPU; expected 1\.\.512", form,
           **HEAD_DIM_FORMS[form](D=D))


def _sdpa(q, k, v, causal=False):
    """Plain-torch dense attention in float64, [B, S, H, D] layout (tiny shapes only)."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        sq, sk = s.shape[-2:]
        i = torch.arange(sq)[:, None]
        j = torch.arange(sk)[None, :]
        s = s.masked_fill(j > i + sk - sq, float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("form", list(HEAD_DIM_FORMS))
def test_cpu_head_dim_512_accepted(form):
    args = HEAD_DIM_FORMS[form](D=512)
    fn, _ = FORMS[form]
    out = fn(**args)
    assert out.shape == args["q"].shape and torch.isfinite(out).all()
    if form in ("attention", "self_attention"):
        ref = _sdpa(args["q"], args["k"], args["v"], causal=form == "self_attention")
        torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


def test_head_dim_1_accepted():
    a = dense_args(D=1)
    out = fastattn.attention(**a)
    torch.testing.assert_close(out.double(), _sdpa(**a), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------

OPTION_CASES = [
    ("window_size", 3, TypeError, r"^window_size: expected a pair of ints \(left, right\), got 3$"),
    ("window_size", (1,), TypeError, r"^window_size: expected a pair of ints"),
    ("window_size", (1, 2, 3), TypeError, r"^window_size: expected a pair of ints"),
    ("window_size", (1.0, 2), TypeError, r"^window_size: expected a pair of ints"),
    ("window_size", (True, 0), TypeError, r"^window_size: expected a pair of ints"),
    ("window_size", None, TypeError, r"^window_size: expected a pair of ints"),
    ("window_size", (-2, 0), ValueError,
     r"^window_size: entries must be >= 0, or -1 for unbounded, got \(-2, 0\)$"),
    ("window_size", (0, -5), ValueError, r"^window_size: entries must be >= 0"),
    ("softcap", -1.0, ValueError, r"^softcap: expected a finite float32 value >= 0 .* got -1\.0$"),
    ("softcap", float("nan"), ValueError, r"^softcap: expected a finite float32 value >= 0 .* got nan$"),
    ("softcap", float("inf"), ValueError, r"^softcap: expected a finite float32 value >= 0"),
    ("softcap", "1.0", TypeError, r"^softcap: expected a float, got str$"),
    ("softcap", None, TypeError, r"^softcap: expected a float, got NoneType$"),
    ("softmax_scale", float("inf"), ValueError, r"^softmax_scale: expected a finite float32 value, got inf$"),
    ("softmax_scale", float("-inf"), ValueError, r"^softmax_scale: expected a finite float32 value"),
    ("softmax_scale", float("nan"), ValueError, r"^softmax_scale: expected a finite float32 value, got nan$"),
    ("softmax_scale", "0.1", TypeError, r"^softmax_scale: expected a float or None, got str$"),
    ("softmax_scale", True, TypeError, r"^softmax_scale: expected a float or None, got bool$"),
    ("softmax_scale", torch.tensor(0.1), TypeError, r"^softmax_scale: expected a float or None"),
    ("causal", 1, TypeError, r"^causal: expected a bool, got int$"),
    ("causal", None, TypeError, r"^causal: expected a bool, got NoneType$"),
    ("causal", "yes", TypeError, r"^causal: expected a bool, got str$"),
    ("return_lse", 1, TypeError, r"^return_lse: expected a bool, got int$"),
]
OPTION_FORMS = ["attention", "self_attention", "cross_attention", "attention_varlen",
                "paged-decode", "paged-extend"]
OPTION_PARAMS = [
    pytest.param(form, name, value, exc, match, id=f"{form}-{name}={value!r}")
    for form in OPTION_FORMS for name, value, exc, match in OPTION_CASES
    if not (form == "cross_attention" and name == "causal")
]


@pytest.mark.parametrize("form,name,value,exc,match", OPTION_PARAMS)
def test_option(form, name, value, exc, match):
    expect(exc, match, form, **{name: value})


def test_cross_attention_has_no_causal():
    with pytest.raises(TypeError):
        call("cross_attention", causal=True)


MAX_SEQLEN_CASES = [
    ("attention_varlen", "max_seqlen_q", -1, ValueError, r"^max_seqlen_q: expected an int in \[0, 2\*\*31 - 1\], got -1$"),
    ("attention_varlen", "max_seqlen_k", -1, ValueError, r"^max_seqlen_k: expected an int in \[0, 2\*\*31 - 1\], got -1$"),
    ("attention_varlen", "max_seqlen_q", 3.0, TypeError, r"^max_seqlen_q: expected an int, got float$"),
    ("attention_varlen", "max_seqlen_k", None, TypeError, r"^max_seqlen_k: expected an int, got NoneType$"),
    ("attention_varlen", "max_seqlen_q", True, TypeError, r"^max_seqlen_q: expected an int, got bool$"),
    ("paged-extend", "max_seqlen_q", -1, ValueError, r"^max_seqlen_q: expected an int in \[0, 2\*\*31 - 1\], got -1$"),
    ("paged-extend", "max_seqlen_q", 3.0, TypeError, r"^max_seqlen_q: expected an int, got float$"),
    ("paged-decode", "max_seqlen_q", 2, ValueError,
     r"^max_seqlen_q: decode \(no cu_seqlens_q\) has one query per sequence, got 2$"),
]


@pytest.mark.parametrize("form,name,value,exc,match", MAX_SEQLEN_CASES,
                         ids=[f"{c[0]}-{c[1]}={c[2]!r}" for c in MAX_SEQLEN_CASES])
def test_max_seqlen(form, name, value, exc, match):
    expect(exc, match, form, **{name: value})


def test_paged_decode_max_seqlen_q_one_accepted():
    a = decode_args()
    assert torch.equal(fastattn.paged_attention(**a, max_seqlen_q=1),
                       fastattn.paged_attention(**a))


@pytest.mark.parametrize("form", ["attention", "attention_varlen", "paged-decode"])
@pytest.mark.parametrize("name", ["softmax_scale", "softcap"])
def test_option_beyond_float32(form, name):
    """The kernels take softmax_scale and softcap as float32: a value that is finite in Python
    but overflows float32 (1e39 -> inf) must be rejected (or, for softcap, where a huge cap is
    the same as no cap, give that result) -- never a silently wrong output."""
    try:
        out = call(form, **{name: 1e39})
    except ValueError as e:
        assert str(e).startswith(f"{name}:"), str(e)
    else:
        assert name == "softcap", "softmax_scale=1e39 must be rejected (overflows float32)"
        torch.testing.assert_close(out, call(form))
    assert_still_works(form)


@pytest.mark.parametrize("value", [2**63, 2**64, -2**63 - 1])
def test_window_size_beyond_int64(value):
    """A window entry that does not fit int64 is an argument error naming window_size (or, for
    a huge positive entry, the same as unbounded), not the dispatcher's RuntimeError."""
    try:
        out = call("attention", causal=True, window_size=(value, -1))
    except (ValueError, TypeError) as e:
        assert str(e).startswith("window_size:"), str(e)
    else:
        assert value > 0
        assert torch.equal(out, call("attention", causal=True))
    assert_still_works("attention")


@pytest.mark.parametrize("form,name", [("attention_varlen", "max_seqlen_q"),
                                       ("attention_varlen", "max_seqlen_k"),
                                       ("paged-extend", "max_seqlen_q")])
def test_max_seqlen_beyond_int64(form, name):
    try:
        out = call(form, **{name: 2**64})
    except (ValueError, TypeError) as e:
        assert str(e).startswith(f"{name}:"), str(e)
    else:
        assert torch.equal(out, call(form))
    assert_still_works(form)


# ---------------------------------------------------------------------------------------
# Value checks (in the C++ ops, surfacing as ValueError)
# ---------------------------------------------------------------------------------------

VALUE_CASES = [
    # kv_lens
    case("attention-kv_lens", ValueError, r"^kv_lens: kv_lens\[0\] = -1 is outside \[0, Sk = 5\]",
         id="kv_lens-negative", kv_lens=i32([-1, 3])),
    case("attention-kv_lens", ValueError, r"^kv_lens: kv_lens\[1\] = 6 is outside \[0, Sk = 5\]",
         id="kv_lens-beyond_Sk", kv_lens=i32([5, 6])),
    case("cross_attention", ValueError, r"^kv_lens: kv_lens\[1\] = 2147483647 is outside",
         id="cross-kv_lens-int_max", kv_lens=i32([5, 2**31 - 1])),
    # varlen cu_seqlens
    case("attention_varlen", ValueError, r"^cu_seqlens_q: must start at 0, got cu_seqlens_q\[0\] = 1",
         id="varlen-cu_q_start", cu_seqlens_q=i32([1, 2, 5])),
    case("attention_varlen", ValueError, r"^cu_seqlens_k: must start at 0, got cu_seqlens_k\[0\] = -1",
         id="varlen-cu_k_start", cu_seqlens_k=i32([-1, 3, 7])),
    case("attention_varlen", ValueError, r"^cu_seqlens_q: must be non-decreasing, got "
         r"cu_seqlens_q\[1\] = 6 > cu_seqlens_q\[2\] = 5", id="varlen-cu_q_decreasing",
         cu_seqlens_q=i32([0, 6, 5]), max_seqlen_q=6),
    case("attention_varlen", ValueError, r"^cu_seqlens_k: must be non-decreasing",
         id="varlen-cu_k_decreasing", cu_seqlens_k=i32([0, 8, 7]), max_seqlen_k=8),
    case("attention_varlen", ValueError, r"^cu_seqlens_q: last entry must equal q.shape\[0\] = 5, "
         r"got cu_seqlens_q\[2\] = 4", id="varlen-cu_q_last_short", cu_seqlens_q=i32([0, 2, 4])),
    case("attention_varlen", ValueError, r"^cu_seqlens_q: last entry must equal q.shape\[0\] = 5",
         id="varlen-cu_q_last_long", cu_seqlens_q=i32([0, 2, 6]), max_seqlen_q=4),
    case("attention_varlen", ValueError, r"^cu_seqlens_k: last entry must equal k.shape\[0\] = 7, "
         r"got cu_seqlens_k\[2\] = 6", id="varlen-cu_k_last", cu_seqlens_k=i32([0, 3, 6])),
    case("attention_varlen", ValueError, r"^cu_seqlens_k: last entry must equal k.shape\[0\] = 7",
         id="varlen-cu_k_last_long", cu_seqlens_k=i32([0, 3, 8]), max_seqlen_k=5),
    case("attention_varlen", ValueError, r"^max_seqlen_q: 2 is smaller than the longest sequence in "
         r"cu_seqlens_q \(3\)", id="varlen-max_seqlen_q_small", max_seqlen_q=2),
    case("attention_varlen", ValueError, r"^max_seqlen_k: 3 is smaller than the longest sequence in "
         r"cu_seqlens_k \(4\)", id="varlen-max_seqlen_k_small", max_seqlen_k=3),
    case("attention_varlen", ValueError, r"^max_seqlen_q: 0, but q has 5 tokens, so some sequence "
         r"is longer", id="varlen-max_seqlen_q_zero", max_seqlen_q=0),
    # paged
    case("paged-decode", ValueError, r"^seq_lens: seq_lens\[0\] = -1 is outside \[0, max_pages \* "
         r"page_size = 6\]", id="paged-decode-seq_lens_negative", seq_lens=i32([-1, 4])),
    case("paged-extend", ValueError, r"^seq_lens: seq_lens\[1\] = -3 is outside",
         id="paged-extend-seq_lens_negative", seq_lens=i32([5, -3])),
    case("paged-decode", ValueError, r"^seq_lens: seq_lens\[1\] = 7 is outside \[0, max_pages \* "
         r"page_size = 6\] \(block_table \[B, max_pages\] = \[2, 2\], page_size = 3\)",
         id="paged-decode-seq_lens_beyond_table", seq_lens=i32([5, 7])),
    case("paged-extend", ValueError, r"^seq_lens: seq_lens\[0\] = 7 is outside",
         id="paged-extend-seq_lens_beyond_table", seq_lens=i32([7, 4])),
    case("paged-decode", ValueError, r"^block_table: block_table\[0, 1\] = -1 is outside "
         r"\[0, num_pages = 4\) and is used by seq_lens\[0\] = 5",
         id="paged-decode-block_negative", block_table=i32([[0, -1], [2, 3]])),
    case("paged-decode", ValueError, r"^block_table: block_table\[1, 0\] = 4 is outside "
         r"\[0, num_pages = 4\)", id="paged-decode-block_too_large",
         block_table=i32([[0, 1], [4, 3]])),
    case("paged-extend", ValueError, r"^block_table: block_table\[1, 1\] = 1000000 is outside",
         id="paged-extend-block_too_large", block_table=i32([[0, 1], [2, 10**6]])),
    case("paged-extend", ValueError, r"^seq_lens: seq_lens\[1\] = 2 is smaller than its 3 query "
         r"token\(s\)", id="paged-extend-more_queries_than_keys", seq_lens=i32([5, 2])),
    case("paged-extend", ValueError, r"^cu_seqlens_q: must start at 0",
         id="paged-extend-cu_q_start", cu_seqlens_q=i32([2, 2, 5])),
    case("paged-extend", ValueError, r"^cu_seqlens_q: must be non-decreasing",
         id="paged-extend-cu_q_decreasing", cu_seqlens_q=i32([0, 6, 5]), max_seqlen_q=6),
    case("paged-extend", ValueError, r"^cu_seqlens_q: last entry must equal q.shape\[0\] = 5",
         id="paged-extend-cu_q_last", cu_seqlens_q=i32([0, 2, 4])),
    case("paged-extend", ValueError, r"^max_seqlen_q: 2 is smaller than the longest sequence in "
         r"cu_seqlens_q \(3\)", id="paged-extend-max_seqlen_q_small", max_seqlen_q=2),
    # append_kv
    case("append_kv", ValueError, r"^slot_mapping: slot_mapping\[1\] = 12 is beyond the cache "
         r"\(num_pages \* page_size = 12\)", id="append-slot_beyond",
         slot_mapping=i64([0, 12, 3])),
    case("append_kv", ValueError, r"^slot_mapping: slot_mapping\[2\] = 4611686018427387904 is "
         r"beyond", id="append-slot_huge", slot_mapping=i64([0, 1, 2**62])),
]


@pytest.mark.parametrize("form,exc,match,changes", VALUE_CASES)
def test_value(form, exc, match, changes):
    run_case(form, exc, match, changes)


def test_append_kv_rejected_slot_leaves_cache_untouched():
    """Slots are checked before anything is written."""
    a = append_args()
    a["slot_mapping"] = i64([0, 5, 12])
    with pytest.raises(ValueError, match=r"^slot_mapping"):
        fastattn.append_kv(**a)
    assert (a["k_cache"] == 0).all() and (a["v_cache"] == 0).all()


def test_append_kv_negative_slots_skipped():
    a = append_args()
    a["slot_mapping"] = i64([-1, 7, -2**62])
    fastattn.append_kv(**a)
    k_flat = a["k_cache"].view(-1, 2, 8)
    v_flat = a["v_cache"].view(-1, 2, 8)
    assert torch.equal(k_flat[7], a["k"][1]) and torch.equal(v_flat[7], a["v"][1])
    k_flat[7] = 0
    v_flat[7] = 0
    assert (a["k_cache"] == 0).all() and (a["v_cache"] == 0).all()


def test_append_kv_last_slot_accepted():
    a = append_args()
    a["slot_mapping"] = i64([11, 0, 1])
    fastattn.append_kv(**a)
    assert torch.equal(a["k_cache"][3, 2], a["k"][0])
    assert torch.equal(a["v_cache"][3, 2], a["v"][0])


@pytest.mark.parametrize("mode", ["decode", "extend"])
@pytest.mark.parametrize("fill", [10**6, -1, -(2**31)])
def test_unused_block_table_columns_not_read(mode, fill):
    """Columns beyond a sequence's last used page are neither checked nor read."""
    # page_size 3; seq 0 uses 2 pages (5 keys), seq 1 one page (3 keys); 3 columns.
    args = decode_args() if mode == "decode" else extend_args()
    args["seq_lens"] = i32([5, 3])
    good = i32([[0, 1, 0], [2, 0, 0]])
    bad = good.clone()
    bad[0, 2] = fill
    bad[1, 1:] = fill
    ref = fastattn.paged_attention(**dict(args, block_table=good), return_lse=True)
    out = fastattn.paged_attention(**dict(args, block_table=bad), return_lse=True)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def test_unused_block_table_columns_zero_length_sequence():
    """A sequence with no keys (and no query tokens) uses no page at all."""
    args = extend_args()
    args.update(q=r(2, 4, 8), cu_seqlens_q=i32([0, 2, 2]), max_seqlen_q=2,
                seq_lens=i32([5, 0]), block_table=i32([[0, 1], [10**6, -7]]))
    out, lse = fastattn.paged_attention(**args, return_lse=True)
    assert out.shape == (2, 4, 8) and torch.isfinite(out).all() and torch.isfinite(lse).all()


def test_paged_decode_empty_sequence():
    """Decode with seq_lens 0 (e.g. a padded batch slot): the query sees no key, so its output
    is 0 and its lse -inf; the other sequences are unaffected."""
    args = decode_args()
    ref_out, ref_lse = fastattn.paged_attention(**args, return_lse=True)
    args["seq_lens"] = i32([0, 4])
    args["block_table"] = i32([[10**6, -1], [2, 3]])  # an empty sequence reads no page
    out, lse = fastattn.paged_attention(**args, return_lse=True)
    assert (out[0] == 0).all() and torch.isneginf(lse[0]).all()
    assert torch.equal(out[1], ref_out[1]) and torch.equal(lse[1], ref_lse[1])


def test_paged_extend_padding_sequence():
    """In extend mode too, seq_lens 0 marks padding: its query tokens see no key (output 0,
    lse -inf), its block-table row is not read, and the other sequence is unaffected."""
    args = extend_args()
    ref_out, ref_lse = fastattn.paged_attention(**args, return_lse=True)
    args["seq_lens"] = i32([5, 0])
    args["block_table"] = i32([[0, 1], [10**6, -1]])
    out, lse = fastattn.paged_attention(**args, return_lse=True)
    assert (out[2:] == 0).all() and torch.isneginf(lse[2:]).all()
    assert torch.equal(out[:2], ref_out[:2]) and torch.equal(lse[:2], ref_lse[:2])


def test_paged_extend_empty_query_rows():
    """A sequence with keys but no new query tokens contributes no rows."""
    args = extend_args()
    args.update(q=r(3, 4, 8), cu_seqlens_q=i32([0, 0, 3]))
    out, lse = fastattn.paged_attention(**args, return_lse=True)
    assert out.shape == (3, 4, 8) and torch.isfinite(out).all() and torch.isfinite(lse).all()


def test_kv_lens_zero_gives_empty_rows():
    args = dense_kv_lens_args()
    args["kv_lens"] = i32([0, 5])
    out, lse = fastattn.attention(**args, return_lse=True)
    assert (out[0] == 0).all() and torch.isneginf(lse[0]).all()
    assert torch.isfinite(lse[1]).all()


def test_varlen_empty_sequences():
    args = varlen_args()
    args.update(cu_seqlens_q=i32([0, 0, 2, 5]), cu_seqlens_k=i32([0, 3, 3, 7]))
    out, lse = fastattn.attention_varlen(**args, return_lse=True)
    # sequence 1 has 2 queries and no keys; sequence 2 has 3 queries and 4 keys.
    assert (out[:2] == 0).all() and torch.isneginf(lse[:2]).all()
    assert torch.isfinite(lse[2:]).all()


# ---------------------------------------------------------------------------------------
# No crash: a burst of rejected calls, then valid calls of every form
# ---------------------------------------------------------------------------------------

def test_rejections_do_not_poison_later_calls():
    bad_calls = [c.values for c in SHAPE_CASES + DTYPE_CASES + VALUE_CASES]
    for form, exc, match, changes in bad_calls:
        with pytest.raises(exc):
            call(form, **changes)
    for form in FORMS:
        assert_still_works(form)


# ---------------------------------------------------------------------------------------
# Degenerate shapes, and direct op calls that skip the Python checks
# ---------------------------------------------------------------------------------------

def test_zero_query_heads_rejected():
    with pytest.raises(ValueError, match=r"^q: expected at least one query head, got Hq = 0$"):
        fastattn.attention(r(1, 4, 0, 8), r(1, 4, 1, 8), r(1, 4, 1, 8))


def test_varlen_no_sequences_but_tokens_rejected():
    with pytest.raises(ValueError, match=r"^cu_seqlens_q: shape \[1\] means B = 0 sequences"):
        fastattn.attention_varlen(r(3, 2, 8), r(3, 2, 8), r(3, 2, 8), i32([0]), i32([0]), 3, 3)


@pytest.mark.parametrize("name", ["max_seqlen_q", "max_seqlen_k"])
def test_varlen_max_seqlen_zero_with_tokens_rejected(name):
    args = dict(max_seqlen_q=3, max_seqlen_k=3)
    args[name] = 0
    with pytest.raises(ValueError, match=rf"^{name}: 0, but [qk] has 3 tokens"):
        fastattn.attention_varlen(r(3, 2, 8), r(3, 2, 8), r(3, 2, 8), i32([0, 3]), i32([0, 3]),
                                  **args)


def test_paged_keys_per_sequence_beyond_int32_rejected():
    cache = r(1, 1, 1, 8).expand(1, 2**31, 1, 8)
    with pytest.raises(ValueError, match=r"^block_table: max_pages \* page_size"):
        fastattn.paged_attention(r(1, 2, 8), cache, cache, i32([[0]]), i32([5]))


def test_direct_op_short_index_tensors_rejected():
    """torch.ops.fastattn.* can be called without the Python layer: index tensors shorter
    than the batch must still be rejected, never read out of bounds."""
    q = r(4, 3, 2, 8)
    with pytest.raises(ValueError, match=r"^kv_lens: expected a contiguous tensor of shape \[B\]"):
        torch.ops.fastattn.attention(q, q, q, i32([1]), 0.3, False, -1, -1, 0.0)
    with pytest.raises(ValueError, match=r"^cu_seqlens_q: expected shape \[B \+ 1\] with at least"):
        torch.ops.fastattn.attention_varlen(r(3, 2, 8), r(3, 2, 8), r(3, 2, 8), i32([]),
                                            i32([]), 3, 3, 0.3, False, -1, -1, 0.0)
    with pytest.raises(ValueError, match=r"^seq_lens: expected a contiguous tensor of shape \[B\]"):
        torch.ops.fastattn.paged_attention(r(2, 2, 8), r(4, 4, 1, 8), r(4, 4, 1, 8),
                                           i32([[0], [1]]), i32([1]), None, 1, 0.3, True,
                                           -1, -1, 0.0)
    with pytest.raises(ValueError, match=r"^slot_mapping: expected a contiguous tensor of shape \[T\]"):
        torch.ops.fastattn.append_kv(r(4, 4, 1, 8), r(4, 4, 1, 8), r(3, 1, 8), r(3, 1, 8),
                                     torch.tensor([0], dtype=torch.int64))
    assert_still_works("attention")


DIRECT_BAD_OPERANDS = {
    # The reviewer's crashes: short v (segfault), a v_cache smaller than k_cache (read or
    # write past it), and inputs the kernels would silently misread.
    "attention-short-v": (lambda: torch.ops.fastattn.attention(
        r(1, 4, 2, 8), r(1, 200, 2, 8), r(1, 1, 2, 8), None, 0.3, False, -1, -1, 0.0),
        ValueError, r"^v: expected the shape of k"),
    "attention-dtype": (lambda: torch.ops.fastattn.attention(
        r(1, 4, 2, 8), r(1, 4, 2, 8).half(), r(1, 4, 2, 8).half(), None, 0.3, False, -1, -1, 0.0),
        TypeError, r"^k: expected dtype Float \(that of q\)"),
    "attention-head-dim": (lambda: torch.ops.fastattn.attention(
        r(1, 4, 2, 64), r(1, 4, 2, 8), r(1, 4, 2, 8), None, 0.3, False, -1, -1, 0.0),
        ValueError, r"^k: head dim D = 8, expected D = 64"),
    "attention-groups": (lambda: torch.ops.fastattn.attention(
        r(1, 4, 3, 8), r(1, 4, 2, 8), r(1, 4, 2, 8), None, 0.3, False, -1, -1, 0.0),
        ValueError, r"^k: Hk = 2 KV heads; expected Hk >= 1 dividing Hq = 3"),
    "attention-batch": (lambda: torch.ops.fastattn.attention(
        r(2, 4, 2, 8), r(1, 4, 2, 8), r(1, 4, 2, 8), None, 0.3, False, -1, -1, 0.0),
        ValueError, r"^k: expected batch B = 2"),
    "attention-3d-q": (lambda: torch.ops.fastattn.attention(
        r(4, 2, 8), r(1, 4, 2, 8), r(1, 4, 2, 8), None, 0.3, False, -1, -1, 0.0),
        ValueError, r"^q: expected shape \[B, Sq, Hq, D\]"),
    "attention-strided-last-dim": (lambda: torch.ops.fastattn.attention(
        r(1, 4, 2, 8), r(1, 4, 2, 16)[..., ::2], r(1, 4, 2, 8), None, 0.3, False, -1, -1, 0.0),
        ValueError, r"^k: the last dimension must be contiguous"),
    "varlen-max-seqlen-int32": (lambda: torch.ops.fastattn.attention_varlen(
        r(3, 2, 8), r(3, 2, 8), r(3, 2, 8), i32([0, 3]), i32([0, 3]), 2**31, 3, 0.3, False,
        -1, -1, 0.0),
        ValueError, r"^max_seqlen_q: 2147483648 is beyond int32"),
    "paged-small-v-cache": (lambda: torch.ops.fastattn.paged_attention(
        r(1, 2, 8), r(4, 4, 1, 8), r(1, 4, 1, 8), i32([[3]]), i32([2]), None, 1, 0.3, True,
        -1, -1, 0.0),
        ValueError, r"^v_cache: expected the shape of k_cache"),
    "append-small-v-cache": (lambda: torch.ops.fastattn.append_kv(
        r(1000, 4, 1, 8), r(1, 4, 1, 8), r(1, 1, 8), r(1, 1, 8),
        torch.tensor([3999], dtype=torch.int64)),
        ValueError, r"^v_cache: expected the shape of k_cache"),
    "append-heads": (lambda: torch.ops.fastattn.append_kv(
        r(4, 4, 2, 8), r(4, 4, 2, 8), r(1, 1, 8), r(1, 1, 8), torch.tensor([0], dtype=torch.int64)),
        ValueError, r"^k: expected shape \[T, Hk, D\] = \[T, 2, 8\]"),
    "merge-short-lse": (lambda: torch.ops.fastattn.merge_attention_states(
        r(5, 2, 8), r(1, 2), r(5, 2, 8), r(5, 2)),
        ValueError, r"^lse_a: expected shape out_a.shape\[:-1\]"),
    "merge-short-out-b": (lambda: torch.ops.fastattn.merge_attention_states(
        r(5, 2, 8), r(5, 2), r(1, 2, 8), r(5, 2)),
        ValueError, r"^out_b: expected the shape of out_a"),
    "merge-lse-dtype": (lambda: torch.ops.fastattn.merge_attention_states(
        r(5, 2, 8), r(5, 2).double(), r(5, 2, 8), r(5, 2)),
        TypeError, r"^lse_a: expected dtype float32"),
}


@pytest.mark.parametrize("case", list(DIRECT_BAD_OPERANDS))
def test_direct_op_bad_operands_rejected(case):
    """Direct torch.ops calls check operands in C++ too: shapes, dtypes, head counts and
    strides that the kernels would read out of bounds or misread."""
    call, error, pattern = DIRECT_BAD_OPERANDS[case]
    with pytest.raises(error, match=pattern):
        call()
    assert_still_works("attention")
