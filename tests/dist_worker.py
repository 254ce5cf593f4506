"""The rank side of tests/test_distributed.py: every case of CASES run by every rank of one
gloo process group (spawning a group costs seconds, so one group runs them all).

Each rank builds the same global tensors from the case's seed, takes its shard, calls the
fastattn.distributed function and checks its own rows against the float64 reference on the
global tensors with the tolerance rule of conftest.assert_close_to_ref. It reports
(case, rank, None) or (case, rank, the failure's text) on the queue.
"""

import datetime
import os
import traceback

import torch
import torch.distributed as dist

import fastattn
from fastattn import distributed as fd
from fastattn.reference import ref_attention, ref_attention_varlen, ref_paged_attention

from conftest import PagedKV, assert_close_to_ref, cu_seqlens

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# name -> options; "kind" picks the runner below.
CASES = {
    "ring-zigzag-causal-fp32-uneven": dict(kind="ring", S=37, causal=True, dtype=F32),
    "ring-zigzag-causal-bf16-gqa": dict(kind="ring", S=64, causal=True, dtype=BF16, Hk=1),
    "ring-zigzag-window-softcap-fp16": dict(kind="ring", S=45, causal=True, dtype=F16,
                                            window=(7, -1), softcap=3.0),
    "ring-zigzag-noncausal-window-bf16": dict(kind="ring", S=50, causal=False, dtype=BF16,
                                              window=(5, 3)),
    "ring-zigzag-noncausal-fp32": dict(kind="ring", S=23, causal=False, dtype=F32),
    "ring-contiguous-causal-bf16": dict(kind="ring", S=40, causal=True, dtype=BF16,
                                        layout="contiguous"),
    "ring-tiny-empty-chunks": dict(kind="ring", S=5, causal=True, dtype=F32),
    "varlen-zigzag-causal-bf16": dict(kind="varlen", lens=[16, 9, 30], causal=True,
                                      dtype=BF16),
    "varlen-contiguous-window-fp32": dict(kind="varlen", lens=[12, 1, 25], causal=False,
                                          dtype=F32, window=(4, 4), layout="contiguous"),
    "sharded-decode-fp32": dict(kind="sharded", lens=[40, 7, 0, 19], dtype=F32),
    "sharded-decode-bf16-gqa": dict(kind="sharded", lens=[33, 64], dtype=BF16, Hq=8, Hk=2),
    "sharded-decode-fp8": dict(kind="sharded", lens=[30, 17], dtype=BF16,
                               cache=torch.float8_e4m3fn),
    "sharded-extend-causal-fp32": dict(kind="sharded", lens=[40, 7, 19], q_lens=[5, 1, 3],
                                       dtype=F32),
    "sharded-extend-causal-bf16-softcap": dict(kind="sharded", lens=[28, 50], q_lens=[4, 6],
                                               dtype=BF16, softcap=5.0),
    "overlap-trace": dict(kind="trace"),
    "ranks-disagree": dict(kind="mismatch"),
    "one-rank-bad-argument": dict(kind="bad_argument"),
    "holds-tail-disagrees": dict(kind="bad_tail"),
    "one-rank-bad-early-page": dict(kind="bad_early_page"),
    "one-rank-runtime-error": dict(kind="runtime_error"),
}

B, HQ, HK, D = 2, 4, 2, 16


def _gen(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g)


def _rows(x, world, rank, layout, dim):
    if layout == "zigzag":
        return fd.zigzag_shard(x, world, rank, dim=dim)
    return torch.tensor_split(x, world, dim=dim)[rank]


def _check(out, lse, ref, lowp, dtype):
    assert_close_to_ref(out, lse, ref, lowp, out_dtype=dtype)


def run_ring(c, world, rank, seed):
    rnd = _gen(seed)
    S, dtype, layout = c["S"], c["dtype"], c.get("layout", "zigzag")
    hk = c.get("Hk", HK)
    q = rnd(B, S, HQ, D).to(dtype)
    k = rnd(B, S, hk, D).to(dtype)
    v = rnd(B, S, hk, D).to(dtype)
    opts = dict(causal=c["causal"], window_size=c.get("window", (-1, -1)),
                softcap=c.get("softcap", 0.0))
    mine = [_rows(t, world, rank, layout, 1) for t in (q, k, v)]
    out, lse = fd.ring_attention(*mine, layout=layout, return_lse=True, **opts)
    ref = ref_attention(q, k, v, **opts)
    lowp = ref_attention(q, k, v, dtype=dtype, **opts)
    shard = lambda pair: tuple(_rows(t, world, rank, layout, 1) for t in pair)
    _check(out, lse, shard(ref), shard(lowp), dtype)
    # Also the single-process op on the gathered tensors, within the same rule.
    single = fastattn.attention(q, k, v, return_lse=True, **opts)
    _check(_rows(single[0], world, rank, layout, 1), _rows(single[1], world, rank, layout, 1),
           shard(ref), shard(lowp), dtype)


def run_varlen(c, world, rank, seed):
    rnd = _gen(seed)
    lens, dtype, layout = c["lens"], c["dtype"], c.get("layout", "zigzag")
    T = sum(lens)
    q, k, v = rnd(T, HQ, D).to(dtype), rnd(T, HK, D).to(dtype), rnd(T, HK, D).to(dtype)
    cu = cu_seqlens(lens)
    opts = dict(causal=c["causal"], window_size=c.get("window", (-1, -1)))

    def shard(x):
        bounds = cu.tolist()
        return torch.cat([_rows(x[a:b], world, rank, layout, 0)
                          for a, b in zip(bounds, bounds[1:])])

    local_lens = [_rows(torch.zeros(n), world, rank, layout, 0).shape[0] for n in lens]
    out, lse = fd.ring_attention_varlen(shard(q), shard(k), shard(v), cu_seqlens(local_lens),
                                        layout=layout, return_lse=True, **opts)
    ref = ref_attention_varlen(q, k, v, cu, cu, **opts)
    lowp = ref_attention_varlen(q, k, v, cu, cu, dtype=dtype, **opts)
    _check(out, lse, tuple(map(shard, ref)), tuple(map(shard, lowp)), dtype)


def run_sharded(c, world, rank, seed):
    """Each sequence's positions are cut into `world` contiguous runs (random sizes, some
    empty; the last non-empty one holds at least the query tokens); rank r holds run r."""
    g = torch.Generator().manual_seed(seed)
    rnd = _gen(seed + 1)
    lens, dtype = c["lens"], c["dtype"]
    hq, hk = c.get("Hq", HQ), c.get("Hk", HK)
    q_lens = c.get("q_lens")
    cache_dtype = c.get("cache", dtype)
    keys = [rnd(n, hk, D).to(dtype) for n in lens]
    values = [rnd(n, hk, D).to(dtype) for n in lens]
    if cache_dtype != dtype:
        keys = [x.float().to(cache_dtype) for x in keys]
        values = [x.float().to(cache_dtype) for x in values]
    runs = []  # runs[b] = [(start, length) per rank]
    for b, n in enumerate(lens):
        tail = q_lens[b] if q_lens else 1
        cuts = sorted(torch.randint(0, max(1, n - tail + 1), (world - 1,), generator=g).tolist())
        edges = [0] + cuts + [n]
        runs.append([(edges[r], edges[r + 1] - edges[r]) for r in range(world)])
    mine = PagedKV([keys[b][s:s + m] if m else keys[b][:0] for b, (s, m) in
                    enumerate(r[rank] for r in runs)],
                   [values[b][s:s + m] if m else values[b][:0] for b, (s, m) in
                    enumerate(r[rank] for r in runs)], 4, "cpu")
    whole = PagedKV(keys, values, 4, "cpu")
    scale = {}
    if cache_dtype != dtype:
        scale = dict(k_scale=torch.tensor([0.5, 1.5])[:hk], v_scale=0.75)
    opts = dict(softcap=c.get("softcap", 0.0))
    if q_lens:
        q = rnd(sum(q_lens), hq, D).to(dtype)
        cu = cu_seqlens(q_lens)
        # The rank holding a sequence's last position holds its tail.
        holds_tail = torch.tensor([r[rank][1] > 0 and r[rank][0] + r[rank][1] == n
                                   for r, n in zip(runs, lens)])
        out, lse = fd.sharded_paged_attention(q, mine.k_cache, mine.v_cache, mine.block_table,
                                              mine.seq_lens, cu_seqlens_q=cu,
                                              max_seqlen_q=max(q_lens), holds_tail=holds_tail,
                                              return_lse=True, **opts, **scale)
        ref_opts = dict(cu_seqlens_q=cu, max_seqlen_q=max(q_lens), **opts, **scale)
    else:
        q = rnd(len(lens), hq, D).to(dtype)
        out, lse = fd.sharded_paged_attention(q, mine.k_cache, mine.v_cache, mine.block_table,
                                              mine.seq_lens, return_lse=True, **opts, **scale)
        ref_opts = dict(opts, **scale)
    args = (q, whole.k_cache, whole.v_cache, whole.block_table, whole.seq_lens)
    ref = ref_paged_attention(*args, **ref_opts)
    lowp = ref_paged_attention(*args, dtype=dtype, **ref_opts)
    _check(out, lse, ref, lowp, dtype)


def run_trace(c, world, rank, seed):
    rnd = _gen(seed)
    q, k, v = rnd(1, 8 * world, 2, 8), rnd(1, 8 * world, 2, 8), rnd(1, 8 * world, 2, 8)
    fd._trace = []
    try:
        fd.ring_attention(*(fd.zigzag_shard(t, world, rank) for t in (q, k, v)))
        trace = fd._trace
    finally:
        fd._trace = None
    for step in range(world - 1):
        post, compute, wait = (trace.index((e, step)) for e in ("post", "compute", "wait"))
        assert post < compute < wait, f"step {step}: {trace}"
    assert ("compute", world - 1) in trace and ("post", world - 1) not in trace, trace


def run_mismatch(c, world, rank, seed):
    d = 8 if rank == 1 else 16
    q = torch.randn(1, 4, 2, d)
    try:
        fd.ring_attention(q, q, q)
    except ValueError as e:
        assert "ranks disagree on head dim" in str(e), str(e)
    else:
        raise AssertionError("no ValueError")


def run_bad_argument(c, world, rank, seed):
    q = torch.randn(1, 4, 2, 8)
    k = torch.randn(1, 4, 3, 8) if rank == world - 1 else q  # Hq % Hk != 0 there
    try:
        fd.ring_attention(q, k, k)
    except ValueError as e:
        want = "k" if rank == world - 1 else f"rank(s) [{world - 1}] failed their checks"
        assert str(e).startswith(want) or want in str(e), str(e)
    else:
        raise AssertionError("no ValueError")


def _small_extend(world, rank):
    """Sequence 0 (9 keys) split 4 + 5 over ranks 0 and the last; 2 query tokens."""
    keys = torch.randn(9, 1, 8)
    last = rank == world - 1
    part = keys[4:] if last else (keys[:4] if rank == 0 else keys[:0])
    cache = PagedKV([part], [part], 4, "cpu")
    return torch.randn(2, 2, 8), cache, torch.tensor([last])


def _expect_error(fn, mine: str, others: str, failing: bool):
    try:
        fn()
    except Exception as e:  # the failing rank's own error, or the others' ValueError
        want = mine if failing else others
        assert want in f"{type(e).__name__}: {e}", f"{type(e).__name__}: {e}"
    else:
        raise AssertionError("no error")


def run_bad_tail(c, world, rank, seed):
    """Two ranks claim the tail of the same sequence: every rank raises ValueError."""
    q, cache, tail = _small_extend(world, rank)
    tail = torch.tensor([rank in (0, world - 1)])
    _expect_error(lambda: fd.sharded_paged_attention(
        q, cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens,
        cu_seqlens_q=cu_seqlens([2]), holds_tail=tail),
        "ranks hold their tails", "ranks hold their tails", True)


def run_bad_early_page(c, world, rank, seed):
    """Rank 0's keys precede the query tokens (gathered, not read by the paged op): a bad
    block-table entry there is its ValueError, and the others' ValueError naming rank 0."""
    q, cache, tail = _small_extend(world, rank)
    table = cache.block_table.clone()
    if rank == 0:
        table[0, 0] = 999
    _expect_error(lambda: fd.sharded_paged_attention(
        q, cache.k_cache, cache.v_cache, table, cache.seq_lens, cu_seqlens_q=cu_seqlens([2]),
        holds_tail=tail), "block_table[0, 0] = 999", "rank(s) [0] failed", rank == 0)


def run_runtime_error(c, world, rank, seed):
    """Any exception in one rank's local work (here a RuntimeError, as a failed allocation
    or launch would raise) reaches that rank, and the others do not hang."""
    q, cache, tail = _small_extend(world, rank)

    def failing(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    real = fd.paged_attention
    fd.paged_attention = failing if rank == 1 else real
    try:
        _expect_error(lambda: fd.sharded_paged_attention(
            q[:1], cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens),
            "RuntimeError: out of memory (simulated)", "rank(s) [1] failed", rank == 1)
    finally:
        fd.paged_attention = real


RUNNERS = {"ring": run_ring, "varlen": run_varlen, "sharded": run_sharded, "trace": run_trace,
           "mismatch": run_mismatch, "bad_argument": run_bad_argument, "bad_tail": run_bad_tail,
           "bad_early_page": run_bad_early_page, "runtime_error": run_runtime_error}


def main(rank, world, port, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        for i, (name, case) in enumerate(CASES.items()):
            try:
                RUNNERS[case["kind"]](case, world, rank, 1000 * world + i)
                queue.put((name, rank, None))
            except Exception:  # reported to the test, which fails with it
                queue.put((name, rank, traceback.format_exc()))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def nccl_main(rank, world, port, queue):
    """A ring on CUDA tensors over NCCL (one GPU per rank)."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        g = torch.Generator().manual_seed(7)
        q, k, v = (torch.randn(2, 96, 4, 64, generator=g).to(torch.bfloat16) for _ in range(3))
        mine = [fd.zigzag_shard(t, world, rank).cuda() for t in (q, k, v)]
        out, lse = fd.ring_attention(*mine, causal=True, return_lse=True)
        ref = ref_attention(q, k, v, causal=True)
        lowp = ref_attention(q, k, v, causal=True, dtype=torch.bfloat16)
        shard = lambda pair: tuple(fd.zigzag_shard(t, world, rank) for t in pair)
        _check(out.cpu(), lse.cpu(), shard(ref), shard(lowp), torch.bfloat16)
        queue.put(("nccl-ring", rank, None))
    except Exception:
        queue.put(("nccl-ring", rank, traceback.format_exc()))
    finally:
        dist.destroy_process_group()

