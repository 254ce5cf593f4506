"""Device primitives (csrc/include/fastattn/device) against plain references.

The test kernels (csrc/emu/test_kernels.cuh) are written once and run on two backends of the
test-only module ``fastattn._emu`` (built with ``-DFASTATTN_EMU=ON``):

- ``emu``: the CPU emulation, under several schedules (``_emu.schedule(seed)``): seed 0 runs
  threads forward and lands cp.async copies at the covering wait, seed 1 runs them in reverse
  and lands copies at issue, seeds >= 2 shuffle the threads and land copies at random.
- ``cuda``: the same kernels compiled by nvcc, when the module was built with CUDA and a GPU
  is present; a lent GPU thereby confirms that the emulation matches the hardware.

Checks independent of the implementation: mma fragments assembled into matrices and
multiplied in float64; shuffles against CUDA's documented lane arithmetic; ldmatrix against
the PTX fragment mapping; conversions against torch; fp8 conversions (every code, every
rounding boundary) against float64 references built from the bit fields. Emulation-only
tests show that missing synchronisation changes the result under some schedule and that
misuse raises an error.

Without the module the file is skipped, unless FASTATTN_REQUIRE_EMU=1 (CI) makes that an
error. FASTATTN_EMU_MODULE=/path/to/_emu*.so loads a module built outside the package.
"""

import importlib.util
import os
import re
import warnings

import pytest
import torch

from conftest import import_emu_module


def _load_emu():
    path = os.environ.get("FASTATTN_EMU_MODULE")
    if path:
        spec = importlib.util.spec_from_file_location("_emu", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return import_emu_module("_emu")


_emu = _load_emu()

HAS_GPU = bool(getattr(_emu, "has_cuda", False)) and torch.cuda.is_available()
EMU_SEEDS = [0, 1, 2, 3]


class Target:
    """A backend and, for the emulation, a schedule seed."""

    def __init__(self, backend, seed=0):
        self.backend = backend
        self.seed = seed
        self.device = "cuda" if backend == "cuda" else "cpu"
        self.mod = getattr(_emu, backend) if backend == "emu" or HAS_GPU else None

    @property
    def emulated(self):
        return self.backend == "emu"

    def __call__(self, name, *args, workers=0):
        kwargs = {"seed": self.seed, "workers": workers} if self.emulated else {}
        return getattr(self.mod, name)(*args, **kwargs)

    def __repr__(self):
        return f"emu-seed{self.seed}" if self.emulated else "cuda"


TARGETS = [pytest.param(Target("emu", s), id=f"emu-seed{s}") for s in EMU_SEEDS] + [
    pytest.param(Target("cuda"), id="cuda", marks=pytest.mark.skipif(
        not HAS_GPU, reason="no GPU, or fastattn._emu built without CUDA"))
]
EMU_TARGETS = [pytest.param(Target("emu", s), id=f"emu-seed{s}") for s in EMU_SEEDS]


def ptr(t):
    return t.data_ptr()


def u32(t):
    """int32 tensor holding uint32 bit patterns -> int64 values 0..2^32-1."""
    return t.cpu().to(torch.int64) & 0xFFFFFFFF


def bits16(t):
    return t.cpu().view(torch.int16).to(torch.int64) & 0xFFFF


# ---------------------------------------------------------------------------------------
# Indices
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("grid, block", [((3, 2, 2), (8, 4, 2)), ((2, 1, 1), (32, 3, 1))])
def test_thread_and_block_indices(target, grid, block):
    threads = block[0] * block[1] * block[2]
    blocks = grid[0] * grid[1] * grid[2]
    out = torch.full((blocks * threads, 16), -1, dtype=torch.int32, device=target.device)
    target("index", ptr(out), grid, block)
    out = out.cpu()
    expected = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for tz in range(block[2]):
                    for ty in range(block[1]):
                        for tx in range(block[0]):
                            rank = tx + block[0] * (ty + block[1] * tz)
                            expected.append([tx, ty, tz, bx, by, bz, *block, *grid,
                                             rank, rank % 32, rank // 32, 0])
    assert torch.equal(out, torch.tensor(expected, dtype=torch.int32))


@pytest.mark.parametrize("target", TARGETS)
def test_invalid_launch_configuration_raises(target):
    out = torch.zeros(64 * 16, dtype=torch.int32, device=target.device)
    with pytest.raises((ValueError, RuntimeError)):
        target("index", ptr(out), (1, 1, 1), (33, 33, 1))  # 1089 threads


# ---------------------------------------------------------------------------------------
# mma.sync m16n8k16
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("via_ldmatrix", [False, True], ids=["lane-indexing", "ldmatrix"])
@pytest.mark.parametrize("data", ["normal", "integer"])
def test_mma(target, dtype, via_ldmatrix, data):
    problems = 6
    if data == "integer":  # exact in every precision and summation order
        a = torch.randint(-4, 5, (problems, 16, 16)).to(dtype)
        b = torch.randint(-4, 5, (problems, 16, 8)).to(dtype)
        c = torch.randint(-64, 65, (problems, 16, 8)).float()
    else:
        a = torch.randn(problems, 16, 16).to(dtype)
        b = torch.randn(problems, 16, 8).to(dtype)
        c = torch.randn(problems, 16, 8)
    d = torch.full((problems, 16, 8), float("nan"), device=target.device)
    a_dev, b_dev, c_dev = (x.to(target.device) for x in (a, b, c))
    target("mma", ptr(a_dev), ptr(b_dev), ptr(c_dev), ptr(d), problems,
           dtype == torch.bfloat16, via_ldmatrix)
    d = d.cpu().double()
    ref = a.double() @ b.double() + c.double()
    if data == "integer":
        assert torch.equal(d, ref)
    else:
        # Products are exact in fp32; allow fp32 summation error over the 17 terms.
        bound = 32 * 2.0**-24 * (c.double().abs() + a.double().abs() @ b.double().abs())
        err = (d - ref).abs()
        assert (err <= bound).all(), f"max err {err.max():.3g}, ratio {(err / bound).max():.3g}"


# ---------------------------------------------------------------------------------------
# Shuffles and votes
# ---------------------------------------------------------------------------------------

SHFL_MODES = {"up": 0, "down": 1, "xor": 2, "idx": 3}


def shfl_reference(values, args, mode, width):
    """CUDA's documented __shfl_*_sync lane arithmetic, for full warps."""
    out = values.clone()
    for i in range(values.numel()):
        warp, lane = divmod(i, 32)
        base = lane - lane % width  # first lane of this lane's segment
        a = int(args[i])
        if mode == "up":
            j, valid = lane - a, lane - a >= base
        elif mode == "down":
            j, valid = lane + a, lane + a < base + width
        elif mode == "xor":  # earlier segments are readable, later ones are not
            j = lane ^ a
            valid = j < base + width
        else:
            j, valid = base + a % width, True
        if valid:
            out[i] = values[warp * 32 + j]
    return out


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("mode", list(SHFL_MODES))
@pytest.mark.parametrize("width", [32, 16, 4])
def test_shfl(target, mode, width):
    threads = 128
    values = torch.randint(-2**31, 2**31 - 1, (threads,), dtype=torch.int32)
    if mode in ("up", "down"):
        args = torch.randint(0, width, (threads,), dtype=torch.int32)
    elif mode == "xor":
        args = torch.randint(0, 32, (threads,), dtype=torch.int32)
    else:
        args = torch.randint(0, 64, (threads,), dtype=torch.int32)
    out = torch.zeros(threads, dtype=torch.int32, device=target.device)
    v_dev, a_dev = values.to(target.device), args.to(target.device)
    target("shfl", ptr(v_dev), ptr(a_dev), ptr(out), threads, SHFL_MODES[mode], width, False)
    assert torch.equal(out.cpu(), shfl_reference(values, args, mode, width))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("mode", ["xor", "idx"])
def test_shfl_64bit(target, mode):
    threads = 64
    values = torch.randint(-2**62, 2**62, (threads,), dtype=torch.int64)
    args = torch.randint(0, 32, (threads,), dtype=torch.int32)
    out = torch.zeros(threads, dtype=torch.int64, device=target.device)
    v_dev, a_dev = values.to(target.device), args.to(target.device)
    target("shfl", ptr(v_dev), ptr(a_dev), ptr(out), threads, SHFL_MODES[mode], 32, True)
    assert torch.equal(out.cpu(), shfl_reference(values, args, mode, 32))


@pytest.mark.parametrize("target", TARGETS)
def test_butterfly_reduction(target):
    """The reduction pattern of the softmax: xor 16, 8, 4, 2, 1 leaves the sum in every lane."""
    threads = 64
    values = torch.randint(-1000, 1000, (threads,), dtype=torch.int32)
    acc = values.clone()
    for mask in (16, 8, 4, 2, 1):
        shuffled = torch.zeros(threads, dtype=torch.int32, device=target.device)
        masks = torch.full((threads,), mask, dtype=torch.int32, device=target.device)
        acc_dev = acc.to(target.device)
        target("shfl", ptr(acc_dev), ptr(masks), ptr(shuffled), threads, 2, 32, False)
        acc = acc + shuffled.cpu()
    assert torch.equal(acc, values.view(2, 32).sum(1, dtype=torch.int32).repeat_interleave(32))


@pytest.mark.parametrize("target", TARGETS)
def test_vote(target):
    threads = 128
    pred = (torch.rand(threads) < 0.5).to(torch.int32)
    pred[32:64] = 1  # one warp all true
    pred[64:96] = 0  # one warp all false
    out = torch.zeros(threads, 3, dtype=torch.int32, device=target.device)
    p_dev = pred.to(target.device)
    target("vote", ptr(p_dev), ptr(out), threads)
    out = u32(out)
    for w in range(threads // 32):
        lanes = pred[32 * w:32 * w + 32]
        ballot = sum(int(lanes[l]) << l for l in range(32))
        expected = torch.tensor([ballot, int(lanes.any()), int(lanes.all())])
        assert torch.equal(out[32 * w:32 * w + 32], expected.expand(32, 3)), f"warp {w}"


# ---------------------------------------------------------------------------------------
# ldmatrix
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True], ids=["", "trans"])
def test_ldmatrix_layout(target, num, trans):
    rows = 48  # 8-element (16-byte) rows; each lane points at a random distinct one
    tile = torch.randint(0, 2**16, (rows * 8,), dtype=torch.int32).to(torch.int16)
    offsets = (torch.randperm(rows)[:32] * 8).to(torch.int32)
    out = torch.zeros(32, num, dtype=torch.int32, device=target.device)
    t_dev, o_dev = tile.to(target.device), offsets.to(target.device)
    target("ldmatrix", ptr(t_dev), rows * 8, ptr(o_dev), ptr(out), num, trans)
    out = u32(out)

    elem = tile.view(torch.int16).to(torch.int64) & 0xFFFF
    # Matrix i has rows at the addresses of lanes 8i..8i+7. Lane l receives row l//4,
    # columns 2(l%4) and 2(l%4)+1 -- of the transposed matrix with .trans.
    for lane in range(32):
        r, c = lane // 4, 2 * (lane % 4)
        for i in range(num):
            row_start = [int(offsets[8 * i + k]) for k in range(8)]
            if trans:
                lo, hi = elem[row_start[c] + r], elem[row_start[c + 1] + r]
            else:
                lo, hi = elem[row_start[r] + c], elem[row_start[r] + c + 1]
            assert int(out[lane, i]) == int(lo) | int(hi) << 16, f"lane {lane} matrix {i}"


# ---------------------------------------------------------------------------------------
# cp.async
# ---------------------------------------------------------------------------------------

SKIP_WAIT, SKIP_BARRIER_AFTER_WAIT, SKIP_BARRIER_BEFORE_REFILL = 1, 2, 4


def run_cp_async(target, *, tiles=5, threads=64, mode=0, flags=0, src_bytes=16):
    src = torch.randint(0, 256, (tiles, threads, 16), dtype=torch.uint8)
    out = torch.zeros(tiles, threads, 16, dtype=torch.uint8, device=target.device)
    s_dev = src.to(target.device)
    target("cp_async", ptr(s_dev), ptr(out), tiles, threads, mode, flags, src_bytes)
    expected = src.clone()
    expected[:, :, src_bytes:] = 0
    return out.cpu(), expected


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("src_bytes", [16, 10, 0])
def test_cp_async_pipeline(target, src_bytes):
    out, expected = run_cp_async(target, src_bytes=src_bytes)
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    "flag, caught_by",
    [(SKIP_WAIT, 0), (SKIP_BARRIER_AFTER_WAIT, 0), (SKIP_BARRIER_BEFORE_REFILL, 1)],
    ids=["no-wait", "no-barrier-after-wait", "no-barrier-before-refill"])
def test_cp_async_missing_synchronisation_is_caught(flag, caught_by):
    """Copies landing late catch a missing wait; landing early, a buffer refilled too soon."""
    wrong = {}
    for seed in EMU_SEEDS:
        out, expected = run_cp_async(Target("emu", seed), flags=flag)
        wrong[seed] = not torch.equal(out, expected)
    assert wrong[caught_by], f"{_emu.schedule(caught_by)} did not expose it: {wrong}"


@pytest.mark.parametrize("target", TARGETS)
def test_cp_async_wait_group(target):
    """wait_group 1 completes the older group; the newest may still be in flight."""
    out, expected = run_cp_async(target, tiles=2, mode=1)
    assert torch.equal(out[0], expected[0])
    if target.emulated and target.seed == 0:  # copies land at the covering wait: not yet
        assert (out[1] == 0xFF).all()
    elif target.emulated and target.seed == 1:  # copies land at issue
        assert torch.equal(out[1], expected[1])


# ---------------------------------------------------------------------------------------
# Block barrier and shared memory
# ---------------------------------------------------------------------------------------

BARRIER_BLOCK, BARRIER_NONE, BARRIER_WARP = 0, 1, 2


def run_reduce(target, barrier, rows=3, threads=256):
    x = torch.randint(-100, 100, (rows, threads)).float()  # exact sums in any order
    out = torch.zeros(rows, device=target.device)
    x_dev = x.to(target.device)
    target("reduce", ptr(x_dev), ptr(out), rows, threads, barrier)
    return out.cpu(), x.sum(1)


@pytest.mark.parametrize("target", TARGETS)
def test_barrier_reduction(target):
    out, expected = run_reduce(target, BARRIER_BLOCK)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("barrier", [BARRIER_NONE, BARRIER_WARP], ids=["removed", "sync_warp"])
def test_missing_barrier_gives_wrong_result(barrier):
    """Without the block barrier (even with warp collectives in its place) some schedule
    lets a warp read shared memory before another warp wrote it."""
    results = {seed: run_reduce(Target("emu", seed), barrier) for seed in EMU_SEEDS}
    wrong = [seed for seed, (out, expected) in results.items() if not torch.equal(out, expected)]
    assert wrong, "removing the barriers went unnoticed under every schedule"
    assert 0 in wrong  # forward order: warp 0 runs ahead and reads unwritten slots


@pytest.mark.parametrize("seed", [0, 2])
def test_shared_memory_starts_poisoned_in_every_block(seed):
    blocks, threads = 4, 64
    out = torch.zeros(blocks, threads, 2, dtype=torch.int32)
    # One worker: all blocks reuse it, so stale data from a previous block would show.
    Target("emu", seed)("smem_poison", ptr(out), blocks, threads, workers=1)
    assert (out == -1).all()  # 0xFFFFFFFF: NaN in fp32, fp16 and bf16


# ---------------------------------------------------------------------------------------
# Atomics
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_atomics(target):
    blocks, threads = 6, 64
    n = blocks * threads
    values = torch.randint(-1000, 1000, (n,), dtype=torch.int32)
    dev = target.device
    fsum = torch.zeros(1, device=dev)
    isum = torch.zeros(1, dtype=torch.int32, device=dev)
    imax = torch.full((1,), -2**31, dtype=torch.int32, device=dev)
    imin = torch.full((1,), 2**31 - 1, dtype=torch.int32, device=dev)
    bits = torch.zeros(1, dtype=torch.int32, device=dev)
    counts = torch.zeros(blocks, dtype=torch.int32, device=dev)
    cas_slot = torch.full((1,), -1, dtype=torch.int32, device=dev)
    cas_wins = torch.zeros(1, dtype=torch.int32, device=dev)
    exch = torch.full((1,), -1, dtype=torch.int32, device=dev)
    v_dev = values.to(dev)
    # Two workers: blocks really run at the same time under the emulation.
    target("atomics", ptr(v_dev), blocks, threads, ptr(fsum), ptr(isum), ptr(imax), ptr(imin),
           ptr(bits), ptr(counts), ptr(cas_slot), ptr(cas_wins), ptr(exch), workers=2)
    assert fsum.item() == float(values.sum())
    assert isum.item() == int(values.sum())
    assert imax.item() == int(values.max())
    assert imin.item() == int(values.min())
    assert bits.item() == -1
    assert counts.cpu().tolist() == [threads] * blocks
    assert cas_wins.item() == 1
    assert 0 <= cas_slot.item() < n
    assert 0 <= exch.item() < n


# ---------------------------------------------------------------------------------------
# Conversions and fast math
# ---------------------------------------------------------------------------------------

def special_values():
    fp16_max, bf16_max = 65504.0, 3.3895313892515355e38
    v = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"),
         fp16_max, 65519.0, 65520.0, 65535.0, 65536.0, -65520.0,  # fp16 overflow boundary
         2.0**-14, 2.0**-15, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-26, 1.5 * 2.0**-24,
         1e-40, -1e-42, 2.0**-126,  # fp32 subnormals and the smallest normal
         bf16_max, 3.4e38, 1 + 2.0**-8, 1 + 3 * 2.0**-8, 1 + 2.0**-11, 1 + 3 * 2.0**-11]
    return torch.tensor(v, dtype=torch.float32)


def conversion_inputs():
    x = torch.cat([special_values(),
                   torch.randn(2000) * torch.logspace(-10, 10, 2000, base=2.0),
                   torch.randn(500) * 1e-6, torch.randn(500) * 6e4])
    # Values halfway between neighbouring bf16 and fp16 numbers: ties round to even.
    base = torch.randn(256)
    ties_bf16 = (base.view(torch.int32) & ~0xFFFF | 0x8000).view(torch.float32)
    h = base.half()
    h_next = (h.view(torch.int16) + 1).view(torch.float16)  # next value away from zero
    ties_f16 = (h.float() + h_next.float()) / 2  # exact in fp32
    x = torch.cat([x, ties_bf16, ties_f16])
    return x[: x.numel() // 2 * 2].contiguous()


def assert_same_bits(got, ref_float, name):
    """16-bit patterns must match except that any NaN matches any NaN."""
    ref_bits = bits16(ref_float)
    nan = torch.isnan(ref_float.cpu())
    got_float = got.to(torch.int16).view(ref_float.dtype)
    assert torch.isnan(got_float[nan]).all(), f"{name}: NaN must convert to NaN"
    mismatch = (got[~nan] != ref_bits[~nan]).nonzero().flatten()
    assert mismatch.numel() == 0, f"{name}: {mismatch.numel()} mismatches, first at {mismatch[:5]}"


@pytest.mark.parametrize("target", TARGETS)
def test_conversions_and_fast_math(target):
    x = conversion_inputs()
    n = x.numel()
    all_bits = torch.arange(2**16, dtype=torch.int32).to(torch.int16)
    dev = target.device

    def new(k, dtype):
        return torch.zeros(k, dtype=dtype, device=dev)

    to_f16, to_bf16 = new(n, torch.int16), new(n, torch.int16)
    pack_f16, pack_bf16 = new(n // 2, torch.int32), new(n // 2, torch.int32)
    unpack_f16, unpack_bf16 = new(n, torch.float32), new(n, torch.float32)
    exp2, rcp, tanh = (new(n, torch.float32) for _ in range(3))
    f16_to_f32, bf16_to_f32 = new(2**16, torch.float32), new(2**16, torch.float32)
    x_dev, b_dev = x.to(dev), all_bits.to(dev)
    target("math", ptr(x_dev), n, ptr(to_f16), ptr(to_bf16), ptr(pack_f16), ptr(pack_bf16),
           ptr(unpack_f16), ptr(unpack_bf16), ptr(exp2), ptr(rcp), ptr(tanh), ptr(b_dev),
           2**16, ptr(f16_to_f32), ptr(bf16_to_f32))

    ref_f16, ref_bf16 = x.half(), x.bfloat16()
    to_f16, to_bf16 = bits16(to_f16), bits16(to_bf16)
    assert_same_bits(to_f16, ref_f16, "float -> fp16")
    assert_same_bits(to_bf16, ref_bf16, "float -> bf16")
    # pack2: the first value in the low half, converted exactly like the scalar path.
    finite = torch.isfinite(x).view(-1, 2).all(1)
    for packed, scalar in ((u32(pack_f16), to_f16), (u32(pack_bf16), to_bf16)):
        pairs = scalar.view(-1, 2)
        assert torch.equal(packed[finite], (pairs[:, 0] | pairs[:, 1] << 16)[finite])
    for unpacked, ref in ((unpack_f16, ref_f16), (unpack_bf16, ref_bf16)):
        unpacked, ref = unpacked.cpu(), ref.float()
        same = (unpacked == ref) | (torch.isnan(unpacked) & torch.isnan(ref))
        assert same.all()
    # Widening: every 16-bit pattern.
    for got, dtype in ((f16_to_f32, torch.float16), (bf16_to_f32, torch.bfloat16)):
        ref = all_bits.view(dtype).float()
        got = got.cpu()
        assert torch.equal(torch.isnan(got), torch.isnan(ref))
        assert torch.equal(got[~torch.isnan(ref)], ref[~torch.isnan(ref)])

    # Fast math: within the hardware's documented error, flush-to-zero where it applies.
    xd = x.double()
    exp2, rcp, tanh = exp2.cpu().double(), rcp.cpu().double(), tanh.cpu().double()
    ref = torch.exp2(xd)
    ok = (ref >= 2.0**-126) & (ref < 2.0**127)
    assert ((exp2[ok] - ref[ok]).abs() <= 2.0**-21 * ref[ok]).all()
    assert (exp2[ref < 2.0**-127] == 0).all()
    assert (exp2[x == float("inf")] == float("inf")).all()
    assert torch.isnan(exp2[torch.isnan(x)]).all()
    normal = (xd.abs() >= 2.0**-125) & (xd.abs() <= 2.0**125)
    ref = 1 / xd
    assert ((rcp[normal] - ref[normal]).abs() <= 2.0**-22 * ref[normal].abs()).all()
    assert (rcp[(x == 0) | (xd.abs() < 2.0**-126)].abs() == float("inf")).all()
    finite_x = torch.isfinite(x)
    assert ((tanh[finite_x] - torch.tanh(xd[finite_x])).abs() <= 2.0**-10).all()


# ---------------------------------------------------------------------------------------
# fp8 conversions (device/fp8.h)
# ---------------------------------------------------------------------------------------

class Fp8Format:
    def __init__(self, name, e5m2, mant_bits, bias, max_code, torch_dtype):
        self.name, self.e5m2, self.mant_bits, self.bias = name, e5m2, mant_bits, bias
        self.max_code, self.torch_dtype = max_code, torch_dtype

    def __repr__(self):
        return self.name


FP8 = {
    "e4m3": Fp8Format("e4m3", False, 3, 7, 0x7E, torch.float8_e4m3fn),  # max 448
    "e5m2": Fp8Format("e5m2", True, 2, 15, 0x7B, torch.float8_e5m2),    # max 57344
}
# Rows of the fp8 test kernel's outputs (Fp8Args in csrc/emu/test_kernels.h): each function
# on Fp8Path::kNative (the hardware cvt on a GPU, its emulation on the CPU), then kSoftware.
FP8_F16_ROWS = {0: "fp8x2_to_f16x2", 1: "fp8x2_to_f16x2 (software)",
                2: "fp8x4_to_pack2x2<half_t>", 3: "fp8x4_to_pack2x2<half_t> (software)"}
FP8_BF16_ROWS = {4: "fp8x2_to_bf16x2", 5: "fp8x2_to_bf16x2 (software)",
                 6: "fp8x4_to_pack2x2<bf16_t>", 7: "fp8x4_to_pack2x2<bf16_t> (software)"}
FP8_F32_ROWS = {0: "fp8x2_to_float2", 1: "fp8x2_to_float2 (software)", 2: "to_float"}
FP8_NARROW_ROWS = {0: "float2_to_fp8x2", 1: "float2_to_fp8x2 (software)", 2: "from_float"}
# NaN results. The PTX ISA does not say which NaN the cvt instructions produce; fp8.h
# documents the emulation's choice (that of CUDA's pre-sm_89 fallback in cuda_fp8.hpp): every
# NaN narrows to 0x7f, every fp8 NaN widens to the fp16 0x7fff (bf16 0x7fff, fp32 0x7fffe000).
# The emulation must produce exactly these; the GPU only NaNs (a difference is reported).
FP8_NAN_CODE = 0x7F
FP8_NAN_F16, FP8_NAN_BF16, FP8_NAN_F32 = 0x7FFF, 0x7FFF, 0x7FFFE000


def fp8_decode(codes, fmt):
    """float64 values of fp8 codes, from the bit fields."""
    c = codes.to(torch.int64)
    sign = torch.where(c & 0x80 != 0, -1.0, 1.0).double()
    e = (c & 0x7F) >> fmt.mant_bits
    m = (c & ((1 << fmt.mant_bits) - 1)).double()
    normal = (1 + m / 2**fmt.mant_bits) * torch.exp2((e - fmt.bias).double())
    subnormal = m * 2.0 ** (1 - fmt.bias - fmt.mant_bits)
    v = sign * torch.where(e == 0, subnormal, normal)  # code 0x80 is -0.0
    if fmt.e5m2:
        v = torch.where((e == 31) & (m == 0), sign * float("inf"), v)
    return torch.where(fp8_is_nan(c, fmt), float("nan"), v)


def fp8_is_nan(codes, fmt):
    low = codes.to(torch.int64) & 0x7F
    return low > 0x7C if fmt.e5m2 else low == 0x7F


def fp8_finite_values(fmt):
    """The non-negative finite values, ascending: codes 0 .. max_code."""
    return fp8_decode(torch.arange(fmt.max_code + 1), fmt)


def fp8_encode_reference(x, fmt):
    """cvt.rn.satfinite in float64: the nearest representable value, ties to the even code,
    |x| > max (inf included) -> max, the sign of x kept (-0.0 -> 0x80); -1 for NaN."""
    vals = fp8_finite_values(fmt)
    a = x.double().abs().clamp(max=vals[-1].item())
    lo = (torch.searchsorted(vals, a, right=True) - 1).clamp(0, len(vals) - 1)
    hi = (lo + 1).clamp(max=len(vals) - 1)
    mid = (vals[lo] + vals[hi]) / 2
    code = torch.where((a > mid) | ((a == mid) & (lo % 2 == 1)), hi, lo)
    code = code | torch.where(torch.signbit(x), 0x80, 0)
    return torch.where(torch.isnan(x), -1, code)


def fp8_narrowing_inputs(fmt):
    vals = fp8_finite_values(fmt)
    v32 = vals.float()  # exact
    # Every midpoint, including the one past max (the rounding overflow threshold).
    mids = torch.cat([(vals[:-1] + vals[1:]) / 2, vals[-1:] + (vals[-1] - vals[-2]) / 2]).float()
    inf = torch.tensor(float("inf"))
    near = [torch.nextafter(t, inf) for t in (v32, mids)] + \
        [torch.nextafter(t, torch.zeros(())) for t in (v32, mids)]
    big = torch.tensor([1.0001, 1.03, 1.5, 2.0, 1e3]) * vals[-1].item()
    extreme = torch.tensor([1e30, 3.4028234e38, float("inf")])
    tiny = torch.tensor([2.0**-149, 1e-40, 2.0**-126, 1e-30])  # fp32 subnormals and more
    sub = vals[1].item() * torch.tensor([0.25, 0.5, 0.75, 1.5, 2.5, 3.5])  # fp8 subnormals
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(1000, generator=g) * torch.exp2(torch.empty(1000).uniform_(-20, 18, generator=g))
    pos = torch.cat([v32, mids, *near, big, extreme, tiny, sub.float(), rand.abs()])
    # +-quiet, +-signalling, payloads: 0x7fc00000, 0x7f800001, 0x7fffffff, 0xffc00000,
    # 0xff800001, 0xffffffff.
    nans = torch.tensor([0x7FC00000, 0x7F800001, 0x7FFFFFFF, -0x400000, -0x7FFFFF, -1],
                        dtype=torch.int32).view(torch.float32)
    return torch.cat([pos, -pos, nans])  # even length


def run_fp8(target, fmt, codes, x):
    """The fp8 test kernel: codes (n, a multiple of 4) widened, x (even length) narrowed."""
    n, nx = codes.numel(), x.numel()
    dev = target.device
    wide16 = torch.zeros(8, n, dtype=torch.int16, device=dev)
    wide32 = torch.zeros(3, n, dtype=torch.float32, device=dev)
    narrow = torch.zeros(3, nx, dtype=torch.uint8, device=dev)
    c_dev, x_dev = codes.to(torch.uint8).to(dev), x.to(dev)
    target("fp8", fmt.e5m2, ptr(c_dev), n, ptr(wide16), ptr(wide32), ptr(x_dev), nx, ptr(narrow))
    return bits16(wide16), wide32.cpu(), narrow.cpu().to(torch.int64)


def check_fp8_result(target, name, inputs, got, ref, nan, got_is_nan, nan_bits):
    """got equals ref (bit patterns) where the reference is not NaN; where it is, got holds
    the documented NaN bits under emulation and any NaN on a GPU (a difference is reported)."""
    bad = (got[~nan] != ref[~nan]).nonzero().flatten()[:8]
    assert bad.numel() == 0, (f"{name}: {inputs[~nan][bad].tolist()} gave "
                              f"{got[~nan][bad].tolist()}, expected {ref[~nan][bad].tolist()}")
    assert got_is_nan.all(), f"{name}: a NaN must give NaN"
    if target.emulated:
        assert (got[nan] == nan_bits).all(), f"{name}: NaN bits {got[nan].unique().tolist()}"
    elif (got[nan] != nan_bits).any():
        seen = [hex(b) for b in got[nan].unique().tolist()]
        warnings.warn(f"{name}: the GPU's NaN bits {seen} differ from the emulation's "
                      f"{hex(nan_bits)} (fp8.h documents the choice; tests require NaN-ness)")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fmt", list(FP8.values()), ids=list(FP8))
def test_fp8_widening_all_codes(target, fmt):
    # Every code at every position of a 4-code group (and so of both pairs).
    codes = torch.cat([torch.arange(256).roll(k) for k in range(4)])
    wide16, wide32, _ = run_fp8(target, fmt, codes, torch.zeros(2))
    ref = fp8_decode(codes, fmt)
    nan = torch.isnan(ref)
    # The bit-field reference is torch's own fp8 dtype, and exact in fp16, bf16 and fp32.
    by_torch = codes.to(torch.uint8).view(fmt.torch_dtype).double()
    assert torch.equal(torch.isnan(by_torch), nan)
    assert torch.equal(by_torch[~nan], ref[~nan])
    for dtype, rows, nan_bits in ((torch.float16, FP8_F16_ROWS, FP8_NAN_F16),
                                  (torch.bfloat16, FP8_BF16_ROWS, FP8_NAN_BF16)):
        exact = ref.to(dtype)
        assert torch.equal(exact.double()[~nan], ref[~nan])
        for row, name in rows.items():
            got = wide16[row]
            got_is_nan = torch.isnan(got[nan].to(torch.int16).view(dtype))
            check_fp8_result(target, name, codes, got, bits16(exact), nan, got_is_nan, nan_bits)
    ref32 = u32(ref.float().view(torch.int32))  # bits, so that -0.0 must stay -0.0
    for row, name in FP8_F32_ROWS.items():
        got = wide32[row]
        check_fp8_result(target, name, codes, u32(got.view(torch.int32)), ref32, nan,
                         torch.isnan(got[nan]), FP8_NAN_F32)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fmt", list(FP8.values()), ids=list(FP8))
def test_fp8_narrowing(target, fmt):
    x = fp8_narrowing_inputs(fmt)
    _, _, narrow = run_fp8(target, fmt, torch.zeros(4), x)
    ref = fp8_encode_reference(x, fmt)
    nan = ref < 0
    # The reference itself: every finite value round-trips (x holds them all, both signs),
    # and beyond max everything saturates.
    vals = fp8_finite_values(fmt).float()
    codes = torch.arange(fmt.max_code + 1)
    assert torch.equal(fp8_encode_reference(vals, fmt), codes)
    assert torch.equal(fp8_encode_reference(-vals, fmt), codes | 0x80)
    big = x.abs() > vals[-1]
    assert (ref[big & ~nan] & 0x7F == fmt.max_code).all()
    for row, name in FP8_NARROW_ROWS.items():
        got = narrow[row]
        check_fp8_result(target, name, x, got, ref, nan, fp8_is_nan(got[nan], fmt),
                         FP8_NAN_CODE)
    # torch's cast rounds the same way; it does not saturate everywhere (e5m2 overflows to
    # inf; e4m3fn overflow gave NaN in older releases), so compare where its result is finite
    # and check that it differs only beyond the saturation threshold.
    by_torch = x[~nan].to(fmt.torch_dtype)
    agree = torch.isfinite(by_torch.double())
    assert torch.equal(by_torch.view(torch.uint8).to(torch.int64)[agree], ref[~nan][agree])
    assert (x[~nan][~agree].abs() > vals[-1]).all()


# ---------------------------------------------------------------------------------------
# Misuse: errors instead of hangs or silent passes (emulation only)
# ---------------------------------------------------------------------------------------

MISUSE = {
    1: r"exited.*sync_block|sync_block.*exited",  # half the block returned before a barrier
    2: r"exited.*sync_block|sync_block.*exited",  # one thread skipped the barrier
    3: r"warp divergence",                        # lanes at different collectives
    4: r"exited",                                 # a lane returned before a shuffle
    5: r"partial warp",                           # shuffle with 48 threads
    6: r"neither can complete",                   # half-warp at sync_block, half at sync_warp
    7: r"not 16-byte aligned",                    # ldmatrix row address
    8: r"ldmatrix.*not in shared memory",         # ldmatrix from global memory
    9: r"cp.async.*not in the block's shared memory",
    10: r"trap\(\)",
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", sorted(MISUSE))
def test_misuse_raises(kind, seed):
    scratch = torch.zeros(1024)
    with pytest.raises(RuntimeError, match=MISUSE[kind]) as info:
        Target("emu", seed)("misuse", kind, ptr(scratch))
    message = str(info.value)
    assert re.search(r"block \(\d+,\d+,\d+\)", message), message
    assert _emu.schedule(seed) in message
    # The runtime is still usable after an aborted launch.
    Target("emu", seed)("misuse", 0, ptr(scratch))


def test_correct_kernel_passes_misuse_harness():
    scratch = torch.zeros(1024)
    for seed in EMU_SEEDS:
        Target("emu", seed)("misuse", 0, ptr(scratch))
    lanes = torch.arange(64)
    assert torch.equal(scratch[:64], (lanes ^ 1).float())


def test_schedules():
    assert "forward" in _emu.schedule(0) and "at wait" in _emu.schedule(0)
    assert "reverse" in _emu.schedule(1) and "at issue" in _emu.schedule(1)
    assert "shuffled" in _emu.schedule(2) and "random" in _emu.schedule(2)
