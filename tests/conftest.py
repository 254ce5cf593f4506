"""Shared fixtures and helpers for the fastattn test suite.

Devices: every parity test takes the ``device`` fixture, "cpu" always and "cuda" when a GPU
is present, so the same tests run unchanged on a GPU machine.

Tolerance (the FlashAttention rule): the kernel's max abs error against the float64
reference may be at most twice the max abs error of the same reference computed by PyTorch
at the input precision, plus 1e-5. fp32 inputs use the fp32 reference as that baseline. The
same rule applies to lse; in addition -inf entries of lse must match exactly, rows with
lse -inf must be exactly 0, and nothing may be NaN.
"""

import importlib
import math
import os
import zlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LOWP_DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed(request):
    """Seed every test deterministically, differently per test id (parameters included)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _no_pending_kernel_errors():
    """CUDA kernels report bad index values at the next fastattn call: a test that left one
    pending would have it blamed on the next test. So each test ends with check_errors()
    (a sync of the devices fastattn used; nothing at all where no CUDA kernel ran)."""
    yield
    import fastattn

    fastattn.check_errors()


def skip_if_unsupported(device, dtype, head_dim=None):
    """CUDA supports fp16/bf16 only and head dims that are multiples of 8 up to 256."""
    if device == "cuda":
        if dtype not in LOWP_DTYPES:
            pytest.skip("CUDA kernels take fp16/bf16 only")
        if head_dim is not None and (head_dim % 8 != 0 or head_dim > 256):
            pytest.skip(f"CUDA kernels do not support head_dim={head_dim}")


def dtype_id(dtype):
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------

def randn(*shape, dtype=torch.float16, device="cpu", scale=1.0):
    """Standard normal values drawn on the CPU (same numbers on every device), then moved."""
    return (torch.randn(*shape) * scale).to(dtype).to(device)


def i32(values, device="cpu"):
    return torch.tensor(values, dtype=torch.int32, device=device)


def i64(values, device="cpu"):
    return torch.tensor(values, dtype=torch.int64, device=device)


def make_qkv(batch, q_len, k_len, num_heads, num_kv_heads, head_dim, dtype, device):
    """Dense q [B, Sq, Hq, D] and k, v [B, Sk, Hk, D]."""
    q = randn(batch, q_len, num_heads, head_dim, dtype=dtype, device=device)
    k = randn(batch, k_len, num_kv_heads, head_dim, dtype=dtype, device=device)
    v = randn(batch, k_len, num_kv_heads, head_dim, dtype=dtype, device=device)
    return q, k, v


def cu_seqlens(lengths, device="cpu"):
    """int32 [B+1] prefix sums of ``lengths``, starting at 0."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def nan_tensor(*shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def is_nan_bitwise_equal(a, b):
    """True iff a and b are equal element by element, NaN matching NaN."""
    return a.shape == b.shape and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


class PagedKV:
    """A NaN-poisoned paged KV cache holding the given per-sequence keys and values.

    Pages are handed out in a random order, every sequence's block table row has spare
    columns beyond the pages it needs, and those spare columns point at unused pages. All
    unused slots (the tail of a sequence's last page, and whole unused pages) hold NaN, so a
    kernel that reads past ``seq_lens`` shows up as NaN in its output.

    Attributes: k_cache, v_cache [P, page_size, Hk, D]; block_table int32 [B, max_pages];
    seq_lens int32 [B]; keys, values: lists of [seq_len, Hk, D] tensors (the dense truth).
    """

    @classmethod
    def random(cls, seq_lens, num_kv_heads, head_dim, page_size, dtype, device="cpu", **kwargs):
        """Random keys and values of the given lengths (drawn on the CPU, see randn)."""
        keys = [randn(n, num_kv_heads, head_dim, dtype=dtype) for n in seq_lens]
        values = [randn(n, num_kv_heads, head_dim, dtype=dtype) for n in seq_lens]
        return cls(keys, values, page_size, device, **kwargs)

    def __init__(self, keys, values, page_size, device, spare_columns=2, spare_pages=3):
        self.page_size = page_size
        self.keys, self.values = keys, values
        num_kv_heads, head_dim = keys[0].shape[1:]
        dtype = keys[0].dtype
        lengths = [k.shape[0] for k in keys]
        pages_needed = [math.ceil(n / page_size) for n in lengths]
        num_pages = sum(pages_needed) + spare_pages
        max_pages = max(pages_needed) + spare_columns

        order = torch.randperm(num_pages).tolist()
        used, unused = order[: sum(pages_needed)], order[sum(pages_needed):]
        table = torch.empty(len(keys), max_pages, dtype=torch.int32)
        for b, n in enumerate(pages_needed):
            table[b, :n] = torch.tensor(used[:n], dtype=torch.int32)
            used = used[n:]
            # Spare columns point at real but unused (NaN) pages.
            spare = torch.tensor(unused)[torch.randint(len(unused), (max_pages - n,))]
            table[b, n:] = spare.to(torch.int32)

        k_cache = nan_tensor(num_pages, page_size, num_kv_heads, head_dim, dtype=dtype,
                             device="cpu")
        v_cache = k_cache.clone()
        for b, n in enumerate(lengths):
            for t in range(n):
                page, offset = int(table[b, t // page_size]), t % page_size
                k_cache[page, offset] = keys[b][t].cpu()
                v_cache[page, offset] = values[b][t].cpu()
        self.k_cache = k_cache.to(device)
        self.v_cache = v_cache.to(device)
        self.block_table = table.to(device)
        self.seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)

    def slot(self, b, t):
        """Slot index of token t of sequence b."""
        return int(self.block_table[b, t // self.page_size]) * self.page_size + t % self.page_size


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------

def unpack_result(result, return_lse):
    """Check the return type (tensor, or an (out, lse) pair) and return (out, lse or None)."""
    if return_lse:
        assert isinstance(result, tuple) and len(result) == 2, type(result)
        return result
    assert isinstance(result, torch.Tensor), type(result)
    return result, None


def _max_abs(a, b):
    return (a - b).abs().max().item() if a.numel() else 0.0


def assert_close_to_ref(out, lse, ref, ref_lowp, *, out_dtype):
    """The FlashAttention tolerance rule (see the module docstring).

    out, lse: kernel results (lse may be None). ref: float64 (out, lse). ref_lowp: the same
    reference computed at the input precision. out_dtype: the dtype ``out`` must have.
    """
    ref_out, ref_lse = ref
    lowp_out, lowp_lse = ref_lowp
    assert out.dtype == out_dtype, (out.dtype, out_dtype)
    assert out.shape == ref_out.shape, (tuple(out.shape), tuple(ref_out.shape))
    out = out.detach().cpu().double()
    assert not torch.isnan(out).any(), "NaN in out"
    assert torch.isfinite(out).all(), "inf in out"

    empty = torch.isneginf(ref_lse)  # queries that see no key
    assert (out[empty] == 0).all(), "a query that sees no key must give out == 0"
    out_tol = 2 * _max_abs(lowp_out.double(), ref_out) + 1e-5
    out_err = _max_abs(out, ref_out)
    assert out_err <= out_tol, f"out: max abs err {out_err:.3g} > tol {out_tol:.3g}"

    if lse is None:
        return
    assert lse.dtype == torch.float32, lse.dtype
    assert lse.shape == ref_lse.shape, (tuple(lse.shape), tuple(ref_lse.shape))
    lse = lse.detach().cpu().double()
    assert not torch.isnan(lse).any(), "NaN in lse"
    assert not torch.isposinf(lse).any(), "+inf in lse"
    assert torch.equal(torch.isneginf(lse), empty), (
        f"lse -inf positions differ: kernel {torch.isneginf(lse).sum().item()}, "
        f"reference {empty.sum().item()}")
    lse_tol = 2 * _max_abs(lowp_lse.double()[~empty], ref_lse[~empty]) + 1e-5
    lse_err = _max_abs(lse[~empty], ref_lse[~empty])
    assert lse_err <= lse_tol, f"lse: max abs err {lse_err:.3g} > tol {lse_tol:.3g}"


def _to_cpu(x):
    return x.cpu() if isinstance(x, torch.Tensor) else x


def assert_matches_reference(result, ref_fn, *args, return_lse, **kwargs):
    """Check a fastattn result against ``ref_fn(*args, **kwargs)`` with the tolerance rule.

    ``args[0]`` is q: its dtype is both the expected output dtype and the low precision the
    tolerance baseline is computed in. Returns the float64 reference (out, lse).
    """
    out, lse = unpack_result(result, return_lse)
    args = [_to_cpu(a) for a in args]
    kwargs = {name: _to_cpu(value) for name, value in kwargs.items()}
    input_dtype = args[0].dtype
    ref = ref_fn(*args, **kwargs)
    ref_lowp = ref_fn(*args, dtype=input_dtype, **kwargs)
    assert_close_to_ref(out, lse, ref, ref_lowp, out_dtype=input_dtype)
    return ref


def import_emu_module(name="_emu_ops"):
    """fastattn._emu_ops (the CUDA kernels on the CPU emulation) or fastattn._emu (the
    primitive test kernels), or skip the calling module.

    FASTATTN_REQUIRE_EMU=1 (make test, CI) turns a missing module into an error, so the
    emulated-kernel tests can never pass by skipping.
    """
    try:
        return importlib.import_module(f"fastattn.{name}")
    except ImportError:
        if os.environ.get("FASTATTN_REQUIRE_EMU") == "1":
            raise
        pytest.skip(f"fastattn.{name} not built (make build, or configure with -DFASTATTN_EMU=ON)",
                    allow_module_level=True)


def import_emu_ops():
    return import_emu_module("_emu_ops")


def default_emu_seed():
    """The schedule emulated launches use when a test does not choose one."""
    return int(os.environ.get("FASTATTN_EMU_SEED", "0") or 0)


@pytest.fixture(params=["seed0", "seed1", "shuffled"])
def schedule(request):
    """Runs the test under each emulation schedule (csrc/emu/README.md): forward and reverse
    thread order, and a shuffled one seeded from the per-test torch seed; returns the seed."""
    from fastattn import _emu_ops

    if request.param == "shuffled":
        seed = 2 + int(torch.randint(0, 2**31 - 3, ()).item())
    else:
        seed = int(request.param[-1])
    _emu_ops.set_schedule(seed)
    yield seed
    _emu_ops.set_schedule(default_emu_seed())
