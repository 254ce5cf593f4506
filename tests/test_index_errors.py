"""Index values out of range: how each device reports them, and that every device applies
one rule.

CPU ops check index values on the host and raise ValueError at once. CUDA kernels check
them on the device (a host check would need a sync), skip what they would read through
them, and flag the error: the next fastattn call on that device, or fastattn.check_errors(),
raises ValueError. The emulated CUDA kernels (fastattn._emu_ops) raise at the call.

The CUDA cases skip without a GPU; the report path from C++ to Python's ValueError is
tested everywhere through a test hook that sets the same error bits a kernel would.
"""

import pytest
import torch

import fastattn
from fastattn import _C

from conftest import HAS_CUDA, PagedKV, cu_seqlens, i64, import_emu_ops, randn

F16 = torch.float16

cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")

# ErrorBits (csrc/include/fastattn/params.h) and the argument each message names.
ERROR_BITS = {1: "block_table", 2: "seq_lens", 4: "cu_seqlens_q", 8: "cu_seqlens_k",
              16: "slot_mapping"}


# ---------------------------------------------------------------------------------------
# check_errors(): the report path, on every machine
# ---------------------------------------------------------------------------------------

def test_check_errors_is_a_noop_without_errors():
    fastattn.check_errors()
    fastattn.check_errors()


@pytest.mark.parametrize("bit", sorted(ERROR_BITS))
def test_check_errors_raises_value_error(bit):
    """A ValueError (not the RuntimeError a plain pybind11 binding would give), naming the
    argument; reported once, then cleared."""
    _C._inject_kernel_errors(bit)
    with pytest.raises(ValueError, match=ERROR_BITS[bit]) as info:
        fastattn.check_errors()
    assert type(info.value) is ValueError
    assert "since the last check" in str(info.value)
    fastattn.check_errors()


def test_check_errors_names_every_flagged_argument():
    _C._inject_kernel_errors(1 | 2 | 16)
    with pytest.raises(ValueError) as info:
        fastattn.check_errors()
    for name in ("block_table", "seq_lens", "slot_mapping"):
        assert name in str(info.value)
    assert "cu_seqlens" not in str(info.value)


def test_unsupported_gpu_message():
    """GPUs below sm_80 get an error naming the GPU and its compute capability at their
    first CUDA call (csrc/ops/kernel_ops.h); sm_80 and newer, Blackwell included, run."""
    msg = _C._unsupported_gpu_message(1, "Tesla T4", 7, 5)
    assert "cuda:1" in msg and "Tesla T4" in msg and "7.5" in msg and "sm_80" in msg
    assert _C._unsupported_gpu_message(0, "Tesla V100-SXM2-16GB", 7, 0)
    for major, minor in [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]:
        assert _C._unsupported_gpu_message(0, "gpu", major, minor) == ""


# ---------------------------------------------------------------------------------------
# One rule on every device: every block-table entry below seq_len is checked, also the
# ones a sliding window or an empty query chunk never reads
# ---------------------------------------------------------------------------------------

DEVICES_AND_EMU = ["cpu", "emu", pytest.param("cuda", marks=cuda_only)]

# Sequence 0 has 20 keys in 4 pages of 5; its queries (positions 18 and 19, or the decode
# token at 19) see keys >= 15 through the window, so pages 0-2 are never read.
SEQ_LENS = [20, 9]


def _paged_call(device, cache, q, **kwargs):
    """paged_attention on `device` ("emu": the CUDA kernel sources on the CPU emulation),
    returning once any index error has been raised."""
    if device == "emu":
        import_emu_ops()  # registers torch.ops.fastattn_emu
        cu_q = kwargs.get("cu_seqlens_q")
        max_q = kwargs.get("max_seqlen_q", 1)
        left, right = kwargs.get("window_size", (-1, -1))
        torch.ops.fastattn_emu.paged_attention(q, cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens,
                                               cu_q, max_q, q.shape[-1] ** -0.5, True, left,
                                               right, 0.0)
        return
    fastattn.paged_attention(q, cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens,
                             **kwargs)
    fastattn.check_errors()  # CUDA reports here; a no-op on CPU


def _cache(device):
    return PagedKV.random(SEQ_LENS, 2, 64, 5, F16, "cpu" if device == "emu" else device)


@pytest.mark.parametrize("device", DEVICES_AND_EMU)
@pytest.mark.parametrize("form", ["extend", "decode"])
@pytest.mark.parametrize("bad", [-1, "num_pages"])
def test_bad_entry_left_of_every_window(device, form, bad):
    cache = _cache(device)
    num_pages = cache.k_cache.shape[0]
    dev = "cpu" if device == "emu" else device
    if form == "extend":
        q = randn(3, 4, 64, dtype=F16, device=dev)
        kwargs = dict(cu_seqlens_q=cu_seqlens([2, 1], dev), max_seqlen_q=2, window_size=(3, 0))
    else:
        q = randn(2, 4, 64, dtype=F16, device=dev)
        kwargs = dict(window_size=(3, 0))
    _paged_call(device, cache, q, **kwargs)  # a valid table passes
    cache.block_table[0, 0] = num_pages if bad == "num_pages" else bad
    with pytest.raises(ValueError, match="block_table"):
        _paged_call(device, cache, q, **kwargs)


@pytest.mark.parametrize("device", DEVICES_AND_EMU)
@pytest.mark.parametrize("q_lens", [[2, 0], [0, 0]], ids=["one_empty", "all_empty"])
def test_bad_entry_of_a_sequence_without_query_tokens(device, q_lens):
    """Extend with a sequence that has keys but no query tokens this step (or no query
    token in the whole call): its pages are read by no block, and still checked."""
    cache = _cache(device)
    dev = "cpu" if device == "emu" else device
    q = randn(sum(q_lens), 4, 64, dtype=F16, device=dev)
    kwargs = dict(cu_seqlens_q=cu_seqlens(q_lens, dev), max_seqlen_q=max(q_lens))
    _paged_call(device, cache, q, **kwargs)
    cache.block_table[1, 1] = -7
    with pytest.raises(ValueError, match="block_table"):
        _paged_call(device, cache, q, **kwargs)


@pytest.mark.parametrize("device", DEVICES_AND_EMU)
def test_entries_past_seq_len_are_free(device):
    """The rule's other half: entries beyond a sequence's pages are not checked anywhere."""
    cache = _cache(device)
    cache.block_table[0, 4:] = -1
    cache.block_table[1, 2:] = 10**9
    dev = "cpu" if device == "emu" else device
    q = randn(3, 4, 64, dtype=F16, device=dev)
    _paged_call(device, cache, q, cu_seqlens_q=cu_seqlens([2, 1], dev), max_seqlen_q=2,
                window_size=(3, 0))


# ---------------------------------------------------------------------------------------
# CUDA: a bad index surfaces at the next call and at check_errors(), never as a bad read
# ---------------------------------------------------------------------------------------

def _bad_cuda_call(what):
    """Launches one op with an out-of-range `what` on CUDA; returns a valid call."""
    cache = PagedKV.random([20, 9], 2, 64, 5, F16, "cuda")
    q = randn(2, 4, 64, dtype=F16, device="cuda")
    table, lens = cache.block_table.clone(), cache.seq_lens.clone()

    def attend(block_table, seq_lens):
        return fastattn.paged_attention(q, cache.k_cache, cache.v_cache, block_table, seq_lens)

    if what == "block_table":
        table[1, 1] = cache.k_cache.shape[0]
        attend(table, cache.seq_lens)
    elif what == "seq_lens":
        lens[0] = table.shape[1] * 5 + 1
        attend(cache.block_table, lens)
    else:
        k = randn(2, 2, 64, dtype=F16, device="cuda")
        slots = i64([3, cache.k_cache.shape[0] * 5], device="cuda")
        fastattn.append_kv(cache.k_cache, cache.v_cache, k, k, slots)
    return lambda: attend(cache.block_table, cache.seq_lens)


@cuda_only
@pytest.mark.parametrize("what", ["block_table", "seq_lens", "slot_mapping"])
def test_cuda_error_raised_at_next_call(what):
    valid_call = _bad_cuda_call(what)
    torch.cuda.synchronize()  # the flag is read without a sync: let the kernel finish
    with pytest.raises(ValueError, match=what) as info:
        valid_call()
    assert "before this call" in str(info.value)
    valid_call()  # reported once
    fastattn.check_errors()


@cuda_only
@pytest.mark.parametrize("what", ["block_table", "seq_lens", "slot_mapping"])
def test_cuda_error_raised_at_check_errors(what):
    valid_call = _bad_cuda_call(what)
    with pytest.raises(ValueError, match=what) as info:
        fastattn.check_errors()
    assert "since the last check" in str(info.value)
    fastattn.check_errors()
    valid_call()


@cuda_only
def test_cuda_check_errors_refuses_to_run_inside_capture():
    """It synchronises the device, which capture forbids: a clear error, not an
    invalidated capture."""
    cache = PagedKV.random([9], 1, 64, 5, F16, "cuda")
    q = randn(1, 1, 64, dtype=F16, device="cuda")
    fastattn.paged_attention(q, cache.k_cache, cache.v_cache, cache.block_table, cache.seq_lens)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="check_errors"):
        with torch.cuda.graph(graph):
            fastattn.check_errors()
