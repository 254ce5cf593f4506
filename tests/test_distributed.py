"""fastattn.distributed on gloo: ring_attention (zigzag and contiguous layouts, uneven
lengths, causal or not, windows, softcap, GQA), ring_attention_varlen, and
sharded_paged_attention (decode, extend, fp8 cache), with 2 and 4 processes.

Starting a process group costs seconds, so one group per world size runs every case of
tests/dist_worker.py (each rank checks its own rows against the float64 reference on the
gathered tensors, with the tolerance rule of conftest.py) and the tests here read the
reports. The pure-Python parts (the block decomposition, the zigzag helpers) are tested
in this process. NCCL is not exercised here (no GPU); the same code takes CUDA tensors
with a nccl group.
"""

import multiprocessing
import queue as queue_module
import random
import socket

import pytest
import torch
import torch.distributed as dist

from fastattn import distributed as fd

import dist_worker

WORLDS = [2, 4]
TIMEOUT_S = 120


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_group(world):
    ctx = multiprocessing.get_context("spawn")
    reports = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=dist_worker.main, args=(rank, world, port, reports))
             for rank in range(world)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(world * len(dist_worker.CASES)):
            name, rank, error = reports.get(timeout=TIMEOUT_S)
            results[(name, rank)] = error
    except queue_module.Empty:
        pass
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return results


@pytest.fixture(scope="module")
def group_results():
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    return {world: _run_group(world) for world in WORLDS}


@pytest.mark.parametrize("case", list(dist_worker.CASES))
@pytest.mark.parametrize("world", WORLDS)
def test_case_on_every_rank(group_results, world, case):
    results = group_results[world]
    for rank in range(world):
        assert (case, rank) in results, f"rank {rank} did not report (crashed or timed out)"
        error = results[(case, rank)]
        assert error is None, f"rank {rank} of {world}:\n{error}"


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="NCCL needs two GPUs")
def test_nccl_ring_on_two_gpus():
    ctx = multiprocessing.get_context("spawn")
    reports = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=dist_worker.nccl_main, args=(rank, 2, port, reports))
             for rank in range(2)]
    for p in procs:
        p.start()
    try:
        errors = [reports.get(timeout=TIMEOUT_S) for _ in range(2)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(error is None for _, _, error in errors), errors


# ---------------------------------------------------------------------------------------
# In-process parts
# ---------------------------------------------------------------------------------------

def _visible(sq, sk, q0, k0, causal, wl, wr):
    return {(i, j) for i in range(sq) for j in range(sk)
            if (not causal or k0 + j <= q0 + i) and (wl < 0 or k0 + j >= q0 + i - wl)
            and (wr < 0 or k0 + j <= q0 + i + wr)}


def _covered(sq, sk, calls):
    """The (query, key) pairs the calls compute, under the ops' bottom-right alignment."""
    seen = set()
    for qs, qe, ke, causal, left in calls:
        assert 0 <= qs < qe <= sq and 0 < ke <= sk, (qs, qe, ke)
        n = qe - qs
        for i in range(qs, qe):
            hi = (i - qs) + ke - n  # last key the op lets query i see
            for j in range(ke):
                if causal and j > hi:
                    continue
                if left >= 0 and j < hi - left:
                    continue
                assert (i, j) not in seen, "two calls compute the same pair"
                seen.add((i, j))
    return seen


def test_block_calls_compute_exactly_the_visible_pairs():
    rng = random.Random(0)
    for _ in range(3000):
        sq, sk = rng.randint(0, 9), rng.randint(0, 9)
        q0, k0 = rng.randint(0, 20), rng.randint(0, 20)
        causal = rng.random() < 0.5
        wl, wr = rng.choice([-1, 0, 1, 3, 8]), rng.choice([-1, 0, 2, 5])
        calls = fd._block_calls(sq, sk, q0, k0, causal, wl, wr)
        assert _covered(sq, sk, calls) == _visible(sq, sk, q0, k0, causal, wl, wr), (
            sq, sk, q0, k0, causal, wl, wr, calls)


@pytest.mark.parametrize("total,world", [(37, 2), (64, 4), (5, 4), (1, 2)])
def test_zigzag_round_trip(total, world):
    x = torch.arange(total).reshape(1, total)
    shards = [fd.zigzag_shard(x, world, r) for r in range(world)]
    assert torch.equal(fd.zigzag_unshard(shards), x)
    # Rank r holds chunks r and 2W-1-r of torch.tensor_split's 2W chunks.
    chunks = torch.tensor_split(x, 2 * world, dim=1)
    for r, s in enumerate(shards):
        assert torch.equal(s, torch.cat([chunks[r], chunks[2 * world - 1 - r]], dim=1))
    with pytest.raises(ValueError, match=r"shards\[0\]: expected"):
        fd.zigzag_unshard([shards[0][:, :0], *shards[1:], shards[0]])


def test_zigzag_shard_varlen():
    x = torch.arange(30).reshape(30, 1)
    cu = torch.tensor([0, 7, 7, 30], dtype=torch.int32)
    parts = [fd.zigzag_shard_varlen(x, cu, 2, r) for r in range(2)]
    for b, (a, e) in enumerate([(0, 7), (7, 7), (7, 30)]):
        whole = fd.zigzag_unshard([p[0][p[1][b]:p[1][b + 1]] for p in parts], dim=0)
        assert torch.equal(whole, x[a:e])


def test_argument_errors_without_a_group():
    with pytest.raises(ValueError, match=r"layout: expected one of"):
        fd._check_layout("ring")
    with pytest.raises(ValueError, match=r"rank: expected a value in \[0, world_size = 2\)"):
        fd.zigzag_shard(torch.zeros(1, 4), 2, 2)
