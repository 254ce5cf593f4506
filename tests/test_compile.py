"""torch.compile support: torch.library.opcheck on every op, and torch.compile(fullgraph=True)
over every public function, compared with eager bit for bit.

Most compiled tests use the "aot_eager" backend: it runs Dynamo, the fake kernels and AOT
functionalization (where the custom-op bugs live) in a fraction of inductor's compile time. A
few representative cases also run under "inductor" to cover its handling of the extern ops
and of append_kv's in-place mutation.

Self-contained on purpose: no fixtures or helpers from conftest.py.
"""

import pytest
import torch

import fastattn

from conftest import i32, i64, randn

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
ops = torch.ops.fastattn


def r(*shape, dtype=F32):
    return randn(*shape, dtype=dtype)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch.manual_seed(0)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------
# Argument sets
# ---------------------------------------------------------------------------------------

def paged_cache(dtype, P=5, page_size=3, Hk=2, D=8):
    if dtype in (E4M3, E5M2):  # fp8 codes of random values
        return tuple(x.to(dtype) for x in paged_cache(F32, P, page_size, Hk, D))
    return r(P, page_size, Hk, D, dtype=dtype), r(P, page_size, Hk, D, dtype=dtype)


def scale(*values):
    return torch.tensor(values[0] if len(values) == 1 else list(values), dtype=F32)


# op, positional arguments (the op schemas: every option explicit)
OPCHECK_CASES = {
    "attention-fp32-causal": lambda: (ops.attention.default, (
        r(2, 3, 4, 8), r(2, 5, 2, 8), r(2, 5, 2, 8), None, 0.35, True, -1, -1, 0.0)),
    "attention-bf16-kv_lens-window-softcap": lambda: (ops.attention.default, (
        r(2, 4, 4, 16, dtype=BF16), r(2, 6, 1, 16, dtype=BF16), r(2, 6, 1, 16, dtype=BF16),
        i32([6, 0]), 0.25, False, 2, 1, 5.0)),
    "attention-fp16-strided-q": lambda: (ops.attention.default, (
        r(2, 4, 3, 8, dtype=F16).transpose(1, 2), r(2, 5, 1, 8, dtype=F16),
        r(2, 5, 1, 8, dtype=F16), i32([5, 3]), 0.35, True, -1, -1, 0.0)),
    "varlen-fp32-causal": lambda: (ops.attention_varlen.default, (
        r(5, 4, 8), r(7, 2, 8), r(7, 2, 8), i32([0, 2, 5]), i32([0, 3, 7]), 3, 4, 0.35, True,
        -1, -1, 0.0)),
    "varlen-bf16-window-empty-seq": lambda: (ops.attention_varlen.default, (
        r(6, 2, 16, dtype=BF16), r(5, 2, 16, dtype=BF16), r(5, 2, 16, dtype=BF16),
        i32([0, 2, 2, 6]), i32([0, 0, 3, 5]), 4, 3, 0.25, False, 1, 0, 0.0)),
    "paged-decode-fp32": lambda: (ops.paged_attention.default, (
        r(2, 4, 8), *paged_cache(F32), i32([[0, 3], [4, 1]]), i32([5, 2]), None, 1, 0.35, True,
        -1, -1, 0.0)),
    "paged-decode-bf16-padding": lambda: (ops.paged_attention.default, (
        r(3, 4, 8, dtype=BF16), *paged_cache(BF16), i32([[0, 3], [4, 1], [2, 2]]),
        i32([6, 0, 4]), None, 1, 0.35, True, 2, -1, 3.0)),
    "paged-extend-fp32": lambda: (ops.paged_attention.default, (
        r(5, 4, 8), *paged_cache(F32), i32([[0, 3], [4, 1]]), i32([5, 4]), i32([0, 2, 5]), 3,
        0.35, True, -1, -1, 0.0)),
    "paged-extend-bf16-noncausal": lambda: (ops.paged_attention.default, (
        r(4, 2, 8, dtype=BF16), *paged_cache(BF16), i32([[2, 0], [1, 4]]), i32([6, 1]),
        i32([0, 3, 4]), 3, 0.5, False, -1, -1, 0.0)),
    "append_kv-fp32": lambda: (ops.append_kv.default, (
        *paged_cache(F32), r(3, 2, 8), r(3, 2, 8), i64([0, 7, 14]))),
    "append_kv-bf16-skip": lambda: (ops.append_kv.default, (
        *paged_cache(BF16), r(4, 2, 8, dtype=BF16), r(4, 2, 8, dtype=BF16),
        i64([-1, 2, 9, -1]))),
    "paged-decode-fp8-tensor-scales": lambda: (ops.paged_attention.default, (
        r(2, 4, 8, dtype=BF16), *paged_cache(E4M3), i32([[0, 3], [4, 1]]), i32([5, 2]), None,
        1, 0.35, True, -1, -1, 0.0, scale(0.5, 2.0), scale(1.5), 1.0, 1.0)),
    "paged-extend-fp8-float-scales": lambda: (ops.paged_attention.default, (
        r(5, 4, 8), *paged_cache(E5M2), i32([[0, 3], [4, 1]]), i32([5, 4]), i32([0, 2, 5]), 3,
        0.35, True, -1, -1, 0.0, None, None, 0.25, 3.0)),
    "append_kv-fp8-per-head": lambda: (ops.append_kv.default, (
        *paged_cache(E4M3), r(3, 2, 8, dtype=F16), r(3, 2, 8, dtype=F16), i64([0, -1, 14]),
        scale(0.5, 2.0), None, 1.0, 0.125)),
    "merge-fp32": lambda: (ops.merge_attention_states.default, (
        r(2, 3, 4, 8), r(2, 3, 4), r(2, 3, 4, 8), r(2, 3, 4))),
    "merge-bf16-neginf": lambda: (ops.merge_attention_states.default, (
        r(5, 2, 16, dtype=BF16), torch.tensor([[0.5, float("-inf")]] * 5),
        r(5, 2, 16, dtype=BF16), torch.tensor([[float("-inf"), float("-inf")]] * 5))),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck(case):
    op, args = OPCHECK_CASES[case]()
    if "fp8" in case:
        # opcheck's schema test compares tensors with ops torch lacks for float8 on the CPU
        # ("mul_cpu_reduced_float" not implemented); the fake-tensor and AOT tests run.
        torch.library.opcheck(op, args, test_utils=("test_faketensor",
                                                    "test_aot_dispatch_dynamic"))
    else:
        torch.library.opcheck(op, args)


def test_every_op_is_opchecked():
    checked = {OPCHECK_CASES[c]()[0].name() for c in OPCHECK_CASES}
    assert checked == {f"fastattn::{name}" for name in
                       ("attention", "attention_varlen", "paged_attention", "append_kv",
                        "merge_attention_states")}


# ---------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) of the public functions vs eager
# ---------------------------------------------------------------------------------------

def append_then_clone(k_cache, v_cache, k, v, slot_mapping, **scales):
    """append_kv on copies of the caches (so eager and compiled start from the same state);
    returns the updated copies."""
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    out = fastattn.append_kv(k_cache, v_cache, k, v, slot_mapping, **scales)
    assert out is None
    return k_cache, v_cache


def decode_step(q, k_cache, v_cache, k, v, slot_mapping, block_table, seq_lens):
    """One decode step as a server runs it: append the new token's K/V in place, then attend
    over the cache. The read must see the write."""
    fastattn.append_kv(k_cache, v_cache, k, v, slot_mapping)
    return fastattn.paged_attention(q, k_cache, v_cache, block_table, seq_lens, return_lse=True)


def _decode_step_args(dtype=F32):
    k_cache, v_cache = paged_cache(dtype)
    # sequence 0: pages [0, 3], 4 tokens before this step; sequence 1: pages [4, 1], 1 token.
    # The new tokens go to position 4 (page 3, offset 1) and position 1 (page 4, offset 1).
    return (r(2, 4, 8, dtype=dtype), k_cache, v_cache, r(2, 2, 8, dtype=dtype),
            r(2, 2, 8, dtype=dtype), i64([3 * 3 + 1, 4 * 3 + 1]), i32([[0, 3], [4, 1]]),
            i32([5, 2]))


# name -> (function, positional args, keyword args)
COMPILE_CASES = {
    "attention": lambda: (fastattn.attention, (r(2, 3, 4, 8), r(2, 5, 2, 8), r(2, 5, 2, 8)),
                          {}),
    "attention-all-options": lambda: (
        fastattn.attention, (r(2, 4, 4, 16, dtype=BF16), r(2, 6, 2, 16, dtype=BF16),
                             r(2, 6, 2, 16, dtype=BF16)),
        dict(causal=True, softmax_scale=0.3, window_size=(2, 0), softcap=4.0,
             kv_lens=i32([6, 3]), return_lse=True)),
    "self_attention": lambda: (fastattn.self_attention,
                               (r(2, 5, 4, 8), r(2, 5, 1, 8), r(2, 5, 1, 8)),
                               dict(return_lse=True)),
    "cross_attention": lambda: (fastattn.cross_attention,
                                (r(2, 3, 2, 8, dtype=F16), r(2, 7, 2, 8, dtype=F16),
                                 r(2, 7, 2, 8, dtype=F16)),
                                dict(kv_lens=i32([7, 2]), return_lse=True)),
    "attention_varlen": lambda: (fastattn.attention_varlen,
                                 (r(5, 4, 8), r(7, 2, 8), r(7, 2, 8), i32([0, 2, 5]),
                                  i32([0, 3, 7]), 3, 4),
                                 dict(causal=True, return_lse=True)),
    "attention_varlen-bf16-window": lambda: (
        fastattn.attention_varlen,
        (r(6, 2, 8, dtype=BF16), r(5, 2, 8, dtype=BF16), r(5, 2, 8, dtype=BF16),
         i32([0, 2, 2, 6]), i32([0, 0, 3, 5]), 4, 3),
        dict(window_size=(1, 1), softcap=2.0)),
    "paged_attention-decode": lambda: (fastattn.paged_attention,
                                       (r(2, 4, 8), *paged_cache(F32), i32([[0, 3], [4, 1]]),
                                        i32([5, 2])),
                                       dict(return_lse=True)),
    "paged_attention-extend": lambda: (fastattn.paged_attention,
                                       (r(5, 4, 8, dtype=BF16), *paged_cache(BF16),
                                        i32([[0, 3], [4, 1]]), i32([5, 4])),
                                       dict(cu_seqlens_q=i32([0, 2, 5]), max_seqlen_q=3,
                                            window_size=(3, -1), return_lse=True)),
    "append_kv": lambda: (append_then_clone,
                          (*paged_cache(F32), r(3, 2, 8), r(3, 2, 8), i64([0, -1, 14])), {}),
    "paged_attention-decode-fp8": lambda: (fastattn.paged_attention,
                                           (r(2, 4, 8, dtype=BF16), *paged_cache(E4M3),
                                            i32([[0, 3], [4, 1]]), i32([5, 2])),
                                           dict(k_scale=scale(0.5, 2.0), v_scale=0.75,
                                                return_lse=True)),
    "append_kv-fp8": lambda: (append_then_clone,
                              (*paged_cache(E5M2), r(3, 2, 8), r(3, 2, 8), i64([0, -1, 14])),
                              dict(k_scale=scale(0.5), v_scale=4.0)),
    "merge_attention_states": lambda: (fastattn.merge_attention_states,
                                       (r(2, 3, 4, 8), r(2, 3, 4), r(2, 3, 4, 8),
                                        torch.full((2, 3, 4), float("-inf"))), {}),
}


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def clone_args(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def assert_same(compiled, eager):
    compiled, eager = as_tuple(compiled), as_tuple(eager)
    assert len(compiled) == len(eager)
    for c, e in zip(compiled, eager):
        assert c.dtype == e.dtype and c.shape == e.shape
        if c.dtype in (E4M3, E5M2):  # compared as codes
            c, e = c.view(torch.uint8), e.view(torch.uint8)
        assert torch.equal(c, e), f"max abs diff {(c.float() - e.float()).abs().max()}"


def check_compiled(fn, args, kwargs, backend, dynamic=None):
    eager = fn(*clone_args(args), **kwargs)
    compiled_fn = torch.compile(lambda *a: fn(*a, **kwargs), fullgraph=True, backend=backend,
                                dynamic=dynamic)
    assert_same(compiled_fn(*clone_args(args)), eager)
    return compiled_fn


@pytest.mark.parametrize("case", list(COMPILE_CASES))
def test_compile_aot_eager(case):
    fn, args, kwargs = COMPILE_CASES[case]()
    check_compiled(fn, args, kwargs, "aot_eager")


@pytest.mark.parametrize("case", ["attention-all-options", "paged_attention-extend",
                                  "append_kv"])
def test_compile_inductor(case):
    fn, args, kwargs = COMPILE_CASES[case]()
    check_compiled(fn, args, kwargs, "inductor")


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_decode_step_mutation_then_read(backend):
    """append_kv then paged_attention on the same cache inside one graph: the compiled graph
    must keep the order, and leave the caller's caches updated in place."""
    args = _decode_step_args()
    eager_args = clone_args(args)
    eager = decode_step(*eager_args)
    compiled_args = clone_args(args)
    compiled = torch.compile(decode_step, fullgraph=True, backend=backend)(*compiled_args)
    assert_same(compiled, eager)
    # the caches (args 1 and 2) were written in place, identically
    assert torch.equal(compiled_args[1], eager_args[1])
    assert torch.equal(compiled_args[2], eager_args[2])
    assert not torch.equal(compiled_args[1], args[1])


@pytest.mark.parametrize("return_lse", [False, True])
def test_compile_return_lse_forms(return_lse):
    q, k, v = r(1, 2, 2, 8), r(1, 3, 2, 8), r(1, 3, 2, 8)
    check_compiled(fastattn.attention, (q, k, v), dict(return_lse=return_lse), "aot_eager")


def test_compile_no_recompile_for_new_values():
    """New tensor values with the same shapes reuse the graph."""
    fn = torch.compile(lambda q, k, v, kl: fastattn.attention(q, k, v, kv_lens=kl),
                       fullgraph=True, backend="aot_eager")
    torch._dynamo.utils.counters.clear()
    for seed in range(3):
        torch.manual_seed(seed)
        q, k, v = r(2, 3, 4, 8), r(2, 5, 2, 8), r(2, 5, 2, 8)
        kv_lens = i32([seed + 1, 5 - seed])
        assert torch.equal(fn(q, k, v, kv_lens), fastattn.attention(q, k, v, kv_lens=kv_lens))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


# ---------------------------------------------------------------------------------------
# Dynamic shapes and dynamic scalar options
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["attention-all-options", "attention_varlen",
                                  "paged_attention-decode", "paged_attention-extend",
                                  "append_kv", "merge_attention_states"])
def test_compile_dynamic(case):
    """dynamic=True turns sizes and Python scalars (max_seqlen_*, softmax_scale, softcap, the
    default 1/sqrt(D)) into symbols; the argument checks must trace them without breaking."""
    fn, args, kwargs = COMPILE_CASES[case]()
    check_compiled(fn, args, kwargs, "aot_eager", dynamic=True)


def test_compile_dynamic_new_shapes():
    fn = torch.compile(fastattn.attention_varlen, fullgraph=True, backend="aot_eager",
                       dynamic=True)
    for lens_q, lens_k in (((2, 3), (3, 4)), ((1, 5, 2), (6, 1, 2))):
        cu_q = i32([0, *torch.tensor(lens_q).cumsum(0).tolist()])
        cu_k = i32([0, *torch.tensor(lens_k).cumsum(0).tolist()])
        args = (r(sum(lens_q), 4, 8), r(sum(lens_k), 2, 8), r(sum(lens_k), 2, 8), cu_q, cu_k,
                max(lens_q), max(lens_k))
        assert_same(fn(*args, causal=True), fastattn.attention_varlen(*args, causal=True))


@pytest.mark.parametrize("option", ["softmax_scale", "softcap"])
def test_compile_changing_float_option(option):
    """A float option passed into the compiled function with a new value each call: after the
    second value Dynamo marks it dynamic (automatic dynamic), so it becomes a SymFloat."""
    fn = torch.compile(lambda q, k, v, x: fastattn.attention(q, k, v, **{option: x}),
                       fullgraph=True, backend="aot_eager")
    q, k, v = r(2, 3, 4, 8), r(2, 5, 2, 8), r(2, 5, 2, 8)
    for x in (0.5, 1.5, 2.5):
        assert_same(fn(q, k, v, x), fastattn.attention(q, k, v, **{option: x}))


def test_compile_changing_int_options():
    fn = torch.compile(lambda q, k, v, w, cu_q, cu_k, m: fastattn.attention_varlen(
        q, k, v, cu_q, cu_k, m, m, causal=True, window_size=(w, -1)),
        fullgraph=True, backend="aot_eager")
    args = (r(5, 4, 8), r(5, 2, 8), r(5, 2, 8))
    cu = i32([0, 2, 5])
    for w, m in ((1, 3), (2, 4), (3, 5)):
        eager = fastattn.attention_varlen(*args, cu, cu, m, m, causal=True, window_size=(w, -1))
        assert_same(fn(*args, w, cu, cu, m), eager)


# ---------------------------------------------------------------------------------------
# Errors under compile
# ---------------------------------------------------------------------------------------

def test_compiled_value_checks_still_raise():
    """Value checks run inside the ops, so a compiled graph raises the same ValueError."""
    varlen = torch.compile(fastattn.attention_varlen, fullgraph=True, backend="aot_eager")
    args = (r(5, 4, 8), r(7, 2, 8), r(7, 2, 8), i32([0, 2, 5]), i32([0, 3, 7]), 3, 4)
    varlen(*args)
    with pytest.raises(ValueError, match=r"^cu_seqlens_q: must start at 0"):
        varlen(*args[:3], i32([1, 2, 5]), *args[4:])
    with pytest.raises(ValueError, match=r"^max_seqlen_k: 3 is smaller"):
        varlen(*args[:6], 3)

    paged = torch.compile(fastattn.paged_attention, fullgraph=True, backend="aot_eager")
    k_cache, v_cache = paged_cache(F32)
    q = r(2, 4, 8)
    paged(q, k_cache, v_cache, i32([[0, 3], [4, 1]]), i32([5, 2]))
    with pytest.raises(ValueError, match=r"^block_table: block_table\[1, 0\] = 5 is outside"):
        paged(q, k_cache, v_cache, i32([[0, 3], [5, 1]]), i32([5, 2]))

    step = torch.compile(decode_step, fullgraph=True, backend="aot_eager")
    good = _decode_step_args()
    step(*good)
    bad = list(_decode_step_args())
    bad[5] = i64([15, 0])
    with pytest.raises(ValueError, match=r"^slot_mapping: slot_mapping\[0\] = 15 is beyond"):
        step(*bad)


def test_compiled_argument_checks_still_raise_without_fullgraph():
    """Shape/dtype checks are Python raises: without fullgraph, Dynamo falls back to eager at
    the raise and the caller sees the library's ValueError/TypeError."""
    fn = torch.compile(fastattn.attention, backend="aot_eager")
    q, k, v = r(2, 3, 4, 8), r(2, 5, 2, 8), r(2, 5, 2, 8)
    fn(q, k, v)
    with pytest.raises(ValueError, match=r"^k: expected shape \[B, Sk, Hk, D\] = \[2, 5, 2, 8\], "
                                         r"got \[3, 5, 2, 8\]"):
        fn(q, r(3, 5, 2, 8), r(3, 5, 2, 8))
    with pytest.raises(TypeError, match=r"^v: expected dtype float32"):
        fn(q, k, v.half())
