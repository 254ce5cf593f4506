"""The `distributed` suite: fastattn.distributed.ring_attention on 2 and 4 gloo ranks of
this machine against one process running fastattn.attention over the same whole sequence.

Each world size is a fresh process group (spawned, `torch.set_num_threads` = cores / W
per rank). Every timed call starts after a barrier; the step time is rank 0's median.
The communication share is the median time of the same ring of K/V transfers with no
attention computed, over the step time: what the ring costs where nothing hides it. On one
machine the ranks share its cores and memory, so the speed-up says how well the ring
overlaps and splits work, not what separate machines would give.
"""
from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import statistics
import time
from typing import Dict, List

import torch

WORLDS = (2, 4)
# CPU tensors on gloo only so far (NCCL needs one GPU per rank): --device cuda runs the CPU
# shape, and says so.
SHAPES = {"cpu": dict(batch=1, heads=8, head_dim=64, seqlen=4096, repeats=5),
          "quick": dict(batch=1, heads=4, head_dim=64, seqlen=512, repeats=3)}


def _inputs(shape, dtype):
    g = torch.Generator().manual_seed(0)
    B, S, H, D = shape["batch"], shape["seqlen"], shape["heads"], shape["head_dim"]
    return [torch.randn(B, S, H, D, generator=g).to(dtype) for _ in range(3)]


def _median_ms(fn, repeats, barrier=None) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if barrier:
            barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _rank_main(rank, world, port, shape, dtype, threads, queue):
    import torch.distributed as dist

    from .. import distributed as fd

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    try:
        q, k, v = (fd.zigzag_shard(t, world, rank) for t in _inputs(shape, dtype))
        with torch.inference_mode():
            step = _median_ms(lambda: fd.ring_attention(q, k, v, causal=True),
                              shape["repeats"], dist.barrier)
            lengths = [0] * world
            dist.all_gather_object(lengths, q.shape[1])
            kv = torch.stack([k, v])
            ring = lambda: fd._ring(kv, lambda src: (q.shape[0], lengths[src], *k.shape[2:]),
                                    None, lambda cur, src: None)
            comm = _median_ms(ring, shape["repeats"], dist.barrier)
        if rank == 0:
            queue.put((world, step, comm))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(profile: str, dtype: torch.dtype, overrides: Dict) -> List[Dict]:
    """Times the suite, prints its table and returns its rows (for the JSON). overrides: the
    CLI's shape options (batch, heads, head_dim, seqlen; None: the profile's default)."""
    import fastattn

    if profile not in SHAPES:
        print(f"\ndistributed: {profile} ranks are not measured yet; gloo ranks on the CPU")
    shape = dict(SHAPES.get(profile, SHAPES["cpu"]))
    shape.update({k: overrides[k] for k in ("batch", "heads", "head_dim", "seqlen")
                  if overrides.get(k) is not None})
    cores = os.cpu_count() or 1
    with torch.inference_mode():
        q, k, v = _inputs(shape, dtype)
        single = _median_ms(lambda: fastattn.attention(q, k, v, causal=True), shape["repeats"])
    rows = [dict(impl="1 process", world=1, ms=single)]
    ctx = multiprocessing.get_context("spawn")
    for world in WORLDS:
        queue = ctx.Queue()
        port = _free_port()
        procs = [ctx.Process(target=_rank_main,
                             args=(r, world, port, shape, dtype, max(1, cores // world), queue))
                 for r in range(world)]
        for p in procs:
            p.start()
        try:
            _, step, comm = queue.get(timeout=600)
            rows.append(dict(impl=f"{world} gloo ranks", world=world, ms=step, comm_ms=comm,
                             comm_share=comm / step, speedup=single / step))
        finally:
            for p in procs:
                p.join(timeout=60)
                if p.is_alive():
                    p.kill()
    name = f"B{shape['batch']} H{shape['heads']} S{shape['seqlen']} D{shape['head_dim']} causal"
    print(f"\ndistributed: ring_attention (zigzag) vs one process, {name}, "
          f"{str(dtype).replace('torch.', '')}, {cores} cores")
    print(f"{'impl':<16}{'ms':>10}{'x 1 process':>14}{'comm ms':>10}{'comm share':>12}")
    for row in rows:
        extra = (f"{row['speedup']:>14.2f}{row['comm_ms']:>10.2f}{100 * row['comm_share']:>11.1f}%"
                 if row["world"] > 1 else "")
        print(f"{row['impl']:<16}{row['ms']:>10.2f}{extra}")
    for row in rows:
        row.update(suite="distributed", shape=name, dtype=str(dtype).replace("torch.", ""))
    return rows
