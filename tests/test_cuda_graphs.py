"""CUDA graph capture of the serving-path ops, as an inference server does it at start-up.

Each case runs in a fresh process whose first fastattn call is made inside
torch.cuda.graph(...) capture, with no eager warm-up: everything fastattn sets up lazily
on first use (the pinned error flag, device attributes) must be legal during capture.
Then new values are written into the captured input buffers, the graph is replayed, and
its outputs must equal an eager call on the same new values, bit for bit (same kernels,
same launch shapes).

CUDA only: skipped without a GPU (README, GPU section).
"""

import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")

SCRIPT = textwrap.dedent(r'''
    import sys
    import torch
    import fastattn

    op = sys.argv[1]
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    P, PS, HK, HQ, D = 40, 16, 2, 8, 128

    def rnd(*shape):
        return torch.randn(*shape).to(dt).to(dev)

    def table(b, width):
        return torch.randperm(P)[: b * width].view(b, width).to(torch.int32).to(dev)

    def inputs_decode():
        return dict(q=rnd(3, HQ, D), k_cache=rnd(P, PS, HK, D), v_cache=rnd(P, PS, HK, D),
                    block_table=table(3, 8),
                    seq_lens=torch.tensor([37, 1, 128], dtype=torch.int32, device=dev))

    if op == "decode":
        static = inputs_decode()
        new = inputs_decode()
        new["seq_lens"] = torch.tensor([100, 7, 3], dtype=torch.int32, device=dev)
        run = lambda t: fastattn.paged_attention(t["q"], t["k_cache"], t["v_cache"],
                                                 t["block_table"], t["seq_lens"],
                                                 return_lse=True)
    elif op == "extend":
        def inputs():
            t = inputs_decode()
            t["q"] = rnd(9, HQ, D)
            t["cu_seqlens_q"] = torch.tensor([0, 5, 6, 9], dtype=torch.int32, device=dev)
            return t
        static, new = inputs(), inputs()
        new["seq_lens"] = torch.tensor([60, 2, 90], dtype=torch.int32, device=dev)
        new["cu_seqlens_q"] = torch.tensor([0, 2, 4, 9], dtype=torch.int32, device=dev)
        # max_seqlen_q is a Python int: fixed at capture, a bound the new lengths respect.
        run = lambda t: fastattn.paged_attention(t["q"], t["k_cache"], t["v_cache"],
                                                 t["block_table"], t["seq_lens"],
                                                 cu_seqlens_q=t["cu_seqlens_q"],
                                                 max_seqlen_q=5, return_lse=True)
    elif op == "append_kv":
        def inputs():
            return dict(k_cache=rnd(P, PS, HK, D), v_cache=rnd(P, PS, HK, D), k=rnd(6, HK, D),
                        v=rnd(6, HK, D),
                        slots=torch.randperm(P * PS)[:6].to(torch.int64).to(dev))
        static, new = inputs(), inputs()
        new["slots"][2] = -1  # skipped
        def run(t):
            fastattn.append_kv(t["k_cache"], t["v_cache"], t["k"], t["v"], t["slots"])
            return t["k_cache"], t["v_cache"]
    elif op == "merge":
        def inputs():
            return dict(out_a=rnd(4, 3, HQ, D), lse_a=torch.randn(4, 3, HQ, device=dev),
                        out_b=rnd(4, 3, HQ, D), lse_b=torch.randn(4, 3, HQ, device=dev))
        static, new = inputs(), inputs()
        new["lse_b"][0, 0] = float("-inf")
        run = lambda t: fastattn.merge_attention_states(t["out_a"], t["lse_a"], t["out_b"],
                                                        t["lse_b"])
    else:
        raise SystemExit(f"unknown op {op}")

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # the process's first fastattn call
        captured = run(static)

    for name, value in new.items():  # append_kv: both start from the same caches
        static[name].copy_(value)
    graph.replay()
    torch.cuda.synchronize()
    eager = run(new)
    torch.cuda.synchronize()
    fastattn.check_errors()
    for got, want in zip(captured, eager):
        assert torch.equal(got, want), f"{op}: replay differs from eager"
    assert captured[0].abs().sum().item() > 0, f"{op}: all-zero output"
    graph.replay()  # replays again, still without error
    torch.cuda.synchronize()
    fastattn.check_errors()
    print("ok", op)
''')


@pytest.mark.parametrize("op", ["decode", "extend", "append_kv", "merge"])
def test_capture_first_call_and_replay(op):
    done = subprocess.run([sys.executable, "-c", SCRIPT, op], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and f"ok {op}" in done.stdout, done.stdout + done.stderr
