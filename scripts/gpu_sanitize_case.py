"""Small prefill, decode and extend cases (and append_kv, merge) for compute-sanitizer.

    compute-sanitizer --tool memcheck python scripts/gpu_sanitize_case.py [CASE ...]

CASE is any of prefill, decode, extend, append, merge (default: all). Shapes are small, so
that the instrumented run stays fast, but reach the awkward paths: tail tiles of queries and
keys, GQA, causal and not, a page size that does not divide the lengths, a decode long
enough to split across blocks, sequences of one token. Inputs are made on the CPU, so the
only kernels on the GPU are the copies and fastattn's own. Each result is compared with the
CPU op on the same inputs (loosely: this is a memory and race check, the parity suite
checks accuracy), and fastattn.check_errors() must stay silent. Exit 0 when every case ran
and matched, 1 otherwise.

Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor is its own allocation and
memcheck sees an access past a tensor's end (scripts/gpu_check.sh does).
"""

import argparse
import sys

import torch

import fastattn

DTYPE = torch.float16
TOL = {torch.float16: 2e-2, torch.bfloat16: 6e-2}


def randn(*shape, dtype=DTYPE):
    return torch.randn(*shape).to(dtype)


def check(name, got, want, dtype):
    got = [g.cpu().float() for g in (got if isinstance(got, tuple) else (got,))]
    want = [w.cpu().float() for w in (want if isinstance(want, tuple) else (want,))]
    ok = True
    for i, (g, w) in enumerate(zip(got, want)):
        finite = torch.isfinite(w)
        same_inf = torch.equal(torch.isneginf(g), torch.isneginf(w))
        err = (g[finite] - w[finite]).abs().max().item() if finite.any() else 0.0
        if not same_inf or torch.isnan(g).any() or err > TOL[dtype]:
            print(f"  {name}[{i}]: max abs err {err:.3g}, -inf match {same_inf}, "
                  f"NaN {bool(torch.isnan(g).any())}")
            ok = False
    return ok


def paged(seq_lens, kv_heads, head_dim, page_size, dtype, spare=3):
    """A paged cache with random page order and NaN in every unused slot."""
    pages = [(n + page_size - 1) // page_size for n in seq_lens]
    num_pages = sum(pages) + spare
    max_pages = max(pages) + 1
    order = torch.randperm(num_pages)
    table = torch.full((len(seq_lens), max_pages), int(order[-1]), dtype=torch.int32)
    k_cache = torch.full((num_pages, page_size, kv_heads, head_dim), float("nan"), dtype=dtype)
    v_cache = k_cache.clone()
    used = 0
    for b, (n, p) in enumerate(zip(seq_lens, pages)):
        table[b, :p] = order[used:used + p].to(torch.int32)
        used += p
        for t in range(n):
            page, off = int(table[b, t // page_size]), t % page_size
            k_cache[page, off] = randn(kv_heads, head_dim, dtype=dtype)
            v_cache[page, off] = randn(kv_heads, head_dim, dtype=dtype)
    return k_cache, v_cache, table, torch.tensor(seq_lens, dtype=torch.int32)


def to(dev, *ts):
    return [t.to(dev) if isinstance(t, torch.Tensor) else t for t in ts]


def case_prefill(dev, dtype):
    ok = True
    for head_dim, causal, (sq, sk) in ((64, True, (200, 200)), (128, False, (77, 300)),
                                      (256, True, (65, 129))):
        q, k, v = randn(2, sq, 4, head_dim, dtype=dtype), randn(2, sk, 2, head_dim, dtype=dtype), \
            randn(2, sk, 2, head_dim, dtype=dtype)
        kv_lens = torch.tensor([sk, sk // 3], dtype=torch.int32)
        want = fastattn.attention(q, k, v, causal=causal, kv_lens=kv_lens, return_lse=True)
        got = fastattn.attention(*to(dev, q, k, v), causal=causal, kv_lens=kv_lens.to(dev),
                                 return_lse=True)
        ok &= check(f"prefill d{head_dim} causal={causal}", got, want, dtype)
        cu = torch.tensor([0, 50, 50, 177], dtype=torch.int32)
        qv, kvv = randn(177, 4, head_dim, dtype=dtype), randn(177, 2, head_dim, dtype=dtype)
        want = fastattn.attention_varlen(qv, kvv, kvv, cu, cu, 127, 127, causal=True,
                                         return_lse=True)
        got = fastattn.attention_varlen(*to(dev, qv, kvv, kvv, cu, cu), 127, 127, causal=True,
                                        return_lse=True)
        ok &= check(f"varlen d{head_dim}", got, want, dtype)
    return ok


def case_decode(dev, dtype):
    ok = True
    for head_dim, page_size, seq_lens in ((128, 16, [1, 37, 700]), (64, 5, [3, 1500]),
                                          (256, 16, [64, 129])):
        k_cache, v_cache, table, lens = paged(seq_lens, 2, head_dim, page_size, dtype)
        q = randn(len(seq_lens), 8, head_dim, dtype=dtype)
        want = fastattn.paged_attention(q, k_cache, v_cache, table, lens, return_lse=True)
        got = fastattn.paged_attention(*to(dev, q, k_cache, v_cache, table, lens),
                                       return_lse=True)
        ok &= check(f"decode d{head_dim} page {page_size}", got, want, dtype)
    return ok


def case_extend(dev, dtype):
    ok = True
    for head_dim, page_size in ((128, 16), (64, 5)):
        seq_lens, new = [5, 100, 200], [1, 20, 64]
        k_cache, v_cache, table, lens = paged(seq_lens, 2, head_dim, page_size, dtype)
        cu = torch.tensor([0, 1, 21, 85], dtype=torch.int32)
        q = randn(85, 8, head_dim, dtype=dtype)
        want = fastattn.paged_attention(q, k_cache, v_cache, table, lens, cu_seqlens_q=cu,
                                        max_seqlen_q=max(new), return_lse=True)
        got = fastattn.paged_attention(*to(dev, q, k_cache, v_cache, table, lens),
                                       cu_seqlens_q=cu.to(dev), max_seqlen_q=max(new),
                                       return_lse=True)
        ok &= check(f"extend d{head_dim} page {page_size}", got, want, dtype)
    return ok


def case_append(dev, dtype):
    ok = True
    for head_dim, page_size in ((128, 16), (40, 5)):
        k_cache = torch.zeros(12, page_size, 2, head_dim, dtype=dtype)
        v_cache = torch.zeros_like(k_cache)
        k, v = randn(30, 2, head_dim, dtype=dtype), randn(30, 2, head_dim, dtype=dtype)
        slots = torch.randperm(12 * page_size)[:30]
        slots[::7] = -1
        want_k, want_v = k_cache.clone(), v_cache.clone()
        fastattn.append_kv(want_k, want_v, k, v, slots)
        got_k, got_v = to(dev, k_cache, v_cache)
        fastattn.append_kv(got_k, got_v, *to(dev, k, v, slots))
        ok &= check(f"append d{head_dim}", (got_k, got_v), (want_k, want_v), dtype)
        # Strided k, v: the one-element path.
        ks = randn(30, 2, head_dim + 3, dtype=dtype)[..., :head_dim]
        want_k = k_cache.clone()
        fastattn.append_kv(want_k, v_cache.clone(), ks, v, slots)
        got_k = k_cache.to(dev)
        fastattn.append_kv(got_k, v_cache.to(dev), *to(dev, ks, v, slots))
        ok &= check(f"append strided d{head_dim}", got_k, want_k, dtype)
    return ok


def case_merge(dev, dtype):
    ok = True
    for head_dim in (128, 36):
        out_a, out_b = randn(33, 8, head_dim, dtype=dtype), randn(33, 8, head_dim, dtype=dtype)
        lse_a, lse_b = torch.randn(33, 8) * 4, torch.randn(33, 8) * 4
        lse_a[:3] = float("-inf")
        out_a[:3] = float("nan")
        lse_b[2:5] = float("-inf")
        want = fastattn.merge_attention_states(out_a, lse_a, out_b, lse_b)
        got = fastattn.merge_attention_states(*to(dev, out_a, lse_a, out_b, lse_b))
        ok &= check(f"merge d{head_dim}", got, want, dtype)
    return ok


CASES = {"prefill": case_prefill, "decode": case_decode, "extend": case_extend,
         "append": case_append, "merge": case_merge}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", choices=[[], *CASES], default=[])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    failed = []
    for name in args.cases or list(CASES):
        try:
            ok = CASES[name](args.device, dtype)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            fastattn.check_errors()
        except Exception as e:  # report and go on to the next case
            print(f"  {name}: {type(e).__name__}: {e}")
            ok = False
        print(f"{name}: {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            failed.append(name)
    if failed:
        print("failed cases: " + " ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
