"""Hopper device primitives (wgmma, TMA, mbarrier, named barriers, setmaxnreg, elect.sync).

The test kernels (csrc/emu/test_kernels_sm90.cuh) run on the CPU emulation under several
schedules and, on an sm_90 GPU, compiled by nvcc (``fastattn._emu.cuda``), against references
written here from the PTX ISA's definitions:

- wgmma: operand tiles are laid out in shared-memory images by ``operand_image`` (the canonical
  K-major / MN-major layouts in core matrices, with the 32/64/128-byte swizzles applied to the
  shared address), the kernel multiplies them, and the fragments it returns are assembled into
  a matrix and compared with a float64 product. Integer-valued data must match exactly.
- TMA: the raw shared-memory bytes of a box (with out-of-bounds fill and swizzle) against the
  box cut out of the tensor here; stores of a box image into a tensor (clipped at its edges).
- mbarrier phases and transaction counts: several loads through one barrier; a
  producer/consumer ring with full/empty barriers, elect.sync, a named barrier and
  setmaxnreg.

Planted bugs: each asynchronous primitive's test kernel with its synchronisation removed must
give a wrong result or an error under some emulation schedule. Misuse must raise.
"""

import os
import pathlib
import re
import shutil
import site
import subprocess
import sys

import pytest
import torch

from test_primitives import EMU_SEEDS, HAS_GPU, Target, _emu, ptr

ROOT = pathlib.Path(__file__).resolve().parents[1]

# sm_90a code runs on sm_90 only (not on sm_100 and later).
HAS_SM90 = HAS_GPU and torch.cuda.get_device_capability() == (9, 0)
TARGETS = [pytest.param(Target("emu", s), id=f"emu-seed{s}") for s in EMU_SEEDS] + [
    pytest.param(Target("cuda"), id="cuda", marks=pytest.mark.skipif(
        not HAS_SM90, reason="no sm_90 GPU, or fastattn._emu built without CUDA"))
]
SEEDS = EMU_SEEDS + [5, 6, 7]

# Descriptor / tensor-map encodings of the swizzle modes, and their row widths in bytes.
SWIZZLE = {"none": 0, "128B": 1, "64B": 2, "32B": 3}
WIDTH = {"none": 16, "128B": 128, "64B": 64, "32B": 32}


def swizzle_address(mode, addr):
    """The ISA's swizzle: address bits [4, 4 + b) XOR bits [7, 7 + b), W = 16 * 2**b."""
    b = {"none": 0, "32B": 1, "64B": 2, "128B": 3}[mode]
    return addr ^ (((addr >> 7) & ((1 << b) - 1)) << 4)


# ---------------------------------------------------------------------------------------
# Swizzle address function
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(SWIZZLE))
def test_swizzle_is_a_chunk_permutation_within_each_row_group(mode):
    """Independent statement of the pattern: inside each 8 x W-byte group, row r's 16-byte
    chunk c moves to chunk c XOR (r mod (W/16)) of the same row (32B: r // 4, 64B: r // 2)."""
    w = WIDTH[mode]
    for addr in range(0, 4096, 16):
        row, chunk = addr // w, (addr % w) // 16
        if mode == "none":
            expected = addr
        else:
            per = w // 16               # chunks per row
            phase = (addr // 128) % per  # 128-byte line index inside the pattern period
            expected = row * w + ((chunk ^ phase) % per) * 16
        assert swizzle_address(mode, addr) == expected, (mode, addr)


# ---------------------------------------------------------------------------------------
# wgmma
# ---------------------------------------------------------------------------------------

def operand_offsets(mn_count, k_count, major, mode, lbo, sbo):
    """Byte offset (before the swizzle) of element (mn, k) of an MN x K operand in the ISA's
    canonical layouts for 16-bit types, as a [mn_count, k_count] tensor. Swizzled K-major
    operands wider than one row of W bytes continue in the next "atom column", placed after
    all MN rows (the start address then moves by that stride)."""
    mn = torch.arange(mn_count).view(-1, 1).expand(mn_count, k_count)
    k = torch.arange(k_count).view(1, -1).expand(mn_count, k_count)
    w = WIDTH[mode]
    if major == "K":
        if mode == "none":
            return (mn // 8) * sbo + (k // 8) * lbo + (mn % 8) * 16 + (k % 8) * 2
        e = w // 2  # elements per row
        column = (mn_count // 8) * sbo
        return (k // e) * column + (mn // 8) * sbo + (mn % 8) * w + (k % e) * 2
    if mode == "none":
        return (mn // 8) * sbo + (k // 8) * lbo + (k % 8) * 16 + (mn % 8) * 2
    e = w // 2
    return (mn // e) * lbo + (k // 8) * sbo + (k % 8) * w + (mn % e) * 2


def operand_layout(mn_count, k_steps, major, mode, padded=False):
    """(lbo, sbo, step) for a dense operand of MN x 16*k_steps: step is the start-address move
    from one K slice of 16 to the next. `padded` spreads the core matrices (no swizzle only)."""
    k_count = 16 * k_steps
    w = WIDTH[mode]
    if mode == "none":
        # Dense: the K core matrices of an 8-row group side by side; padded: the 8-row groups
        # side by side and each K group of them 256 bytes apart (both are canonical).
        lbo, sbo = (128, (k_count // 8) * 128) if not padded else ((mn_count // 8) * 128 + 256, 128)
        return lbo, sbo, 2 * lbo
    if major == "K":
        e = w // 2
        sbo = 8 * w
        lbo = 16  # unused by swizzled K-major layouts
        step = 32 if 16 * k_steps <= e else (mn_count // 8) * sbo
        assert 16 * k_steps <= e or e == 16, "K slices must step uniformly"
        return lbo, sbo, step
    e = w // 2
    sbo = 8 * w
    lbo = (k_count // 8) * sbo
    return lbo, sbo, 2 * sbo


def operand_image(values16, major, mode, lbo, sbo):
    """Shared-memory image (uint8) of an MN x K operand of 16-bit bit patterns."""
    mn_count, k_count = values16.shape
    off = operand_offsets(mn_count, k_count, major, mode, lbo, sbo).flatten()
    size = int(off.max()) + 2
    size = (size + 1023) // 1024 * 1024
    image = torch.zeros(size // 2, dtype=torch.int16)
    addr = torch.tensor([swizzle_address(mode, int(a)) for a in off])
    assert len(set(addr.tolist())) == addr.numel(), "layout maps two elements to one address"
    image[addr // 2] = values16.flatten()
    return image.view(torch.uint8)


def cute_layout(shape, stride, coord):
    """CuTe: the offset of a flat (colexicographic) coordinate in a nested shape/stride."""
    if isinstance(shape, int):
        return coord * stride
    offset = 0
    for sub_shape, sub_stride in zip(shape, stride):
        size = 1
        for s in (sub_shape if isinstance(sub_shape, tuple) else (sub_shape,)):
            size *= s
        offset += cute_layout(sub_shape, sub_stride, coord % size)
        coord //= size
    return offset


def fragment_maps(n):
    """(m, n) of accumulator register i of warpgroup thread t, and (m, k) of each 16-bit half
    of A register j, from CuTe's CLayout_64xN and ALayout_64x16 (thread, value) -> m + 64 * col
    (cute/atom/mma_traits_sm90_gmma.hpp): an independent statement of the ISA's figures."""
    c_shape, c_stride = ((4, 8, 4), (2, 2, n // 8)), ((128, 1, 16), (64, 8, 512))
    a_shape, a_stride = ((4, 8, 4), (2, 2, 2)), ((128, 1, 16), (64, 8, 512))
    acc = torch.empty(128, n // 2, 2, dtype=torch.long)
    a = torch.empty(128, 8, 2, dtype=torch.long)
    for t in range(128):
        for v in range(n // 2):
            idx = cute_layout(c_shape, c_stride, t + 128 * v)
            acc[t, v] = torch.tensor([idx % 64, idx // 64])
        for v in range(8):
            idx = cute_layout(a_shape, a_stride, t + 128 * v)
            a[t, v] = torch.tensor([idx % 64, idx // 64])
    return acc, a


_FRAGMENTS = {}


def fragments(n):
    if n not in _FRAGMENTS:
        _FRAGMENTS[n] = fragment_maps(n)
    return _FRAGMENTS[n]


def random_operands(dtype, n, k_count, data, gen):
    if data == "integer":
        a = torch.randint(-3, 4, (64, k_count), generator=gen).to(dtype)
        b = torch.randint(-3, 4, (n, k_count), generator=gen).to(dtype)
        c = torch.randint(-8, 9, (64, n), generator=gen).float()
    else:
        a = torch.randn(64, k_count, generator=gen).to(dtype)
        b = torch.randn(n, k_count, generator=gen).to(dtype)
        c = torch.randn(64, n, generator=gen)
    return a, b, c


def run_wgmma(target, *, dtype=torch.bfloat16, n=64, major_a="K", major_b="K", mode_a="128B",
              mode_b="128B", k_steps=1, rs=False, accumulate=True, data="normal", flags=0,
              padded=False, seed=0):
    gen = torch.Generator().manual_seed(1234 + seed)
    k_count = 16 * k_steps
    a, b, c = random_operands(dtype, n, k_count, data, gen)
    lbo_a, sbo_a, a_step = operand_layout(64, k_steps, major_a, mode_a, padded)
    lbo_b, sbo_b, b_step = operand_layout(n, k_steps, major_b, mode_b, padded)
    a_img = operand_image(a.view(torch.int16), major_a, mode_a, lbo_a, sbo_a)
    b_img = operand_image(b.view(torch.int16), major_b, mode_b, lbo_b, sbo_b)
    acc_map, a_map = fragments(n)
    c_regs = c[acc_map[..., 0], acc_map[..., 1]]  # [128, n / 2]
    # A registers per K step: value 2j in the low half of register j, 2j + 1 in the high half.
    a_bits = a.view(torch.int16).to(torch.int64) & 0xFFFF
    a_regs = torch.stack([a_bits[:, 16 * s:16 * s + 16][a_map[..., 0], a_map[..., 1]]
                          for s in range(k_steps)])  # [k_steps, 128, 8]
    a_regs = a_regs[..., 0::2] | (a_regs[..., 1::2] << 16)  # [k_steps, 128, 4] uint32 values
    a_regs = (a_regs - ((a_regs >> 31) << 32)).to(torch.int32)  # the same bits in int32
    dev = target.device
    a_img, b_img = a_img.to(dev), b_img.to(dev)
    a_regs_dev = a_regs.contiguous().to(dev)
    c_dev = c_regs.contiguous().to(dev)
    d_regs = torch.full((128, n // 2), float("nan"), device=dev)
    args = dict(a_image=ptr(a_img), a_bytes=0 if rs else a_img.numel(), a_regs=ptr(a_regs_dev),
                b_image=ptr(b_img), b_bytes=b_img.numel(),
                b_offset=0 if rs else (a_img.numel() + 1023) // 1024 * 1024,
                c=ptr(c_dev), d=ptr(d_regs), n=n, bf16=int(dtype == torch.bfloat16), rs=int(rs),
                major_a=int(major_a == "MN"), major_b=int(major_b == "MN"),
                swizzle_a=SWIZZLE[mode_a], swizzle_b=SWIZZLE[mode_b], lbo_a=lbo_a, sbo_a=sbo_a,
                lbo_b=lbo_b, sbo_b=sbo_b, k_steps=k_steps, a_step=a_step, b_step=b_step,
                accumulate=int(accumulate), flags=flags)
    target("wgmma", args)
    d = torch.full((64, n), float("nan"))
    d[acc_map[..., 0], acc_map[..., 1]] = d_regs.cpu()
    ref = a.double() @ b.double().T + (c.double() if accumulate else 0)
    scale = a.double().abs() @ b.double().abs().T + (c.double().abs() if accumulate else 0)
    return d.cpu(), ref, scale


def check_wgmma(d, ref, scale, data):
    if data == "integer":
        assert torch.equal(d.double(), ref), (d.double() - ref).abs().max()
    else:
        err = (d.double() - ref).abs()
        assert bool((err <= scale * 2.0 ** -20 + 1e-30).all()), float(err.max())


LAYOUTS = [(ma, mb) for ma in ("K", "MN") for mb in ("K", "MN")]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("mode", list(SWIZZLE))
@pytest.mark.parametrize("majors", LAYOUTS, ids=[f"A{a}-B{b}" for a, b in LAYOUTS])
def test_wgmma_ss_layouts(target, dtype, mode, majors):
    k_steps = {"none": 2, "128B": 4, "64B": 2, "32B": 2}[mode]
    for data in ("integer", "normal"):
        d, ref, scale = run_wgmma(target, dtype=dtype, major_a=majors[0], major_b=majors[1],
                                  mode_a=mode, mode_b=mode, k_steps=k_steps, data=data)
        check_wgmma(d, ref, scale, data)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", [
    dict(mode_a="none", mode_b="128B", padded=True),
    dict(mode_a="64B", mode_b="32B", major_a="MN"),
    dict(mode_a="128B", mode_b="none", major_b="MN", padded=True),
    dict(mode_a="32B", mode_b="64B", accumulate=False),
], ids=["none-128B-padded", "64B-32B", "128B-none-padded", "no-accumulate"])
def test_wgmma_ss_mixed_modes(target, case):
    case = dict(case)
    k_steps = 2 if {"32B", "64B"} & {case["mode_a"], case["mode_b"]} else 1
    d, ref, scale = run_wgmma(target, k_steps=k_steps, data="integer", **case)
    check_wgmma(d, ref, scale, "integer")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("mode", ["none", "128B", "64B", "32B"])
@pytest.mark.parametrize("major_b", ["K", "MN"])
def test_wgmma_rs(target, dtype, mode, major_b):
    k_steps = {"none": 3, "128B": 4, "64B": 2, "32B": 2}[mode]
    for data in ("integer", "normal"):
        d, ref, scale = run_wgmma(target, dtype=dtype, rs=True, major_b=major_b, mode_b=mode,
                                  mode_a="none", k_steps=k_steps, data=data)
        check_wgmma(d, ref, scale, data)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n, rs, major_b", [(16, False, "K"), (16, True, "K"), (128, False, "K"),
                                            (192, False, "MN"), (256, False, "K"),
                                            (256, True, "K")])
def test_wgmma_n_sweep(target, n, rs, major_b):
    d, ref, scale = run_wgmma(target, n=n, rs=rs, major_b=major_b, mode_a="128B", mode_b="128B",
                              k_steps=2, data="integer")
    check_wgmma(d, ref, scale, "integer")


def test_wgmma_ptx_file_is_generated():
    r = subprocess.run([sys.executable, str(ROOT / "scripts/gen_wgmma_ptx.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def planted(run, seeds=SEEDS):
    """For each seed: 'ok', 'wrong' or the emulation's error for a run that must be broken."""
    outcomes = {}
    for s in seeds:
        try:
            outcomes[s] = "ok" if run(Target("emu", s)) else "wrong"
        except RuntimeError as e:
            if not str(e).startswith("fastattn emulation:"):
                raise
            outcomes[s] = str(e)
    return outcomes


@pytest.mark.parametrize("flag", ["skip_wait", "overwrite_b", "overwrite_a_registers"])
def test_wgmma_missing_wait_gives_wrong_results(flag):
    flags = {"skip_wait": 1, "overwrite_b": 4, "overwrite_a_registers": 16}[flag]

    def run(target):
        d, ref, _ = run_wgmma(target, data="integer", k_steps=2, mode_a="128B", mode_b="128B",
                              rs=flag == "overwrite_a_registers", flags=flags)
        return torch.equal(d.double(), ref)

    outcomes = planted(run)
    assert any(o != "ok" for o in outcomes.values()), outcomes
    # ...while the same kernel with its wait is right under every schedule.
    for s in SEEDS:
        d, ref, _ = run_wgmma(Target("emu", s), data="integer", k_steps=2)
        assert torch.equal(d.double(), ref)


@pytest.mark.parametrize("flag, message", [(2, "without a wgmma.fence"),
                                           (8, "wgmma operations of its warpgroup in flight")])
def test_wgmma_missing_fence_or_wait_at_exit_is_an_error(flag, message):
    for s in (0, 1, 2):
        with pytest.raises(RuntimeError, match=message):
            run_wgmma(Target("emu", s), data="integer", flags=flag)


# ---------------------------------------------------------------------------------------
# TMA
# ---------------------------------------------------------------------------------------
TMA_TYPES = {"u8": (0, torch.uint8, 1), "f16": (1, torch.float16, 2),
             "bf16": (2, torch.bfloat16, 2), "f32": (3, torch.float32, 4)}


def make_global(dims, pad, type_name, gen):
    """A tensor of the given dims (innermost first) whose rows are padded by `pad` elements."""
    _, dtype, esize = TMA_TYPES[type_name]
    shape = list(reversed(dims))
    shape[-1] += pad
    n = 1
    for s in shape:
        n *= s
    if dtype == torch.uint8:
        t = torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8)
    else:
        t = (torch.randint(-1000, 1000, (n,), generator=gen).float() / 8).to(dtype)
    t = t.view(shape)
    strides = [esize]
    for i in range(1, len(dims)):
        strides.append(t.stride(len(shape) - 1 - i) * esize)
    return t, strides


def tma_reference(t, dims, box, coords, mode, oob_nan, esize):
    """Raw bytes of the box (dense, innermost fastest, swizzled) and its OOB mask."""
    rank = len(dims)
    idx = [torch.arange(box[i]) + coords[i] for i in range(rank)]
    grids = torch.meshgrid(*reversed(idx), indexing="ij")  # outermost first
    inside = torch.ones(grids[0].shape, dtype=torch.bool)
    for gi, d in zip(grids, reversed(dims)):
        inside &= (gi >= 0) & (gi < d)
    clamped = [g.clamp(0, d - 1) for g, d in zip(grids, reversed(dims))]
    vals = t[tuple(clamped)].clone()
    if vals.dtype == torch.uint8 or not oob_nan:
        vals[~inside] = 0
    else:
        vals[~inside] = float("nan")
    dense = vals.flatten().contiguous().view(torch.uint8)
    out = torch.empty_like(dense)
    chunks = dense.numel() // 16
    for c in range(chunks):
        a = swizzle_address(mode, 16 * c)
        out[a:a + 16] = dense[16 * c:16 * c + 16]
    return out, (~inside).flatten()


def run_tma(target, *, type_name="bf16", dims, box, coords, mode="none", pad=0, oob_nan=False,
            loads=1, flags=0, seed=0):
    code, dtype, esize = TMA_TYPES[type_name]
    gen = torch.Generator().manual_seed(99 + seed)
    t, strides = make_global(dims, pad, type_name, gen)
    dims_t = list(dims)
    g = t.to(target.device)
    box_bytes = esize
    for b in box:
        box_bytes *= b
    out = torch.zeros(loads, box_bytes, dtype=torch.uint8, device=target.device)
    args = dict(type=code, rank=len(dims), dims=dims_t, strides=strides, box=list(box),
                swizzle=SWIZZLE[mode], oob_nan=int(oob_nan), coords=list(coords), loads=loads,
                out=ptr(out), flags=flags)
    args["global"] = ptr(g)
    target("tma", args)
    refs = []
    for l in range(loads):
        c = list(coords)
        c[-1] += l * box[-1]
        refs.append(tma_reference(t, dims, box, c, mode, oob_nan, esize))
    return out.cpu(), refs, dtype


def check_tma(out, refs, dtype, oob_nan):
    for l, (ref, oob) in enumerate(refs):
        got = out[l]
        if oob_nan and dtype != torch.uint8:
            gv, rv = got.view(dtype), ref.view(dtype)
            assert torch.equal(torch.isnan(gv), torch.isnan(rv)), f"load {l}: NaN fill"
            keep = ~torch.isnan(rv)
            bits = torch.int32 if dtype == torch.float32 else torch.int16
            assert torch.equal(gv[keep].view(bits), rv[keep].view(bits)), f"load {l}"
        else:
            bad = (got != ref).nonzero()[:8].flatten().tolist()
            assert torch.equal(got, ref), f"load {l}: bytes {bad} differ"


TMA_CASES = [
    dict(dims=[64, 40], box=[64, 16], coords=[0, 8], mode="128B"),
    dict(dims=[64, 40], box=[64, 16], coords=[-8, 30], mode="128B"),          # hangs over 2 edges
    dict(dims=[32, 9], box=[32, 8], coords=[0, -3], mode="64B", pad=8),        # padded rows
    dict(dims=[16, 20], box=[16, 8], coords=[5, 17], mode="32B"),
    dict(dims=[24, 7], box=[8, 8], coords=[20, 2], mode="none", pad=8),
    dict(dims=[16, 5, 6], box=[16, 4, 3], coords=[0, 3, -1], mode="32B"),
    dict(dims=[8, 3, 4, 5], box=[8, 2, 2, 3], coords=[0, 2, 1, 3], mode="none"),
    dict(dims=[8, 2, 3, 2, 3], box=[8, 2, 2, 2, 2], coords=[-4, 0, 2, 1, 0], mode="none"),
    dict(dims=[48], box=[32], coords=[24], mode="none"),
    dict(dims=[32, 12], box=[32, 8], coords=[0, 9], mode="128B", type_name="f32"),
    dict(dims=[128, 10], box=[128, 4], coords=[-64, 0], mode="128B", type_name="u8"),
    dict(dims=[64, 12], box=[64, 8], coords=[16, 7], mode="128B", oob_nan=True),
    dict(dims=[16, 12], box=[16, 8], coords=[-8, 0], mode="none", oob_nan=True, type_name="f16"),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", TMA_CASES, ids=[f"case{i}" for i in range(len(TMA_CASES))])
def test_tma_box(target, case):
    out, refs, dtype = run_tma(target, loads=3, **case)
    check_tma(out, refs, dtype, case.get("oob_nan", False))


def test_tma_map_rules_match_the_driver():
    """The arguments our encoder refuses (checked identically before the driver is asked)."""
    t = Target("emu", 0)
    good = dict(dims=[64, 40], box=[64, 16], coords=[0, 0], mode="128B")
    bad = [
        (dict(good, box=[128, 16]), "swizzle span"),              # 256 bytes > 128
        (dict(good, box=[64, 300]), r"box\[1\] = 300"),
        (dict(good, box=[4, 16], mode="none"), "multiple of 16"),  # 8 bytes
        (dict(good, type_name="u8", oob_nan=True, box=[64, 16]), "NaN fill"),
    ]
    for case, message in bad:
        with pytest.raises((ValueError, RuntimeError), match=message):
            run_tma(t, **case)


@pytest.mark.parametrize("flag", [1, 2, 4], ids=["no-expect-tx", "no-wait", "no-parity-flip"])
def test_tma_missing_synchronisation_is_caught(flag):
    case = dict(dims=[64, 40], box=[64, 8], coords=[0, 0], mode="128B")

    def run(target):
        out, refs, _ = run_tma(target, loads=3, flags=flag, **case)
        return all(torch.equal(out[l], refs[l][0]) for l in range(3))

    outcomes = planted(run)
    assert any(o != "ok" for o in outcomes.values()), outcomes


def run_tma_store(target, *, type_name="bf16", dims, box, coords, mode="none", pad=0,
                  overwrite=False, seed=0):
    """Stores a random box image; returns (tensor after the store, expected tensor)."""
    code, dtype, esize = TMA_TYPES[type_name]
    gen = torch.Generator().manual_seed(7 + seed)
    t, strides = make_global(dims, pad, type_name, gen)
    box_elems = 1
    for b in box:
        box_elems *= b
    vals, _ = make_global([box_elems], 0, type_name, gen)
    dense = vals.flatten().contiguous().view(torch.uint8)
    image = torch.empty_like(dense)
    for c in range(dense.numel() // 16):  # lay the box out as tma_load would
        a = swizzle_address(mode, 16 * c)
        image[a:a + 16] = dense[16 * c:16 * c + 16]
    expected = t.clone()
    idx = [torch.arange(box[i]) + coords[i] for i in range(len(dims))]
    grids = torch.meshgrid(*reversed(idx), indexing="ij")
    inside = torch.ones(grids[0].shape, dtype=torch.bool)
    for gi, d in zip(grids, reversed(dims)):
        inside &= (gi >= 0) & (gi < d)
    boxed = vals.view(*reversed(box))
    expected[tuple(g[inside] for g in grids)] = boxed[inside]
    g = t.to(target.device)
    img = image.to(target.device)
    args = dict(type=code, rank=len(dims), dims=list(dims), strides=strides, box=list(box),
                swizzle=SWIZZLE[mode], coords=list(coords), image=ptr(img),
                overwrite=int(overwrite))
    args["global"] = ptr(g)
    target("tma_store", args)
    return g.cpu(), expected


TMA_STORE_CASES = [
    dict(dims=[64, 40], box=[64, 16], coords=[0, 8], mode="128B"),
    dict(dims=[64, 40], box=[64, 16], coords=[-8, 30], mode="128B"),   # clipped at 2 edges
    dict(dims=[32, 9], box=[32, 8], coords=[0, -3], mode="64B", pad=8),
    dict(dims=[16, 5, 6], box=[16, 4, 3], coords=[0, 3, -1], mode="32B"),
    dict(dims=[8, 2, 3, 2, 3], box=[8, 2, 2, 2, 2], coords=[-4, 0, 2, 1, 0], mode="none"),
    dict(dims=[32, 12], box=[32, 8], coords=[0, 9], mode="128B", type_name="f32"),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", TMA_STORE_CASES,
                         ids=[f"case{i}" for i in range(len(TMA_STORE_CASES))])
def test_tma_store_box(target, case):
    got, expected = run_tma_store(target, **case)
    assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8))


def test_tma_store_source_overwritten_before_wait_is_caught():
    case = dict(dims=[64, 40], box=[64, 16], coords=[0, 8], mode="128B")

    def run(target):
        got, expected = run_tma_store(target, overwrite=True, **case)
        return torch.equal(got.view(torch.uint8), expected.view(torch.uint8))

    outcomes = planted(run)
    assert any(o != "ok" for o in outcomes.values()), outcomes


# ---------------------------------------------------------------------------------------
# mbarrier ring, elect.sync, named barriers, setmaxnreg
# ---------------------------------------------------------------------------------------

def run_pipeline(target, tiles, stages, flags=0):
    gen = torch.Generator().manual_seed(tiles * 10 + stages)
    x = torch.randn(tiles, 32, 32, generator=gen).to(target.device)
    out = torch.full_like(x, float("nan"))
    target("pipeline", ptr(x), ptr(out), tiles, stages, flags)
    return torch.equal(out.cpu(), x.cpu())


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("tiles, stages", [(1, 1), (7, 1), (7, 2), (9, 3), (12, 4)])
def test_producer_consumer_ring(target, tiles, stages):
    assert run_pipeline(target, tiles, stages)


@pytest.mark.parametrize("flag", [1, 2, 4], ids=["no-empty-wait", "no-named-barrier",
                                                  "no-parity-flip"])
def test_ring_missing_synchronisation_is_caught(flag):
    outcomes = planted(lambda t: run_pipeline(t, 7, 2, flag))
    assert any(o != "ok" for o in outcomes.values()), outcomes


def run_named(target, rounds, skip_sync):
    x = torch.arange(rounds * 64, dtype=torch.float32).view(rounds, 64).to(target.device)
    out = torch.full_like(x, float("nan"))
    target("named_barrier", ptr(x), ptr(out), rounds, skip_sync)
    return torch.equal(out.cpu(), torch.roll(x.cpu(), -1, dims=1))


@pytest.mark.parametrize("target", TARGETS)
def test_named_barrier_handoff(target):
    assert run_named(target, 4, False)


def test_named_barrier_missing_sync_gives_wrong_result():
    outcomes = planted(lambda t: run_named(t, 4, True))
    assert any(o != "ok" for o in outcomes.values()), outcomes


HOPPER_MISUSE = {
    1: "never initialised",
    2: r"deadlock.*tx-count 64",
    3: "without a wgmma.fence",
    4: "arrived at this barrier.s current phase with a thread count of",
    5: "multiple of 32",
    6: "warpgroup-uniform",
    7: "first 128 bytes",
    8: "outside the block's shared memory",
    9: "not aligned to 128",
    10: "in flight",
    11: "partial warpgroup",
    12: "more arrivals than the init count",
    13: "not aligned to 1024 bytes",
    14: r"bar.arrive \(named barrier\).*can never complete",
    15: "may not lower",
    16: "must be warpgroup-uniform",
    17: "base offset 1",
    19: "8 bytes were overwritten",
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", sorted(HOPPER_MISUSE))
def test_hopper_misuse_raises(kind, seed):
    scratch = torch.zeros(1024)
    with pytest.raises(RuntimeError, match=HOPPER_MISUSE[kind]):
        _emu.emu.hopper_misuse(kind, ptr(scratch), seed=seed)


def test_tma_in_flight_at_block_end_is_an_error():
    # Copies land as late as possible under seed 0: nobody waited, so they never did.
    scratch = torch.zeros(1024)
    with pytest.raises(RuntimeError, match="still in flight when the block ended"):
        _emu.emu.hopper_misuse(18, ptr(scratch), seed=0)


@pytest.mark.parametrize("target", TARGETS)
def test_hopper_misuse_control_passes(target):
    scratch = torch.full((1024,), -1.0, device=target.device)
    target("hopper_misuse", 0, ptr(scratch))
    assert torch.equal(scratch[:128].cpu(), torch.zeros(128))


# ---------------------------------------------------------------------------------------
# The SASS of the test kernels uses the Hopper instructions
# ---------------------------------------------------------------------------------------

def _tool(name):
    found = shutil.which(name)
    if found:
        return found
    dirs = ["/usr/local/cuda/bin"]
    for sp in site.getsitepackages():
        dirs += [os.path.join(sp, "nvidia", "cu13", "bin"),
                 os.path.join(sp, "triton", "backends", "nvidia", "bin")]
    for d in dirs:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


@pytest.mark.skipif(not all(_tool(t) for t in ("nvcc", "cuobjdump", "nvdisasm")),
                    reason="nvcc, cuobjdump or nvdisasm not found")
def test_sm90a_sass_has_hopper_instructions(tmp_path):
    nvcc = "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(nvcc):
        nvcc = _tool("nvcc")
    cubin = tmp_path / "sm90.cubin"
    subprocess.run([nvcc, "-std=c++20", "-O3", "-cubin", "-arch=sm_90a",
                    f"-I{ROOT / 'csrc/include'}", f"-I{ROOT / 'csrc'}", "-o", str(cubin),
                    str(ROOT / "csrc/cuda/primitives_test_sm90.cu")],
                   check=True, capture_output=True, text=True)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(_tool("nvdisasm")) + os.pathsep + env.get("PATH", "")
    sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], check=True,
                          capture_output=True, text=True, env=env).stdout
    for op in ("HGMMA", "UTMALDG", "UTMASTG", "SYNCS", "ELECT", "BAR.ARV", "USETMAXREG"):
        assert re.search(rf"\b{re.escape(op)}", sass), f"{op} missing from the sm_90a SASS"
